"""Job records read once for many readers: whoever follows a job (its event stream, OpenAI's events list) shares
one store read per job every `ttl`, instead of a read per follower per tick."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from adapters.schema import FineTune, JobRecord

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
