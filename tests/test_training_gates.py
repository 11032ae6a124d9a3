"""Training gates: a job that names an eval publishes only if its new version passes it; the trainer's run of the
eval is recorded as a completed run on `name@<version>`, and satisfies an alias's gate later.

The fast tests drive trainer/gate.py on a real file store with answers given, and submit gated jobs through
POST /v1/fine_tuning/jobs to a management gateway whose runner is stopped (the jobs stay queued); the slow ones train
the shout skill through POST /adapters with the real trainer and engine, and check the refusals at submit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from adapters.gates import check_version, criterion_names
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import EvalGate, EvalRecord, EvalRunStatus, TrainingEvalGate
from adapters.store import FileStore
from client.cli import main
from service.app import create_app
from tests.gateway_fixtures import ADMIN_KEY, GatewayServer, management_settings
from tests.shout import SHOUT_TRAINING, shout_rows
from tests.test_fine_tuning_api import chat_rows, jsonl, sdk
from tests.test_gateway_training import follow

ITEM_SCHEMA = {
    "type": "object",
    "properties": {"words": {"type": "string"}, "first": {"type": "string"}},
    "required": ["words", "first"],
}
# "says the password" first: no answer holds it, so a gate that asks for it fails naming it, whatever the model
# learned; "shouts" passes on the first held-out word shouted.
CRITERIA: list[dict[str, Any]] = [
    {"type": "string_check", "name": "says the password", "operation": "like", "input": "{{sample.output_text}}",
     "reference": "xyzzy-7341"},
    {"type": "string_check", "name": "shouts", "operation": "like", "input": "{{sample.output_text}}",
     "reference": "{{item.first}}"},
]
ROWS = [{"item": {"words": "sun dog", "first": "SUN"}}, {"item": {"words": "blue book", "first": "BLUE"}}]
PROMPT = {"type": "template", "template": [{"role": "user", "content": "Shout these words: {{item.words}}"}]}
LENIENT = {"shouts": 0.5, "says the password": 0.0}
ANY = {"shouts": 0.0, "says the password": 0.0}  # any answer passes: the slow test's jobs train 2 steps, not a skill
TWO_STEPS = {**SHOUT_TRAINING, "max_steps": 2, "eval_samples": 0}


def training_gate(eval_id: str, **fields: Any) -> dict[str, Any]:
    return {"eval_id": eval_id, "input_messages": PROMPT, "source": {"type": "file_content", "content": ROWS},
            "max_completion_tokens": 16, **fields}


def test_the_trainers_gate_run_is_recorded_and_speaks_for_the_version_at_an_alias_gate(tmp_path: Path) -> None:
    from trainer.gate import run_gate

    registry = Registry(FileStore(tmp_path))
    evaluation = registry.put_eval(EvalRecord(name="shouting", item_schema=ITEM_SCHEMA, testing_criteria=CRITERIA))
    asked: list[list[dict[str, str]]] = []

    def answer(prompts: list[list[dict[str, str]]]) -> list[str]:
        asked.extend(prompts)
        return ["SUN DOG!", "blue book"]

    strict = TrainingEvalGate.model_validate(training_gate(evaluation.id))
    run, verdict = run_gate(registry, strict, "shout@v1", "job1", answer)
    assert asked[0] == [{"role": "user", "content": "Shout these words: sun dog"}]  # the template, filled
    assert not verdict.passed and "criterion 'says the password' passed 0% of 2 rows" in verdict.reason
    stored = registry.list_eval_runs(evaluation.id)
    assert [r.id for r in stored] == [run.id] and stored[0].status is EvalRunStatus.completed
    assert stored[0].model == "shout@v1" and stored[0].metadata["job_id"] == "job1"
    assert stored[0].per_criterion["shouts"].passed == 1 and stored[0].result_counts.total == 2
    items = registry.list_output_items(run.id)
    assert [i.status for i in items] == ["fail", "fail"]
    assert items[0].sample["output"] == [{"role": "assistant", "content": "SUN DOG!"}]

    lenient = TrainingEvalGate.model_validate(training_gate(evaluation.id, criteria=LENIENT))
    _, verdict = run_gate(registry, lenient, "shout@v2", "job2", answer)
    assert verdict.passed, verdict.reason
    # The run the trainer wrote is what an alias gate reads
    names = criterion_names(evaluation.testing_criteria)
    alias_gate = EvalGate(eval_id=evaluation.id, criteria=LENIENT)
    assert check_version(alias_gate, "prod", "shout@v2", registry.list_eval_runs(evaluation.id), names).passed


def test_a_fine_tuning_job_carries_its_eval_gate_and_a_gate_it_could_never_run_is_refused_at_submit(
    tmp_path: Path,
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with TestClient(create_app(management_settings(tmp_path)), headers=admin) as http:
        gateway = http.app.state.gateway  # type: ignore[attr-defined]
        gateway.runner.stop()  # jobs stay queued: this test is about what is submitted, not training
        client = sdk(http)
        eval_id = new_eval(http)
        training = client.files.create(file=("chat.jsonl", jsonl(chat_rows(8, seed=3))), purpose="fine-tune")
        gate_file = client.files.create(file=("gate.jsonl", jsonl(ROWS)), purpose="evals")  # type: ignore[arg-type]

        def create(gate: dict[str, Any]) -> Any:
            return client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=training.id,
                                                  extra_body={"eval_gate": gate})

        cases: dict[str, tuple[dict[str, Any], type[openai.APIStatusError]]] = {
            "eval_gate.eval_id": (training_gate("eval_" + "0" * 32), openai.NotFoundError),
            "eval_gate.criteria.shout": (training_gate(eval_id, criteria={"shout": 0.5}), openai.BadRequestError),
            "eval_gate.source.content[1].item.first": (training_gate(eval_id, source={
                "type": "file_content", "content": [ROWS[0], {"item": {"words": "sun"}}]}), openai.BadRequestError),
            "eval_gate.source.id": (training_gate(eval_id, source={"type": "file_id", "id": training.id}),
                                    openai.BadRequestError),  # a file, but not of purpose evals
            "eval_gate.file_id": (training_gate(eval_id, file_id=gate_file.id), openai.BadRequestError),
            "eval_gate.min_rows": (training_gate(eval_id, min_rows=3), openai.BadRequestError),
        }
        for param, (gate, refusal) in cases.items():
            with pytest.raises(refusal) as refused:
                create(gate)
            assert refused.value.body["param"] == param, refused.value.body  # type: ignore[index]
        assert http.get("/jobs").json()["data"] == []  # nothing stored for a refused gate

        gate = training_gate(eval_id, criteria=LENIENT, source={"type": "file_id", "id": gate_file.id},
                             file_id=gate_file.id, min_rows=2)
        job = create(gate)
        assert job.status in ("validating_files", "queued"), job
        record = gateway.registry.get_job(job.id.removeprefix("ftjob-"))
        assert record.spec.eval_gate == TrainingEvalGate.model_validate(gate)  # what the trainer will run


# ------------------------------------------------------------------------------------ the real trainer


def new_eval(http: httpx.Client, criteria: list[dict[str, Any]] = CRITERIA) -> str:
    created = http.post("/v1/evals", json={
        "name": "shouting", "testing_criteria": criteria,
        "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
    })
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def submit(http: httpx.Client, name: str, gate: dict[str, Any]) -> httpx.Response:
    return http.post("/adapters", json={"name": name, "rows": shout_rows(), "hyperparameters": TWO_STEPS,
                                        "eval_gate": gate})


@pytest.mark.slow
def test_a_training_gate_is_refused_at_submit_naming_the_field(
    gateway: GatewayServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with gateway.client(ADMIN_KEY) as http:
        eval_id = new_eval(http)
        judged = new_eval(http, [{"type": "score_model", "name": "judge", "model": "SmolLM2-135M-Instruct",
                                  "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}]}])
        cases = {
            "eval_gate.eval_id": (training_gate("eval_" + "0" * 32), 404),
            "eval_gate.criteria.shout": (training_gate(eval_id, criteria={"shout": 0.5}), 400),
            "eval_gate.source.content[1].item.first": (training_gate(eval_id, source={
                "type": "file_content", "content": [ROWS[0], {"item": {"words": "sun"}}]}), 400),
            "eval_gate.input_messages.template[0].content": (training_gate(eval_id, input_messages={
                "type": "template", "template": [{"role": "user", "content": "{{sample.output_text}}"}]}), 400),
        }
        for param, (gate, status) in cases.items():
            refused = submit(http, "gate-refused", gate)
            assert refused.status_code == status and refused.json()["error"]["param"] == param, refused.text
        model_graded = submit(http, "gate-refused", training_gate(judged))
        assert model_graded.status_code == 400, model_graded.text
        assert "judged by a model" in model_graded.json()["error"]["message"]
        # From the CLI: the gate's rows go up as a file of purpose evals, the gate in the multipart form
        (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in shout_rows()))
        (tmp_path / "gate.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
        (tmp_path / "messages.json").write_text(json.dumps(PROMPT["template"]))
        code = main(["--url", gateway.url, "--key", ADMIN_KEY, "train", str(tmp_path / "train.jsonl"),
                     "--name", "gate-refused", "--eval-gate", eval_id, "--gate-rows", str(tmp_path / "gate.jsonl"),
                     "--gate-template", str(tmp_path / "messages.json"), "--gate-criterion", "shout=0.5"])
        assert code == 1 and "eval_gate.criteria.shout: eval" in capsys.readouterr().err
        assert not any(job["name"] == "gate-refused" for job in http.get("/jobs").json()["data"])


@pytest.mark.slow
def test_a_job_publishes_only_if_its_new_version_passes_the_gate_and_its_run_promotes_it(
    gateway: GatewayServer,
) -> None:
    with gateway.client(ADMIN_KEY) as http:
        eval_id = new_eval(http)
        failing = submit(http, "shout-gated", training_gate(eval_id))
        assert failing.status_code == 202, failing.text
        failed = follow(gateway, failing.json()["id"])
        assert failed["status"] == "failed", failed
        assert "EvalGateFailed" in failed["error"]
        assert "criterion 'says the password' passed 0% of 2 rows" in failed["error"]
        assert http.get("/adapters/shout-gated").json()["versions"] == []  # never published
        refused_version = failed["version"]

        passing = submit(http, "shout-gated", training_gate(eval_id, criteria=ANY))
        assert passing.status_code == 202, passing.text
        done = follow(gateway, passing.json()["id"])
        assert done["status"] == "succeeded", done.get("error")
        published = http.get("/adapters/shout-gated").json()["latest"]
        runs = {run["model"]: run for run in http.get(f"/v1/evals/{eval_id}/runs").json()["data"]}
        assert runs[f"shout-gated@{published}"]["status"] == "completed"
        assert runs[f"shout-gated@{refused_version}"]["status"] == "completed"  # the failed job's run, kept
        # The trainer's run satisfies an alias gate on the same eval: prod moves without another run
        moved = http.post("/adapters/shout-gated/aliases", json={
            "alias": "prod", "version": published, "gate": {"eval_id": eval_id, "criteria": ANY}})
        assert moved.status_code == 200, moved.text
        print(json.dumps({m: r["per_testing_criteria_results"] for m, r in runs.items()}))
