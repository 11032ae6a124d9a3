"""Security: who may call what, hostile names and URIs refused before any I/O, request limits as clear 4xx,
hostile adapters refused before the engine, and no key or dataset content in logs or error bodies.

The fast tests run the gateway app in-process without the engine (management mode) on a real file store;
the slow ones use the session's real gateway (real vLLM, real model).
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry, file_key
from adapters.schema import JobRecord, JobSpec, JobStatus
from adapters.store import FileStore
from service.api import auth
from service.app import create_app
from service.engine.adapter_cache import AdapterCache
from service.metrics import Metrics
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, management_settings, publish_adapter

INFERENCE = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CANARY = "zebra-canary-7f3a"  # dataset and prompt content that must never be echoed or logged
LEAKED_KEY = "sk-leaked-canary-key-91c2"


class RecordingStore:
    """The real store, with every call recorded: proves that a refused request did no I/O at all."""

    def __init__(self, inner: FileStore):
        self.inner = inner
        self.uri = inner.uri
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args))
            return method(*args, **kwargs)

        return recorded


LIMITS = {
    "max_request_bytes": 256 * 1024,
    "max_messages": 8,
    "max_dataset_bytes": 4096,
    "max_dataset_rows": 3,
    "max_row_tokens": 64,
    "max_pending_jobs": 2,
}


@pytest.fixture(scope="module")
def app_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, RecordingStore]]:
    """A management-only gateway (no engine) with keys and small limits; its store records every call."""
    root = tmp_path_factory.mktemp("security")
    settings = management_settings(root, **LIMITS)
    with TestClient(create_app(settings)) as client:
        gw = client.app.state.gateway  # type: ignore[attr-defined]
        recorder = gw.registry.store = RecordingStore(gw.registry.store)
        yield client, recorder


# ------------------------------------------------------------------------------------------ auth

PUBLIC, INFER, ADMIN_ONLY, OPERATOR = "public", "inference", "admin", "operator"
# Every route of the app and who may call it; a route missing here fails the test (new routes need a row).
ROUTE_ROLES = {
    # Docs and metrics need a key by default (public_docs, public_metrics, metrics_port open them).
    ("GET", "/openapi.json"): INFER,
    ("GET", "/docs"): INFER,
    ("GET", "/docs/oauth2-redirect"): INFER,
    ("GET", "/redoc"): INFER,
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    # The dashboard's files and config need no key: the page asks for one (its static files are a mount).
    ("GET", "/ui/config.json"): PUBLIC,
    ("GET", "/metrics"): INFER,
    ("POST", "/v1/chat/completions"): INFER,
    ("POST", "/v1/completions"): INFER,
    # Stored completions hold users' conversations: reading, changing, deleting and exporting them take an admin key
    # (as a file's rows do); feedback takes any key, so an application can pass its users' ratings on.
    ("GET", "/v1/chat/completions"): ADMIN_ONLY,
    ("GET", "/v1/chat/completions/{completion_id}"): ADMIN_ONLY,
    ("POST", "/v1/chat/completions/{completion_id}"): ADMIN_ONLY,
    ("DELETE", "/v1/chat/completions/{completion_id}"): ADMIN_ONLY,
    ("GET", "/v1/chat/completions/{completion_id}/messages"): ADMIN_ONLY,
    ("POST", "/v1/chat/completions/{completion_id}/feedback"): INFER,
    ("POST", "/v1/chat/completions/exports"): ADMIN_ONLY,
    # OpenAI's Batch API: reading takes any key; creating and cancelling take an admin key.
    ("GET", "/v1/batches"): INFER,
    ("GET", "/v1/batches/{batch_id}"): INFER,
    ("POST", "/v1/batches"): ADMIN_ONLY,
    ("POST", "/v1/batches/{batch_id}/cancel"): ADMIN_ONLY,
    ("GET", "/v1/models"): INFER,
    ("GET", "/v1/models/{model_id:path}"): INFER,
    ("GET", "/adapters"): INFER,
    ("GET", "/adapters/{name}"): INFER,
    ("GET", "/adapters/{name}/aliases"): INFER,
    ("GET", "/jobs"): INFER,
    ("GET", "/jobs/{job_id}"): INFER,
    ("GET", "/jobs/{job_id}/events"): INFER,
    ("POST", "/adapters"): ADMIN_ONLY,
    ("POST", "/adapters/import"): ADMIN_ONLY,
    ("POST", "/adapters/{name}/aliases"): ADMIN_ONLY,
    ("DELETE", "/adapters/{model}"): ADMIN_ONLY,
    ("DELETE", "/jobs/{job_id}"): ADMIN_ONLY,
    ("POST", "/jobs/{job_id}/checkpoints/{step}/publish"): ADMIN_ONLY,
    # OpenAI's fine-tuning API: reading files' metadata, jobs, events and checkpoints takes any key; uploading,
    # reading a file's rows, creating and cancelling jobs and deleting models take an admin key.
    ("GET", "/v1/files"): INFER,
    ("GET", "/v1/files/{file_id}"): INFER,
    ("POST", "/v1/files"): ADMIN_ONLY,
    ("GET", "/v1/files/{file_id}/content"): ADMIN_ONLY,
    ("DELETE", "/v1/files/{file_id}"): ADMIN_ONLY,
    ("GET", "/v1/fine_tuning/jobs"): INFER,
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): INFER,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): INFER,
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): INFER,
    ("POST", "/v1/fine_tuning/jobs"): ADMIN_ONLY,
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): ADMIN_ONLY,
    ("DELETE", "/v1/models/{model_id:path}"): ADMIN_ONLY,
    # OpenAI's Evals API: reading evals, runs and output items takes any key; creating, changing and deleting
    # them takes an admin key, since a run spends the engine's time. Graders: validating and running one on one
    # sample cost what a chat request costs, so any key.
    ("GET", "/v1/evals"): INFER,
    ("GET", "/v1/evals/{eval_id}"): INFER,
    ("GET", "/v1/evals/{eval_id}/runs"): INFER,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}"): INFER,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items"): INFER,
    ("GET", "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}"): INFER,
    ("POST", "/v1/evals"): ADMIN_ONLY,
    ("POST", "/v1/evals/{eval_id}"): ADMIN_ONLY,
    ("DELETE", "/v1/evals/{eval_id}"): ADMIN_ONLY,
    ("POST", "/v1/evals/{eval_id}/runs"): ADMIN_ONLY,
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}"): ADMIN_ONLY,
    ("POST", "/v1/evals/{eval_id}/runs/{run_id}/cancel"): ADMIN_ONLY,
    ("DELETE", "/v1/evals/{eval_id}/runs/{run_id}"): ADMIN_ONLY,
    ("POST", "/v1/fine_tuning/alpha/graders/validate"): INFER,
    ("POST", "/v1/fine_tuning/alpha/graders/run"): INFER,
    # Projects and their keys (OpenAI's admin API): operator keys only, never a project's admin.
    ("POST", "/v1/organization/projects"): OPERATOR,
    ("GET", "/v1/organization/projects"): OPERATOR,
    ("GET", "/v1/organization/projects/{project_id}"): OPERATOR,
    ("POST", "/v1/organization/projects/{project_id}/archive"): OPERATOR,
    ("POST", "/v1/organization/projects/{project_id}/api_keys"): OPERATOR,
    ("GET", "/v1/organization/projects/{project_id}/api_keys"): OPERATOR,
    ("GET", "/v1/organization/projects/{project_id}/api_keys/{key_id}"): OPERATOR,
    ("DELETE", "/v1/organization/projects/{project_id}/api_keys/{key_id}"): OPERATOR,
    ("POST", "/v1/organization/projects/{project_id}/api_keys/{key_id}/rotate"): OPERATOR,
    ("GET", "/v1/organization/audit_logs"): OPERATOR,
    # The audit log: a project's admins read it.
    ("GET", "/v1/audit"): ADMIN_ONLY,
}


def _app_routes(client: TestClient) -> set[tuple[str, str]]:
    routes = set()
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute | Route):
            routes |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    return routes


def test_every_route_enforces_its_role(app_client: tuple[TestClient, RecordingStore]) -> None:
    client, _ = app_client
    assert _app_routes(client) == set(ROUTE_ROLES), "a route without a row in ROUTE_ROLES"
    credentials = {
        "none": {},
        "wrong": {"Authorization": f"Bearer {LEAKED_KEY}"},
        "not bearer": {"Authorization": f"Basic {ADMIN_KEY}"},
        "inference": INFERENCE,
        "admin": ADMIN,
    }
    for (method, template), role in ROUTE_ROLES.items():
        path = template.replace("{model_id:path}", "x").replace("{name}", "x").replace("{model}", "x")
        path = path.replace("{job_id}", "x").replace("{file_id}", "x").replace("{step}", "1")
        path = path.replace("{eval_id}", "x").replace("{run_id}", "x").replace("{output_item_id}", "x")
        path = path.replace("{completion_id}", "x").replace("{batch_id}", "x")
        path = path.replace("{project_id}", "x").replace("{key_id}", "x")
        for who, headers in credentials.items():
            reply = client.request(method, path, headers=headers, json={} if method == "POST" else None)
            if role == OPERATOR and who in ("admin", "inference"):
                expected = "403"
                ok = reply.status_code == 403 and reply.json()["error"]["code"] == "operator_key_required"
            elif role == PUBLIC or who == "admin" or (who == "inference" and role == INFER):
                expected = "allowed"
                ok = reply.status_code not in (401, 403)
            elif who == "inference":
                expected = "403"
                ok = reply.status_code == 403 and reply.json()["error"]["code"] == "admin_key_required"
            else:
                expected = "401"
                ok = reply.status_code == 401 and reply.headers.get("www-authenticate") == "Bearer"
            assert ok, f"{method} {path} with {who} key: expected {expected}, got {reply.status_code}"
            # No engine here: /ready is 503 by design; nothing may fail with 500.
            assert reply.status_code != 500, f"{method} {path} with {who} key: {reply.text}"


def test_keys_are_compared_in_constant_time(
    app_client: tuple[TestClient, RecordingStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every configured key is compared with hmac.compare_digest, whichever key (if any) matches."""
    client, _ = app_client
    settings = client.app.state.gateway.settings  # type: ignore[attr-defined]
    keys = ["k-first", "k-second", "k-third"]
    monkeypatch.setattr(settings, "api_keys", [type(settings.admin_keys[0])(k) for k in keys])
    calls: list[bytes] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    compared = {}
    for token in [*keys, "k-wrong", "a-much-longer-wrong-key-of-another-length"]:
        calls.clear()
        status = client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).status_code
        assert status == (200 if token in keys else 401)
        compared[token] = sorted(calls)
    # No early exit: the first key, the last key and a wrong key each cost one comparison per configured key.
    assert len({tuple(c) for c in compared.values()}) == 1
    assert len(next(iter(compared.values()))) == len(keys) + len(settings.admin_keys)


# ------------------------------------------------------------------------------ hostile names

HOSTILE_NAMES = [
    "..",
    ".",
    "../etc",
    "a/../../b",
    "a\\..\\b",
    "..\\..\\windows",
    "/etc/passwd",
    "C:\\Windows",
    "%2e%2e",
    "%2e%2e%2fetc",
    "..%2fetc",
    "%252e%252e%252f",
    "\u0455hout",  # Cyrillic 'ѕ'
    "\uff53hout",  # fullwidth 's'
    "\u2024\u2024",  # one-dot leaders
    "\uff0e\uff0e\uff0fetc",  # fullwidth '../'
    "a\x00b",
    ".hidden",
    "~root",
    "a" * 65,
    "",
]


def _path_segment(value: str) -> str:
    # Encode everything, dots too, so the client sends the hostile bytes as they are (no dot-segment folding).
    return quote(value, safe="").replace(".", "%2E") or "%20"


def own_io(store: RecordingStore) -> list[tuple[str, tuple[Any, ...]]]:
    """The store calls of the request itself: the audit log's writer records a refused admin action too, in the
    background, under audit/ keys of its own making (docs/audit.md), never under a name the request sent."""
    return [call for call in store.calls if not (call[1] and str(call[1][0]).startswith("audit/"))]


def test_hostile_names_in_paths_are_refused_before_any_io(
    app_client: tuple[TestClient, RecordingStore],
) -> None:
    client, store = app_client
    store.calls.clear()
    assert client.get("/adapters/absent", headers=ADMIN).status_code == 404
    assert store.calls, "the recorder must see the I/O of an ordinary request"
    for value in HOSTILE_NAMES:
        segment = _path_segment(value)
        for method, path in [
            ("GET", f"/adapters/{segment}"),
            ("DELETE", f"/adapters/{segment}"),
            ("DELETE", f"/adapters/ok@{segment}"),
            ("GET", f"/v1/models/{segment}"),
            ("GET", f"/v1/models/ok@{segment}"),
            ("GET", f"/jobs/{segment}"),
            ("GET", f"/jobs/{segment}/events"),
            ("DELETE", f"/jobs/{segment}"),
        ]:
            store.calls.clear()
            reply = client.request(method, path, headers=ADMIN)
            assert 400 <= reply.status_code < 500, f"{method} {path}: {reply.status_code} {reply.text}"
            assert reply.json()["error"]["message"]
            assert own_io(store) == [], f"{method} {path} touched the store: {store.calls}"


HOSTILE_URIS = [
    "/etc/passwd",
    "../jobs/x.json",
    "datasets/../../etc/passwd",
    "datasets\\..\\x",
    "%2e%2e/x",
    "file:///etc/passwd",
    "s3://another-bucket/datasets/x.jsonl",
    "datasets/\u2024\u2024/x",
    "",
]


def test_hostile_names_and_store_uris_in_bodies_are_refused_before_any_io(
    app_client: tuple[TestClient, RecordingStore],
) -> None:
    client, store = app_client
    row = [{"prompt": "a", "completion": "b"}]
    requests: list[tuple[str, dict[str, Any]]] = []
    for value in HOSTILE_NAMES:
        requests += [
            ("/adapters", {"name": value, "rows": row}),
            ("/adapters/import", {"name": value, "uri": "imports/ok"}),
        ]
    for uri in HOSTILE_URIS:
        requests += [
            ("/adapters", {"name": "ok", "dataset_uri": uri}),
            ("/adapters/import", {"name": "ok", "uri": uri}),
        ]
    for path, body in requests:
        store.calls.clear()
        reply = client.post(path, json=body, headers=ADMIN)
        assert reply.status_code == 400, f"{path} {body}: {reply.status_code} {reply.text}"
        assert reply.json()["error"]["message"]
        assert own_io(store) == [], f"{path} {body} touched the store: {store.calls}"


def test_hostile_model_names_never_reach_the_store(tmp_path: Path) -> None:
    """What chat and completions resolve `model` with: a hostile name is model_not_found without any I/O."""
    import asyncio

    from adapters.errors import ModelNotFound

    store = RecordingStore(FileStore(tmp_path / "store"))
    cache = AdapterCache(Registry(store), tmp_path / "cache", 1 << 30, DEFAULT_MODEL, 16, Metrics())  # type: ignore[arg-type]
    for value in HOSTILE_NAMES:
        # `ok@` (empty version) means the newest version of `ok`: a lookup, rightly.
        for model in (value, f"ok@{value}" if value else "ok@..", f"{value}@v1"):
            with pytest.raises(ModelNotFound) as caught:
                asyncio.run(cache.manifest(model))
            assert caught.value.code == "model_not_found" and caught.value.param == "model"
    assert store.calls == []


# ------------------------------------------------------------------------------------------ limits


def _chat(messages: int) -> dict[str, Any]:
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}] * messages}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", _chat(LIMITS["max_messages"] + 1), "messages"),
        (
            "/v1/completions",
            {"model": DEFAULT_MODEL, "prompt": ["a"] * (LIMITS["max_messages"] + 1)},
            "prompt",
        ),
        ("/v1/completions", {"model": DEFAULT_MODEL, "prompt": "a", "n": 17}, "n"),
        ("/v1/completions", {"model": DEFAULT_MODEL, "prompt": "a", "stop": list("abcde")}, "stop"),
        ("/v1/completions", {"model": DEFAULT_MODEL, "prompt": "a", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"model": DEFAULT_MODEL, "prompt": []}, "prompt"),
        ("/v1/chat/completions", _chat(0), "messages"),
    ],
)
def test_request_limits_are_400_before_the_engine(
    app_client: tuple[TestClient, RecordingStore], path: str, body: dict[str, Any], param: str
) -> None:
    client, _ = app_client
    reply = client.post(path, json=body, headers=INFERENCE)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param and reply.json()["error"]["message"]


def test_request_bodies_over_the_limit_are_413(app_client: tuple[TestClient, RecordingStore]) -> None:
    client, _ = app_client
    big = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "x" * LIMITS["max_request_bytes"]}],
    }
    reply = client.post("/v1/chat/completions", json=big, headers=INFERENCE)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while the body streams in
        yield json.dumps(big).encode()

    reply = client.post("/v1/chat/completions", content=chunked(), headers=INFERENCE)
    assert reply.status_code == 413 and "max_request_bytes" in reply.json()["error"]["message"]
    upload = io.BytesIO(b'{"prompt": "a", "completion": "b"}\n' * 10_000)
    reply = client.post(
        "/adapters", data={"name": "big"}, files={"dataset": ("d.jsonl", upload)}, headers=ADMIN
    )
    assert reply.status_code == 413


def _upload(client: TestClient, jsonl: bytes, name: str = "limits") -> httpx.Response:
    return client.post(
        "/adapters",
        data={"name": name, "template": "chatml"},
        files={"dataset": ("d.jsonl", jsonl, "application/jsonl")},
        headers=ADMIN,
    )


def test_dataset_limits_are_refused_with_the_reason(app_client: tuple[TestClient, RecordingStore]) -> None:
    client, store = app_client
    row = b'{"prompt": "a", "completion": "b"}\n'
    cases = {
        "too many rows": row * (LIMITS["max_dataset_rows"] + 1),
        "too long": json.dumps({"prompt": "word " * 200, "completion": "b"}).encode() + b"\n",
    }
    for reason, data in cases.items():
        reply = _upload(client, data)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == "invalid_dataset" and reason in error["message"], error
    # A file over max_dataset_bytes is refused by the multipart parser at the byte that crosses the limit, as on
    # /v1/files, before any row is looked at.
    reply = _upload(client, row * (LIMITS["max_dataset_bytes"] // len(row) + 1))
    assert reply.status_code == 413, reply.text
    error = reply.json()["error"]
    assert error["code"] == "file_too_large" and error["param"] == "dataset" and "max_dataset_bytes" in error["message"]
    assert store.inner.list("datasets/") == []


def test_pending_training_jobs_beyond_the_bound_get_429_with_retry_after(
    app_client: tuple[TestClient, RecordingStore],
) -> None:
    client, store = app_client
    registry = Registry(store.inner)
    for name in ("one", "two"):  # jobs another replica runs: they count, this gateway's runner ignores them
        spec = JobSpec(
            name=name,
            base_model="m",
            base_model_id="m",
            dataset_uri="datasets/x.jsonl",
            dataset_sha256="0",
            dataset_rows=1,
        )
        registry.put_job(JobRecord(spec=spec, status=JobStatus.running, runner="kubernetes"))
    reply = _upload(client, b'{"prompt": "a", "completion": "b"}\n', name="waiting")
    assert reply.status_code == 429, reply.text
    assert int(reply.headers["retry-after"]) > 0 and "max_pending_jobs" in reply.json()["error"]["message"]
    assert store.inner.list("datasets/") == []  # nothing stored for a refused job


# ------------------------------------------------------------------------ secrets stay secret


def test_keys_and_dataset_contents_never_appear_in_logs_or_errors(
    app_client: tuple[TestClient, RecordingStore],
) -> None:
    client, _ = app_client
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    logging.getLogger("skillserve").addHandler(handler)
    try:
        replies = [
            client.get("/adapters", headers={"Authorization": f"Bearer {LEAKED_KEY}"}),
            client.post("/adapters", json={"name": "x"}, headers={"Authorization": f"Bearer {API_KEY}"}),
            # Both a dataset and a URI: the validation error must not echo the rows back.
            client.post(
                "/adapters",
                json={"name": "x", "rows": [{"prompt": CANARY, "completion": CANARY}], "dataset_uri": "d"},
                headers=ADMIN,
            ),
            _upload(client, json.dumps({"instruction": CANARY}).encode() + b"\nnot json " + CANARY.encode()),
            client.post(
                "/v1/chat/completions",
                json={"model": DEFAULT_MODEL, "messages": [{"role": "robot", "content": CANARY}]},
                headers=INFERENCE,
            ),
            client.post(
                "/v1/completions", json={"model": DEFAULT_MODEL, "prompt": CANARY, "n": 99}, headers=INFERENCE
            ),
        ]
    finally:
        logging.getLogger("skillserve").removeHandler(handler)
    assert [r.status_code for r in replies] == [401, 403, 400, 400, 400, 400]
    assert records, "the gateway logs each request"
    for secret in (CANARY, LEAKED_KEY, API_KEY, ADMIN_KEY):
        for reply in replies:
            assert secret not in reply.text, f"{secret!r} echoed in {reply.request.url}: {reply.text}"
        assert not [line for line in records if secret in line], f"{secret!r} in the logs"


# ------------------------------------------------------------- against the real gateway (slow)


@pytest.mark.slow
def test_prompt_longer_than_the_context_is_400_and_hostile_models_404(gateway: GatewayServer) -> None:
    with gateway.client(API_KEY) as http:
        long = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "word " * 1200}]}
        for path, body in [
            ("/v1/chat/completions", long),
            ("/v1/completions", {"model": DEFAULT_MODEL, "prompt": "word " * 1200}),
        ]:
            reply = http.post(path, json=body)
            assert reply.status_code == 400 and reply.json()["error"]["code"] == "context_length_exceeded"
        for value in ["../../etc/passwd", "%2e%2e", "\u0455hout", "ok@../v1", "/abs"]:
            reply = http.post(
                "/v1/chat/completions", json={"model": value, "messages": [{"role": "user", "content": "hi"}]}
            )
            assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
        prompt = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": CANARY}], "max_tokens": 2}
        assert http.post("/v1/chat/completions", json=prompt).status_code == 200
    log = gateway.log_path.read_text(errors="replace")
    for secret in (CANARY, API_KEY, ADMIN_KEY):
        assert secret not in log, f"{secret!r} in the gateway log"


# ---------------------------------------------------------------------------------- hostile adapters


def _rewrite_config(directory: Path, **changes: Any) -> None:
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _wrong_shape(directory: Path) -> None:
    import torch
    from safetensors.torch import save_file

    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{prefix}.lora_A.weight": torch.zeros(8, 100), f"{prefix}.lora_B.weight": torch.zeros(576, 8)}
    save_file(tensors, str(directory / "adapter_model.safetensors"))


def _pickle(directory: Path) -> None:
    import torch

    torch.save({"weights": torch.zeros(2)}, directory / "adapter_model.bin")  # a pickle: code on load


HOSTILE_ADAPTERS: dict[str, tuple[Any, int, str]] = {
    # name: (how the PEFT directory is spoiled, manifest rank, what the error says)
    "rank-too-large": (None, 32, "rank 32"),
    "lying-rank": (lambda d: _rewrite_config(d, r=32), 8, "rank 32"),
    "unknown-targets": (
        lambda d: _rewrite_config(d, target_modules=["q_proj", "v_proj", "evil_proj"]),
        8,
        "evil_proj",
    ),
    "bad-safetensors": (
        lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x00" * 64 + b"not safetensors" * 99),
        8,
        "not a valid safetensors file",
    ),
    "truncated": (
        lambda d: (d / "adapter_model.safetensors").write_bytes(
            (d / "adapter_model.safetensors").read_bytes()[:100_000]
        ),
        8,
        "not a valid safetensors file",
    ),
    "wrong-shape": (_wrong_shape, 8, "does not fit the base layer"),
    "pickled": (_pickle, 8, "not allowed"),
    "sha-mismatch": (None, 8, "sha256"),
}


def _publish_hostile(registry: Registry, source: Path, work: Path, name: str) -> None:
    spoil, rank, _ = HOSTILE_ADAPTERS[name]
    directory = work / name
    shutil.copytree(source, directory)
    if spoil is not None:
        spoil(directory)
    manifest = publish_adapter(registry, directory, name, rank=rank)
    if name == "sha-mismatch":  # the store's copy changes after publishing: same size, other bytes
        key = file_key(manifest, "adapter_model.safetensors")
        data = bytearray(registry.store.get_bytes(key))
        data[-1] ^= 0xFF
        registry.store.put_bytes(key, bytes(data))


def test_hostile_adapters_are_refused_before_the_engine_and_leave_nothing_cached(
    peft_adapter_dir: Path, tmp_path: Path
) -> None:
    import asyncio

    from adapters.errors import ChecksumMismatch, InvalidAdapter
    from adapters.models import resolve_model

    registry = Registry(FileStore(tmp_path / "store"))
    publish_adapter(registry, peft_adapter_dir, "steady")
    for name in HOSTILE_ADAPTERS:
        _publish_hostile(registry, peft_adapter_dir, tmp_path / "work", name)
    base_dir = resolve_model(DEFAULT_MODEL)
    cache = AdapterCache(
        registry, tmp_path / "cache", 1 << 30, DEFAULT_MODEL, 16, Metrics(), base_dir=base_dir
    )

    async def scenario() -> None:
        for name, (_, _, message) in HOSTILE_ADAPTERS.items():
            with pytest.raises((InvalidAdapter, ChecksumMismatch), match=message):
                await cache.acquire(await cache.manifest(name))
            assert not (cache.root / name).exists() or not any((cache.root / name).iterdir()), name
        lease = await cache.acquire(await cache.manifest("steady"))
        assert (lease.path / "adapter_model.safetensors").is_file()
        assert cache.tier(lease.manifest.ref, set()) == "disk"

    asyncio.run(scenario())


@pytest.mark.slow
def test_hostile_adapters_get_clear_errors_and_others_keep_serving(
    gateway: GatewayServer, peft_adapter_dir: Path, tmp_path: Path
) -> None:
    publish_adapter(gateway.registry, peft_adapter_dir, "steady")
    for name in HOSTILE_ADAPTERS:
        _publish_hostile(gateway.registry, peft_adapter_dir, tmp_path, name)
    question = [{"role": "user", "content": "Say hi."}]
    with gateway.client(API_KEY) as http:
        for name, (_, _, message) in HOSTILE_ADAPTERS.items():
            reply = http.post(
                "/v1/chat/completions", json={"model": name, "messages": question, "max_tokens": 4}
            )
            error = reply.json()["error"]
            expected = 500 if name == "sha-mismatch" else 400  # a corrupted store is the server's fault
            assert reply.status_code == expected and message in error["message"], (name, reply.text)
            assert error["code"] in ("invalid_adapter", "checksum_mismatch")
        # The engine never saw them: base and a good adapter still answer, and the gateway is ready.
        for model in (DEFAULT_MODEL, "steady"):
            reply = http.post(
                "/v1/chat/completions", json={"model": model, "messages": question, "max_tokens": 4}
            )
            assert reply.status_code == 200, reply.text
        assert http.get("/ready").status_code == 200
