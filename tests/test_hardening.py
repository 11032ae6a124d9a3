"""Hardening: no single request, and no admin action, takes serving down for the other tenants.

Each test is one case of a red-team run against a gateway with inference and admin keys; docs/reliability.md
has the table of cases and the response each now gets. The fast tests run the app in-process without the
engine on a real file store; the slow ones use the session's real gateway (real vLLM, real model), and one
starts a gateway of its own to kill its engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient
from python_multipart.multipart import MultipartParser

from adapters.dataset import parse_dataset
from adapters.errors import DatasetError
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import JobRecord, JobSpec, JobStatus
from adapters.store import FileStore
from service.api.auth import KeyGate
from service.app import create_app
from service.protocol import common
from service.runners.local import LocalRunner
from service.settings import Settings
from tests.gateway_fixtures import (
    ADMIN_KEY,
    API_KEY,
    GatewayServer,
    free_port,
    gateway_process,
    management_settings,
    publish_adapter,
)
from tests.shout import shout_rows

INFERENCE = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "Say hi."}]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ------------------------------------------------------------------ in-process gateway (no engine)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    """A management-only gateway with keys, small per-job limits and /metrics on a port of its own."""
    root = tmp_path_factory.mktemp("hardening")
    settings = management_settings(
        root,
        max_dataset_rows=1000,
        max_inline_json_bytes=256 * 2**10,
        max_job_steps=200,
        max_job_tokens=100_000,
        metrics_port=free_port(),
    )
    with TestClient(create_app(settings)) as client:
        yield client, settings


def test_a_request_without_a_key_is_refused_before_its_body_is_read() -> None:
    settings = Settings(api_keys=[API_KEY], admin_keys=[ADMIN_KEY])  # type: ignore[arg-type]
    reads: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app was reached without a key")

    async def receive() -> dict[str, Any]:
        reads.append(1)
        return {"type": "http.request", "body": b"{" * 1024, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gate = KeyGate(inner, settings)
    for headers in ([], [(b"authorization", b"Bearer wrong-key")], [(b"authorization", b"Basic x")]):
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
        asyncio.run(gate(scope, receive, send))
    assert reads == []  # not one chunk of any body was read
    statuses = [m["status"] for m in sent if m["type"] == "http.response.start"]
    assert statuses == [401, 401, 401]


def test_metrics_and_docs_need_a_key_unless_served_apart(app: tuple[TestClient, Settings]) -> None:
    client, settings = app
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/v1/models", "/no-such-path"):
        reply = client.get(path)
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key", path
        assert client.get(path, headers=INFERENCE).status_code in (200, 404), path
    for probe in ("/health", "/ready"):
        assert client.get(probe).status_code in (200, 503)  # probes answer without a key
    assert settings.metrics_port is not None
    scraped = httpx.get(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=10)
    assert scraped.status_code == 200 and "skillserve_requests_total" in scraped.text


def test_models_show_ids_and_errors_show_no_local_paths(app: tuple[TestClient, Settings]) -> None:
    client, settings = app
    base = client.get("/v1/models", headers=INFERENCE).json()["data"][0]
    assert base["id"] == DEFAULT_MODEL and base["root"] == DEFAULT_MODEL
    store_path = settings.store_uri.removeprefix("file://")
    reply = client.post(
        "/adapters/import", json={"name": "x", "uri": "file:///elsewhere/adapter"}, headers=ADMIN
    )
    assert reply.status_code == 400 and store_path not in reply.text, reply.text
    reply = client.post("/adapters", json={"name": "x", "dataset_uri": "s3://other/d.jsonl"}, headers=ADMIN)
    assert reply.status_code == 400 and store_path not in reply.text, reply.text


def test_an_empty_version_is_400_and_deletes_nothing(
    app: tuple[TestClient, Settings], peft_adapter_dir: Path
) -> None:
    client, settings = app
    registry = Registry(FileStore(settings.store_uri.removeprefix("file://")))
    first = publish_adapter(registry, peft_adapter_dir, "imp")
    second = publish_adapter(registry, peft_adapter_dir, "imp")
    for method in ("DELETE", "GET"):
        reply = client.request(method, "/adapters/imp@", headers=ADMIN)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_name", reply.text
    assert [m.version for m in registry.versions("imp")] == [first.version, second.version]
    assert client.delete(f"/adapters/imp@{first.version}", headers=ADMIN).status_code == 200
    assert [m.version for m in registry.versions("imp")] == [second.version]


def test_deeply_nested_json_is_a_400_everywhere(app: tuple[TestClient, Settings]) -> None:
    client, _ = app
    deep = _nested(100_000)
    cases = [
        client.post(
            "/adapters",
            content=f'{{"name": "deep", "rows": [{{"messages": {deep}}}]}}',
            headers={**ADMIN, "content-type": "application/json"},
        ),
        client.post(
            "/adapters",
            data={"name": "deep"},
            files={"dataset": ("d.jsonl", f'{{"prompt": {deep}}}\n'.encode())},
            headers=ADMIN,
        ),
        client.post(
            "/adapters",
            data={"name": "deep", "hyperparameters": f'{{"rank": {deep}}}'},
            files={"dataset": ("d.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
            headers=ADMIN,
        ),
        client.post(
            "/v1/chat/completions",
            content=f'{{"model": "x", "messages": {deep}}}',
            headers={**INFERENCE, "content-type": "application/json"},
        ),
    ]
    for reply in cases:
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["message"]


def test_training_requests_the_trainer_would_refuse_are_refused_at_submit(app: tuple[TestClient, Settings]) -> None:
    client, _ = app
    rows = shout_rows(12)
    refused = {
        "../../x": {"target_modules": ["../../x"]},
        "the head": {"target_modules": ["lm_head"]},
        "no modules": {"target_modules": []},
        "rank as a string": {"rank": "8"},
        "epochs as a string": {"epochs": "4"},
        "too many steps": {"max_steps": 100_000},
        "too many tokens": {"max_steps": 150, "batch_size": 1024},
    }
    for case, hyper in refused.items():
        reply = client.post(
            "/adapters", json={"name": "capped", "rows": rows, "hyperparameters": hyper}, headers=ADMIN
        )
        assert reply.status_code == 400, f"{case}: {reply.text}"
        assert "hyperparameters" in (reply.json()["error"]["param"] or ""), f"{case}: {reply.text}"
    steps = client.post(
        "/adapters", json={"name": "capped", "rows": rows, "hyperparameters": {"max_steps": 100_000}}, headers=ADMIN
    ).json()["error"]
    assert steps["code"] == "job_too_large" and "max_job_steps" in steps["message"]
    assert client.get("/jobs", headers=ADMIN).json()["data"] == []  # nothing was queued


def test_an_oversized_dataset_is_refused_before_a_row_is_parsed(app: tuple[TestClient, Settings]) -> None:
    client, settings = app
    # The first line is not even JSON: only the row count can have caught this file.
    lines = b"not json\n" + b'{"prompt": "a", "completion": "b"}\n' * settings.max_dataset_rows
    with pytest.raises(DatasetError) as caught:
        parse_dataset(lines, max_rows=settings.max_dataset_rows)
    assert caught.value.errors == [(settings.max_dataset_rows + 1, "too many rows: more than 1000, the limit is 1000")]
    reply = client.post("/adapters", data={"name": "big"}, files={"dataset": ("d.jsonl", lines)}, headers=ADMIN)
    assert reply.status_code == 400 and "too many rows" in reply.text
    inline = {"name": "big", "rows": [{"prompt": "a", "completion": "b"}] * (settings.max_dataset_rows + 1)}
    reply = client.post("/adapters", json=inline, headers=ADMIN)
    assert reply.status_code == 400 and "max_dataset_rows" in reply.text


def test_a_large_json_body_of_inline_rows_is_413_and_the_same_rows_as_a_file_are_taken(
    app: tuple[TestClient, Settings],
) -> None:
    """One json.loads holds the interpreter for the whole body, so inline rows are capped; the same bytes as a
    multipart file are checked line by line and stored."""
    client, settings = app
    row = {"prompt": "Shout these words: " + "word " * 200, "completion": "WORDS!"}
    count = settings.max_inline_json_bytes // len(json.dumps(row, separators=(",", ":"))) + 1
    inline = {"name": "inline-big", "rows": [row] * count}
    assert len(json.dumps(inline, separators=(",", ":"))) > settings.max_inline_json_bytes  # as the client sends it
    assert count <= settings.max_dataset_rows
    before = client.get("/jobs", headers=ADMIN).json()["data"]
    reply = client.post("/adapters", json=inline, headers=ADMIN)
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"]["param"] == "rows" and "max_inline_json_bytes" in reply.json()["error"]["message"]
    assert client.get("/jobs", headers=ADMIN).json()["data"] == before  # nothing stored
    lines = "".join(json.dumps(row) + "\n" for _ in range(count)).encode()
    reply = client.post("/adapters", data={"name": "file-big"}, files={"dataset": ("d.jsonl", lines)}, headers=ADMIN)
    assert reply.status_code != 413, reply.text


def test_chat_requests_that_cannot_be_answered_are_400_with_their_reason(app: tuple[TestClient, Settings]) -> None:
    client, _ = app
    cases = {
        "null content": [{"role": "user", "content": None}],
        "only an assistant": [{"role": "assistant", "content": "hello"}],
    }
    for case, messages in cases.items():
        reply = client.post(
            "/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": messages}, headers=INFERENCE
        )
        param = reply.json()["error"]["param"]
        assert reply.status_code == 400 and param.startswith("messages"), f"{case}: {reply.text}"
    assert "no user message" in reply.json()["error"]["message"]
    for seed in (99999999999999999999999, 2**63, -(2**63) - 1):
        reply = client.post(
            "/v1/chat/completions",
            json={"model": DEFAULT_MODEL, "messages": HELLO, "seed": seed},
            headers=INFERENCE,
        )
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "seed", reply.text


LONE = "<lone surrogate>"


def _raw(body: dict[str, Any]) -> str:
    """JSON of `body` with LONE written as "\\ud800": a lone surrogate once decoded, which no client library sends."""
    return json.dumps(body).replace(LONE, "\\ud800")


def _call(arguments: str) -> list[dict[str, Any]]:
    """A conversation whose assistant called a tool with `arguments`, and the tool's answer."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return [*HELLO, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"}]


def test_text_that_is_no_unicode_and_tool_arguments_that_are_no_json_object_are_400s(
    app: tuple[TestClient, Settings],
) -> None:
    client, _ = app
    described = {"type": "function", "function": {"name": "f", "description": LONE}}
    lone = {
        "model": {"model": f"ft:{LONE}", "messages": HELLO},
        "messages.0.content": {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": f"a{LONE}"}]},
        "stop.1": {"model": DEFAULT_MODEL, "messages": HELLO, "stop": ["a", LONE]},
        "tools.0.function.description": {"model": DEFAULT_MODEL, "messages": HELLO, "tools": [described]},
        "prompt": {"model": DEFAULT_MODEL, "prompt": LONE},
    }
    for param, body in lone.items():
        path = "/v1/completions" if param == "prompt" else "/v1/chat/completions"
        reply = client.post(path, content=_raw(body), headers={**INFERENCE, "content-type": "application/json"})
        assert reply.status_code == 400, f"{param}: {reply.text}"
        assert reply.json()["error"]["param"] == param and "lone surrogate" in reply.json()["error"]["message"]
    tool = [{"type": "function", "function": {"name": "f"}}]
    for arguments, reason in (("not json", "not JSON"), ("[1]", "a JSON object"), ('{"a":' * 50_000, "deeply")):
        body = {"model": DEFAULT_MODEL, "messages": _call(arguments), "tools": tool}
        reply = client.post("/v1/chat/completions", json=body, headers=INFERENCE)
        error = reply.json()["error"]
        assert reply.status_code == 400 and error["param"] == "messages.1.tool_calls", reply.text
        assert reason in error["message"]


def test_training_seeds_the_trainer_would_refuse_are_400s_on_both_training_apis(
    app: tuple[TestClient, Settings],
) -> None:
    client, _ = app
    rows = shout_rows(12)
    upload = client.post(
        "/v1/files", data={"purpose": "fine-tune"}, headers=ADMIN,
        files={"file": ("shout.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())},
    )
    assert upload.status_code == 200, upload.text
    for seed in (2**76, -1, 2**32):
        reply = client.post(
            "/adapters", json={"name": "seeded", "rows": rows, "hyperparameters": {"seed": seed}}, headers=ADMIN
        )
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "hyperparameters.seed", reply.text
        body = {"model": DEFAULT_MODEL, "training_file": upload.json()["id"], "seed": seed}
        reply = client.post("/v1/fine_tuning/jobs", json=body, headers=ADMIN)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "seed", reply.text
    assert client.get("/jobs", headers=ADMIN).json()["data"] == []  # nothing was queued


STALL = "stall-the-parser-here"


class HeldUntilHealth:
    """Wraps `owner.name` (a parser) so that its first call on input marked with STALL waits until /health has
    answered: a parser on the event loop would wait in vain, as /health cannot answer until it returns."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, marked: Callable[..., bool]):
        self.started, self.answered = threading.Event(), threading.Event()
        self.resumed_after_health: list[bool] = []
        parse = getattr(owner, name)

        def held(*args: Any, **kwargs: Any) -> Any:
            if marked(*args) and not self.started.is_set():
                self.started.set()
                self.resumed_after_health.append(self.answered.wait(20))
            return parse(*args, **kwargs)

        monkeypatch.setattr(owner, name, held)

    def send(self, client: TestClient, case: str, request: Callable[[], httpx.Response]) -> httpx.Response:
        """`request` sent on a thread of its own; /health asked once the parser holds it."""
        self.started.clear()
        self.answered.clear()
        self.resumed_after_health.clear()
        replies: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: replies.append(request()))
        thread.start()
        assert self.started.wait(60), f"{case}: the marked input was never parsed"
        assert client.get("/health").status_code in (200, 503)
        self.answered.set()
        thread.join(60)
        assert self.resumed_after_health == [True], f"{case}: /health waited for the parser"
        assert replies, f"{case}: no reply"
        return replies[0]


def _holds_stall(text: Any, *_: Any) -> bool:
    raw = text.encode() if isinstance(text, str) else bytes(text) if isinstance(text, bytes | bytearray) else b""
    return STALL.encode() in raw


def test_datasets_are_parsed_off_the_event_loop_so_health_answers_meanwhile(
    app: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parser stops at a marked row until /health has answered: on the event loop it would wait in vain."""
    client, _ = app
    hold = HeldUntilHealth(monkeypatch, json, "loads", _holds_stall)
    marked = {"prompt": STALL, "completion": "b"}
    jsonl = b"x\n" * 50 + (json.dumps(marked) + "\n").encode()
    uploads: dict[str, Callable[[], httpx.Response]] = {
        "POST /v1/files": lambda: client.post(
            "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("d.jsonl", jsonl)}, headers=ADMIN
        ),
        "POST /adapters, rows inline": lambda: client.post(
            "/adapters", json={"name": "stall", "rows": [marked] * 12 + [{"prompt": "x"}]}, headers=ADMIN
        ),
        "POST /adapters, multipart": lambda: client.post(
            "/adapters", data={"name": "stall"}, files={"dataset": ("d.jsonl", jsonl)}, headers=ADMIN
        ),
    }
    for case, upload in uploads.items():
        reply = hold.send(client, case, upload)
        assert reply.status_code == 400, f"{case}: {reply.text}"


@pytest.mark.parametrize("stage", ["decode", "validation"])
def test_chat_bodies_are_decoded_and_validated_off_the_event_loop_so_health_answers_meanwhile(
    app: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """FastAPI decoded and validated a JSON body on the event loop (eight 20,000-property schemas at once held
    /health 341 ms): held at a marked body, in its JSON decode or in its validation, /health still answers. The
    body fails validation (`n` over 16), and its 400 names the param as before."""
    client, _ = app
    if stage == "decode":
        hold = HeldUntilHealth(monkeypatch, json, "loads", _holds_stall)
    else:  # the request model's walk over every string, the longest step of its validation
        hold = HeldUntilHealth(monkeypatch, common, "lone_surrogate", lambda value: STALL in str(value))
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": STALL}], "n": 99}
    reply = hold.send(client, stage, lambda: client.post("/v1/chat/completions", json=body, headers=INFERENCE))
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "n", reply.text


def test_bodies_parsed_off_the_event_loop_keep_their_error_bodies_and_the_key_check_first(
    app: tuple[TestClient, Settings],
) -> None:
    """What FastAPI answered when it parsed bodies on the loop: a JSON error at its position, a body that is no
    UTF-8, a field error naming its param; and a key without the route's role is refused before its body's errors."""
    client, _ = app
    as_json = {"content-type": "application/json"}
    reply = client.post("/v1/chat/completions", content=b'{"model": "x", ', headers={**INFERENCE, **as_json})
    assert reply.status_code == 400 and reply.json()["error"]["details"][0]["type"] == "json_invalid", reply.text
    reply = client.post("/v1/chat/completions", content=b'{"model": "\xff"}', headers={**INFERENCE, **as_json})
    assert reply.status_code == 400 and reply.json()["error"]["message"] == "There was an error parsing the body"
    body = {"model": DEFAULT_MODEL, "messages": HELLO, "bogus": 1}
    reply = client.post("/v1/chat/completions", json=body, headers=INFERENCE)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "bogus", reply.text
    reply = client.post("/v1/fine_tuning/jobs", json={"model": 3}, headers=INFERENCE)
    assert reply.status_code == 403 and reply.json()["error"]["code"] == "admin_key_required", reply.text
    reply = client.post("/v1/fine_tuning/jobs", json={"model": 3}, headers=ADMIN)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "model", reply.text


def test_multipart_uploads_are_parsed_off_the_event_loop_so_health_answers_meanwhile(
    app: tuple[TestClient, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starlette parsed multipart bodies on the event loop (eight 40 MB uploads at once held /health 716 ms): held at
    a marked chunk of the body, /health still answers. A file over max_dataset_bytes is still 413 naming it."""
    client, settings = app
    hold = HeldUntilHealth(monkeypatch, MultipartParser, "write", lambda _parser, data, *_: _holds_stall(data))
    jsonl = b"x\n" * 50 + (json.dumps({"prompt": STALL, "completion": "b"}) + "\n").encode()
    uploads: dict[str, Callable[[], httpx.Response]] = {
        "POST /v1/files": lambda: client.post(
            "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("d.jsonl", jsonl)}, headers=ADMIN
        ),
        "POST /adapters, multipart": lambda: client.post(
            "/adapters", data={"name": "stall"}, files={"dataset": ("d.jsonl", jsonl)}, headers=ADMIN
        ),
    }
    for case, upload in uploads.items():
        reply = hold.send(client, case, upload)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_dataset", f"{case}: {reply.text}"
    monkeypatch.setattr(settings, "max_dataset_bytes", len(jsonl) - 1)
    reply = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("d.jsonl", jsonl)}, headers=ADMIN)
    assert reply.status_code == 413, reply.text
    assert reply.json()["error"] == {
        "message": f"file too big: the limit is {len(jsonl) - 1} bytes (max_dataset_bytes)",
        "type": "invalid_request_error",
        "param": "file",
        "code": "file_too_large",
    }


STAND_IN_TRAINER = """
import json, os, sys, time
path = sys.argv[1].removeprefix("file://")
record = json.load(open(path))
record["status"] = "running"
with open(path + ".tmp", "w") as f:
    json.dump(record, f)
os.replace(path + ".tmp", path)  # whole or not at all, as the store writes
time.sleep(3600)
"""


def test_a_job_past_its_wall_clock_limit_is_stopped_and_failed_with_the_reason(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    spec = JobSpec(
        name="endless", base_model="m", base_model_id="m", dataset_uri="datasets/x.jsonl", dataset_sha256="0",
        dataset_rows=1,
    )
    job = JobRecord(spec=spec)
    registry.put_job(job)
    runner = LocalRunner(
        registry, f"file://{tmp_path / 'store'}", tmp_path / "logs",
        command=[sys.executable, "-c", STAND_IN_TRAINER], max_seconds=2,
    )
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while not registry.get_job(job.id).status.finished and time.monotonic() < deadline:
            time.sleep(0.2)
        record = registry.get_job(job.id)
        assert record.status is JobStatus.failed and "max_job_seconds" in (record.error or ""), record
    finally:
        runner.stop()


# ------------------------------------------------------------------ the session's real gateway (slow)


def _stream_chat(url: str, model: str, events: list[str], started: threading.Event) -> None:
    body = {"model": model, "messages": HELLO, "max_tokens": 48, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=INFERENCE, timeout=300) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                started.set()


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


@pytest.mark.slow
def test_deleting_an_adapter_in_use_lets_its_streams_finish_and_the_engine_live(
    gateway: GatewayServer, peft_adapter_dir: Path
) -> None:
    manifest = publish_adapter(gateway.registry, peft_adapter_dir, "in-use")
    streams = [([], threading.Event()) for _ in range(3)]
    threads = [
        threading.Thread(target=_stream_chat, args=(gateway.url, "in-use", events, started))
        for events, started in streams
    ]
    for thread in threads:
        thread.start()
    for _, started in streams:
        assert started.wait(300), "a stream never started"
    with gateway.client(ADMIN_KEY) as http:
        assert http.delete("/adapters/in-use").status_code == 200
        # Deleted for new requests at once, while the open streams go on.
        assert http.post("/v1/chat/completions", json={"model": "in-use", "messages": HELLO}).status_code == 404
        for thread in threads:
            thread.join(timeout=300)
        for events, _ in streams:
            assert events[-1] == "[DONE]" and not any('"error"' in e for e in events), events[-3:]
            chunks = [json.loads(e) for e in events[:-1]]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            assert chunks[-1]["choices"][0]["finish_reason"] == "length" and text
        assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200
        base = http.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": HELLO, "max_tokens": 4})
        assert base.status_code == 200, base.text
    # Its files leave the disk cache once the last stream let go.
    cached = Path(gateway.store_uri.removeprefix("file://")).parent / "cache" / "adapters" / "in-use"
    _wait_until(lambda: not (cached / manifest.version).exists(), 60, "the deleted adapter stayed cached")


HEALTH_PROBE = """
import select, sys, time, httpx
with httpx.Client(timeout=60) as http:
    while True:
        started = time.monotonic()
        status = http.get(sys.argv[1] + "/health").status_code
        print(started, time.monotonic() - started, status, flush=True)
        if select.select([sys.stdin], [], [], 0.05)[0]:  # stdin closed: stop
            break
"""


class HealthProbe:
    """Times GET /health every 50 ms from a process of its own while an attack runs, so that only the gateway's
    stalls count: the test's own process (its garbage collections, the bodies it encodes) holds no probe back.
    `mark` names the attack that starts now, to say which one a stall came in."""

    def __init__(self, url: str):
        self._proc = subprocess.Popen(
            [sys.executable, "-c", HEALTH_PROBE, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.marks: list[tuple[float, str]] = [(time.monotonic(), "before the attacks")]
        self.times: list[tuple[float, float]] = []  # (started, seconds) per probe, on the shared monotonic clock

    def mark(self, attack: str) -> None:
        self.marks.append((time.monotonic(), attack))

    def during(self, started: float) -> str:
        return [attack for at, attack in self.marks if at <= started][-1]

    def __enter__(self) -> HealthProbe:
        assert self._proc.stdout is not None
        self._take(self._proc.stdout.readline())  # the probe is up before the first attack
        return self

    def __exit__(self, *_: object) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()
        for line in self._proc.stdout.read().splitlines():
            self._take(line)
        assert self._proc.wait(timeout=120) == 0

    def _take(self, line: str) -> None:
        fields = line.split()
        assert len(fields) == 3 and fields[2] == "200", line or "the /health probe ended before it answered"
        self.times.append((float(fields[0]), float(fields[1])))


def _raw_request(port: int, head: bytes, body: bytes) -> bytes:
    """Send the head and part of a body over a plain socket, then read what the gateway answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):  # the gateway answered and closed before taking the rest
            sock.sendall(body)
        return sock.recv(4096)


@pytest.mark.slow
def test_big_bodies_long_prompts_and_slow_clients_do_not_stall_other_requests(gateway: GatewayServer) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    with HealthProbe(gateway.url) as probe:
        time.sleep(0.5)
        probe.mark("a 62 MB body without a key")  # 401 from the headers alone
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 65000000\r\n\r\n"
        )
        assert _raw_request(port, head, b"x" * 2**20).startswith(b"HTTP/1.1 401")
        with gateway.client(API_KEY) as http:
            probe.mark("a 20 MB prompt with a key")  # over the inference body limit, refused before it is read
            reply = http.post(
                "/v1/chat/completions",
                json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "x" * 20_000_000}]},
            )
            assert reply.status_code == 413, reply.text
            # Prompts that fit the body limit but never the context: refused by length, then by tokens.
            for chars in (900_000, 100_000):
                cases: list[tuple[str, dict[str, Any]]] = [
                    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * (chars // 5)}]}),
                    ("/v1/completions", {"prompt": "word " * (chars // 5)}),
                ]
                for path, body in cases:
                    probe.mark(f"a {chars}-character prompt to {path}")
                    reply = http.post(path, json={"model": DEFAULT_MODEL, **body})
                    error = reply.json()["error"]
                    assert reply.status_code == 400 and error["code"] == "context_length_exceeded", reply.text
                    assert error["param"] == ("prompt" if path == "/v1/completions" else "messages")
        probe.mark("200 clients that send half their headers and then nothing")  # cut at the header deadline
        socks = []
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(sock)
        try:
            started = time.monotonic()
            assert all(sock.recv(1) == b"" for sock in socks)  # closed by the gateway, not by us
            cut_after = time.monotonic() - started
        finally:
            for sock in socks:
                sock.close()
        assert cut_after < 60
    at, worst = max(probe.times, key=lambda probe_time: probe_time[1])
    median = statistics.median(seconds for _, seconds in probe.times)
    print(f"/health during the attacks: {len(probe.times)} probes, median {median * 1000:.1f} ms, "
          f"worst {worst * 1000:.1f} ms ({probe.during(at)}); slow clients cut after {cut_after:.1f} s")
    # A bound for stalls (the old defects held /health for 5-19 s), loose enough for a loaded CI machine;
    # docs/reliability.md reports the measured figures.
    assert worst < 1.0, f"/health took {worst:.2f} s during {probe.during(at)}: {probe.times}"


def _unfinished(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("skillserve_engine_unfinished_requests "):
            return float(line.split()[1])
    raise AssertionError("no skillserve_engine_unfinished_requests in /metrics")


@pytest.mark.slow
def test_bad_seeds_and_odd_model_names_are_4xx_and_leave_nothing_in_the_engine(gateway: GatewayServer) -> None:
    with gateway.client(API_KEY) as http:
        for seed in (99999999999999999999999, -(2**63) - 1):
            reply = http.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": HELLO, "seed": seed})
            assert reply.status_code == 400, reply.text
        for seed in (2**63 - 1, -(2**63)):
            body = {"model": DEFAULT_MODEL, "messages": HELLO, "seed": seed, "max_tokens": 2, "temperature": 1}
            assert http.post("/v1/chat/completions", json=body).status_code == 200
        # Sampling vLLM refuses (found by deep fuzzing: n > 1 with greedy decoding) is the client's 400, not a 500.
        greedy_n = {"model": DEFAULT_MODEL, "messages": HELLO, "n": 2, "temperature": 0, "max_tokens": 2}
        reply = http.post("/v1/chat/completions", json=greedy_n)
        assert reply.status_code == 400 and "greedy" in reply.json()["error"]["message"], reply.text
        # Lone surrogates ("\\ud800" decoded) anywhere in a request: 400s naming where, before the engine.
        lone = {
            "model": {"model": LONE, "messages": HELLO},
            "messages.0.content": {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": LONE}]},
            "stop.0": {"model": DEFAULT_MODEL, "messages": HELLO, "stop": [LONE]},
        }
        for param, body in lone.items():
            reply = http.post("/v1/chat/completions", content=_raw(body), headers={"content-type": "application/json"})
            assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
        tool = [{"type": "function", "function": {"name": "f"}}]
        for arguments in ("not json", '{"a":' * 50_000):
            body = {"model": DEFAULT_MODEL, "messages": _call(arguments), "tools": tool, "max_tokens": 2}
            reply = http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 400 and reply.json()["error"]["param"] == "messages.1.tool_calls", reply.text
        body = {"model": DEFAULT_MODEL, "messages": _call('{"city": "Oslo"}'), "tools": tool, "max_tokens": 2}
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        reply = http.post("/v1/chat/completions", json={"model": "x@", "messages": HELLO})
        assert reply.status_code == 404, reply.text  # never "the newest version of x"
        _wait_until(lambda: _unfinished(http) == 0, 60, "requests left behind in the engine")


# ------------------------------------------------------------------ a gateway whose engine dies (slow)


@pytest.mark.slow
def test_a_hung_or_dead_engine_fails_liveness_so_the_pod_is_restarted(tmp_path: Path) -> None:
    extra = {"SKILLSERVE_TRAINING_ENABLED": "false", "SKILLSERVE_ENGINE_STALL_SECONDS": "3"}
    with gateway_process(tmp_path, f"file://{tmp_path / 'store'}", extra) as (server, proc):
        url = server.url
        engines = psutil.Process(proc.pid).children(recursive=True)
        assert engines, "the engine core runs in a process of its own"
        # Hung: the engine's processes stopped (SIGSTOP), as a deadlocked step leaves them, with a request waiting.
        _wait_until(lambda: _status(f"{url}/health") == 200, 60, "/health not 200 on a healthy engine")
        for child in engines:
            child.suspend()
        answered: list[int] = []
        waiting = threading.Thread(
            target=lambda: answered.append(
                httpx.post(
                    f"{url}/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": HELLO, "max_tokens": 4},
                    headers=INFERENCE, timeout=300,
                ).status_code
            )
        )
        waiting.start()
        try:
            _wait_until(lambda: _status(f"{url}/health") == 503, 60, "/health stayed 200 with a hung engine")
            assert httpx.get(f"{url}/health").json()["status"] == "engine not answering"
        finally:
            for child in engines:
                child.resume()
        # Once it answers again, so does liveness (a probe that failed a few times does not restart the pod).
        _wait_until(lambda: _status(f"{url}/health") == 200, 60, "/health stayed 503 once the engine answered")
        waiting.join(timeout=120)
        assert answered == [200], "the request that waited through the hang did not finish"
        # Dead: the engine's processes killed.
        for child in engines:
            child.kill()
        _wait_until(lambda: _status(f"{url}/health") == 503, 120, "/health stayed 200 with a dead engine")
        assert _status(f"{url}/ready") == 503
        reply = httpx.post(
            f"{url}/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": HELLO}, headers=INFERENCE
        )
        assert reply.status_code == 503 and reply.json()["error"]["type"] == "server_error", reply.text


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return 0
