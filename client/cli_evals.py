"""`skillserve eval ...`: OpenAI's Evals API from the command line (docs/evals.md), over HTTP like the rest of the CLI.

Rows are uploaded as a file of purpose `evals` and the run names it by id: the gateway checks every line before
anything runs (the CLI prints each bad line), the run record stays small, and the file can serve later runs.
The text of `compare` and the pass rates are pure functions of the API's JSON, unit-tested without a gateway.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from client import cli
from client.cli import CLIError, checked


def connect(args: argparse.Namespace) -> Any:
    """client.cli's `connect`, looked up at each call: these commands are imported while the parser is built, and a
    binding made then would keep whatever `connect` was at that moment."""
    return cli.connect(args)

FINISHED_RUN = ("completed", "failed", "canceled")
POLL_S = 2.0


# ---------------------------------------------------------------- pure: the text of runs and their differences


def criterion_rates(run: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Each criterion's (passed, graded) in a run, in the eval's order; errored rows are graded by none."""
    return {
        r["testing_criteria"]: (int(r["passed"]), int(r["passed"]) + int(r["failed"]))
        for r in run.get("per_testing_criteria_results") or []
    }


def rate_text(passed: int, graded: int) -> str:
    return f"{passed}/{graded} {passed / graded:.0%}" if graded else "-"


def run_lines(run: dict[str, Any]) -> list[str]:
    """A run in a few lines: model, status (with the reason of a failed one), rows passed, each criterion's rate."""
    counts = run.get("result_counts") or {}
    head = f"run {run['id']} on {run['model']}: {run['status']}"
    if run.get("error"):
        head += f" ({run['error']['code']}: {run['error']['message']})"
    lines = [head, f"  rows: {counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed, "
             f"{counts.get('errored', 0)} errored of {counts.get('total', 0)} graded"]
    rates = criterion_rates(run)
    width = max((len(name) for name in rates), default=0)
    lines += [f"  {name:{width}}  {rate_text(*rate)}" for name, rate in rates.items()]
    return lines


def _results(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in item.get("results") or []}


def _answer(item: dict[str, Any]) -> str:
    sample = item.get("sample") or {}
    if sample.get("error"):
        return f"(no answer: {sample['error'].get('message', '')})"
    return "".join(m.get("content") or "" for m in sample.get("output") or [])


def differing_rows(
    items_a: list[dict[str, Any]], items_b: list[dict[str, Any]]
) -> list[tuple[int, dict[str, Any] | None, dict[str, Any] | None]]:
    """The rows (by datasource_item_id) whose status or any criterion's verdict differs between two runs; a row only
    one run has is a difference too. Sorted by row."""
    by_row_a = {i["datasource_item_id"]: i for i in items_a}
    by_row_b = {i["datasource_item_id"]: i for i in items_b}
    differ = []
    for row in sorted(by_row_a.keys() | by_row_b.keys()):
        a, b = by_row_a.get(row), by_row_b.get(row)
        if a is not None and b is not None:
            verdicts_a = {name: r.get("passed") for name, r in _results(a).items()}
            verdicts_b = {name: r.get("passed") for name, r in _results(b).items()}
            if a["status"] == b["status"] and verdicts_a == verdicts_b:
                continue
        differ.append((row, a, b))
    return differ


def compare_lines(
    run_a: dict[str, Any], run_b: dict[str, Any], items_a: list[dict[str, Any]], items_b: list[dict[str, Any]]
) -> list[str]:
    """Two runs of one eval side by side: each criterion's pass rate (and rows passed) for A and B with the change
    in points, then every row where they differ: its item, both answers, each criterion's verdict and score."""
    rates_a, rates_b = criterion_rates(run_a), criterion_rates(run_b)
    names = list(rates_a) + [n for n in rates_b if n not in rates_a]
    counts_a, counts_b = run_a.get("result_counts") or {}, run_b.get("result_counts") or {}
    table = [(name, rates_a.get(name, (0, 0)), rates_b.get(name, (0, 0))) for name in names]
    table.append(("rows passed (all criteria)", (counts_a.get("passed", 0), counts_a.get("total", 0)),
                  (counts_b.get("passed", 0), counts_b.get("total", 0))))
    head_a, head_b = f"A: {run_a['model']}", f"B: {run_b['model']}"
    width = max(len(name) for name, _, _ in table)
    column = max(len(head_a), len(head_b), 12)
    lines = [f"A = run {run_a['id']} ({run_a['status']}), B = run {run_b['id']} ({run_b['status']})",
             f"{'':{width}}  {head_a:>{column}}  {head_b:>{column}}  {'B - A':>9}"]
    for name, (passed_a, graded_a), (passed_b, graded_b) in table:
        change = (f"{(passed_b / graded_b - passed_a / graded_a) * 100:+.1f} pt"
                  if graded_a and graded_b else "-")
        lines.append(f"{name:{width}}  {rate_text(passed_a, graded_a):>{column}}  "
                     f"{rate_text(passed_b, graded_b):>{column}}  {change:>9}")
    differ = differing_rows(items_a, items_b)
    rows = len({i["datasource_item_id"] for i in items_a + items_b})
    lines.append("")
    lines.append(f"{len(differ)} of {rows} rows differ" + (":" if differ else ""))
    for row, a, b in differ:
        item = (a or b or {}).get("datasource_item")
        lines.append(f"row {row}: {json.dumps(item, ensure_ascii=False)}")
        for label, side in (("A", a), ("B", b)):
            if side is None:
                lines.append(f"  {label}: no output item (the run did not reach this row)")
                continue
            lines.append(f"  {label} {side['status']:4}: {_answer(side)!r}")
        for name in names:
            verdicts = []
            for label, side in (("A", a), ("B", b)):
                result = _results(side).get(name) if side else None
                if result is None:
                    verdicts.append(f"{label} -")
                    continue
                word = "pass" if result.get("passed") else "fail"
                score = result.get("score")
                verdicts.append(f"{label} {word} {score:.2f}" if isinstance(score, int | float) else f"{label} {word}")
            lines.append(f"    {name}: {', '.join(verdicts)}")
    return lines


# ---------------------------------------------------------------- the shell: HTTP calls


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CLIError(f"{what} {path} is not JSON: {exc}") from None


def _all(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    """Every object of a paged list (OpenAI's `after` cursor)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = checked(client.get(path, params=params))
        found += page["data"]
        if not page.get("has_more") or not page["data"]:
            return found
        params["after"] = page["last_id"]


def cmd_eval_create(args: argparse.Namespace) -> int:
    criteria = _read_json(args.criteria, "criteria file")
    if isinstance(criteria, dict):
        criteria = [criteria]
    schema = _read_json(args.item_schema, "item schema") if args.item_schema else {"type": "object"}
    body = {
        "name": args.name,
        "data_source_config": {"type": "custom", "item_schema": schema, "include_sample_schema": True},
        "testing_criteria": criteria,
    }
    with connect(args) as client:
        evaluation = checked(client.post("/v1/evals", json=body))
    names = ", ".join(c.get("name", "?") for c in evaluation["testing_criteria"])
    print(f"eval {evaluation['id']} created: {evaluation['name']} ({names})")
    return 0


def cmd_eval_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        evals = _all(client, "/v1/evals")
    print(f"{'EVAL':40} {'NAME':24} {'CREATED':16}  CRITERIA")
    for e in evals:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["created_at"]))
        criteria = ", ".join(c.get("name", "?") for c in e["testing_criteria"])
        print(f"{e['id']:40} {e['name'][:24]:24} {created:16}  {criteria}")
    return 0


def cmd_eval_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        evaluation = checked(client.get(f"/v1/evals/{args.eval_id}"))
        runs = _all(client, f"/v1/evals/{args.eval_id}/runs")
    print(f"eval {evaluation['id']}: {evaluation['name']}")
    for c in evaluation["testing_criteria"]:
        print(f"  criterion {c.get('name')!r}: {c.get('type')}")
    if not runs:
        print("no runs yet: skillserve eval run EVAL_ID --model M --rows rows.jsonl")
    for run in runs:
        print("\n".join(run_lines(run)))
    return 0


def _template(path: str | None) -> dict[str, Any]:
    if path is None:  # each row carries its own chat
        return {"type": "item_reference", "item_reference": "item.messages"}
    template = _read_json(path, "template")
    if not isinstance(template, list):
        raise CLIError(f"template {path} must be a JSON list of messages ({{role, content}})")
    return {"type": "template", "template": template}


def training_gate(client: httpx.Client, args: argparse.Namespace) -> dict[str, Any] | None:
    """`skillserve train`'s eval gate (our extension of the training request): its rows uploaded as a file of purpose
    evals, its template, minimums from --gate-min-pass-rate and --gate-criterion NAME=RATE; None without --eval-gate."""
    if args.eval_gate is None:
        return None
    if args.gate_rows is None:
        raise CLIError("--eval-gate needs --gate-rows: the rows the new version answers before it is published")
    criteria = {}
    for pair in args.gate_criterion:
        name, sep, rate = pair.rpartition("=")
        try:
            criteria[name] = float(rate)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise CLIError(f"--gate-criterion {pair!r}: expected NAME=RATE, e.g. 'names the capital=0.9'")
    data = Path(args.gate_rows).read_bytes()
    uploaded = checked(client.post("/v1/files", data={"purpose": "evals"},
                                  files={"file": (Path(args.gate_rows).name, data, "application/jsonl")}))
    return {
        "eval_id": args.eval_gate,
        "min_pass_rate": args.gate_min_pass_rate,
        "criteria": criteria,
        "input_messages": _template(args.gate_template),
        "source": {"type": "file_id", "id": uploaded["id"]},
    }


def add_gate_options(train: argparse.ArgumentParser) -> None:
    """`skillserve train`'s options for a training gate (docs/evals.md, Promotion gates)."""
    train.add_argument("--eval-gate", metavar="EVAL_ID", default=None,
                       help="publish only if the new version passes this eval (the trainer runs it first)")
    train.add_argument("--gate-rows", metavar="rows.jsonl", help='the gate\'s rows, one {"item": {...}} per line')
    train.add_argument("--gate-template", metavar="messages.json",
                       help="a JSON list of chat messages over {{item.*}} (default: each item's own `messages`)")
    train.add_argument("--gate-min-pass-rate", type=float, default=1.0,
                       help="each criterion's least pass rate, 0 to 1 (default 1: every row)")
    train.add_argument("--gate-criterion", action="append", default=[], metavar="NAME=RATE",
                       help="a criterion's own least pass rate (repeatable)")


def follow_run(client: httpx.Client, eval_id: str, run: dict[str, Any], rows: int) -> dict[str, Any]:
    """Poll a run until it ends, saying on stderr how many rows are graded; returns its last state."""
    shown = None
    while run["status"] not in FINISHED_RUN:
        graded = (run.get("result_counts") or {}).get("total", 0)
        if (run["status"], graded) != shown:
            print(f"{run['id']}: {run['status'].replace('_', ' ')}, {graded}/{rows} rows graded", file=sys.stderr)
            shown = (run["status"], graded)
        time.sleep(POLL_S)
        run = checked(client.get(f"/v1/evals/{eval_id}/runs/{run['id']}"))
    return run


def cmd_eval_run(args: argparse.Namespace) -> int:
    data = Path(args.rows).read_bytes()
    rows = sum(1 for line in data.splitlines() if line.strip())
    sampling: dict[str, Any] = {"temperature": args.temperature, "max_completion_tokens": args.max_tokens}
    with connect(args) as client:
        uploaded = checked(client.post("/v1/files", data={"purpose": "evals"},
                                      files={"file": (Path(args.rows).name, data, "application/jsonl")}))
        body = {
            "name": args.name or f"on {args.model}",
            "data_source": {
                "type": "completions",
                "model": args.model,
                "input_messages": _template(args.template),
                "sampling_params": sampling,
                "source": {"type": "file_id", "id": uploaded["id"]},
            },
        }
        run = checked(client.post(f"/v1/evals/{args.eval_id}/runs", json=body))
        print(f"run {run['id']} queued: {rows} rows on {args.model} (rows in file {uploaded['id']})")
        if not args.follow:
            return 0
        run = follow_run(client, args.eval_id, run, rows)
    print("\n".join(run_lines(run)))
    return 0 if run["status"] == "completed" else 1


def cmd_eval_compare(args: argparse.Namespace) -> int:
    with connect(args) as client:
        runs = [checked(client.get(f"/v1/evals/{args.eval_id}/runs/{run_id}")) for run_id in (args.run_a, args.run_b)]
        items = [_all(client, f"/v1/evals/{args.eval_id}/runs/{run['id']}/output_items") for run in runs]
    print("\n".join(compare_lines(runs[0], runs[1], items[0], items[1])))
    return 0


def cmd_eval_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.run_id:
            checked(client.delete(f"/v1/evals/{args.eval_id}/runs/{args.run_id}"))
            print(f"deleted run {args.run_id}")
        else:
            checked(client.delete(f"/v1/evals/{args.eval_id}"))
            print(f"deleted eval {args.eval_id} with its runs")
    return 0


def add_eval_commands(sub: Any) -> None:
    """`skillserve eval create|list|show|run|compare|delete` on the CLI's subcommands."""
    evals = sub.add_parser("eval", help="evals: graders over your rows, runs on any served model, compared")
    commands = evals.add_subparsers(dest="eval_command", required=True)

    create = commands.add_parser("create", help="create an eval: the graders every run applies (admin)")
    create.add_argument("--name", required=True)
    create.add_argument("--criteria", required=True, metavar="criteria.json",
                        help="a JSON list of testing criteria (OpenAI's graders: string_check, text_similarity, ...)")
    create.add_argument("--item-schema", metavar="schema.json",
                        help="JSON schema of each row's item (default: any object)")
    create.set_defaults(func=cmd_eval_create)

    commands.add_parser("list", help="list evals").set_defaults(func=cmd_eval_list)

    show = commands.add_parser("show", help="an eval's criteria and its runs with pass rates per criterion")
    show.add_argument("eval_id")
    show.set_defaults(func=cmd_eval_show)

    run = commands.add_parser("run", help="run an eval on a served model (admin)")
    run.add_argument("eval_id")
    run.add_argument("--model", required=True, help="base model, adapter, name@version, alias or ft: id")
    run.add_argument("--rows", required=True, metavar="rows.jsonl", help='JSONL, one {"item": {...}} per line')
    run.add_argument("--template", metavar="messages.json",
                     help="a JSON list of chat messages over {{item.*}} (default: each item's own `messages`)")
    run.add_argument("--name", default=None, help="the run's name (default: 'on MODEL')")
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--max-tokens", type=int, default=64)
    run.add_argument("--follow", action="store_true", help="wait for the run to end and print its pass rates")
    run.set_defaults(func=cmd_eval_run)

    compare = commands.add_parser("compare", help="two runs side by side and the rows where they differ")
    compare.add_argument("eval_id")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.set_defaults(func=cmd_eval_compare)

    delete = commands.add_parser("delete", help="delete an eval with its runs, or one run (admin)")
    delete.add_argument("eval_id")
    delete.add_argument("run_id", nargs="?")
    delete.set_defaults(func=cmd_eval_delete)
