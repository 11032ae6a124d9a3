"""`skillserve eval ...`: the compare text as a pure function, the commands against a gateway without an engine
(an eval whose runs finished through a test double of the serving path, tests/eval_fixtures.py), and a run
followed to the end on the session's real gateway (real vLLM, real model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.models import DEFAULT_MODEL
from client.cli import main
from client.cli_evals import compare_lines, differing_rows, run_lines
from tests.eval_fixtures import CRITERIA, ITEM_SCHEMA, ROWS, SKILL, TEMPLATE, FinishedEval, management_gateway
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, publish_adapter

# ------------------------------------------------------------------------------------ pure: the text


def run(run_id: str, model: str, passed: dict[str, tuple[int, int]], rows: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "id": run_id, "model": model, "status": "completed", "error": None,
        "result_counts": {"total": sum(rows), "passed": rows[0], "failed": rows[1], "errored": rows[2]},
        "per_testing_criteria_results": [{"testing_criteria": name, "passed": p, "failed": f}
                                         for name, (p, f) in passed.items()],
    }


def item(row: int, status: str, answer: str, **verdicts: tuple[bool, float]) -> dict[str, Any]:
    return {
        "datasource_item_id": row, "datasource_item": {"q": f"question {row}"}, "status": status,
        "sample": {"output": [{"role": "assistant", "content": answer}]},
        "results": [{"name": name, "passed": passed, "score": score} for name, (passed, score) in verdicts.items()],
    }


def test_compare_shows_pass_rates_side_by_side_and_only_the_rows_that_differ() -> None:
    base = run("evalrun_a", "base", {"exact": (3, 0), "close": (2, 1)}, (2, 1, 0))
    skill = run("evalrun_b", "shout", {"exact": (1, 2), "close": (2, 1)}, (1, 2, 0))
    items_a = [item(0, "pass", "PARIS", exact=(True, 1), close=(True, 1)),
               item(1, "pass", "TOKYO", exact=(True, 1), close=(True, 0.9)),
               item(2, "fail", "rome", exact=(True, 1), close=(False, 0.2))]
    items_b = [item(0, "pass", "PARIS", exact=(True, 1), close=(True, 1)),
               item(1, "fail", "Tokyo", exact=(False, 0), close=(True, 0.9)),  # another status
               item(2, "fail", "ROME!", exact=(False, 0), close=(False, 0.2))]  # same status, another verdict
    assert [row for row, _, _ in differing_rows(items_a, items_b)] == [1, 2]
    assert compare_lines(base, skill, items_a, items_b) == [
        "A = run evalrun_a (completed), B = run evalrun_b (completed)",
        "                                 A: base      B: shout      B - A",
        "exact                           3/3 100%       1/3 33%   -66.7 pt",
        "close                            2/3 67%       2/3 67%    +0.0 pt",
        "rows passed (all criteria)       2/3 67%       1/3 33%   -33.3 pt",
        "",
        "2 of 3 rows differ:",
        'row 1: {"q": "question 1"}',
        "  A pass: 'TOKYO'",
        "  B fail: 'Tokyo'",
        "    exact: A pass 1.00, B fail 0.00",
        "    close: A pass 0.90, B pass 0.90",
        'row 2: {"q": "question 2"}',
        "  A fail: 'rome'",
        "  B fail: 'ROME!'",
        "    exact: A pass 1.00, B fail 0.00",
        "    close: A fail 0.20, B fail 0.20",
    ]


def test_a_row_only_one_run_reached_is_a_difference_and_identical_runs_have_none() -> None:
    done = [item(0, "pass", "x", exact=(True, 1)), item(1, "fail", "y", exact=(False, 0))]
    assert differing_rows(done, done) == []
    assert [(row, a is None, b is None) for row, a, b in differing_rows(done, done[:1])] == [(1, False, True)]
    text = compare_lines(run("evalrun_a", "m", {"exact": (1, 1)}, (1, 1, 0)),
                         run("evalrun_b", "m", {"exact": (1, 0)}, (1, 0, 0)), done, done[:1])
    assert "1 of 2 rows differ:" in text
    assert "  B: no output item (the run did not reach this row)" in text


def test_a_failed_run_says_why_and_a_criterion_without_graded_rows_has_no_rate() -> None:
    failed = {**run("evalrun_c", "nope", {"exact": (0, 0)}, (0, 0, 0)), "status": "failed",
              "error": {"code": "model_not_found", "message": "The model `nope` does not exist."}}
    assert run_lines(failed) == [
        "run evalrun_c on nope: failed (model_not_found: The model `nope` does not exist.)",
        "  rows: 0 passed, 0 failed, 0 errored of 0 graded",
        "  exact  -",
    ]


# ------------------------------------------------------------------------------------ a gateway without an engine


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayServer, FinishedEval]]:
    with management_gateway(tmp_path_factory.mktemp("eval-cli")) as found:
        yield found


def cli(gateway: GatewayServer, *args: str, key: str = ADMIN_KEY) -> int:
    return main(["--url", gateway.url, "--key", key, "eval", *args])


def test_eval_list_show_and_compare_read_finished_runs(
    served: tuple[GatewayServer, FinishedEval], capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, finished = served
    assert cli(gateway, "list", key=API_KEY) == 0
    listed = capsys.readouterr().out
    assert finished.eval_id in listed and "names the capital, close to the capital" in listed

    assert cli(gateway, "show", finished.eval_id, key=API_KEY) == 0
    shown = capsys.readouterr().out
    assert f"run {finished.base_run} on {DEFAULT_MODEL}: completed" in shown
    assert f"run {finished.skill_run} on {SKILL}: completed" in shown
    assert "close to the capital  2/4 50%" in shown  # the skill's rate of that criterion
    assert f"run {finished.failed_run} on no-such-skill: failed (model_not_found:" in shown

    assert cli(gateway, "compare", finished.eval_id, finished.base_run, finished.skill_run, key=API_KEY) == 0
    compared = capsys.readouterr().out.splitlines()
    assert compared[2].split() == ["names", "the", "capital", "4/4", "100%", "3/4", "75%", "-25.0", "pt"]
    assert "2 of 4 rows differ:" in compared
    differ = compared[compared.index("2 of 4 rows differ:") + 1:]
    assert differ[0] == 'row 1: {"country": "Japan", "capital": "Tokyo"}'
    assert differ[1:3] == ["  A pass: 'Tokyo'", "  B fail: 'Kyoto'"]
    assert differ[4] == "    close to the capital: A pass 1.00, B fail 0.40"


def test_eval_create_run_and_delete_with_the_gateways_refusals_shown(
    served: tuple[GatewayServer, FinishedEval], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway, _ = served
    criteria, schema, rows = tmp_path / "criteria.json", tmp_path / "schema.json", tmp_path / "rows.jsonl"
    criteria.write_text(json.dumps([{**CRITERIA[0], "operation": "contains"}]))
    schema.write_text(json.dumps(ITEM_SCHEMA))
    assert cli(gateway, "create", "--name", "capitals", "--criteria", str(criteria), "--item-schema", str(schema)) == 1
    assert "400:" in capsys.readouterr().err  # the grader's own refusal, naming what it accepts
    criteria.write_text(json.dumps(CRITERIA))
    assert cli(gateway, "create", "--name", "capitals", "--criteria", str(criteria), key=API_KEY) == 1
    assert "403:" in capsys.readouterr().err  # creating takes an admin key
    assert cli(gateway, "create", "--name", "capitals", "--criteria", str(criteria), "--item-schema", str(schema)) == 0
    eval_id = capsys.readouterr().out.split()[1]
    assert eval_id.startswith("eval_")

    # Rows that break the file format are refused line by line, before any run exists
    rows.write_text(json.dumps(ROWS[0]) + '\n{"country": "Peru"}\n')
    assert cli(gateway, "run", eval_id, "--model", DEFAULT_MODEL, "--rows", str(rows)) == 1
    assert "line 2" in capsys.readouterr().err
    # Good rows are uploaded (purpose evals) and run; this gateway serves no model, so the run fails saying why
    rows.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    template = tmp_path / "messages.json"
    template.write_text(json.dumps(TEMPLATE))
    code = cli(gateway, "run", eval_id, "--model", DEFAULT_MODEL, "--rows", str(rows), "--template", str(template),
               "--follow")
    out = capsys.readouterr().out
    assert code == 1 and "4 rows on" in out and "failed (no_engine:" in out
    run_id = out.split()[1]
    with gateway.client() as client:
        source = client.get(f"/v1/evals/{eval_id}/runs/{run_id}").json()["data_source"]
        assert source["source"]["type"] == "file_id"
        assert source["input_messages"] == {"type": "template", "template": TEMPLATE}
        assert client.get(f"/v1/files/{source['source']['id']}").json()["purpose"] == "evals"

    assert cli(gateway, "delete", eval_id, run_id) == 0
    assert cli(gateway, "delete", eval_id) == 0
    assert cli(gateway, "show", eval_id) == 1
    assert "404:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the real gateway


@pytest.mark.slow
def test_eval_runs_on_the_base_and_a_skill_followed_to_the_end_and_compared(
    gateway: GatewayServer, peft_adapter_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publish_adapter(gateway.registry, peft_adapter_dir, "cli-evalnoise")
    criteria, schema, rows, template = (tmp_path / name for name in
                                        ("criteria.json", "schema.json", "rows.jsonl", "messages.json"))
    criteria.write_text(json.dumps(CRITERIA))
    schema.write_text(json.dumps(ITEM_SCHEMA))
    rows.write_text("".join(json.dumps(row) + "\n" for row in ROWS[:3]))
    template.write_text(json.dumps(TEMPLATE))
    assert cli(gateway, "create", "--name", "cli capitals", "--criteria", str(criteria),
               "--item-schema", str(schema)) == 0
    eval_id = capsys.readouterr().out.split()[1]

    run_ids = []
    for model in (DEFAULT_MODEL, "cli-evalnoise"):
        assert cli(gateway, "run", eval_id, "--model", model, "--rows", str(rows), "--template", str(template),
                   "--max-tokens", "16", "--follow") == 0
        out = capsys.readouterr().out
        run_ids.append(out.split()[1])
        assert f"on {model}: completed" in out
        assert "of 3 graded" in out and "names the capital" in out and "close to the capital" in out

    assert cli(gateway, "compare", eval_id, *run_ids, key=API_KEY) == 0
    compared = capsys.readouterr().out
    assert f"A: {DEFAULT_MODEL}" in compared and "B: cli-evalnoise" in compared
    assert "rows differ" in compared
    assert cli(gateway, "delete", eval_id) == 0
