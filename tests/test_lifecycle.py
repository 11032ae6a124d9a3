"""Job and adapter lifecycles as data: every status write goes through one table, and the docs draw it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.lifecycle import JOB_TRANSITIONS, advance, diagrams
from adapters.registry import Registry
from adapters.schema import JobRecord, JobSpec, JobStatus
from adapters.store import ObjectStore

ROOT = Path(__file__).resolve().parent.parent


def _job(registry: Registry) -> JobRecord:
    spec = JobSpec(
        name="shout", base_model="m", base_model_id="m", dataset_uri="datasets/x.jsonl", dataset_sha256="0",
        dataset_rows=1,
    )
    record = JobRecord(spec=spec)
    registry.put_job(record)
    return record


def test_a_cancel_stands_over_the_trainers_late_progress_and_failure(store: ObjectStore) -> None:
    registry = Registry(store)
    job = _job(registry)
    assert advance(registry, job.id, JobStatus.running) is not None
    assert registry.get_job(job.id).started_at is not None
    assert advance(registry, job.id, JobStatus.cancelled, error="cancelled by request") is not None
    assert advance(registry, job.id, JobStatus.running) is None  # a progress write that lost the race
    assert advance(registry, job.id, JobStatus.failed, error="trainer stopped") is None
    stored = registry.get_job(job.id)
    assert (stored.status, stored.error) == (JobStatus.cancelled, "cancelled by request")
    assert stored.finished_at is not None


def test_a_published_adapter_makes_its_job_succeeded_even_after_a_cancel(store: ObjectStore) -> None:
    registry = Registry(store)
    job = _job(registry)
    advance(registry, job.id, JobStatus.running)
    advance(registry, job.id, JobStatus.cancelled, error="cancelled")
    assert advance(registry, job.id, JobStatus.succeeded, error="ignored") is not None
    stored = registry.get_job(job.id)
    assert (stored.status, stored.error) == (JobStatus.succeeded, None)


class Interleaved:
    """A store through which another process's write lands between the next read and the write that follows
    it, as it can when the trainer and the gateway update one job record at the same moment."""

    def __init__(self, store: ObjectStore, meanwhile: Callable[[], object]):
        self.store, self.meanwhile = store, meanwhile
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        read = self.store.get_tagged(key)
        self.reads += 1
        if self.reads == 1:
            self.meanwhile()
        return read


def test_a_progress_write_that_read_before_a_cancel_does_not_undo_it(store: ObjectStore) -> None:
    registry = Registry(store)
    job = _job(registry)
    advance(registry, job.id, JobStatus.running)
    cancel = Interleaved(store, lambda: advance(registry, job.id, JobStatus.cancelled, error="cancelled by request"))
    trainer = Registry(cancel)  # type: ignore[arg-type]
    # The trainer read `running`, then the cancel landed: its write is refused, read again, and judged again.
    assert advance(trainer, job.id, JobStatus.running, error=None) is None
    assert cancel.reads == 2
    stored = registry.get_job(job.id)
    assert (stored.status, stored.error) == (JobStatus.cancelled, "cancelled by request")


def test_two_writers_of_one_record_both_land(store: ObjectStore) -> None:
    """A runner recording its cluster Job while the trainer starts: neither write overwrites the other."""
    registry = Registry(store)
    job = _job(registry)
    named = Interleaved(
        store, lambda: registry.update_job(job.id, lambda r: r.model_copy(update={"runner_ref": "train-1"}))
    )
    assert advance(Registry(named), job.id, JobStatus.running) is not None  # type: ignore[arg-type]
    stored = registry.get_job(job.id)
    assert (stored.status, stored.runner_ref) == (JobStatus.running, "train-1")
    assert [e.message for e in stored.events] == ["running: the trainer starts"]


@pytest.mark.parametrize("final", [JobStatus.succeeded, JobStatus.failed])
def test_no_verdict_is_overwritten_by_another(store: ObjectStore, final: JobStatus) -> None:
    registry = Registry(store)
    job = _job(registry)
    advance(registry, job.id, JobStatus.running)
    advance(registry, job.id, final, error="first verdict")
    for later in JobStatus:
        assert advance(registry, job.id, later, error="late") is None
    assert registry.get_job(job.id).status is final
    assert all(not a.finished or (a, b) == (JobStatus.cancelled, JobStatus.succeeded) for a, b in JOB_TRANSITIONS)


def test_the_gateway_docs_draw_the_lifecycles_from_the_tables() -> None:
    assert diagrams() in (ROOT / "docs" / "gateway.md").read_text(), "run: python -m adapters.lifecycle"
