"""Fast gateway tests without the engine: adapter checks, the disk cache, auth, dataset errors, the runner."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapters.errors import InvalidAdapter, ModelNotFound, Overloaded
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import JobRecord, JobSpec, JobStatus, Manifest
from adapters.servable import check_manifest
from adapters.store import FileStore
from docsgen.openapi import render
from service.app import create_app
from service.engine.adapter_cache import AdapterCache
from service.metrics import Metrics
from service.runners.local import LocalRunner
from service.settings import Settings
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, management_settings, publish_adapter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(FileStore(tmp_path / "store"))


@pytest.fixture
def published(registry: Registry, peft_adapter_dir: Path) -> Manifest:
    return publish_adapter(registry, peft_adapter_dir, "noise")


def test_openapi_yaml_matches_the_app() -> None:
    committed = (REPO / "openapi.yaml").read_text()
    assert committed == render(), "openapi.yaml is stale: run `make openapi`"


def test_manifest_checks_refuse_what_must_not_reach_the_engine(published: Manifest) -> None:
    check_manifest(published, DEFAULT_MODEL, 16)
    with pytest.raises(InvalidAdapter, match="another base"):
        check_manifest(published, "Llama-3-8B", 16)
    with pytest.raises(InvalidAdapter, match="rank 8"):
        check_manifest(published, DEFAULT_MODEL, 4)
    pickled = published.model_copy(
        update={"files": {**published.files, "weights.bin": published.files["adapter_config.json"]}}
    )
    with pytest.raises(InvalidAdapter, match="not allowed"):
        check_manifest(pickled, DEFAULT_MODEL, 16)


def test_cache_downloads_once_for_concurrent_first_requests_and_evicts_lru(
    registry: Registry, published: Manifest, peft_adapter_dir: Path, tmp_path: Path
) -> None:
    other = publish_adapter(registry, peft_adapter_dir, "other")
    size = sum(f.size for f in published.files.values())
    metrics = Metrics()
    cache = AdapterCache(registry, tmp_path / "cache", int(size * 1.5), DEFAULT_MODEL, 16, metrics)

    async def scenario() -> None:
        manifest = await cache.manifest("noise")
        leases = await asyncio.gather(*(cache.acquire(manifest) for _ in range(5)))
        assert len({lease.path for lease in leases}) == 1 and len({lease.lora_id for lease in leases}) == 1
        assert metrics.adapter_loads._value.get() == 1  # single-flight: one download for five requests
        assert (leases[0].path / "adapter_model.safetensors").exists()
        for lease in leases:
            lease.release()
        second = await cache.acquire(await cache.manifest(f"other@{other.version}"))
        assert second.lora_id != leases[0].lora_id
        # Both do not fit: the least recently used one, no longer held, left the disk.
        assert cache.tier(published.ref, set()) == "store" and not leases[0].path.exists()
        assert metrics.adapter_evictions._value.get() == 1
        # Tiers as /v1/models reports them: in the engine (by its LoRA ids), on disk, or only in the store.
        assert cache.tier(other.ref, {second.lora_id}) == "engine"
        assert cache.tier(other.ref, set()) == "disk"
        assert cache.tier(published.ref, {second.lora_id}) == "store"
        again = await cache.acquire(manifest)
        assert again.lora_id == leases[0].lora_id  # stable id per version
        assert cache.tier(published.ref, set()) == "disk" and cache.tier(other.ref, set()) == "disk"
        assert second.path.exists()  # a held version is never evicted

    asyncio.run(scenario())


@pytest.fixture
def management(tmp_path: Path) -> Iterator[tuple[TestClient, FileStore]]:
    """A management-only gateway (no engine) with keys, on a tmp store."""
    with TestClient(create_app(management_settings(tmp_path))) as client:
        yield client, FileStore(tmp_path / "store")


def test_bad_dataset_is_400_with_line_numbers_and_nothing_is_stored(
    management: tuple[TestClient, FileStore],
) -> None:
    client, store = management
    jsonl = b'{"instruction": "Shout: a", "output": "A!"}\nnot json\n{"foo": 1}\n'
    reply = client.post(
        "/adapters",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        data={"name": "shout", "template": "alpaca"},
        files={"dataset": ("d.jsonl", jsonl, "application/jsonl")},
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "invalid_dataset"
    assert [d["line"] for d in error["details"]] == [2, 3]
    assert store.list("datasets/") == [] and store.list("jobs/") == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "Bad Name!", "rows": [{"prompt": "a", "completion": "b"}]}, None),
        ({"name": "ok", "template": "nope", "rows": [{"prompt": "a", "completion": "b"}]}, None),
        (
            {"name": "ok", "rows": [{"prompt": "a", "completion": "b"}], "hyperparameters": {"rank": 0}},
            "hyperparameters.rank",
        ),
        ({"name": "ok"}, None),
    ],
)
def test_bad_training_requests_are_400(
    management: tuple[TestClient, FileStore], body: dict, param: str | None
) -> None:  # type: ignore[type-arg]
    client, store = management
    reply = client.post("/adapters", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["message"]
    if param:
        assert reply.json()["error"]["param"] == param
    assert store.list("jobs/") == []


def test_keys_gate_each_role(management: tuple[TestClient, FileStore]) -> None:
    client, _ = management
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    inference = {"Authorization": f"Bearer {API_KEY}"}
    assert client.get("/adapters", headers=inference).status_code == 200
    denied = client.delete("/adapters/x", headers=inference)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_key_required"
    assert client.delete("/adapters/x", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 404
    assert client.get("/health").status_code == 200


def test_without_engine_inference_is_503_with_retry_after(management: tuple[TestClient, FileStore]) -> None:
    client, _ = management
    assert client.get("/ready").status_code == 503
    reply = client.post(
        "/v1/chat/completions",
        json={"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert reply.status_code == 503 and reply.headers["retry-after"]
    assert reply.json()["error"]["type"] == "server_error"


# A stand-in for `python -m trainer run <uri>` (test double): it only does what the runner relies on,
# moving the job record in the file store, so restart and cancel semantics are tested in seconds.
# Writes its record as the store does, whole or not at all (a reader must never see a half-written file).
STAND_IN_TRAINER = """
import json, os, signal, sys, time
path = sys.argv[1].removeprefix("file://")
def write(record):
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)
record = json.load(open(path))
record["status"] = "running"; write(record)
if record["spec"]["name"] == "stale-writer":
    # A progress write that read the record before a cancel's verdict and lands after it (a plain write, as on a
    # store that ignores If-Match), and then the exit SIGTERM asks for.
    def stale(*_):
        write(record); sys.exit(143)
    signal.signal(signal.SIGTERM, stale)
time.sleep(float(record["spec"]["hyperparameters"]["seed"]) / 1000)
if record["spec"]["name"] == "crash":
    print("trainer blew up", flush=True); sys.exit(3)
record["status"] = "succeeded"; write(record)
"""


def _job(registry: Registry, name: str, status: JobStatus = JobStatus.queued, sleep_ms: int = 0) -> JobRecord:
    spec = JobSpec(
        name=name,
        base_model="m",
        base_model_id="m",
        dataset_uri="datasets/x.jsonl",
        dataset_sha256="0",
        dataset_rows=1,
        hyperparameters={"seed": sleep_ms},  # type: ignore[arg-type]
    )
    job = JobRecord(spec=spec, status=status)
    registry.put_job(job)
    return job


def _wait(registry: Registry, job_id: str, timeout: float = 30) -> JobRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = registry.get_job(job_id)
        if record.status.finished:
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {registry.get_job(job_id).status}")


def test_local_runner_resumes_queued_jobs_and_fails_interrupted_ones(
    registry: Registry, tmp_path: Path
) -> None:
    interrupted = _job(registry, "interrupted", JobStatus.running)
    queued = _job(registry, "queued")
    crash = _job(registry, "crash")
    runner = LocalRunner(
        registry,
        f"file://{tmp_path / 'store'}",
        tmp_path / "logs",
        command=[sys.executable, "-c", STAND_IN_TRAINER],
    )
    runner.start()
    try:
        assert _wait(registry, queued.id).status is JobStatus.succeeded
        failed = _wait(registry, crash.id)
        assert failed.status is JobStatus.failed and "code 3" in (failed.error or "")
        assert "trainer blew up" in (failed.error or "")
        record = registry.get_job(interrupted.id)
        assert record.status is JobStatus.failed and "interrupted" in (record.error or "")
    finally:
        runner.stop()


def test_local_runner_cancels_a_running_job(registry: Registry, tmp_path: Path) -> None:
    runner = LocalRunner(
        registry,
        f"file://{tmp_path / 'store'}",
        tmp_path / "logs",
        command=[sys.executable, "-c", STAND_IN_TRAINER],
    )
    runner.start()
    try:
        slow = _job(registry, "slow", sleep_ms=3_600_000)  # runs until it is stopped
        waiting = _job(registry, "waiting")
        runner.submit(slow)
        runner.submit(waiting)
        deadline = time.monotonic() + 300
        while registry.get_job(slow.id).status is not JobStatus.running and time.monotonic() < deadline:
            time.sleep(0.1)
        runner.cancel(waiting.id)  # still queued behind the slow one
        runner.cancel(slow.id)
        assert _wait(registry, slow.id).status is JobStatus.cancelled
        assert registry.get_job(waiting.id).status is JobStatus.cancelled
        # The one worker is free again, so the cancelled trainer is gone (it would have slept for an hour).
        after = _job(registry, "after")
        runner.submit(after)
        assert _wait(registry, after.id, timeout=300).status is JobStatus.succeeded
        assert (
            registry.get_job(slow.id).status is JobStatus.cancelled
        )  # the killed trainer wrote nothing after
    finally:
        runner.stop()


def test_a_cancel_stands_even_when_a_stale_progress_write_lands_after_it(registry: Registry, tmp_path: Path) -> None:
    runner = LocalRunner(
        registry, f"file://{tmp_path / 'store'}", tmp_path / "logs", command=[sys.executable, "-c", STAND_IN_TRAINER]
    )
    runner.start()
    try:
        job = _job(registry, "stale-writer", sleep_ms=3_600_000)
        runner.submit(job)
        deadline = time.monotonic() + 300
        while registry.get_job(job.id).status is not JobStatus.running and time.monotonic() < deadline:
            time.sleep(0.1)
        runner.cancel(job.id)  # the verdict, then SIGTERM: the trainer writes its stale "running" record back
        record = _wait(registry, job.id)
        assert record.status is JobStatus.cancelled and record.error == "cancelled by request"
    finally:
        runner.stop()


def test_json_and_multipart_requests_share_one_schema() -> None:
    schema = json.loads(json.dumps(create_app(Settings(load_engine=False)).openapi()))  # type: ignore[call-arg]
    content = schema["paths"]["/adapters"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}


def test_engine_args_carry_the_settings() -> None:
    from service.engine.core import Engine

    settings = Settings(max_lora_rank=24, max_loras=3, max_cpu_loras=2, max_model_len=512, max_num_seqs=4)  # type: ignore[call-arg]
    args = Engine(settings).engine_args()
    assert args.max_lora_rank == 32  # vLLM's next bucket; the gateway itself still refuses rank > 24
    assert (args.max_loras, args.max_cpu_loras, args.max_model_len, args.max_num_seqs) == (3, 3, 512, 4)
    assert args.enable_lora and args.dtype == "float32"  # fp32 on CPU: bf16 answers badly with this model


def test_ignore_eos_drops_the_template_stops_but_keeps_the_clients() -> None:
    from adapters.templates import get_template
    from service.inference.pipeline import merge_stops

    chatml = get_template("chatml", None)
    assert set(chatml.stop) <= set(merge_stops(["END"], chatml))
    assert merge_stops(["END"], chatml, ignore_eos=True) == ["END"]


def test_job_counts_in_metrics_are_read_from_the_store_at_most_once_per_interval() -> None:
    reads: list[int] = []

    def count() -> dict[str, int]:
        reads.append(1)
        if len(reads) == 3:
            raise ConnectionError("store unreachable")
        return {"queued": len(reads)}

    metrics = Metrics()
    metrics.watch_jobs(count, max_age_s=0.2)
    for _ in range(5):  # five scrapes inside one interval: one read
        assert b'skillserve_jobs{status="queued"} 1.0' in metrics.render()
    assert len(reads) == 1
    time.sleep(0.25)
    assert b'skillserve_jobs{status="queued"} 2.0' in metrics.render()
    time.sleep(0.25)  # the store fails: the scrape still works, with the last counts
    assert b'skillserve_jobs{status="queued"} 2.0' in metrics.render()
    assert len(reads) == 3


@pytest.fixture
def two_versions(management: tuple[TestClient, FileStore], peft_adapter_dir: Path) -> tuple[str, str]:
    _, store = management
    registry = Registry(store)
    return tuple(publish_adapter(registry, peft_adapter_dir, "aliased").version for _ in range(2))  # type: ignore[return-value]


ALIAS_REFUSALS = [
    # (what is sent, with V1/V2 for the two versions) -> (status, param)
    ({"alias": "c", "version": "V1", "canary": "V2", "canary_weight": "0.5"}, 400, "canary_weight"),
    ({"alias": "c", "version": "V1", "canary": "V2", "canary_weight": True}, 400, "canary_weight"),
    ({"alias": "c", "version": "V1", "canary": "V2", "canary_weight": 1.5}, 400, "canary_weight"),
    ({"alias": "c", "version": "V1", "canary": "V1", "canary_weight": 0.5}, 400, "canary"),
    ({"alias": "c", "version": "V1", "canary_weight": 0.5}, 400, "canary_weight"),
    ({"alias": "c", "version": None, "canary": "V2"}, 400, "canary"),
    ({"alias": "V1", "version": "V2"}, 400, "alias"),  # name@V1 must keep meaning V1
    ({"alias": "v20991231235959-abcd", "version": "V2"}, 400, "alias"),  # named like versions yet to come
    ({"alias": "c", "version": "v9"}, 404, "version"),
    ({"alias": "c", "version": "V1", "canary": "v9", "canary_weight": 0.5}, 404, "canary"),
]


@pytest.mark.parametrize(("body", "status", "param"), ALIAS_REFUSALS)
def test_alias_writes_that_would_break_a_name_are_refused_and_write_nothing(
    management: tuple[TestClient, FileStore], two_versions: tuple[str, str], body: dict[str, object], status: int,
    param: str,
) -> None:
    client, store = management
    v1, v2 = two_versions
    sent = {k: {"V1": v1, "V2": v2}.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    before = store.list("aliases/")
    reply = client.post("/adapters/aliased/aliases", json=sent, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param, reply.text
    assert store.list("aliases/") == before
    assert client.get(f"/v1/models/aliased@{v1}", headers={"Authorization": f"Bearer {API_KEY}"}).status_code != 500


def test_removing_an_alias_of_a_missing_adapter_is_404_and_stores_nothing(
    management: tuple[TestClient, FileStore],
) -> None:
    client, store = management
    reply = client.post(
        "/adapters/ghost/aliases", json={"alias": "prod", "version": None},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found", reply.text
    assert store.list("aliases/") == []


def test_an_alias_onto_a_version_being_deleted_is_409_with_the_reason(
    management: tuple[TestClient, FileStore], two_versions: tuple[str, str],
) -> None:
    client, store = management
    v1, v2 = two_versions
    registry = Registry(store)
    current = registry.aliases("aliased")
    # What a delete of v1 writes first, before it removes the manifest (the gateway stopped between the two).
    fence = current.model_copy(update={"revision": current.revision + 1, "unpublished": [v1]})
    store.put_bytes(f"aliases/aliased/{fence.revision:012d}.json", fence.model_dump_json().encode())
    reply = client.post(
        "/adapters/aliased/aliases", json={"alias": "prod", "version": v1},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert reply.status_code == 409, reply.text
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == ("version", "conflict") and "being deleted" in error["message"]


def test_any_number_of_unknown_model_names_keeps_the_name_cache_at_its_bound(
    registry: Registry, published: Manifest, tmp_path: Path
) -> None:
    cache = AdapterCache(registry, tmp_path / "cache", 2**30, DEFAULT_MODEL, 16, Metrics(), max_names=64)

    async def scenario() -> None:
        assert (await cache.manifest("noise")).ref == published.ref
        for n in range(2000):
            with pytest.raises(ModelNotFound):
                await cache.manifest(f"random-{n}")
            assert len(cache._manifests) <= 64
        assert (await cache.manifest("noise")).ref == published.ref  # a known name is read again, still found

    asyncio.run(scenario())


class CountingStore:
    """A store that counts the reads of each key (test double around the real one)."""

    def __init__(self, store: FileStore):
        self.store = store
        self.reads: Counter[str] = Counter()

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def get_bytes(self, key: str) -> bytes:
        self.reads[key] += 1
        return self.store.get_bytes(key)


def test_followers_of_a_job_share_one_store_read_per_tick_and_see_every_change(tmp_path: Path) -> None:
    followers, interval = 20, 0.1
    with TestClient(create_app(management_settings(tmp_path, training_enabled=False))) as client:
        gateway = client.app.state.gateway  # type: ignore[attr-defined]
        registry = gateway.registry
        counting = registry.store = CountingStore(registry.store)
        job = _job(registry, "followed", JobStatus.running)
        streams: list[str] = []

        def follow() -> None:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            reply = client.get(f"/jobs/{job.id}/events?interval={interval}", headers=auth)
            streams.append(reply.text)

        threads = [threading.Thread(target=follow) for _ in range(followers)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for step in (1, 2, 3):
            time.sleep(1.0)  # pacing, so every follower's tick comes between two changes
            registry.update_job(
                job.id, lambda r, s=step: r.model_copy(update={"progress": r.progress.model_copy(update={"step": s})})
            )
        time.sleep(1.0)
        registry.update_job(job.id, lambda r: r.model_copy(update={"status": JobStatus.succeeded}))
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.monotonic() - started
    assert len(streams) == followers
    for text in streams:
        seen = [json.loads(line.removeprefix("data: ")) for line in text.splitlines() if line.startswith("data: ")]
        assert [(e["status"], e["progress"]["step"]) for e in seen] == [
            ("running", 0), ("running", 1), ("running", 2), ("running", 3), ("succeeded", 3)
        ]
    # About one read per tick for all of them together (before: one per follower per tick, ~20x as many).
    ticks = elapsed / interval
    print(f"{followers} followers, {ticks:.0f} ticks: {counting.reads[f'jobs/{job.id}.json']} reads of the record")
    assert counting.reads[f"jobs/{job.id}.json"] <= 2 * ticks + 10, (counting.reads, ticks)


def test_engine_args_pin_the_xgrammar_backend_with_no_fallback() -> None:
    from service.engine.core import Engine

    args = Engine(Settings()).engine_args()  # type: ignore[call-arg]
    assert args.structured_outputs_config.backend == "xgrammar"  # "auto" fell back to guidance: 16.8 GB


def test_requests_waiting_for_the_tokenizer_count_against_max_queue() -> None:
    import threading
    from types import SimpleNamespace

    from service.engine.core import Engine
    from service.errors import from_domain

    engine = Engine(Settings(max_queue=2))  # type: ignore[call-arg]
    engine._llm = SimpleNamespace(errored=False)  # admission only: no vLLM needed
    release = threading.Event()

    async def scenario() -> None:
        waiting = [asyncio.ensure_future(engine.tokenize(lambda: release.wait(60))) for _ in range(2)]
        await asyncio.sleep(0.2)
        assert engine.in_flight == 2
        with pytest.raises(Overloaded) as refused:
            engine.admit()
        assert from_domain(refused.value).status == 429
        release.set()
        await asyncio.gather(*waiting)
        assert engine.in_flight == 0
        engine.admit()

    asyncio.run(scenario())


# ------------------------------------------------------------------ a streamed answer at the edge


class _Lease:
    released = 0

    def release(self) -> None:
        self.released += 1


def _held_stream(events: list[str], fail: Exception | None = None) -> tuple[object, _Lease, Metrics]:
    """A chat-like stream inside `Work.held`, over a target holding a lease, metered on a real Metrics."""
    from service.inference.pipeline import Target, Work

    metrics, lease = Metrics(), _Lease()
    target = Target("skill", None, lease=lease, meter=metrics.meter("skill"))  # type: ignore[arg-type]
    work = Work(None, target, [[1]], [None], "chatcmpl-x")  # type: ignore[arg-type]

    async def stream():  # type: ignore[no-untyped-def]
        with work.held():
            for event in events:
                yield event
            if fail is not None:
                raise fail

    return stream(), lease, metrics


def _outcomes(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for family in metrics.model_requests.collect() for s in family.samples if s.name.endswith("_total")
    }


def test_a_stream_that_fails_midway_tells_the_client_in_band_and_releases_its_adapter() -> None:
    from adapters.errors import InvalidRequest
    from service.api.answers import in_band_errors

    async def read(events: object) -> list[str]:
        return [event async for event in in_band_errors(events)]  # type: ignore[arg-type]

    stream, lease, metrics = _held_stream(["data: 1\n\n"], InvalidRequest("too long", param="messages", code="x"))
    sent = asyncio.run(read(stream))
    error = json.loads(sent[1].removeprefix("data: "))["error"]
    assert sent[0] == "data: 1\n\n" and sent[-1] == "data: [DONE]\n\n"
    assert (error["message"], error["param"], error["code"]) == ("too long", "messages", "x")
    assert lease.released == 1 and _outcomes(metrics) == {"error": 1.0}

    stream, lease, metrics = _held_stream([], RuntimeError("engine died"))
    error = json.loads(asyncio.run(read(stream))[0].removeprefix("data: "))["error"]
    assert (error["type"], error["message"]) == ("server_error", "generation failed: RuntimeError")
    assert lease.released == 1

    stream, lease, metrics = _held_stream(["data: 1\n\n", "data: [DONE]\n\n"])
    assert asyncio.run(read(stream))[-1] == "data: [DONE]\n\n"
    assert lease.released == 1 and _outcomes(metrics) == {"ok": 1.0}


def test_a_client_that_goes_away_mid_stream_releases_the_adapter_at_once_and_counts_an_error() -> None:
    """Closing the edge's stream closes the answer's own stream there and then, not whenever it is collected."""
    from service.api.answers import in_band_errors

    stream, lease, metrics = _held_stream(["data: 1\n\n", "data: 2\n\n"])

    async def leave_after_one() -> None:
        edge = in_band_errors(stream)  # type: ignore[arg-type]
        assert await edge.__anext__() == "data: 1\n\n"
        await edge.aclose()
        assert lease.released == 1

    asyncio.run(leave_after_one())
    assert _outcomes(metrics) == {"error": 1.0}
