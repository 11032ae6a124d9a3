"""Limits per project and per key (issue 31): requests and tokens per minute on inference, one limit across every
replica on one store, 429 with Retry-After and OpenAI's x-ratelimit-* headers; training jobs at once, training tokens
per day and stored bytes refused where the work is created; each project's share of the engine."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.errors import Overloaded, RateLimited
from adapters.limits import CallerLimits, Limits
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import JobRecord, JobSpec, JobStatus
from adapters.store import FileStore, ObjectStore
from service.app import create_app
from service.inference.fairness import FairShare
from service.inference.ratelimit import LocalClaims, RateLimiter, StoreClaims
from tests.gateway_fixtures import (
    ADMIN_KEY,
    API_KEY,
    LIMITED_KEY,
    LIMITED_KEY_LIMITS,
    GatewayServer,
    management_settings,
)

NOW = 1_800_000_030.0  # half a minute into a minute: every test below stays inside it unless it moves the clock
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
INFERENCE = {"Authorization": f"Bearer {API_KEY}"}


def project(name: str = "team-a", **limits: int) -> CallerLimits:
    return CallerLimits(name, Limits(**limits))


class CountingStore:
    """The real store, its calls counted."""

    def __init__(self, inner: ObjectStore):
        self.inner, self.uri, self.calls = inner, inner.uri, 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return method(*args, **kwargs)

        return counted


# ----------------------------------------------------------------------------------------- per-minute limits


def test_two_replicas_on_one_store_admit_one_limit_however_a_burst_is_split(store: ObjectStore) -> None:
    replicas = [RateLimiter(StoreClaims(store), share=0.25, clock=lambda: NOW) for _ in range(2)]
    caller = project(requests_per_minute=10)

    async def burst() -> list[RateLimited | None]:
        async def one(i: int) -> RateLimited | None:
            try:
                await replicas[i % 2].admit(caller, 0)
            except RateLimited as refused:
                return refused
            return None

        return list(await asyncio.gather(*(one(i) for i in range(30))))

    outcomes = asyncio.run(burst())
    assert sum(o is None for o in outcomes) == 10  # not 10 per replica
    refused = [o for o in outcomes if o is not None]
    assert all(r.headers["x-ratelimit-remaining-requests"] == "0" for r in refused)
    assert all(r.headers["x-ratelimit-limit-requests"] == "10" and r.retry_after == 30 for r in refused)


def test_tokens_are_charged_up_front_and_corrected_to_what_the_request_used() -> None:
    limiter = RateLimiter(LocalClaims(), clock=lambda: NOW)
    caller = project(tokens_per_minute=1000)

    async def two_requests() -> tuple[dict[str, str], dict[str, str]]:
        first = await limiter.admit(caller, 300)  # prompt estimate + max_tokens
        seen = dict(first.headers)
        first.settle(120)  # its usage
        second = await limiter.admit(caller, 100)
        return seen, second.headers

    first, second = asyncio.run(two_requests())
    assert first["x-ratelimit-remaining-tokens"] == "700"
    assert second["x-ratelimit-remaining-tokens"] == str(1000 - 120 - 100)
    assert second["x-ratelimit-limit-tokens"] == "1000" and second["x-ratelimit-reset-tokens"] == "30s"
    with pytest.raises(RateLimited) as refused:
        asyncio.run(limiter.admit(caller, 2000))
    assert refused.value.kind == "tokens" and "lower max_tokens" in str(refused.value)


def test_a_keys_limit_applies_on_top_of_its_projects_and_a_refusal_charges_neither() -> None:
    limiter = RateLimiter(LocalClaims(), clock=lambda: NOW)
    key = CallerLimits("team-a", Limits(requests_per_minute=5), "key_1", Limits(requests_per_minute=2))
    other_key = CallerLimits("team-a", Limits(requests_per_minute=5), "key_2")

    async def requests() -> list[str]:
        remaining = []
        for caller in (key, key):
            remaining.append((await limiter.admit(caller, 0)).headers["x-ratelimit-remaining-requests"])
        with pytest.raises(RateLimited) as refused:
            await limiter.admit(key, 0)
        assert "key=key_1" in str(refused.value)
        # The refused request took nothing from the project: the other key still has its three.
        for _ in range(3):
            remaining.append((await limiter.admit(other_key, 0)).headers["x-ratelimit-remaining-requests"])
        with pytest.raises(RateLimited):
            await limiter.admit(other_key, 0)
        return remaining

    # The headers report the tighter of the key's and the project's limits.
    assert asyncio.run(requests()) == ["1", "0", "2", "1", "0"]


def test_a_spent_minute_is_refused_without_store_io_and_the_next_minute_starts_afresh(tmp_path: Path) -> None:
    store = CountingStore(FileStore(tmp_path))
    clock = [NOW]
    limiter = RateLimiter(StoreClaims(store), share=1.0, clock=lambda: clock[0])  # type: ignore[arg-type]
    caller = project(requests_per_minute=3)

    async def minute() -> int:
        admitted = 0
        for _ in range(10):
            try:
                await limiter.admit(caller, 0)
                admitted += 1
            except RateLimited:
                pass
        return admitted

    assert asyncio.run(minute()) == 3
    calls = store.calls
    assert asyncio.run(minute()) == 0 and store.calls == calls  # B's flood costs the store nothing
    clock[0] = NOW + 120
    assert asyncio.run(minute()) == 3
    assert store.inner.list("limits/") == [f"limits/project=team-a/{int((NOW + 120) // 60)}.json"]  # old minutes swept


def test_two_gateway_replicas_on_one_store_refuse_a_split_burst_with_openai_headers(tmp_path: Path) -> None:
    shared = f"file://{tmp_path / 'shared'}"
    limits = Limits(requests_per_minute=4, tokens_per_minute=100_000)
    with ExitStack() as stack:
        clients = []
        for name in ("one", "two"):
            settings = management_settings(tmp_path / name, default_limits=limits).model_copy(
                update={"store_uri": shared}
            )
            client = stack.enter_context(TestClient(create_app(settings)))
            client.app.state.gateway.limits.clock = lambda: NOW  # type: ignore[attr-defined]
            clients.append(client)
        body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        replies = [clients[i % 2].post("/v1/chat/completions", json=body, headers=INFERENCE) for i in range(6)]
    # No engine here: an admitted request gets past the limit to the engine's 503; the rest are the limit's 429s.
    assert [r.status_code for r in replies].count(429) == 2, [r.text for r in replies]
    for reply in (r for r in replies if r.status_code == 429):
        error = reply.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
        assert "project=default" in error["message"] and "limit 4" in error["message"]
        assert reply.headers["retry-after"] == "30"
        assert reply.headers["x-ratelimit-limit-requests"] == "4"
        assert reply.headers["x-ratelimit-remaining-requests"] == "0"
        assert reply.headers["x-ratelimit-reset-requests"] == "30s"
        assert reply.headers["x-ratelimit-limit-tokens"] == "100000"


# --------------------------------------------------------------------------------------- fair share of the engine


def test_a_projects_burst_waits_behind_anothers_request_and_holds_at_most_its_share_of_the_queue() -> None:
    share = FairShare(max_per_project=3)
    burst = [share.enter("team-b") for _ in range(3)]
    assert [slot.priority for slot in burst] == [0, 1, 2]
    assert share.enter("team-a").priority == 0  # scheduled ahead of team-b's second and third
    with pytest.raises(Overloaded, match="max_project_queue"):
        share.enter("team-b")
    burst[0].release()
    burst[0].release()  # released once, however often it is called
    assert share.enter("team-b").priority == 2


def test_within_a_project_a_quiet_keys_request_goes_ahead_of_a_busy_keys_later_ones() -> None:
    share = FairShare(max_per_project=16)
    busy = [share.enter("team-a", "key_busy").priority for _ in range(6)]
    assert busy == [0, 2, 4, 6, 8, 10]
    assert share.enter("team-a", "key_quiet").priority == 6  # ahead of the busy key's fourth and later


# ------------------------------------------------------------------------------------------ training and storage


ROW = b'{"prompt": "a", "completion": "b"}\n'


@pytest.fixture
def limited_gateway(tmp_path: Path) -> Iterator[Callable[..., tuple[TestClient, Registry]]]:
    """Starts a management-only gateway whose default project has the given limits: its client and registry."""
    with ExitStack() as stack:

        def start(**limits: int) -> tuple[TestClient, Registry]:
            settings = management_settings(tmp_path, default_limits=Limits(**limits))
            client = stack.enter_context(TestClient(create_app(settings)))
            return client, client.app.state.gateway.registry  # type: ignore[attr-defined]

        yield start


def stored_job(registry: Registry, status: JobStatus, planned_tokens: int, created_at: float) -> None:
    spec = JobSpec(name="other", base_model="m", base_model_id="m", dataset_uri="datasets/x.jsonl",
                   dataset_sha256="0", dataset_rows=1, planned_tokens=planned_tokens)  # fmt: skip
    registry.put_job(JobRecord(spec=spec, status=status, runner="kubernetes", created_at=created_at))


def train(client: TestClient) -> Any:
    files = {"dataset": ("d.jsonl", ROW, "application/jsonl")}
    return client.post("/adapters", data={"name": "waiting", "template": "chatml"}, files=files, headers=ADMIN)


def test_a_projects_training_jobs_at_once_are_refused_with_429_at_job_creation(
    limited_gateway: Callable[..., tuple[TestClient, Registry]],
) -> None:
    client, registry = limited_gateway(concurrent_jobs=1)
    stored_job(registry, JobStatus.running, 10, time.time())  # running on another replica: it counts
    reply = train(client)
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["code"] == "concurrent_jobs_exceeded" and "concurrent_jobs" in error["message"]
    assert int(reply.headers["retry-after"]) > 0
    assert registry.store.list("datasets/") == []  # nothing stored for a refused job


def test_a_projects_training_tokens_per_day_are_refused_with_429_until_old_jobs_age_out(
    limited_gateway: Callable[..., tuple[TestClient, Registry]],
) -> None:
    client, registry = limited_gateway(training_tokens_per_day=1000)
    stored_job(registry, JobStatus.succeeded, 400, time.time() - 86400 - 5)  # yesterday's: no longer counts
    stored_job(registry, JobStatus.succeeded, 999, time.time() - 3600)  # an hour ago: frees in about 23 hours
    reply = train(client)
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["code"] == "training_tokens_exceeded" and "planned 999 training tokens" in error["message"]
    assert 22 * 3600 < int(reply.headers["retry-after"]) <= 23 * 3600
    assert registry.store.list("datasets/") == []


def test_uploads_past_a_projects_stored_bytes_are_refused(
    limited_gateway: Callable[..., tuple[TestClient, Registry]],
) -> None:
    client, registry = limited_gateway(stored_bytes=3 * len(ROW))

    def upload(rows: int) -> Any:
        files = {"file": ("d.jsonl", ROW * rows, "application/jsonl")}
        return client.post("/v1/files", data={"purpose": "fine-tune"}, files=files, headers=ADMIN)

    assert upload(2).status_code == 200
    reply = upload(2)
    assert reply.status_code == 429, reply.text
    error = reply.json()["error"]
    assert error["code"] == "storage_quota_exceeded" and "stored_bytes" in error["message"]
    assert upload(1).status_code == 200  # what still fits
    assert len(registry.list_files()) == 2


def test_limits_come_from_settings_as_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from service.api.auth import Principal
    from service.api.limits import limits_for
    from service.settings import Settings

    monkeypatch.setenv("SKILLSERVE_DEFAULT_LIMITS", json.dumps({"requests_per_minute": 60, "stored_bytes": 10}))
    monkeypatch.setenv("SKILLSERVE_PROJECT_LIMITS", json.dumps({"team-b": {"requests_per_minute": 6}}))
    monkeypatch.setenv("SKILLSERVE_KEY_LIMITS", json.dumps({"key_b1": {"tokens_per_minute": 500}}))
    settings = Settings()
    b = limits_for(Principal("key_b1", "inference", "team-b"), settings)
    assert b.project_limits == Limits(requests_per_minute=6, stored_bytes=10)
    assert b.key_limits == Limits(tokens_per_minute=500)
    assert limits_for(Principal("key_a1", "admin", "team-a"), settings).project_limits.requests_per_minute == 60


# ------------------------------------------------------------------------------------------- the real engine


@pytest.mark.slow
def test_answers_carry_openai_rate_limit_headers_and_past_the_limit_get_429(gateway: GatewayServer) -> None:
    client = gateway.client(LIMITED_KEY)
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    limit = LIMITED_KEY_LIMITS["requests_per_minute"]
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as streamed:
        streamed.read()
    replies = [streamed]
    # Until the limit refuses: within two minutes' worth, as a minute may turn during the test.
    while replies[-1].status_code == 200 and len(replies) <= 2 * limit:
        replies.append(client.post("/v1/chat/completions", json=body))
    *answered, refused = replies
    assert answered and all(r.status_code == 200 for r in answered), [r.text for r in replies]
    for reply in answered:  # streamed or whole, every answer says where the caller stands
        assert reply.headers["x-ratelimit-limit-requests"] == str(limit)
        assert 0 <= int(reply.headers["x-ratelimit-remaining-requests"]) < limit
        assert reply.headers["x-ratelimit-limit-tokens"] == str(LIMITED_KEY_LIMITS["tokens_per_minute"])
        assert int(reply.headers["x-ratelimit-remaining-tokens"]) < LIMITED_KEY_LIMITS["tokens_per_minute"]
        assert reply.headers["x-ratelimit-reset-requests"].endswith("s")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # Another key of the same gateway is not held to this key's limit.
    assert gateway.client(API_KEY).post("/v1/chat/completions", json=body).status_code == 200
