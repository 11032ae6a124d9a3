"""Faults lose nothing: a crash mid-download, a trainer killed mid-run, a gateway killed and restarted,
an object store that goes away and comes back, and SIGTERM while streams are open.

The slow tests run one real gateway (`python -m service`, real vLLM) on an S3 store served by its own moto
server over loopback, so the store can be stopped and started under it. Training jobs use many steps and
are killed or cancelled after their first progress write: no test waits for a full training run.

These tests stop only processes they started: the gateway they launched, and the processes it launched in
turn (engine core, trainers), found by a marker in their environment, never by name or command line alone.
A developer's own gateway and its training on the same machine are left alone. Waits are on events (a job
record, a process exit), with generous limits that only guard against a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from adapters.models import DEFAULT_MODEL, sha256_file
from adapters.registry import Registry
from adapters.store import FileStore, S3Store
from service.engine.adapter_cache import MANIFEST_TTL_S, AdapterCache
from service.metrics import Metrics
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, REPO, free_port, gateway_env, publish_adapter
from tests.shout import shout_rows

QUESTION = [{"role": "user", "content": "Say hi."}]
# Set in the gateway's environment by these tests and inherited by everything it starts (engine core, trainers).
MARKER_VAR = "SKILLSERVE_TEST_PROCESS"
# Limits on waits for events that must happen: long enough for a machine under heavy load, never a race.
HANG_GUARD_S = 900

# ------------------------------------------------------------------------ crash mid-download

# A real AdapterCache filling a real cache directory; the process SIGKILLs itself half-way through
# writing the weights, exactly where a power cut or an OOM kill would hit.
CRASH_MID_DOWNLOAD = """
import asyncio, os, signal, sys
from pathlib import Path
from adapters.models import DEFAULT_MODEL, sha256_file
from adapters.registry import Registry
from adapters.store import FileStore
from service.engine.adapter_cache import AdapterCache
from service.metrics import Metrics

store = FileStore(sys.argv[1])
real_get_file = store.get_file

def get_file(key, path):
    if str(path).endswith(".safetensors"):  # the weights, whatever key the store keeps them under
        data = store.get_bytes(key)
        Path(path).write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real_get_file(key, path)

store.get_file = get_file
cache = AdapterCache(Registry(store), Path(sys.argv[2]), 1 << 30, DEFAULT_MODEL, 16, Metrics())

async def main():
    await cache.acquire(await cache.manifest(sys.argv[3]))

asyncio.run(main())
"""


def test_crash_mid_download_leaves_no_corrupted_cache_entry(peft_adapter_dir: Path, tmp_path: Path) -> None:
    store_dir, cache_dir = tmp_path / "store", tmp_path / "cache"
    registry = Registry(FileStore(store_dir))
    manifest = publish_adapter(registry, peft_adapter_dir, "fragile")
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_MID_DOWNLOAD, str(store_dir), str(cache_dir), "fragile"],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
    version_dir = cache_dir / "adapters" / "fragile" / manifest.version
    partial = [p for p in version_dir.parent.iterdir() if p.name.startswith(".")]
    assert partial and not version_dir.exists()  # the half-written copy stayed under its temp name
    # The next process starts from a clean cache and serves a verified copy.
    cache = AdapterCache(registry, cache_dir, 1 << 30, DEFAULT_MODEL, 16, Metrics())
    assert not (cache_dir / "adapters" / "fragile").exists()  # partial downloads are not trusted

    async def fetch() -> Path:
        lease = await cache.acquire(await cache.manifest("fragile"))
        return lease.path

    path = asyncio.run(fetch())
    for name, entry in manifest.files.items():
        assert sha256_file(path / name) == entry.sha256
    assert [p.name for p in path.parent.iterdir()] == [manifest.version]


# ------------------------------------------------------------------------ a gateway on S3 (slow)


class MotoS3:
    """moto's S3 server on a fixed loopback port, so it can be stopped and brought back at one address."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        # moto keeps its buckets in this process, so a restarted server serves the same objects.
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()


class GatewayProcess:
    """`python -m service` on the S3 store; can be killed, terminated and started again on the same port."""

    def __init__(self, root: Path, store_uri: str, aws_env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = gateway_env(store_uri, root / "cache", self.port)
        self.env.update(aws_env)
        self.env["SKILLSERVE_SHUTDOWN_GRACE_S"] = "30"
        self.marker = uuid.uuid4().hex
        self.env[MARKER_VAR] = self.marker
        self.log_path = root / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + HANG_GUARD_S
        while time.monotonic() < deadline:
            assert self.running, f"the gateway exited:\n{self.log_tail()}"
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise AssertionError(f"the gateway was not ready within {HANG_GUARD_S} s:\n{self.log_tail()}")

    def ensure(self) -> None:
        if not self.running:
            self.start()

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would. What the gateway started must die with it (trainers and
        vLLM's engine processes take a parent-death signal; tests/test_engine_lifetime.py checks the engine);
        anything left over is found by this object's marker in `reap`, never by name."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, key: str = ADMIN_KEY) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def processes(self) -> list[psutil.Process]:
        """Every live process this gateway object started, directly or not, including orphans of a killed one."""
        own = []
        for proc in psutil.process_iter():
            # Other users' processes are unreadable (AccessDenied), and processes may exit meanwhile.
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(MARKER_VAR) == self.marker:
                    own.append(proc)
        return own

    def trainers(self, job_id: str) -> list[psutil.Process]:
        """The trainer processes of one job, among this gateway's own processes."""
        found = []
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                cmdline = proc.cmdline()
                if "trainer" in cmdline and "run" in cmdline and any(job_id in arg for arg in cmdline):
                    found.append(proc)
        return found

    def reap(self) -> None:
        """Kill whatever this gateway object started and is still alive; touches no other process."""
        leftovers = self.processes()
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(leftovers, timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    moto = MotoS3()
    moto.start()
    aws = {
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent/skillserve-test-aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/skillserve-test-aws-credentials",
    }
    with pytest.MonkeyPatch.context() as env:
        for key, value in aws.items():
            env.setenv(key, value)
        yield moto
    moto.stop()


@pytest.fixture(scope="module")
def faulty(s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Registry]]:
    import boto3

    bucket = f"skillserve-faults-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=bucket)
    store_uri = f"s3://{bucket}/root"
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    gateway = GatewayProcess(tmp_path_factory.mktemp("faults"), store_uri, aws)
    try:
        yield gateway, Registry(S3Store(store_uri))
    finally:
        gateway.stop()
        gateway.reap()  # no trainer or engine process of ours may outlive the tests; nobody else's is touched


def _submit(http: httpx.Client, name: str) -> str:
    body = {
        "name": name,
        "template": "alpaca",
        "rows": shout_rows(16),
        # Far more steps than any test waits for: each job is killed or cancelled mid-run.
        "hyperparameters": {"max_steps": 5000, "batch_size": 1, "rank": 4, "alpha": 8},
    }
    reply = http.post("/adapters", json=body)
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


def _wait_job(
    http: httpx.Client, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = HANG_GUARD_S
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        reply = http.get(f"/jobs/{job_id}")
        if reply.status_code == 200:
            job = reply.json()
            if done(job):
                return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} never got there: {job}")


def _training(job: dict[str, Any]) -> bool:
    return job["status"] == "running" and job["progress"]["step"] >= 1


def _finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def _cancel(http: httpx.Client, job_id: str) -> None:
    assert http.delete(f"/jobs/{job_id}").status_code == 200
    _wait_job(http, job_id, _finished)


def _chat(http: httpx.Client, model: str) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": model, "messages": QUESTION, "max_tokens": 4})


@pytest.mark.slow
def test_trainer_killed_mid_run_fails_its_job_and_the_queue_goes_on(
    faulty: tuple[GatewayProcess, Registry],
) -> None:
    gateway, registry = faulty
    gateway.ensure()
    with gateway.client() as http:
        first, second = _submit(http, "killed-mid-run"), _submit(http, "next-in-line")
        _wait_job(http, first, _training)
        (trainer,) = gateway.trainers(first)
        trainer.send_signal(signal.SIGKILL)
        job = _wait_job(http, first, _finished)
        assert job["status"] == "failed" and f"code {-signal.SIGKILL}" in job["error"], job
        detail = http.get("/adapters/killed-mid-run").json()
        assert detail["latest"] is None and detail["versions"] == [] and detail["status"] == "failed"
        assert registry.versions("killed-mid-run") == []
        assert _chat(http, "killed-mid-run").status_code == 404
        _wait_job(http, second, lambda j: j["status"] == "running")
        _cancel(http, second)


@pytest.mark.slow
def test_gateway_killed_and_restarted_loses_nothing(
    faulty: tuple[GatewayProcess, Registry], peft_adapter_dir: Path
) -> None:
    gateway, registry = faulty
    gateway.ensure()
    publish_adapter(registry, peft_adapter_dir, "survivor")
    with gateway.client() as http:
        assert _chat(http, "survivor").status_code == 200
        interrupted, queued = _submit(http, "interrupted"), _submit(http, "queued-at-crash")
        _wait_job(http, interrupted, lambda j: j["status"] == "running")
        trainers = gateway.trainers(interrupted)
        assert trainers, "the running job has no trainer process"
    gateway.kill()
    # The trainer dies with its gateway: no orphan keeps training or writing the job record.
    _, alive = psutil.wait_procs(trainers, timeout=HANG_GUARD_S)
    assert not alive, "the trainer outlived its gateway"
    gateway.start()
    with gateway.client() as http:
        job = _wait_job(http, interrupted, _finished)
        assert job["status"] == "failed" and job["error"], job
        _wait_job(http, queued, lambda j: j["status"] == "running")
        assert _chat(http, "survivor").status_code == 200
        assert "survivor" in [m["id"] for m in http.get("/v1/models").json()["data"]]
        _cancel(http, queued)


@pytest.mark.slow
def test_store_outage_fails_training_cleanly_keeps_cached_adapters_serving_and_recovers(
    faulty: tuple[GatewayProcess, Registry], s3: MotoS3, peft_adapter_dir: Path
) -> None:
    gateway, registry = faulty
    gateway.ensure()
    publish_adapter(registry, peft_adapter_dir, "warm")
    publish_adapter(registry, peft_adapter_dir, "cold")
    with gateway.client() as http:
        assert _chat(http, "warm").status_code == 200  # now in this gateway's disk cache
        running = _submit(http, "outage-victim")
        _wait_job(http, running, _training)
        (trainer,) = gateway.trainers(running)
        s3.stop()
        try:
            time.sleep(MANIFEST_TTL_S + 1)  # the warm adapter's cached manifest is now stale: served anyway
            for _ in range(2):
                assert _chat(http, "warm").status_code == 200
                assert _chat(http, DEFAULT_MODEL).status_code == 200
            cold = _chat(http, "cold")
            assert cold.status_code == 503 and int(cold.headers["retry-after"]) > 0, cold.text
            assert cold.json()["error"]["code"] == "store_unavailable"
            refused = http.post("/adapters", json={"name": "during", "rows": shout_rows(2)})
            assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
            # Held until the trainer has met the outage: its next store call (a progress write or cancel check,
            # one step away however long a step takes on a loaded machine) fails, and it exits.
            trainer.wait(timeout=HANG_GUARD_S)
        finally:
            s3.start()
        # Back without a restart: the cold adapter loads, the killed job says why, training works again.
        deadline = time.monotonic() + HANG_GUARD_S
        while _chat(http, "cold").status_code != 200:
            assert time.monotonic() < deadline, "the gateway did not recover when the store came back"
            time.sleep(2)
        job = _wait_job(http, running, _finished)
        assert job["status"] == "failed" and "unreachable" in job["error"], job
        assert registry.versions("outage-victim") == []
        after = _submit(http, "after-outage")
        _wait_job(http, after, lambda j: j["status"] == "running")
        _cancel(http, after)


@pytest.mark.slow
def test_sigterm_stops_accepting_drains_open_streams_then_exits(faulty: tuple[GatewayProcess, Registry]) -> None:
    gateway, _ = faulty
    gateway.ensure()
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 120,
        "ignore_eos": True,
        "stream": True,
    }
    started = threading.Event()
    events: list[str] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{gateway.url}/v1/chat/completions",
            json=body,
            timeout=120,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(120), "the stream never started"
    assert gateway.proc is not None
    gateway.proc.send_signal(signal.SIGTERM)
    assert _refuses_connections(gateway.url), "the gateway kept accepting connections after SIGTERM"
    reader.join(timeout=HANG_GUARD_S)
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # the whole answer, not cut off
    # uvicorn re-raises the signal once its graceful shutdown is done, so -SIGTERM is a clean exit too.
    assert gateway.proc.wait(timeout=HANG_GUARD_S) in (0, -signal.SIGTERM)
    tail = gateway.log_path.read_text(errors="replace").rpartition("Shutting down")[2]
    assert "Application shutdown complete." in tail and "Traceback" not in tail, tail[-3000:]


def _refuses_connections(url: str) -> bool:
    """Whether the server at `url` stops accepting connections (polled: closing its socket takes a moment)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=5)
        except httpx.TransportError:
            return True
        time.sleep(0.2)
    return False
