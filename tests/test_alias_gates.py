"""Promotion gates on aliases: a version that fails the gate's eval never becomes `@prod`; one that passes does.

Fast tests run a management-only gateway in-process on a real file store, with runs executed by the gateway's own
executor over a scripted serving path (tests/eval_fixtures.py): refusals, canaries, rollbacks, the gate's own
checks. The slow test runs the evals on the session's real gateway (real vLLM): two versions of one adapter, one
that answers as the base model does (a LoRA whose B matrices are zero) and one that does not (random weights).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from adapters.registry import Registry
from adapters.schema import EvalRecord, EvalRunRecord
from adapters.store import open_store
from service.app import create_app
from tests.eval_fixtures import CRITERIA, ITEM_SCHEMA, ROWS, data_source, scripted_serving
from tests.gateway_fixtures import ADMIN_KEY, GatewayServer, management_settings, publish_adapter
from tests.test_evals import CAPITALS, NAMES_THE_CAPITAL, new_eval, poll
from tests.test_evals import data_source as live_data_source

ROWS_THE_BASE_KNOWS = CAPITALS[:2]  # France, Japan: the base names both (not Italy's)
RIGHT = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid"}
ONE_WRONG = {**RIGHT, "Japan": "Kyoto"}  # 3 of 4 rows on both criteria


# ------------------------------------------------------------------------------------ in-process, no engine


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Registry]]:
    settings = management_settings(tmp_path_factory.mktemp("gates"))
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client, Registry(open_store(settings.store_uri))


def run_eval(
    registry: Registry, eval_id: str, answers: dict[str, dict[str, str]], served: dict[str, list[str]] | None = None,
    source: dict[str, Any] | None = None,
) -> list[str]:
    """Execute a run of `eval_id` on each model of `answers` to the end, as the gateway's executor does (`served`:
    the version that answers each row, per model; `source`: other rows, or a file holding ROWS); the runs' ids."""
    from service.management.eval_runs import EvalRunner

    sources = {model: {**data_source(model), **({"source": source} if source else {})} for model in answers}
    runs = [registry.put_eval_run(EvalRunRecord(eval_id=eval_id, model=model, data_source=sources[model],
                                                rows=len(ROWS))) for model in answers]

    def rows(project: str, run: EvalRunRecord) -> list[dict[str, Any]]:
        return run.data_source["source"].get("content", ROWS)  # type: ignore[no-any-return]

    async def execute() -> None:
        runner = EvalRunner(registry, scripted_serving(answers, served), rows)
        for run in runs:
            runner.submit(eval_id, run.id)
        for run in runs:
            await runner.wait(run.id)

    asyncio.run(execute())
    return [run.id for run in runs]


def point(client: TestClient, name: str, **body: Any) -> httpx.Response:
    return client.post(f"/adapters/{name}/aliases", json={"alias": "prod", **body})


@pytest.fixture
def gated(app: tuple[TestClient, Registry], peft_adapter_dir: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """An adapter with three versions and an eval; v1 passes it, v2 misses a row, v3 was never run."""
    _, registry = app
    name = request.node.name.removeprefix("test_")[:40].replace("_", "-")
    v1, v2, v3 = (publish_adapter(registry, peft_adapter_dir, name).version for _ in range(3))
    evaluation = registry.put_eval(EvalRecord(name="capitals", item_schema=ITEM_SCHEMA, testing_criteria=CRITERIA))
    run_eval(registry, evaluation.id, {f"{name}@{v1}": RIGHT, f"{name}@{v2}": ONE_WRONG, f"{name}@prod": RIGHT})
    return {"name": name, "v1": v1, "v2": v2, "v3": v3, "gate": {"eval_id": evaluation.id}}


def error(reply: httpx.Response) -> dict[str, Any]:
    return reply.json()["error"]  # type: ignore[no-any-return]


def test_a_gated_alias_moves_only_to_a_version_that_passed_its_eval(
    app: tuple[TestClient, Registry], gated: dict[str, Any]
) -> None:
    client, _ = app
    name, v1, v2, v3, gate = gated["name"], gated["v1"], gated["v2"], gated["v3"], gated["gate"]
    refused = point(client, name, version=v2, gate=gate)
    assert refused.status_code == 409, refused.text
    assert error(refused)["code"] == "eval_gate_failed" and error(refused)["param"] == "version"
    assert "criterion 'names the capital' passed 75% of 4 rows" in error(refused)["message"]
    assert "below the gate's minimum 100%" in error(refused)["message"]
    assert "prod" not in client.get(f"/adapters/{name}/aliases").json()["aliases"]  # nothing written, gate neither

    moved = point(client, name, version=v1, gate=gate)
    assert moved.status_code == 200, moved.text
    assert moved.json()["aliases"]["prod"]["version"] == v1 and moved.json()["gates"]["prod"]["eval_id"]

    # The gate stays with the alias: a later move that leaves it out is still gated
    refused = point(client, name, version=v2)
    assert error(refused)["code"] == "eval_gate_failed"
    # A version never run (a run on name@prod served v1: it does not count for v3) is told what to run
    required = point(client, name, version=v3)
    assert required.status_code == 409 and error(required)["code"] == "eval_required"
    assert gate["eval_id"] in error(required)["message"] and f"'{name}@{v3}'" in error(required)["message"]
    assert client.get(f"/adapters/{name}/aliases").json()["aliases"]["prod"]["version"] == v1

    # A lower bar for the criterion v2 misses lets it through; rolling back to v1 is checked the same way and passes
    lowered = point(client, name, version=v2, gate={**gate, "criteria": {"names the capital": 0.75,
                                                                         "close to the capital": 0.75}})
    assert lowered.status_code == 200, lowered.text
    assert point(client, name, version=v1).status_code == 200
    # Removing the gate lets any version through
    assert point(client, name, version=v3, gate=None).status_code == 200
    assert "prod" not in client.get(f"/adapters/{name}/aliases").json()["gates"]


def test_a_run_sent_to_an_alias_counts_for_the_version_that_answered_every_row(
    app: tuple[TestClient, Registry], gated: dict[str, Any]
) -> None:
    client, registry = app
    name, v1, v3, gate = gated["name"], gated["v1"], gated["v3"], gated["gate"]
    assert point(client, name, version=v1, gate=gate).status_code == 200
    # prod moved from v1 to v3 after two rows: a run that measured two versions speaks for neither
    (moved,) = run_eval(registry, gate["eval_id"], {f"{name}@prod": RIGHT},
                        {f"{name}@prod": [f"{name}@{v1}"] * 2 + [f"{name}@{v3}"] * 2})
    refused = point(client, name, version=v3)
    assert refused.status_code == 409 and error(refused)["code"] == "eval_required", refused.text
    run = client.get(f"/v1/evals/{gate['eval_id']}/runs/{moved}").json()
    assert run["status"] == "completed" and run["served_by"] is None, run
    items = client.get(f"/v1/evals/{gate['eval_id']}/runs/{moved}/output_items").json()["data"]
    assert [i["sample"]["served_by"] for i in items] == [f"{name}@{v1}"] * 2 + [f"{name}@{v3}"] * 2

    # A run sent to the canary alias, every row answered by v3: it is v3's run
    (canary,) = run_eval(registry, gate["eval_id"], {f"{name}@canary": RIGHT}, {f"{name}@canary": [f"{name}@{v3}"] * 4})
    assert client.get(f"/v1/evals/{gate['eval_id']}/runs/{canary}").json()["served_by"] == f"{name}@{v3}"
    moved_to_v3 = point(client, name, version=v3)
    assert moved_to_v3.status_code == 200, moved_to_v3.text


def test_a_canary_on_a_gated_alias_gains_weight_only_for_a_version_that_passed(
    app: tuple[TestClient, Registry], gated: dict[str, Any]
) -> None:
    client, _ = app
    name, v1, v2, gate = gated["name"], gated["v1"], gated["v2"], gated["gate"]
    assert point(client, name, version=v1, gate=gate).status_code == 200
    refused = point(client, name, version=v1, canary=v2, canary_weight=0.1)
    assert refused.status_code == 409 and error(refused)["param"] == "canary", refused.text
    # Put there before the gate (an ungated alias moves freely), its weight may go down but not up
    assert point(client, name, version=v1, gate=None).status_code == 200
    assert point(client, name, version=v1, canary=v2, canary_weight=0.3).status_code == 200
    assert point(client, name, version=v1, canary=v2, canary_weight=0.3, gate=gate).status_code == 200  # no move
    assert point(client, name, version=v1, canary=v2, canary_weight=0.1).status_code == 200
    assert error(point(client, name, version=v1, canary=v2, canary_weight=0.2))["code"] == "eval_gate_failed"


def test_a_gate_that_fixes_its_rows_refuses_a_run_on_other_rows_or_fewer(
    app: tuple[TestClient, Registry], gated: dict[str, Any]
) -> None:
    client, registry = app
    name, v1, v3, gate = gated["name"], gated["v1"], gated["v3"], gated["gate"]
    lines = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    uploaded = client.post("/v1/files", files={"file": ("capitals.jsonl", lines)}, data={"purpose": "evals"})
    assert uploaded.status_code == 200, uploaded.text
    on_file = {**gate, "file_id": uploaded.json()["id"]}
    # v1 passed every criterion, but on rows given inline: not the gate's file
    refused = point(client, name, version=v1, gate=on_file)
    assert refused.status_code == 409 and error(refused)["code"] == "eval_gate_failed", refused.text
    assert f"took its rows from file_content rows, not from file {on_file['file_id']}" in error(refused)["message"]
    run_eval(registry, gate["eval_id"], {f"{name}@{v1}": RIGHT}, source={"type": "file_id", "id": on_file["file_id"]})
    assert point(client, name, version=v1, gate=on_file).status_code == 200

    # v3 answered two rows right: enough for the plain gate, not for one that asks for four rows
    run_eval(registry, gate["eval_id"], {f"{name}@{v3}": RIGHT}, source={"type": "file_content", "content": ROWS[:2]})
    refused = point(client, name, version=v3, gate={**gate, "min_rows": 4})
    assert refused.status_code == 409 and error(refused)["code"] == "eval_gate_failed", refused.text
    assert "graded 2 rows; the gate requires at least 4" in error(refused)["message"]
    assert point(client, name, version=v3, gate=gate).status_code == 200


def test_a_gate_is_refused_naming_the_field_when_it_could_never_be_passed(
    app: tuple[TestClient, Registry], gated: dict[str, Any]
) -> None:
    client, _ = app
    name, v1, gate = gated["name"], gated["v1"], gated["gate"]
    unknown = point(client, name, version=v1, gate={"eval_id": "eval_" + "0" * 32})
    assert unknown.status_code == 404 and error(unknown)["param"] == "gate.eval_id", unknown.text
    typo = point(client, name, version=v1, gate={**gate, "criteria": {"names the captial": 0.5}})
    assert typo.status_code == 400 and error(typo)["param"] == "gate.criteria.names the captial", typo.text
    latest = client.post(f"/adapters/{name}/aliases", json={"alias": "latest", "version": v1, "gate": gate})
    assert latest.status_code == 400 and error(latest)["param"] == "gate", latest.text
    bad_rate = point(client, name, version=v1, gate={**gate, "min_pass_rate": 1.5})
    assert bad_rate.status_code == 400, bad_rate.text


# ------------------------------------------------------------------------------------ the real gateway


@pytest.fixture(scope="module")
def base_like_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter whose B matrices are zero (peft's default init): it answers exactly as the base model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters.models import DEFAULT_MODEL, resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL), dtype=torch.float32)
    out = tmp_path_factory.mktemp("base-like-adapter")
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def garbling_adapter_dir(peft_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's random adapter with its B matrices scaled 30-fold: it no longer answers in words."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("garbling-adapter")
    shutil.copytree(peft_adapter_dir, out, dirs_exist_ok=True)
    weights = load_file(out / "adapter_model.safetensors")
    save_file({k: v * 30 if "lora_B" in k else v for k, v in weights.items()}, out / "adapter_model.safetensors")
    return out


def answered_by(live: openai.OpenAI, model: str) -> str:
    raw = live.chat.completions.with_raw_response.create(
        model=model, max_tokens=1, temperature=0, messages=[{"role": "user", "content": "Hi"}]
    )
    raw.parse()
    return raw.headers["x-skillserve-model-version"]


@pytest.mark.slow
def test_a_version_that_fails_the_eval_never_becomes_prod_and_one_that_passes_does(
    gateway: GatewayServer, garbling_adapter_dir: Path, base_like_adapter_dir: Path
) -> None:
    live = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)
    good = publish_adapter(gateway.registry, base_like_adapter_dir, "promoted").version
    noisy = publish_adapter(gateway.registry, garbling_adapter_dir, "promoted").version
    evaluation = new_eval(live, NAMES_THE_CAPITAL, name="capitals gate")
    gate = {"eval_id": evaluation.id}

    def promote(version: str, **body: Any) -> httpx.Response:
        with gateway.client() as http:
            return http.post("/adapters/promoted/aliases", json={"alias": "prod", "version": version, **body})

    required = promote(noisy, gate=gate)
    assert required.status_code == 409 and error(required)["code"] == "eval_required", required.text
    assert f"'promoted@{noisy}'" in error(required)["message"]

    # The good version is run through an alias (ungated) that serves it: the run records the version that answered
    with gateway.client() as http:
        assert http.post("/adapters/promoted/aliases", json={"alias": "candidate", "version": good}).status_code == 200
    sent_to = {noisy: f"promoted@{noisy}", good: "promoted@candidate"}
    started = time.monotonic()
    runs = {version: live.evals.runs.create(
        evaluation.id, data_source=live_data_source(sent_to[version], ROWS_THE_BASE_KNOWS)  # type: ignore[arg-type]
    ) for version in (noisy, good)}
    finished = {version: poll(live, evaluation.id, run.id) for version, run in runs.items()}
    print(f"two runs of {len(ROWS_THE_BASE_KNOWS)} rows: {time.monotonic() - started:.0f} s")
    for version, run in finished.items():
        items = live.evals.runs.output_items.list(run.id, eval_id=evaluation.id)
        print(version, run.status, [(i.sample.output[0].content if i.sample.output else None) for i in items])
    assert finished[good].result_counts.passed == len(ROWS_THE_BASE_KNOWS), finished[good]
    assert (finished[good].model_extra or {})["served_by"] == f"promoted@{good}"
    good_items = live.evals.runs.output_items.list(runs[good].id, eval_id=evaluation.id)
    assert {(i.sample.model_extra or {})["served_by"] for i in good_items} == {f"promoted@{good}"}
    assert finished[noisy].result_counts.passed < len(ROWS_THE_BASE_KNOWS), finished[noisy]

    refused = promote(noisy, gate=gate)
    assert refused.status_code == 409 and error(refused)["code"] == "eval_gate_failed", refused.text
    assert "criterion 'names the capital' passed" in error(refused)["message"]
    with pytest.raises(openai.NotFoundError):  # never became prod
        answered_by(live, "promoted@prod")

    assert promote(good, gate=gate).status_code == 200
    assert answered_by(live, "promoted@prod") == f"promoted@{good}"
    assert error(promote(noisy))["code"] == "eval_gate_failed"  # the gate stayed
    assert answered_by(live, "promoted@prod") == f"promoted@{good}"
