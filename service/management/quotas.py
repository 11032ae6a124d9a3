"""A project's training and storage quotas (adapters/limits.py), checked where work is created: training jobs at once
and training tokens per day when a job is created, stored bytes when a file is uploaded. Counted from the records in
the store, so every replica counts the same; two replicas creating jobs at the same instant may each pass the check
(at most one job or file per replica over)."""

from __future__ import annotations

import asyncio
import math
import time

from adapters.errors import InvalidRequest, RateLimited
from adapters.limits import DAY, CallerLimits, Limits
from adapters.schema import JobRecord
from service.gateway import Gateway


def check_jobs(jobs: list[JobRecord], limits: Limits, project: str, tokens: int, now: float) -> None:
    """429 when the project has `concurrent_jobs` jobs queued or running, or when a job of `tokens` planned tokens
    would take its jobs created in the last 24 hours past `training_tokens_per_day` (400 if it never could)."""
    if limits.concurrent_jobs is not None:
        pending = sum(not job.status.finished for job in jobs)
        if pending >= limits.concurrent_jobs:
            raise RateLimited(
                f"project {project!r} has {pending} training jobs queued or running; its limit is "
                f"{limits.concurrent_jobs} (concurrent_jobs): retry when one finishes",
                retry_after=60, kind="quota", code="concurrent_jobs_exceeded",
            )
    per_day = limits.training_tokens_per_day
    if per_day is None:
        return
    if tokens > per_day:
        raise InvalidRequest(
            f"this job would train on about {tokens} tokens; project {project!r} may train on {per_day} a day "
            "(training_tokens_per_day)", param="hyperparameters", code="job_too_large",
        )
    recent = sorted((job.created_at, job.spec.planned_tokens or 0) for job in jobs if job.created_at > now - DAY)
    used = sum(planned for _, planned in recent)
    if used + tokens <= per_day:
        return
    # Waiting lifts this: the oldest jobs of the last day age out of it.
    over, wait = used + tokens - per_day, float(DAY)
    for created, planned in recent:
        over -= planned
        if over <= 0:
            wait = created + DAY - now
            break
    raise RateLimited(
        f"project {project!r} has planned {used} training tokens in the last 24 hours and this job {tokens} more; its "
        f"limit is {per_day} (training_tokens_per_day)",
        retry_after=max(1, math.ceil(wait)), kind="quota", code="training_tokens_exceeded",
    )


async def check_training(gw: Gateway, caller: CallerLimits | None, tokens: int) -> None:
    """The caller's project's job quotas over the jobs in its store (off the event loop); None: no quotas."""
    limits = caller.project_limits if caller is not None else Limits()
    if caller is None or (limits.concurrent_jobs is None and limits.training_tokens_per_day is None):
        return
    jobs = await asyncio.to_thread(gw.registry.list_jobs)
    check_jobs(jobs, limits, caller.project, tokens, time.time())


async def check_storage(gw: Gateway, caller: CallerLimits | None, adding: int) -> None:
    """429 when `adding` bytes would take the caller's project's uploaded files past `stored_bytes`."""
    limits = caller.project_limits if caller is not None else Limits()
    if caller is None or limits.stored_bytes is None:
        return
    stored = await asyncio.to_thread(lambda: sum(f.bytes for f in gw.registry.list_files()))
    if stored + adding > limits.stored_bytes:
        raise RateLimited(
            f"project {caller.project!r} stores {stored} bytes of files; this upload of {adding} bytes would pass its "
            f"limit of {limits.stored_bytes} (stored_bytes): delete files first",
            retry_after=3600, kind="quota", code="storage_quota_exceeded",
        )
