"""OpenAI's Evals API and grader endpoints, driven by the official openai SDK.

Fast tests run the gateway in-process without the engine (management mode) on a real file store: evals CRUD,
requests refused with the field named, the standalone graders, and a run's executor resuming after a restart
(its model answering through a stand-in for the serving path). The slow ones run evals on the session's real
gateway (real vLLM, real model): the base model, an adapter, a judge, an unknown model.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import EvalOutputItem, EvalRecord, EvalRunRecord, EvalRunStatus, TokenUsage, output_item_id
from adapters.store import FileStore
from service.app import create_app
from service.management.eval_runs import EvalRunner, Sampled
from tests.gateway_fixtures import (
    ADMIN_KEY,
    API_KEY,
    GatewayServer,
    in_process_sdk,
    management_settings,
    publish_adapter,
)

CAPITALS = [
    {"item": {"country": "France", "capital": "Paris"}},
    {"item": {"country": "Japan", "capital": "Tokyo"}},
    {"item": {"country": "Italy", "capital": "Rome"}},
]
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
    "required": ["country", "capital"],
}
NAMES_THE_CAPITAL = {
    "type": "string_check", "name": "names the capital", "operation": "ilike",
    "input": "{{sample.output_text}}", "reference": "{{item.capital}}",
}
TEMPLATE = [
    {"role": "system", "content": "Answer with the city's name only."},
    {"role": "user", "content": "What is the capital of {{item.country}}?"},
]


def data_source(model: str, rows: list[dict[str, Any]] = CAPITALS, **sampling: Any) -> dict[str, Any]:
    return {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "template", "template": TEMPLATE},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 16, **sampling},
        "source": {"type": "file_content", "content": rows},
    }


def new_eval(client: openai.OpenAI, *criteria: dict[str, Any], name: str = "capitals") -> Any:
    return client.evals.create(
        name=name,
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=list(criteria or [NAMES_THE_CAPITAL]),  # type: ignore[arg-type]
    )


# ------------------------------------------------------------------------------------ in-process, no engine


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(management_settings(tmp_path_factory.mktemp("evals")))) as client:
        yield client


@pytest.fixture(scope="module")
def admin(app: TestClient) -> openai.OpenAI:
    return in_process_sdk(app, ADMIN_KEY)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def reader(app: TestClient) -> openai.OpenAI:
    return in_process_sdk(app, API_KEY)  # type: ignore[no-any-return]


def refusal(call: Any) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    return caught.value.body  # type: ignore[return-value]


def test_an_eval_is_created_listed_retrieved_renamed_and_deleted_through_the_sdk(
    admin: openai.OpenAI, reader: openai.OpenAI
) -> None:
    created = admin.evals.create(
        name="capitals",
        metadata={"team": "geo"},
        data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA, "include_sample_schema": True},
        testing_criteria=[NAMES_THE_CAPITAL],  # type: ignore[list-item]
    )
    assert created.id.startswith("eval_") and created.object == "eval"
    # OpenAI's response schema: the item schema under `item`, and `sample` when runs generate one
    schema = created.data_source_config.schema_
    assert schema["properties"]["item"] == ITEM_SCHEMA and schema["required"] == ["item", "sample"]
    assert created.testing_criteria[0].name == "names the capital"
    other = new_eval(admin, name="second")

    assert reader.evals.retrieve(created.id).name == "capitals"
    listed = [e.id for e in reader.evals.list(order="asc", limit=100)]
    assert listed.index(created.id) < listed.index(other.id)
    first_page = reader.evals.list(order="desc", limit=1)
    assert [e.id for e in first_page.data] == [other.id] and first_page.has_more
    assert [e.id for e in reader.evals.list(order="desc", limit=1, after=other.id).data] == [created.id]

    renamed = admin.evals.update(created.id, name="world capitals", metadata={"team": "maps"})
    assert (renamed.name, renamed.metadata) == ("world capitals", {"team": "maps"})
    assert reader.evals.retrieve(created.id).name == "world capitals"

    deleted = admin.evals.delete(created.id)
    assert (deleted.deleted, deleted.eval_id) == (True, created.id)
    with pytest.raises(openai.NotFoundError):
        reader.evals.retrieve(created.id)
    with pytest.raises(openai.PermissionDeniedError):  # writing takes an admin key
        reader.evals.delete(other.id)


@pytest.mark.parametrize(
    ("criterion", "param", "says"),
    [
        ({**NAMES_THE_CAPITAL, "operation": "contains"}, "testing_criteria[0].operation", "eq"),
        ({**NAMES_THE_CAPITAL, "reference": "{{item}}"}, "testing_criteria[0].reference", "not a reference"),
        ({"type": "python", "name": "py", "source": "def grade(s, i): return 1"}, "testing_criteria[0].type",
         "not offered"),
        ({"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}", "reference": "x",
          "evaluation_metric": "cosine", "pass_threshold": 0.5}, "testing_criteria[0].evaluation_metric",
         "embeddings model"),
        ({"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}", "reference": "x",
          "evaluation_metric": "rouge_l"}, "testing_criteria[0].pass_threshold", "needs a pass_threshold"),
        ({"type": "nonsense", "name": "x"}, "testing_criteria[0].type", "must be one of"),
    ],
)
def test_a_bad_criterion_is_a_400_naming_its_field(
    admin: openai.OpenAI, criterion: dict[str, Any], param: str, says: str
) -> None:
    body = refusal(lambda: new_eval(admin, criterion))
    assert body["param"] == param and says in body["message"]


def test_two_criteria_of_one_name_are_refused_naming_the_second(admin: openai.OpenAI) -> None:
    body = refusal(lambda: new_eval(admin, NAMES_THE_CAPITAL, NAMES_THE_CAPITAL))
    assert body["param"] == "testing_criteria[1].name"


@pytest.mark.parametrize(
    ("item_schema", "param"),
    [
        ({"type": "string"}, "data_source_config.item_schema.type"),
        ({"type": "object", "properties": []}, "data_source_config.item_schema.properties"),
        ({"properties": {"a": {"type": {"not": "a type"}}}}, "data_source_config.item_schema.properties.a.type"),
        ({"required": "country"}, "data_source_config.item_schema.required"),
    ],
)
def test_an_item_schema_of_the_wrong_shape_is_a_400_naming_the_keyword(
    admin: openai.OpenAI, item_schema: dict[str, Any], param: str
) -> None:
    body = refusal(lambda: admin.evals.create(
        data_source_config={"type": "custom", "item_schema": item_schema},
        testing_criteria=[NAMES_THE_CAPITAL]))  # type: ignore[list-item]
    assert body["param"] == param


def test_a_data_source_this_gateway_cannot_draw_rows_from_is_refused_saying_why(admin: openai.OpenAI) -> None:
    body = refusal(lambda: admin.evals.create(
        data_source_config={"type": "logs"}, testing_criteria=[NAMES_THE_CAPITAL]))  # type: ignore[list-item]
    assert body["param"] == "data_source_config.type" and "not offered" in body["message"]


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        # A row that breaks the eval's item_schema, named down to its field
        ({"source": {"type": "file_content", "content": [*CAPITALS, {"item": {"country": "Peru"}}]}},
         "data_source.source.content[3].item.capital", "required"),
        ({"source": {"type": "file_content", "content": [{"item": {"country": 5, "capital": "x"}}]}},
         "data_source.source.content[0].item.country", "must be string"),
        # A prompt template naming what a row cannot hold
        ({"input_messages": {"type": "template", "template": [{"role": "user", "content": "{{itme.country}}"}]}},
         "data_source.input_messages.template[0].content", "not a reference"),
        ({"input_messages": {"type": "template",
                             "template": [{"role": "user", "content": "{{sample.output_text}}"}]}},
         "data_source.input_messages.template[0].content", "before there is a sample"),
        ({"sampling_params": {"temperature": 5}}, "data_source.sampling_params.temperature", "less than or equal"),
        ({"model": None}, "data_source.model", "name the model"),
        ({"type": "responses"}, "data_source.type", "not offered"),
        ({"source": {"type": "file_id", "id": "file-" + "0" * 32}}, "data_source.source.id", "does not exist"),
    ],
)
def test_a_bad_run_is_a_400_naming_its_field(
    admin: openai.OpenAI, change: dict[str, Any], param: str, says: str
) -> None:
    evaluation = new_eval(admin)
    source = {key: value for key, value in {**data_source(DEFAULT_MODEL), **change}.items() if value is not None}
    body = refusal(lambda: admin.evals.runs.create(evaluation.id, data_source=source))  # type: ignore[arg-type]
    assert body["param"] == param and says in body["message"], body


def test_a_run_where_no_engine_serves_fails_with_the_reason_not_a_500(admin: openai.OpenAI, app: TestClient) -> None:
    evaluation = new_eval(admin)
    run = admin.evals.runs.create(evaluation.id, data_source=data_source(DEFAULT_MODEL))  # type: ignore[arg-type]
    assert run.status == "queued" and run.model == DEFAULT_MODEL
    finished = poll(admin, evaluation.id, run.id)
    assert finished.status == "failed"
    assert finished.error.code == "no_engine" and "load_engine" in finished.error.message


def test_eval_rows_uploaded_as_a_file_are_a_runs_source(admin: openai.OpenAI) -> None:
    lines = "\n".join(json.dumps(row) for row in CAPITALS).encode()
    uploaded = admin.files.create(file=("capitals.jsonl", io.BytesIO(lines)), purpose="evals")
    assert uploaded.purpose == "evals"
    evaluation = new_eval(admin)
    source = {**data_source(DEFAULT_MODEL), "source": {"type": "file_id", "id": uploaded.id}}
    run = admin.evals.runs.create(evaluation.id, data_source=source)  # type: ignore[arg-type]
    assert run.data_source.source.id == uploaded.id  # type: ignore[union-attr]
    # A file of training rows is not a file of eval rows, and the other way round
    with pytest.raises(openai.BadRequestError) as caught:
        admin.files.create(file=("bad.jsonl", io.BytesIO(b'{"country": "France"}\n')), purpose="evals")
    assert caught.value.body["param"] == "file" and "line 1" in caught.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        admin.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=uploaded.id)


def test_graders_are_validated_and_run_through_the_sdk(reader: openai.OpenAI) -> None:
    checked = reader.fine_tuning.alpha.graders.validate(grader=NAMES_THE_CAPITAL)  # type: ignore[arg-type]
    assert checked.grader is not None and checked.grader.name == "names the capital"
    body = refusal(lambda: reader.fine_tuning.alpha.graders.validate(
        grader={**NAMES_THE_CAPITAL, "operation": "contains"}))  # type: ignore[arg-type]
    assert body["param"] == "grader.operation"

    ran = reader.fine_tuning.alpha.graders.run(
        grader=NAMES_THE_CAPITAL, model_sample="It is PARIS.", item={"capital": "Paris"}  # type: ignore[arg-type]
    )
    assert ran.reward == 1.0 and not ran.metadata.errors.invalid_variable_error
    missing = reader.fine_tuning.alpha.graders.run(
        grader=NAMES_THE_CAPITAL, model_sample="Paris", item={"city": "Paris"}  # type: ignore[arg-type]
    )
    assert missing.reward == 0.0 and missing.metadata.errors.invalid_variable_error
    multi = reader.fine_tuning.alpha.graders.run(
        grader={"type": "multi", "name": "both", "calculate_output": "(exact + sim) / 2",  # type: ignore[arg-type]
                "graders": {"exact": {**NAMES_THE_CAPITAL, "operation": "eq"},
                            "sim": {"type": "text_similarity", "name": "sim", "input": "{{sample.output_text}}",
                                    "reference": "{{item.capital}}", "evaluation_metric": "fuzzy_match"}}},
        model_sample="Paris!", item={"capital": "Paris"},
    )
    assert multi.sub_rewards == {"exact": 0.0, "sim": pytest.approx(10 / 11)}
    assert multi.reward == pytest.approx(5 / 11)


# ------------------------------------------------------------------------------------ restart: a run resumes


def capital_answers(calls: list[str]) -> Any:
    """A stand-in for the serving path that answers each question right, recording which it was asked."""
    async def sample(project: str, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> Sampled:
        question = messages[-1]["content"]
        calls.append(question)
        capital = next(r["item"]["capital"] for r in CAPITALS if r["item"]["country"] in question)
        return Sampled(capital, TokenUsage(invocation_count=1, prompt_tokens=10, completion_tokens=2,
                                           total_tokens=12), "stop")

    return sample


def test_a_run_left_in_progress_resumes_after_a_restart_without_redoing_its_rows(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    evaluation = registry.put_eval(EvalRecord(name="capitals", item_schema=ITEM_SCHEMA,
                                              testing_criteria=[NAMES_THE_CAPITAL]))
    rows = CAPITALS + [{"item": {"country": "France", "capital": "Lyon"}}]  # the last row fails its criterion
    run = EvalRunRecord(eval_id=evaluation.id, model=DEFAULT_MODEL, data_source=data_source(DEFAULT_MODEL, rows),
                        rows=len(rows), status=EvalRunStatus.in_progress)
    registry.put_eval_run(run)
    # What the gateway that stopped had done: row 0 graded and written, but the run's counts never updated
    registry.put_output_item(EvalOutputItem(
        id=output_item_id(run.id, 0), run_id=run.id, eval_id=evaluation.id, index=0, status="pass",
        item=rows[0]["item"], results=[{"name": "names the capital", "type": "string_check", "score": 1.0,
                                        "passed": True, "errors": []}],
        usage={DEFAULT_MODEL: TokenUsage(invocation_count=1, prompt_tokens=10, completion_tokens=2, total_tokens=12)},
    ))

    calls: list[str] = []

    async def restart() -> list[str]:
        runner = EvalRunner(registry, capital_answers(calls), lambda _, r: r.data_source["source"]["content"])
        resumed = await runner.resume()
        for run_id in resumed:
            await runner.wait(run_id)
        return resumed

    assert asyncio.run(restart()) == [run.id]
    assert [question.split()[-1] for question in calls] == ["Japan?", "Italy?", "France?"]  # not row 0 again
    items = registry.list_output_items(run.id)
    assert [item.index for item in items] == [0, 1, 2, 3]
    assert [item.status for item in items] == ["pass", "pass", "pass", "fail"]
    finished = registry.get_eval_run(evaluation.id, run.id)
    assert finished.status is EvalRunStatus.completed
    assert finished.result_counts.model_dump() == {"total": 4, "passed": 3, "failed": 1, "errored": 0}
    assert finished.per_criterion["names the capital"].model_dump() == {"passed": 3, "failed": 1}
    assert finished.per_model_usage[DEFAULT_MODEL].invocation_count == 4

    # A second restart finds nothing left to do
    calls.clear()
    assert asyncio.run(restart()) == []
    assert calls == []


def test_two_executors_on_one_run_write_and_count_each_row_once(tmp_path: Path) -> None:
    """Two replicas resuming the same run: each row is written once and counted once."""
    registry = Registry(FileStore(tmp_path / "store"))
    evaluation = registry.put_eval(EvalRecord(item_schema=ITEM_SCHEMA, testing_criteria=[NAMES_THE_CAPITAL]))
    run = registry.put_eval_run(EvalRunRecord(eval_id=evaluation.id, model=DEFAULT_MODEL,
                                              data_source=data_source(DEFAULT_MODEL), rows=3))
    calls: list[str] = []

    async def both() -> None:
        runners = [EvalRunner(registry, capital_answers(calls), lambda _, r: r.data_source["source"]["content"])
                   for _ in range(2)]
        for runner in runners:
            await runner.resume()
        for runner in runners:
            await runner.wait(run.id)

    asyncio.run(both())
    assert [item.index for item in registry.list_output_items(run.id)] == [0, 1, 2]
    finished = registry.get_eval_run(evaluation.id, run.id)
    assert finished.status is EvalRunStatus.completed
    assert finished.result_counts.total == 3 and finished.result_counts.passed == 3


def test_a_canceled_run_stops_and_is_never_completed_after(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    evaluation = registry.put_eval(EvalRecord(item_schema=ITEM_SCHEMA, testing_criteria=[NAMES_THE_CAPITAL]))
    run = registry.put_eval_run(EvalRunRecord(eval_id=evaluation.id, model=DEFAULT_MODEL,
                                              data_source=data_source(DEFAULT_MODEL), rows=3))
    calls: list[str] = []
    answer = capital_answers(calls)

    async def cancel_after_the_first(
        project: str, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]
    ) -> Sampled:
        registry.update_eval_run(evaluation.id, run.id,
                                 lambda r: r.model_copy(update={"status": EvalRunStatus.canceled}))
        return await answer(project, model, messages, sampling)

    async def execute() -> None:
        runner = EvalRunner(registry, cancel_after_the_first, lambda _, r: r.data_source["source"]["content"])
        runner.submit(evaluation.id, run.id)
        await runner.wait(run.id)

    asyncio.run(execute())
    assert len(calls) == 1
    assert registry.get_eval_run(evaluation.id, run.id).status is EvalRunStatus.canceled


# ------------------------------------------------------------------------------------ the real gateway


def poll(client: openai.OpenAI, eval_id: str, run_id: str, timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def live(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)


@pytest.mark.slow
def test_the_sdks_evals_flow_runs_on_the_base_model_and_on_an_adapter(
    live: openai.OpenAI, gateway: GatewayServer, peft_adapter_dir: Path
) -> None:
    """OpenAI's guide, unchanged but for base_url: create an eval, run it on two models, poll, read the output
    items, compare pass rates."""
    publish_adapter(gateway.registry, peft_adapter_dir, "evalnoise")
    evaluation = new_eval(live, NAMES_THE_CAPITAL, {
        "type": "text_similarity", "name": "close to the capital", "evaluation_metric": "fuzzy_match",
        "input": "{{sample.output_text}}", "reference": "{{item.capital}}", "pass_threshold": 0.5,
    })
    runs = {model: live.evals.runs.create(evaluation.id, name=f"on {model}", data_source=data_source(model))
            for model in (DEFAULT_MODEL, "evalnoise")}  # type: ignore[arg-type]
    finished = {model: poll(live, evaluation.id, run.id) for model, run in runs.items()}

    base = finished[DEFAULT_MODEL]
    assert base.status == "completed", base.error
    assert base.result_counts.total == 3 and base.result_counts.errored == 0
    per_criterion = {r.testing_criteria: r for r in base.per_testing_criteria_results}
    assert set(per_criterion) == {"names the capital", "close to the capital"}
    assert per_criterion["names the capital"].passed >= 2  # the base model knows Paris, Tokyo and Rome
    # A row passes when every criterion does (a whole sentence is not close to a one-word capital)
    assert base.result_counts.passed <= min(r.passed for r in per_criterion.values())
    usage = {u.model_name: u for u in base.per_model_usage}
    assert usage[DEFAULT_MODEL].invocation_count == 3 and usage[DEFAULT_MODEL].completion_tokens > 0

    items = list(live.evals.runs.output_items.list(base.id, eval_id=evaluation.id))
    assert [item.datasource_item_id for item in items] == [0, 1, 2]
    first = items[0]
    assert first.datasource_item == CAPITALS[0]["item"]
    assert first.sample.input[-1].content == "What is the capital of France?"  # the template, filled
    assert "Paris" in first.sample.output[0].content and first.sample.usage.total_tokens > 0
    assert [r.name for r in first.results] == ["names the capital", "close to the capital"]
    assert live.evals.runs.output_items.retrieve(first.id, eval_id=evaluation.id, run_id=base.id).id == first.id

    noisy = finished["evalnoise"]
    assert noisy.status == "completed" and noisy.result_counts.total == 3
    # Pass rates side by side, per criterion: what a user compares (each run's rows graded the same way)
    rates = {model: {r.testing_criteria: r.passed / (r.passed + r.failed) for r in run.per_testing_criteria_results}
             for model, run in finished.items()}
    assert set(rates[DEFAULT_MODEL]) == set(rates["evalnoise"]) == {"names the capital", "close to the capital"}
    # The adapter's rows went through its own template: it was sampled, not the base under its name
    noisy_items = list(live.evals.runs.output_items.list(noisy.id, eval_id=evaluation.id))
    assert [i.sample.output[0].content for i in noisy_items] != [i.sample.output[0].content for i in items]

    listed = live.evals.runs.list(evaluation.id)
    assert {run.id for run in listed} == {run.id for run in finished.values()}
    assert live.evals.runs.delete(noisy.id, eval_id=evaluation.id).deleted
    with pytest.raises(openai.NotFoundError):
        live.evals.runs.retrieve(noisy.id, eval_id=evaluation.id)


@pytest.mark.slow
def test_a_run_on_a_model_this_gateway_does_not_serve_fails_with_the_reason(live: openai.OpenAI) -> None:
    evaluation = new_eval(live)
    run = live.evals.runs.create(evaluation.id, data_source=data_source("no-such-skill"))  # type: ignore[arg-type]
    finished = poll(live, evaluation.id, run.id)
    assert finished.status == "failed"
    assert finished.error.code == "model_not_found" and "no-such-skill" in finished.error.message
    assert finished.result_counts.total == 0


@pytest.mark.slow
def test_score_model_with_the_base_model_as_judge(live: openai.OpenAI) -> None:
    judge = {
        "type": "score_model", "name": "judge", "model": DEFAULT_MODEL, "range": [0, 1],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 16},
        "input": [{"role": "user", "content": "Rate from 0 to 1 how well this names the capital of {{item.country}}:"
                                              " {{sample.output_text}}"}],
    }
    ran = live.fine_tuning.alpha.graders.run(
        grader=judge, model_sample="Paris", item={"country": "France"}  # type: ignore[arg-type]
    )
    errors = ran.metadata.errors
    assert not (errors.model_grader_parse_error or errors.model_grader_server_error), ran.metadata
    assert 0.0 <= ran.reward <= 1.0
    assert ran.model_grader_token_usage_per_model[DEFAULT_MODEL]["invocation_count"] == 1  # type: ignore[index]
