"""The two lifecycles skillserve stores, as data: a training job's statuses and an adapter version's states.

Every writer of a job's status (the trainer, the local and Kubernetes runners) goes through `advance`, which
refuses a move the table does not allow and writes by compare-and-swap; docs/gateway.md draws its state
diagrams from these tables (`python -m adapters.lifecycle` prints them, and a test keeps the two in step).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from adapters.errors import NotFound
from adapters.schema import JobEvent, JobRecord, JobStatus

log = logging.getLogger("skillserve.lifecycle")

Q, R, S, F, C = JobStatus.queued, JobStatus.running, JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled

# (from, to): why. A move not listed is refused, so a late writer never undoes a verdict: a trainer's progress
# never overwrites a cancel, a runner's "it died" never overwrites the trainer's own result.
JOB_TRANSITIONS: dict[tuple[JobStatus, JobStatus], str] = {
    (Q, R): "the trainer starts",
    (Q, F): "the runner cannot start it, or the gateway restarted",
    (Q, C): "cancelled while queued",
    (R, R): "the trainer writes progress",
    (R, S): "the trainer published the adapter",
    (R, F): "training failed, the trainer died, or a limit was exceeded",
    (R, C): "cancelled while running",
    # The adapter is published: that is the truth even when a cancel landed during the upload.
    (C, S): "published before the cancel took effect",
}


class AdapterState:
    """Names of an adapter version's states (strings, so the docs can draw them)."""

    uploading = "uploading"  # blobs going up, no manifest: invisible to every reader
    published = "published"  # manifest written (conditionally): servable on every replica
    deleted = "deleted"  # manifest removed first, then the blobs


# An adapter version's lifecycle in the store. The gateway's tiers below it (store -> disk -> engine) are a cache.
ADAPTER_TRANSITIONS: dict[tuple[str, str], str] = {
    ("uploading", "published"): "the manifest's conditional write wins",
    ("uploading", "deleted"): "the manifest write lost (the loser removes its blobs), or the publisher crashed",
    ("published", "deleted"): "deleted through the API (aliases off it first, then the manifest)",
}


def allowed(current: JobStatus, target: JobStatus) -> bool:
    return (current, target) in JOB_TRANSITIONS


def advance(registry: Any, job_id: str, status: JobStatus, **fields: Any) -> JobRecord | None:
    """Move a job to `status` (with `fields` such as error, progress, metrics) if the table allows it from the
    stored status; returns the record written, or None when the move is not allowed or the job is gone.

    A compare-and-swap of one record (`Registry.update_job`): if another process wrote it between this read
    and this write, the write is refused and the move is judged again on what that process wrote. So a late
    writer never undoes a verdict, however the two interleave."""

    def move(record: JobRecord) -> JobRecord | None:
        if not allowed(record.status, status):
            log.info("job %s: %s -> %s not allowed; left %s", job_id, record.status.value, status.value,
                     record.status.value)
            return None
        now = time.time()
        update: dict[str, Any] = {"status": status, **fields}
        if status is JobStatus.running and record.status is JobStatus.queued:
            update.setdefault("started_at", now)
        if status.finished:
            update.setdefault("finished_at", now)
            if status is JobStatus.succeeded:
                update["error"] = None
        if status is not record.status:
            # Every status change is in the job's history, whoever made it (the fine-tuning API's events show it).
            events = list(update.get("events", record.events))
            error = update.get("error", record.error)
            said = f"{status.value}: {JOB_TRANSITIONS[(record.status, status)]}" + (f" ({error})" if error else "")
            events.append(JobEvent(at=now, level="error" if status is JobStatus.failed else "info", message=said))
            update["events"] = events
        return record.model_copy(update=update)

    try:
        written: JobRecord | None = registry.update_job(job_id, move)
    except NotFound:
        return None
    return written


def mermaid(transitions: dict[tuple[Any, Any], str], start: str) -> str:
    """A Mermaid state diagram of a transition table (what docs/gateway.md shows)."""
    lines = ["stateDiagram-v2", f"    [*] --> {start}"]
    for (a, b), why in transitions.items():
        lines.append(f"    {a} --> {b}: {why}")
    return "\n".join(lines)


def diagrams() -> str:
    return (
        "```mermaid\n" + mermaid(ADAPTER_TRANSITIONS, AdapterState.uploading) + "\n```\n\n"
        "```mermaid\n" + mermaid({(a.value, b.value): w for (a, b), w in JOB_TRANSITIONS.items()}, Q.value)
        + "\n```\n"
    )


if __name__ == "__main__":
    print(diagrams(), end="")
