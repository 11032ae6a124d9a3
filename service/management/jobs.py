"""Training jobs, the use cases behind /jobs: list, read, follow, cancel, publish a kept checkpoint; and the one
check that training runs here at all (`runner`).

Job records are read once for many readers (JobReads): whoever follows a job (its event stream, OpenAI's events
list) shares one store read per job every `ttl`, instead of a read per follower per tick."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.errors import NotFound, TrainingDisabled, WrongRunner
from adapters.schema import JOB_ID_RE, Checkpoint, FineTune, FineTunedModel, JobRecord, Manifest, check_job_id
from service.protocol.adapters import JobList, JobView

if TYPE_CHECKING:
    from service.gateway import Gateway
    from service.runners.base import Runner

# The shortest interval a follower of GET /jobs/{id}/events may ask for: polling faster reads nothing newer.
JOB_READ_TTL_S = 0.1
# Jobs whose last read is kept; an entry is worth keeping only for `ttl`, so this bounds memory, not freshness.
JOBS_KEPT = 1024


@dataclass
class _Read:
    started: float  # when the read began: the record is at least this fresh
    record: JobRecord
    fine_tune: FineTune | None


class JobReads:
    """A cached, single-flight read of job records: N concurrent readers of one job cost one store read per `ttl`."""

    def __init__(self, registry: Any, ttl: float = JOB_READ_TTL_S, kept: int = JOBS_KEPT):
        self.registry = registry
        self.ttl = ttl
        self.kept = kept
        self._reads: OrderedDict[str, _Read] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[_Read]] = {}

    async def record(self, job_id: str) -> JobRecord:
        """The job's record as read at most `ttl` ago; NotFound if there is none."""
        return (await self._read(job_id)).record

    async def with_fine_tune(self, job_id: str) -> tuple[JobRecord, FineTune | None]:
        """The record and what the OpenAI API asked for (None for a job made through POST /adapters)."""
        read = await self._read(job_id)
        if read.fine_tune is None:
            # Written once, just after the job record: kept once found, looked for again until then.
            read.fine_tune = await asyncio.to_thread(self.registry.get_fine_tune, job_id)
        return read.record, read.fine_tune

    async def _read(self, job_id: str) -> _Read:
        cached = self._reads.get(job_id)
        if cached is not None and time.monotonic() - cached.started < self.ttl:
            return cached
        task = self._inflight.get(job_id)
        if task is None:
            # A task of its own: a reader that goes away (a client disconnects) never cancels the others' read.
            task = asyncio.get_running_loop().create_task(self._fetch(job_id, cached))
            self._inflight[job_id] = task
            task.add_done_callback(lambda done: self._settled(job_id, done))
        return await asyncio.shield(task)

    async def _fetch(self, job_id: str, previous: _Read | None) -> _Read:
        started = time.monotonic()
        record = await asyncio.to_thread(self.registry.get_job, job_id)
        read = self._reads[job_id] = _Read(started, record, previous.fine_tune if previous is not None else None)
        self._reads.move_to_end(job_id)
        while len(self._reads) > self.kept:
            self._reads.popitem(last=False)
        return read

    def _settled(self, job_id: str, task: asyncio.Task[_Read]) -> None:
        self._inflight.pop(job_id, None)
        if not task.cancelled():
            task.exception()  # retrieved: the readers re-raise it, or nobody was left to


JOB_PREFIX = "ftjob-"  # OpenAI's fine-tuning job ids: ftjob-<our job id>


def ftjob_id(job_id: str) -> str:
    return JOB_PREFIX + job_id


def job_id_of(ftjob: str) -> str:
    """Our job id from `ftjob-<id>` (or the bare id); NotFound for anything else, as for an unknown job."""
    job_id = ftjob.removeprefix(JOB_PREFIX)
    if not JOB_ID_RE.fullmatch(job_id):
        raise NotFound(f"fine-tuning job {ftjob!r} not found")
    return job_id


def checkpoint_model(model: str, checkpoint: Checkpoint) -> str:
    """The best checkpoint is the job's model; another is `<model>:ckpt-step-<step>`, servable once published."""
    return model if checkpoint.best else f"{model}:ckpt-step-{checkpoint.step}"


async def publish_checkpoint(gw: Gateway, job: str, step: int) -> Manifest:
    """Publish a kept checkpoint as a new version of the job's adapter; a job from this API also gets its
    `ft:...:ckpt-step-<step>` model id, which serves that version."""
    job_id = job_id_of(job)
    manifest: Manifest = await asyncio.to_thread(gw.registry.publish_checkpoint, job_id, step)
    fine_tune = await asyncio.to_thread(gw.registry.get_fine_tune, job_id)
    record: JobRecord = await asyncio.to_thread(gw.registry.get_job, job_id)
    checkpoint = next((c for c in record.checkpoints if c.step == step), None)
    if fine_tune is not None and checkpoint is not None and not checkpoint.best:
        alias = FineTunedModel(
            id=checkpoint_model(fine_tune.model, checkpoint), name=manifest.name, version=manifest.version,
            job_id=job_id, step=step,
        )
        await asyncio.to_thread(gw.registry.put_fine_tuned_model, alias)
    return manifest


def runner(gw: Gateway) -> Runner:
    """Where this gateway trains; TrainingDisabled (503) when it runs no trainer: every way of starting or
    cancelling training asks here."""
    if gw.runner is None:
        raise TrainingDisabled()
    return gw.runner


async def list_jobs(gw: Gateway) -> JobList:
    return JobList(data=[JobView.of(j) for j in await asyncio.to_thread(gw.registry.list_jobs)])


async def get_job(gw: Gateway, job_id: str) -> JobView:
    check_job_id(job_id)
    return JobView.of(await asyncio.to_thread(gw.registry.get_job, job_id))


async def cancel_job(gw: Gateway, job_id: str) -> JobView:
    """Stop a queued or running job (nothing is published); a finished job is left as it is."""
    job = await asyncio.to_thread(gw.registry.get_job, check_job_id(job_id))
    here = runner(gw)
    if job.runner != here.name:
        raise WrongRunner(f"job {job_id} runs on the {job.runner} runner, this gateway uses {here.name}")
    await asyncio.to_thread(here.cancel, job_id)
    return await get_job(gw, job_id)


async def follow_job(
    gw: Gateway, job_id: str, interval: float, is_disconnected: Callable[[], Awaitable[bool]]
) -> AsyncIterator[str]:
    """A job's Server-Sent Events: one `job` event per change, ending when it finishes or the client goes; NotFound
    before the first event (so before the stream starts) for an unknown job."""
    check_job_id(job_id)
    first = await gw.job_reads.record(job_id)

    async def events() -> AsyncIterator[str]:
        record, seen, last = first, None, ""
        while True:
            if record is not seen:  # a new read of the record: render it (the same read is the same object)
                seen = record
                data = JobView.of(record).model_dump_json()
                if data != last:
                    yield f"event: job\ndata: {data}\n\n"
                    last = data
            if record.status.finished or await is_disconnected():
                return
            await asyncio.sleep(interval)
            record = await gw.job_reads.record(job_id)

    return events()
