"""The local runner: trainer subprocesses fed from a queue that lives in the store (queued job records).

Job records are the persistent queue: after a restart, queued jobs run and jobs that were running
(their trainer died with the old gateway) are marked failed with the reason.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from adapters.errors import NotFound, StoreUnavailable
from adapters.lifecycle import advance
from adapters.schema import JobRecord, JobStatus
from service.parent_death import signal_on_parent_death
from service.runners.base import trainer_uri

log = logging.getLogger("skillserve.runner")

INTERRUPTED = "interrupted: the gateway stopped while this job was running; submit it again"
CANCELLED = "cancelled by request"
# How long a worker keeps retrying a job record write while the store is unreachable.
STORE_RETRY_S = 300.0
T = TypeVar("T")


def _die_with_parent() -> None:
    """In the trainer before exec: SIGTERM when the gateway dies, so no orphan trains on or writes records."""
    signal_on_parent_death(signal.SIGTERM)


class LocalRunner:
    """Runs up to `concurrency` trainer subprocesses at once on this machine."""

    name = "local"

    def __init__(
        self,
        registry: Any,
        store_uri: str,
        log_dir: Path,
        concurrency: int = 1,
        command: list[str] | None = None,
        max_seconds: float | None = None,
    ):
        self.registry = registry
        self.store_uri = store_uri
        self.log_dir = log_dir
        self.concurrency = max(1, concurrency)
        self.command = command or [sys.executable, "-m", "trainer", "run"]
        self.max_seconds = max_seconds
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._stopping = False

    # ------------------------------------------------------------ Runner protocol

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for job in reversed(self.registry.list_jobs()):  # oldest first: the queue keeps submission order
            if job.runner != self.name:
                continue
            if job.status is JobStatus.running:
                self._finish(job.id, JobStatus.failed, INTERRUPTED)
            elif job.status is JobStatus.queued:
                self._queue.put(job.id)
        self._stopping = False
        for i in range(self.concurrency):
            worker = threading.Thread(target=self._work, name=f"trainer-runner-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def submit(self, job: JobRecord) -> None:
        self._queue.put(job.id)

    def cancel(self, job_id: str) -> None:
        record = self.registry.get_job(job_id)
        if record.status.finished:
            return
        with self._lock:
            self._cancelled.add(job_id)
            proc = self._procs.get(job_id)
        # The verdict first, then the signal: the trainer's own "stopped" verdict comes later and is refused.
        self._finish(job_id, JobStatus.cancelled, CANCELLED)
        if proc is not None:
            _terminate(proc)

    def stop(self) -> None:
        self._stopping = True
        for _ in self._workers:
            self._queue.put(None)
        with self._lock:
            running = dict(self._procs)
        # A trainer left behind would compete with the next gateway for this machine's CPUs.
        for job_id, proc in running.items():
            self._finish(job_id, JobStatus.failed, INTERRUPTED)
            _terminate(proc)
        for worker in self._workers:
            worker.join(timeout=15)
        self._workers.clear()

    # ------------------------------------------------------------ workers

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping:
                return
            try:
                self._run(job_id)
            except Exception:
                log.exception("runner failed on job %s", job_id)
                try:
                    self._finish(
                        job_id,
                        JobStatus.failed,
                        "the local runner could not run the trainer (see gateway log)",
                    )
                except Exception:  # the worker must outlive any one job, or the queue stops for good
                    log.exception("could not record the failure of job %s", job_id)

    def _run(self, job_id: str) -> None:
        try:
            record = self.registry.get_job(job_id)
        except NotFound:
            return
        if record.status is not JobStatus.queued:
            return  # cancelled while queued, or picked up elsewhere
        log_path = self.log_dir / f"{job_id}.log"
        command = [*self.command, trainer_uri(self.registry, self.store_uri, job_id)]
        log.info("job %s: starting trainer %s", job_id, " ".join(command))
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
                preexec_fn=_die_with_parent,  # only a prctl call: safe in the forked child
            )
            with self._lock:
                self._procs[job_id] = proc
            try:
                code = proc.wait(timeout=self.max_seconds)
            except subprocess.TimeoutExpired:
                # The verdict before the signal, so it is the one that stands (the table refuses failed -> failed).
                reason = f"exceeded the wall-clock limit of {self.max_seconds:g} s (max_job_seconds); stopped"
                self._finish(job_id, JobStatus.failed, reason)
                _terminate(proc)
                code = proc.returncode
        with self._lock:
            self._procs.pop(job_id, None)
            cancelled = job_id in self._cancelled
        if cancelled:
            # Again, now that the trainer has exited. Job writes are compare-and-swap, so a progress write of the
            # trainer's cannot land over the cancel; but on an S3-compatible store that ignores If-Match one
            # could put the job back to running, with nothing left to finish it. Otherwise this is refused.
            self._finish(job_id, JobStatus.cancelled, CANCELLED)
            return
        if self._stopping:
            return
        record = self._retrying(lambda: self.registry.get_job(job_id))
        if record.status.finished:
            log.info("job %s: %s", job_id, record.status.value)
            return
        tail = _tail(log_path)
        reason = f"trainer exited with code {code} without finishing the job" + (f": {tail}" if tail else "")
        self._finish(job_id, JobStatus.failed, reason)

    def _retrying(self, call: Callable[[], T]) -> T:
        """`call()`, retried while the store is unreachable, so a verdict is written once it is back."""
        deadline = time.monotonic() + STORE_RETRY_S
        while True:
            try:
                return call()
            except StoreUnavailable as exc:
                if time.monotonic() > deadline or self._stopping:
                    raise
                log.warning("store unreachable, retrying in 2 s: %s", exc)
                time.sleep(2)

    def _finish(self, job_id: str, status: JobStatus, error: str) -> None:
        if self._retrying(lambda: advance(self.registry, job_id, status, error=error)) is not None:
            log.info("job %s: %s (%s)", job_id, status.value, error)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, limit: int = 600) -> str:
    """The last meaningful lines of a trainer log, for the job's error."""
    try:
        text = path.read_bytes()[-4000:].decode("utf-8", "replace").strip()
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-limit:]
