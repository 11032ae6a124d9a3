"""OpenAI's Batch API, driven by the official openai SDK.

Fast tests run the gateway in-process without the engine (management mode) on a real file store: batches created,
listed, retrieved and refused; an input file's bad lines named; and the executor on a registry alone (its requests
answered by a stand-in for the serving path): a restart resuming a batch, two executors on one batch, a cancel, the
completion window's deadline. The slow one runs a batch on the session's real gateway (real vLLM, real model): the
base model and an adapter in one file.
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

from adapters.errors import InvalidRequest, Overloaded
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import BatchLineResult, BatchRecord, BatchStatus, StoredFile
from adapters.store import FileStore
from service.app import create_app
from service.management.batch_runs import BatchRunner
from service.management.batches import parse_batch_file
from tests.gateway_fixtures import (
    ADMIN_KEY,
    API_KEY,
    GatewayServer,
    in_process_sdk,
    management_settings,
    publish_adapter,
)

CHAT = "/v1/chat/completions"
QUESTIONS = {"france": "What is the capital of France?", "japan": "What is the capital of Japan?",
             "italy": "What is the capital of Italy?"}


def chat_line(custom_id: str, question: str, model: str = DEFAULT_MODEL, **change: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 12, "temperature": 0}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body, **change}


def jsonl(rows: list[Any]) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def content_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


# ------------------------------------------------------------------------------------ in-process, no engine


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(management_settings(tmp_path_factory.mktemp("batches")))) as client:
        yield client


@pytest.fixture(scope="module")
def admin(app: TestClient) -> openai.OpenAI:
    return in_process_sdk(app, ADMIN_KEY)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def reader(app: TestClient) -> openai.OpenAI:
    return in_process_sdk(app, API_KEY)  # type: ignore[no-any-return]


def upload(client: openai.OpenAI, rows: list[Any], purpose: str = "batch") -> str:
    return client.files.create(file=("requests.jsonl", io.BytesIO(jsonl(rows))), purpose=purpose).id  # type: ignore[arg-type]


def poll(client: openai.OpenAI, batch_id: str, timeout: float = 900) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.5)


def test_a_batch_is_created_listed_and_retrieved_through_the_sdk(admin: openai.OpenAI, reader: openai.OpenAI) -> None:
    file_id = upload(admin, [chat_line(key, question) for key, question in QUESTIONS.items()])
    first = admin.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h",
                                 metadata={"job": "capitals"})
    assert (first.object, first.status, first.endpoint, first.input_file_id) == ("batch", "validating", CHAT, file_id)
    assert first.request_counts.total == 3 and first.model == DEFAULT_MODEL
    assert first.metadata == {"job": "capitals"} and first.expires_at == first.created_at + 24 * 3600
    second = admin.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")

    assert reader.batches.retrieve(first.id).id == first.id
    page = reader.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more  # newest first
    assert [b.id for b in reader.batches.list(limit=1, after=second.id).data] == [first.id]
    # This gateway runs no engine: the batch fails with the reason, not a 500
    failed = poll(reader, first.id)
    assert failed.status == "failed" and failed.errors.data[0].code == "no_engine"
    with pytest.raises(openai.ConflictError):  # a finished batch cannot be cancelled
        admin.batches.cancel(first.id)
    with pytest.raises(openai.PermissionDeniedError):  # creating and cancelling take an admin key
        reader.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        reader.batches.retrieve("batch_" + "0" * 32)


def test_an_input_file_with_bad_lines_fails_the_batch_naming_each_line(admin: openai.OpenAI) -> None:
    rows = [
        chat_line("ok", QUESTIONS["france"]),
        "{not json",
        chat_line("ok", QUESTIONS["japan"]),  # the same custom_id again
        chat_line("get", QUESTIONS["japan"], method="GET"),
        chat_line("url", QUESTIONS["japan"], url="/v1/completions"),
        chat_line("hot", QUESTIONS["japan"], body={"model": DEFAULT_MODEL, "temperature": 5,
                                                   "messages": [{"role": "user", "content": "hi"}]}),
        chat_line("streamed", QUESTIONS["japan"], body={"model": DEFAULT_MODEL, "stream": True,
                                                        "messages": [{"role": "user", "content": "hi"}]}),
        chat_line("nobody", QUESTIONS["japan"], body=None),
    ]
    batch = admin.batches.create(input_file_id=upload(admin, rows), endpoint=CHAT, completion_window="24h")
    assert batch.status == "failed" and batch.failed_at is not None
    found = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "duplicate_custom_id", "custom_id"),
        (4, "invalid_method", "method"),
        (5, "mismatched_url", "url"),
        (6, "invalid_request", "body.temperature"),
        (7, "invalid_request", "body.stream"),
        (8, "missing_required_parameter", "body"),
    ]
    # A model this gateway does not serve is named on its lines (once the lines are well-formed)
    unknown = admin.batches.create(
        input_file_id=upload(admin, [chat_line("a", "hi"), chat_line("b", "hi", model="no-such-skill")]),
        endpoint=CHAT, completion_window="24h",
    )
    assert unknown.status == "failed"
    assert [(e.line, e.code, e.param) for e in unknown.errors.data] == [(2, "model_not_found", "body.model")]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "1h"}, "completion_window"),
        ({"input_file_id": "file-" + "0" * 32}, "input_file_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, "output_expires_after.seconds"),
    ],
)
def test_a_batch_the_gateway_cannot_take_is_a_400_naming_the_field(
    admin: openai.OpenAI, change: dict[str, Any], param: str
) -> None:
    request = {"input_file_id": upload(admin, [chat_line("a", "hi")]), "endpoint": CHAT, "completion_window": "24h",
               **change}
    with pytest.raises(openai.BadRequestError) as caught:
        admin.batches.create(**request)
    assert caught.value.body["param"] == param  # type: ignore[index]


def test_a_file_not_uploaded_for_batches_is_refused(admin: openai.OpenAI) -> None:
    rows = [{"item": {"country": "France"}}]
    with pytest.raises(openai.BadRequestError) as caught:
        admin.batches.create(input_file_id=upload(admin, rows, "evals"), endpoint=CHAT, completion_window="24h")
    assert caught.value.body["param"] == "input_file_id"  # type: ignore[index]


# ------------------------------------------------------------------------------------ the executor, registry only


def capital_answers(calls: list[str]) -> Any:
    """A stand-in for the serving path: a chat completion naming the capital, recording each question asked."""
    capitals = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome"}

    async def send(project: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        question = body["messages"][-1]["content"]
        calls.append(question)
        capital = next(city for country, city in capitals.items() if country in question)
        return {"object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": capital}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}}

    return send


def stored_batch(registry: Registry, rows: list[dict[str, Any]], **fields: Any) -> BatchRecord:
    data = jsonl(rows)
    stored = registry.put_file(StoredFile(filename="in.jsonl", purpose="batch", bytes=len(data), sha256=""), data)
    record = BatchRecord(endpoint=CHAT, input_file_id=stored.id, total=len(rows),
                         **{"expires_at": time.time() + 24 * 3600, **fields})
    return registry.put_batch(record)


def runner_on(registry: Registry, send: Any, concurrency: int = 1) -> BatchRunner:
    def requests(project: str, batch: BatchRecord) -> Any:
        return parse_batch_file(registry.for_project(project).file_content(batch.input_file_id), batch.endpoint,
                                1000)[0]

    return BatchRunner(registry, send, requests, concurrency)


def file_lines(registry: Registry, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in registry.file_content(file_id).decode().splitlines()]


async def resumed(*runners: BatchRunner) -> list[str]:
    ids = [batch_id for runner in runners for batch_id in await runner.resume()]
    for runner in runners:
        for batch_id in ids:
            await runner.wait(batch_id)
    return ids


ROWS = [chat_line(key, question) for key, question in QUESTIONS.items()]


def test_a_batch_left_in_progress_resumes_after_a_restart_and_runs_no_finished_line_again(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    batch = stored_batch(registry, ROWS, status=BatchStatus.in_progress, in_progress_at=time.time())
    # What the gateway that stopped had done: line 0 answered and written, the batch's counts never updated
    registry.put_batch_line(BatchLineResult(batch_id=batch.id, index=0, custom_id="france", status_code=200,
                                            request_id="req_0", body={"answer": "Paris, before the restart"},
                                            input_tokens=10, output_tokens=2))
    calls: list[str] = []
    assert asyncio.run(resumed(runner_on(registry, capital_answers(calls)))) == [batch.id]
    assert calls == [QUESTIONS["japan"], QUESTIONS["italy"]]  # not line 0 again

    finished = registry.get_batch(batch.id)
    assert finished.status is BatchStatus.completed and finished.finalizing_at and finished.completed_at
    assert (finished.counts.completed, finished.counts.failed, finished.counts.input_tokens) == (3, 0, 30)
    output = file_lines(registry, finished.output_file_id)
    assert [line["custom_id"] for line in output] == ["france", "japan", "italy"]
    assert output[0]["response"]["body"] == {"answer": "Paris, before the restart"}  # kept, written once
    assert output[1]["response"]["status_code"] == 200 and output[1]["error"] is None
    assert finished.error_file_id is None
    stored = registry.get_file(finished.output_file_id or "")
    assert stored.purpose == "batch_output" and stored.rows == 3

    calls.clear()  # a second restart finds nothing left to do
    assert asyncio.run(resumed(runner_on(registry, capital_answers(calls)))) == []
    assert calls == []


def test_two_executors_on_one_batch_write_each_line_once(tmp_path: Path) -> None:
    """Two replicas resuming one batch: each line is in the output once, counted once."""
    registry = Registry(FileStore(tmp_path / "store"))
    rows = [chat_line(f"q{i}", QUESTIONS["france"]) for i in range(8)]
    batch = stored_batch(registry, rows)
    calls: list[str] = []
    asyncio.run(resumed(runner_on(registry, capital_answers(calls), 2), runner_on(registry, capital_answers(calls), 2)))
    finished = registry.get_batch(batch.id)
    assert finished.status is BatchStatus.completed
    assert finished.counts.completed == 8
    assert [line["custom_id"] for line in file_lines(registry, finished.output_file_id)] == [f"q{i}" for i in range(8)]


def test_a_line_refused_by_the_endpoint_goes_to_the_error_file_and_load_is_waited_out(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    batch = stored_batch(registry, ROWS)
    answer = capital_answers([])
    refused_for_load = []

    async def send(project: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        question = body["messages"][-1]["content"]
        if question == QUESTIONS["japan"]:
            raise InvalidRequest("messages: too long", param="messages", code="context_length_exceeded")
        if question == QUESTIONS["italy"] and not refused_for_load:
            refused_for_load.append(question)
            raise Overloaded("the queue is full")
        return await answer(project, endpoint, body)

    asyncio.run(resumed(runner_on(registry, send)))
    finished = registry.get_batch(batch.id)
    assert finished.status is BatchStatus.completed
    assert (finished.counts.completed, finished.counts.failed) == (2, 1)
    assert [line["custom_id"] for line in file_lines(registry, finished.output_file_id)] == ["france", "italy"]
    [error] = file_lines(registry, finished.error_file_id)
    assert error["custom_id"] == "japan" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["code"] == "context_length_exceeded"


def test_a_cancelled_batch_stops_and_keeps_its_answered_lines(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    batch = stored_batch(registry, ROWS)
    calls: list[str] = []
    answer = capital_answers(calls)

    async def cancel_during_the_first(project: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        registry.update_batch(batch.id, lambda b: b.model_copy(update={"status": BatchStatus.cancelling,
                                                                       "cancelling_at": time.time()}))
        return await answer(project, endpoint, body)

    asyncio.run(resumed(runner_on(registry, cancel_during_the_first)))
    finished = registry.get_batch(batch.id)
    assert finished.status is BatchStatus.cancelled and finished.cancelled_at is not None
    assert calls == [QUESTIONS["france"]]
    assert [line["custom_id"] for line in file_lines(registry, finished.output_file_id)] == ["france"]
    errors = file_lines(registry, finished.error_file_id)
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        ("japan", "batch_cancelled", None), ("italy", "batch_cancelled", None)]


def test_a_batch_past_its_completion_window_expires_keeping_its_finished_lines(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    # A short window (the API takes only 24h; the executor honours whatever deadline the record holds)
    batch = stored_batch(registry, ROWS, expires_at=time.time() + 3)
    answer = capital_answers([])

    async def japan_never_answers(project: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        if body["messages"][-1]["content"] == QUESTIONS["japan"]:
            await asyncio.Event().wait()  # still running at the deadline: stopped there
        return await answer(project, endpoint, body)

    asyncio.run(resumed(runner_on(registry, japan_never_answers)))
    finished = registry.get_batch(batch.id)
    assert finished.status is BatchStatus.expired and finished.expired_at is not None
    assert [line["custom_id"] for line in file_lines(registry, finished.output_file_id)] == ["france"]
    errors = file_lines(registry, finished.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("japan", "batch_expired"),
                                                                      ("italy", "batch_expired")]


# ------------------------------------------------------------------------------------ the real gateway


@pytest.fixture(scope="module")
def live(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)


@pytest.mark.slow
def test_the_sdks_batch_flow_answers_the_base_model_and_an_adapter_in_one_file(
    live: openai.OpenAI, gateway: GatewayServer, peft_adapter_dir: Path
) -> None:
    """OpenAI's guide, unchanged but for base_url: upload requests, create a batch, poll, read the output file and
    match its lines by custom_id."""
    publish_adapter(gateway.registry, peft_adapter_dir, "batchnoise")
    rows = [chat_line(f"{model}-{key}", question, model)
            for key, question in list(QUESTIONS.items())[:2] for model in (DEFAULT_MODEL, "batchnoise")]
    uploaded = live.files.create(file=("requests.jsonl", io.BytesIO(jsonl(rows))), purpose="batch")
    batch = live.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    assert batch.model is None  # two models in one file
    finished = poll(live, batch.id)
    assert finished.status == "completed", finished.errors
    assert finished.request_counts.completed == 4 and finished.request_counts.failed == 0
    assert finished.usage.output_tokens > 0 and finished.error_file_id is None

    output = {line["custom_id"]: line for line in content_lines(live, finished.output_file_id)}
    assert set(output) == {row["custom_id"] for row in rows}
    france = output[f"{DEFAULT_MODEL}-france"]["response"]
    assert france["status_code"] == 200 and france["body"]["object"] == "chat.completion"
    assert "Paris" in france["body"]["choices"][0]["message"]["content"]
    # The adapter's lines went through its own template (chatml, without the base template's system prompt): it
    # answered, not the base under its name
    noisy = output["batchnoise-france"]["response"]["body"]
    assert noisy["model"] == "batchnoise"
    assert noisy["usage"]["prompt_tokens"] != france["body"]["usage"]["prompt_tokens"]
    assert live.files.retrieve(finished.output_file_id).purpose == "batch_output"  # type: ignore[arg-type]

    completions = live.batches.create(
        input_file_id=live.files.create(file=("prompts.jsonl", io.BytesIO(jsonl([{
            "custom_id": "p1", "method": "POST", "url": "/v1/completions",
            "body": {"model": DEFAULT_MODEL, "prompt": "The capital of France is", "max_tokens": 8}}]))),
            purpose="batch").id,
        endpoint="/v1/completions", completion_window="24h",
    )
    [line] = content_lines(live, poll(live, completions.id).output_file_id)
    assert line["custom_id"] == "p1" and line["response"]["body"]["object"] == "text_completion"
