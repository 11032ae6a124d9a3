"""Eval runs and batches in every project (issue 31): created with a project's key they run in that project, their
records and files lie under `projects/<id>/`, another project sees them as 404, a model resolves among the project's
adapters only, a restart resumes them, and their requests are charged to the project's per-minute limits, waiting
for the next minute rather than failing.

Fast tests: a management-only gateway (no engine) in-process on a real file store, with the real routes, keys,
projects, executors and limiter. Only the engine's half of the serving path is a test double (`serving_double`): it
resolves the model through the project's gateway view and is charged through the gateway's limiter, as the real
path does before the engine, then makes up an answer."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from adapters.errors import Overloaded, RateLimited
from adapters.limits import CallerLimits, Limits
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import BatchRecord, BatchStatus, StoredFile, TokenUsage
from adapters.store import FileStore
from service.app import create_app
from service.gateway import Gateway
from service.management.background import FairSlots, project_caller, task_key
from service.management.batch_runs import BatchRunner
from service.management.batches import parse_batch_file
from service.management.eval_runs import Sampled
from tests.gateway_fixtures import in_process_sdk, publish_adapter
from tests.test_projects import fake_adapter_dir, new_key, new_project, project_settings

CHAT = "/v1/chat/completions"
SKILL = "support-tone"
ITEM_SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
ANSWERED = {"type": "string_check", "name": "answered", "operation": "like", "input": "{{sample.output_text}}",
            "reference": "answered"}


def line(custom_id: str, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {custom_id}"}], "max_tokens": 8}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def serving_double(gw: Gateway, seen: list[tuple[str, str]]) -> tuple[Any, Any]:
    """The serving path as a test double (these gateways have no engine): the model is resolved in the request's
    project through its gateway view (a name another project holds is ModelNotFound, as a live request of this project
    gets), the request charged to project_caller's limits through the gateway's own limiter (as admit does), then
    answered without an engine. (send, sample): the batches' and the eval runs' serving paths."""

    async def answer(project: str, model: str) -> str:
        view = gw.for_project(project)
        if model != view.engine.base_model_id:
            await view.cache.manifest(model)
        assert view.limits is not None
        ticket = await view.limits.admit(project_caller(view), 10)
        ticket.settle(10)
        seen.append((project, model))
        return f"answered by {model} in {project}"

    async def send(project: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        text = await answer(project, body["model"])
        return {"object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10}}

    async def sample(project: str, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> Sampled:
        text = await answer(project, model)
        return Sampled(text, TokenUsage(invocation_count=1, prompt_tokens=8, completion_tokens=2, total_tokens=10),
                       "stop", model)

    return send, sample


def serve_with_double(gw: Gateway) -> list[tuple[str, str]]:
    """The gateway's executors on `serving_double`; what it answered, (project, model) in order."""
    seen: list[tuple[str, str]] = []
    send, sample = serving_double(gw, seen)
    assert gw.batches is not None and gw.eval_runs is not None
    gw.batches.send, gw.batches.serving = send, True
    gw.eval_runs.sample, gw.eval_runs.serving = sample, True
    return seen


def until(check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "not done in time"
        time.sleep(0.1)
    return found


def finished_batch(client: openai.OpenAI, batch_id: str) -> Any:
    return until(lambda: (b := client.batches.retrieve(batch_id)).status in ("completed", "failed") and b)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[TestClient]:
    settings = project_settings(tmp_path, project_limits={}, limits_backend="local")
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_projects_batch_and_eval_run_complete_in_it_and_are_404_to_another_project(
    app: TestClient, tmp_path: Path
) -> None:
    gw = app.app.state.gateway  # type: ignore[attr-defined]
    seen = serve_with_double(gw)
    a, b = new_project(app, "team a"), new_project(app, "team b")
    publish_adapter(gw.registry.for_project(a), fake_adapter_dir(tmp_path / "a"), SKILL)
    mine = in_process_sdk(app, new_key(app, a, "admin")["value"])
    theirs = in_process_sdk(app, new_key(app, b, "admin")["value"])

    requests = mine.files.create(file=("in.jsonl", io.BytesIO(jsonl([line("base", DEFAULT_MODEL),
                                                                      line("skill", SKILL)]))), purpose="batch")
    batch = finished_batch(mine, mine.batches.create(input_file_id=requests.id, endpoint=CHAT,
                                                     completion_window="24h").id)
    assert batch.status == "completed" and batch.request_counts.completed == 2, batch.errors
    output = [json.loads(row) for row in mine.files.content(batch.output_file_id).text.splitlines()]
    assert {row["custom_id"]: row["response"]["body"]["choices"][0]["message"]["content"] for row in output} == {
        "base": f"answered by {DEFAULT_MODEL} in {a}", "skill": f"answered by {SKILL} in {a}"}

    evaluation = mine.evals.create(name="answers", testing_criteria=[ANSWERED],  # type: ignore[list-item]
                                   data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA})
    source = {"type": "completions", "model": SKILL,
              "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
              "source": {"type": "file_content", "content": [{"item": {"q": "one"}}, {"item": {"q": "two"}}]}}
    run = mine.evals.runs.create(evaluation.id, data_source=source)  # type: ignore[arg-type]
    run = until(lambda: (r := mine.evals.runs.retrieve(run.id, eval_id=evaluation.id)).status == "completed" and r)
    assert run.result_counts.passed == 2
    assert {project for project, _ in seen} == {a}

    store = FileStore(tmp_path / "store")
    for prefix in ("batches/", "files/", "evals/"):
        assert store.list(prefix) == [], f"{prefix} of the default project holds {a}'s"
    keys = store.list(f"projects/{a}/")
    for own in (batch.id, batch.output_file_id, evaluation.id, run.id):
        assert any(own in key for key in keys), f"{own} is not under projects/{a}/"

    for call in (lambda: theirs.batches.retrieve(batch.id), lambda: theirs.batches.cancel(batch.id),
                 lambda: theirs.files.content(batch.output_file_id),
                 lambda: theirs.evals.runs.retrieve(run.id, eval_id=evaluation.id),
                 lambda: theirs.evals.runs.cancel(run.id, eval_id=evaluation.id),
                 lambda: theirs.evals.runs.output_items.list(run.id, eval_id=evaluation.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.id not in [listed.id for listed in theirs.batches.list()]


def test_a_batch_line_naming_another_projects_adapter_fails_as_model_not_found(app: TestClient, tmp_path: Path) -> None:
    """At create, as any unserved model: the batch fails naming the line. And at run time, if it gets that far (the
    line's model published elsewhere after the check): the line's error is the 404 a live request would get."""
    gw = app.app.state.gateway  # type: ignore[attr-defined]
    seen = serve_with_double(gw)
    a, b = new_project(app, "team a"), new_project(app, "team b")
    publish_adapter(gw.registry.for_project(b), fake_adapter_dir(tmp_path / "b"), SKILL)
    mine = in_process_sdk(app, new_key(app, a, "admin")["value"])
    rows = [line("base", DEFAULT_MODEL), line("theirs", SKILL)]
    refused = mine.batches.create(input_file_id=mine.files.create(file=("in.jsonl", io.BytesIO(jsonl(rows))),
                                                                  purpose="batch").id,
                                  endpoint=CHAT, completion_window="24h")
    assert refused.status == "failed"
    assert [(e.line, e.code) for e in refused.errors.data] == [(2, "model_not_found")]

    registry = gw.registry.for_project(a)  # a batch stored past the create check, as a resumed one would be
    data = jsonl(rows)
    stored = registry.put_file(StoredFile(filename="in.jsonl", purpose="batch", bytes=len(data), sha256=""), data)
    batch = registry.put_batch(BatchRecord(endpoint=CHAT, input_file_id=stored.id, total=2,
                                           expires_at=time.time() + 3600))
    app.portal.call(gw.batches.submit, batch.id, a)  # type: ignore[attr-defined]  # on the app's event loop
    done = finished_batch(mine, batch.id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 1, 1)
    [error] = [json.loads(row) for row in mine.files.content(done.error_file_id).text.splitlines()]
    assert error["custom_id"] == "theirs" and error["response"]["status_code"] == 404
    assert error["response"]["body"]["error"]["code"] == "model_not_found"
    assert seen == [(a, DEFAULT_MODEL)]  # b's adapter never answered a's line


def test_a_projects_keys_cancel_its_batch_and_run_while_they_run(app: TestClient) -> None:
    gw = app.app.state.gateway  # type: ignore[attr-defined]
    serve_with_double(gw)
    answered_send, answered_sample = gw.batches.send, gw.eval_runs.sample
    release: list[bool] = []

    async def held() -> None:  # the first request of each stays in the engine until the test lets it go
        while not release:
            await asyncio.sleep(0.05)

    async def send(project: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        await held()
        return await answered_send(project, endpoint, body)  # type: ignore[no-any-return]

    async def sample(project: str, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any]) -> Sampled:
        await held()
        return await answered_sample(project, model, messages, sampling)  # type: ignore[no-any-return]

    gw.batches.send, gw.eval_runs.sample = send, sample
    a = new_project(app, "team a")
    mine = in_process_sdk(app, new_key(app, a, "admin")["value"])
    rows = [line(str(i), DEFAULT_MODEL) for i in range(3)]
    requests = mine.files.create(file=("in.jsonl", io.BytesIO(jsonl(rows))), purpose="batch")
    batch = mine.batches.create(input_file_id=requests.id, endpoint=CHAT, completion_window="24h")
    evaluation = mine.evals.create(name="answers", testing_criteria=[ANSWERED],  # type: ignore[list-item]
                                   data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA})
    source = {"type": "completions", "model": DEFAULT_MODEL,
              "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
              "source": {"type": "file_content", "content": [{"item": {"q": "one"}}, {"item": {"q": "two"}}]}}
    run = mine.evals.runs.create(evaluation.id, data_source=source)  # type: ignore[arg-type]
    until(lambda: mine.batches.retrieve(batch.id).status == "in_progress")

    assert mine.batches.cancel(batch.id).status == "cancelling"
    assert mine.evals.runs.cancel(run.id, eval_id=evaluation.id).status == "canceled"
    release.append(True)
    cancelled = until(lambda: (b := mine.batches.retrieve(batch.id)).status == "cancelled" and b)
    assert cancelled.request_counts.completed + cancelled.request_counts.failed < 3
    time.sleep(0.3)  # the run's held row is answered now; a canceled run stays canceled
    assert mine.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "canceled"


def test_a_restart_resumes_a_projects_unfinished_batch_and_run(tmp_path: Path) -> None:
    root = Registry(FileStore(tmp_path / "store"))
    project = root.create_project("team a").id
    mine = root.for_project(project)
    data = jsonl([line("one", DEFAULT_MODEL), line("two", DEFAULT_MODEL)])
    stored = mine.put_file(StoredFile(filename="in.jsonl", purpose="batch", bytes=len(data), sha256=""), data)
    batch = mine.put_batch(BatchRecord(endpoint=CHAT, input_file_id=stored.id, total=2, status=BatchStatus.in_progress,
                                       in_progress_at=time.time(), expires_at=time.time() + 3600))
    asked: list[str] = []

    async def send(where: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        asked.append(where)
        return {"object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    def requests(where: str, record: BatchRecord) -> Any:
        return parse_batch_file(root.for_project(where).file_content(record.input_file_id), CHAT, 100)[0]

    async def restart() -> list[str]:
        runner = BatchRunner(root, send, requests)
        resumed = await runner.resume()
        for key in resumed:
            await runner.wait(key)
        return resumed

    assert asyncio.run(restart()) == [task_key(project, batch.id)]
    assert asked == [project, project]
    finished = mine.get_batch(batch.id)
    assert finished.status is BatchStatus.completed and finished.counts.completed == 2
    assert mine.get_file(finished.output_file_id or "").rows == 2
    assert root.list_batches() == [] and root.list_files() == []  # nothing written into the default project


def test_batch_lines_are_charged_to_the_projects_limit_and_wait_for_the_next_minute(tmp_path: Path) -> None:
    """requests_per_minute 2, three lines: two pass, the third waits for the minute to reset (a clock set 1.5 s before
    a minute's end) and then passes: none fails. The project's live requests see the lines in
    x-ratelimit-remaining."""
    settings = project_settings(tmp_path, limits_backend="local")
    with TestClient(create_app(settings)) as client:
        gw = client.app.state.gateway  # type: ignore[attr-defined]
        a = new_project(client, "team a")
        gw.settings.project_limits[a] = Limits(requests_per_minute=2)
        seen = serve_with_double(gw)
        offset = 60 - time.time() % 60 - 1.5  # now is 1.5 s before a minute ends
        gw.limits.clock = lambda: time.time() + offset
        mine = in_process_sdk(client, new_key(client, a, "admin")["value"])
        rows = [line(str(i), DEFAULT_MODEL) for i in range(3)]
        requests = mine.files.create(file=("in.jsonl", io.BytesIO(jsonl(rows))), purpose="batch")
        started = time.monotonic()
        batch = finished_batch(mine, mine.batches.create(input_file_id=requests.id, endpoint=CHAT,
                                                         completion_window="24h").id)
        assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 3, 0)
        assert time.monotonic() - started >= 0.5, "the third line did not wait for the next minute"
        assert len(seen) == 3
        # The minute the third line ran in: the project's next live request has one of its two left
        ticket = asyncio.run(gw.limits.admit(CallerLimits(a, Limits(requests_per_minute=2)), 1))
        assert ticket.headers["x-ratelimit-remaining-requests"] == "0"  # the third line's, then this one's


# ------------------------------------------------------------------------------------ the slots, alone


async def recorded_call(slots: FairSlots, order: list[str], project: str, hold_s: float) -> None:
    """A call of `project` through the slots that notes when it runs and holds its slot `hold_s`."""

    async def send() -> None:
        order.append(project)
        await asyncio.sleep(hold_s)

    await slots.call(project, send)


def test_a_freed_slot_goes_to_the_waiting_project_with_the_fewest_in_flight() -> None:
    """One slot; project a queues five calls, then b one: b's goes second, not sixth."""
    order: list[str] = []

    async def scenario() -> None:
        slots = FairSlots(1)

        def call(project: str) -> Coroutine[Any, Any, None]:
            return recorded_call(slots, order, project, 0.01)

        tasks = [asyncio.create_task(call("a")) for _ in range(5)]
        await asyncio.sleep(0)  # a's first holds the slot, the other four wait
        tasks.append(asyncio.create_task(call("b")))
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert order == ["a", "b", "a", "a", "a", "a"]


def test_a_waiting_call_cancelled_gives_its_turn_to_the_next() -> None:
    order: list[str] = []

    async def scenario() -> None:
        slots = FairSlots(1)

        def call(project: str) -> Coroutine[Any, Any, None]:
            return recorded_call(slots, order, project, 0.02)

        first = asyncio.create_task(call("a"))
        await asyncio.sleep(0)
        doomed, last = asyncio.create_task(call("b")), asyncio.create_task(call("c"))
        await asyncio.sleep(0)
        doomed.cancel()  # b stops waiting (a batch cancelled, a gateway stopping)
        await asyncio.gather(first, last)
        assert slots.free == 1

    asyncio.run(scenario())
    assert order == ["a", "c"]


def test_a_call_over_its_limit_waits_the_retry_after_and_one_larger_than_the_limit_fails() -> None:
    async def scenario() -> tuple[float, str]:
        slots = FairSlots(1)
        refusals = [RateLimited("minute spent", retry_after=1), Overloaded("queue full")]

        async def send() -> str:
            if refusals:
                raise refusals.pop(0)
            return "answered"

        started = time.monotonic()
        answered = await slots.call("a", send)
        waited = time.monotonic() - started

        async def too_large() -> str:
            raise RateLimited("larger than the limit", retry_after=30, never_admitted=True)

        with pytest.raises(RateLimited):
            await asyncio.wait_for(slots.call("a", too_large), 5)
        assert slots.free == 1  # every slot given back
        return waited, answered

    waited, answered = asyncio.run(scenario())
    assert answered == "answered" and waited >= 1.4  # the minute's Retry-After (1 s), then the load's first wait


# ------------------------------------------------------------------------------------ the real engine


@pytest.mark.slow
def test_a_projects_batch_runs_on_the_real_engine_in_its_project_and_waits_out_its_limit(
    tmp_path: Path, peft_adapter_dir: Path
) -> None:
    """The real serving path (vLLM on the CPU): project a's batch answers on the base model and a's skill, is charged
    to a's requests_per_minute (3: its four lines cannot all run in one calendar minute, none fails), and b's skill
    is model_not_found to a's batch."""
    from tests.gateway_fixtures import gateway_process
    from tests.test_projects import OPERATOR_KEY

    extra = {"SKILLSERVE_OPERATOR_KEYS": json.dumps([OPERATOR_KEY]), "SKILLSERVE_LIMITS_BACKEND": "local",
             "SKILLSERVE_DEFAULT_LIMITS": json.dumps({"requests_per_minute": 3})}
    with gateway_process(tmp_path, f"file://{tmp_path / 'store'}", extra) as (server, _):
        keys = {}
        with server.client(OPERATOR_KEY) as operator:
            for name in ("a", "b"):
                project = operator.post("/v1/organization/projects", json={"name": name}).json()["id"]
                reply = operator.post(f"/v1/organization/projects/{project}/api_keys", json={"role": "admin"})
                keys[name] = (project, reply.json()["value"])
        (a, key_a), (b, _) = keys["a"], keys["b"]
        publish_adapter(server.registry.for_project(a), peft_adapter_dir, SKILL)
        publish_adapter(server.registry.for_project(b), peft_adapter_dir, "b-only")
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key_a, max_retries=0, timeout=300)

        def upload(rows: list[dict[str, Any]]) -> str:
            return client.files.create(file=("in.jsonl", io.BytesIO(jsonl(rows))), purpose="batch").id

        theirs = client.batches.create(input_file_id=upload([line("b", "b-only")]), endpoint=CHAT,
                                       completion_window="24h")
        assert theirs.status == "failed" and theirs.errors.data[0].code == "model_not_found"

        rows = [line(f"{model}-{i}", model) for i in range(2) for model in (DEFAULT_MODEL, SKILL)]
        batch = client.batches.create(input_file_id=upload(rows), endpoint=CHAT, completion_window="24h")
        done = until(lambda: (found := client.batches.retrieve(batch.id)).status in ("completed", "failed")
                     and found, timeout=900)
        assert (done.status, done.request_counts.completed, done.request_counts.failed) == ("completed", 4, 0)
        assert done.completed_at // 60 > done.in_progress_at // 60, "four lines ran in one minute at 3 per minute"
        output = [json.loads(row) for row in client.files.content(done.output_file_id).text.splitlines()]
        assert {row["custom_id"]: row["response"]["body"]["model"] for row in output} == {
            row["custom_id"]: row["body"]["model"] for row in rows}
        assert server.registry.list_batches() == []  # nothing in the default project
        assert {found.id for found in server.registry.for_project(a).list_batches()} == {batch.id, theirs.id}
