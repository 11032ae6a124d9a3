"""Training jobs: jobs/<job-id>.json, changed only by compare-and-swap, and the checkpoints a job kept."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from adapters.errors import NotFound
from adapters.registry.keys import check_filename, checkpoint_prefix, job_key
from adapters.registry.records import RecordShelf
from adapters.registry.versions import adapter_files
from adapters.schema import JobRecord, JobStatus, Manifest
from adapters.store import ObjectStore

log = logging.getLogger("skillserve.registry")

class _Publishes(Protocol):
    """What publishing a checkpoint needs of the registry beside the jobs."""

    def get_job(self, job_id: str) -> JobRecord: ...
    def update_job(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None: ...
    def manifest(self, name: str, version: str | None = None) -> Manifest: ...
    def publish(self, manifest: Manifest, directory: Path) -> Manifest: ...

    @property
    def store(self) -> ObjectStore: ...


class JobBook(RecordShelf):
    """Job records: status, progress, metrics, checkpoints."""

    def put_job(self, record: JobRecord) -> None:
        """Write a job record whole: for a new job. A change to an existing one goes through `update_job`."""
        self.store.put_bytes(job_key(record.id), record.model_dump_json(indent=2).encode())

    def get_job(self, job_id: str) -> JobRecord:
        try:
            data = self.store.get_bytes(job_key(job_id))
        except NotFound:
            raise NotFound(f"job {job_id} not found") from None
        return JobRecord.model_validate_json(data)

    def update_job(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        """Apply `change` to the stored record and write what it returns (None: write nothing), as a
        compare-and-swap: if another process wrote the record in between, it is read again and `change` runs
        on the new one. So no writer (the trainer, a runner, the gateway) ever overwrites what it did not see.
        Returns the record written, or None when `change` declined; NotFound if the job is gone."""
        return self._swap(job_key(job_id), JobRecord, change, f"job {job_id} not found")

    def list_jobs(self) -> list[JobRecord]:
        """Every job record, newest first."""
        records = []
        for key in self.store.list("jobs/"):
            if not key.endswith(".json") or key.count("/") != 1:
                continue
            try:
                records.append(JobRecord.model_validate_json(self.store.get_bytes(key)))
            except NotFound:
                continue
            except ValidationError as exc:
                log.warning("skipping unreadable job record %s: %s", key, exc)
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    # Checkpoints: adapters a job kept beside the one it published, publishable as versions later

    def store_checkpoint(self, job_id: str, step: int, directory: Path) -> str:
        """Upload a kept checkpoint's adapter files; returns its prefix (what `Checkpoint.stored` records)."""
        prefix = checkpoint_prefix(job_id, step)
        for path in adapter_files(directory):
            self.store.put_file(prefix + path.name, path)
        return prefix

    def publish_checkpoint(self: _Publishes, job_id: str, step: int) -> Manifest:
        """Publish the checkpoint a job stored at `step` as a new version of the job's adapter (the manifest of the
        version the job published, with this step's files and figures); NotFound when none was stored."""
        record = self.get_job(job_id)
        checkpoint = next((c for c in record.checkpoints if c.step == step), None)
        if checkpoint is not None and checkpoint.version is not None:
            return self.manifest(record.spec.name, checkpoint.version)
        if checkpoint is None or checkpoint.stored is None:
            raise NotFound(f"job {job_id} kept no checkpoint at step {step}")
        if record.status is not JobStatus.succeeded:
            raise NotFound(f"job {job_id} published no adapter to take the checkpoint's manifest from")
        origin = self.manifest(record.spec.name, record.spec.version)  # what the job published
        metrics = {
            "kept": "checkpoint",
            "kept_step": step,
            "eval_loss": checkpoint.eval_loss,
            "train_loss": checkpoint.train_loss,
            "checkpoint_of": origin.ref,
        }
        manifest = origin.model_copy(
            update={
                "version": f"{record.spec.version}-step{step}",
                "metrics": metrics,
                "files": {},
                "created_at": time.time(),
            }
        )
        with tempfile.TemporaryDirectory(prefix="skillserve-checkpoint-") as tmp:
            directory = Path(tmp)
            for key in self.store.list(checkpoint.stored):
                self.store.get_file(key, directory / check_filename(key.rsplit("/", 1)[-1]))
            completed = self.publish(manifest, directory)

        def record_version(current: JobRecord) -> JobRecord:
            return current.model_copy(
                update={
                    "checkpoints": [
                        c.model_copy(update={"version": manifest.version}) if c.step == step else c
                        for c in current.checkpoints
                    ]
                }
            )

        self.update_job(job_id, record_version)
        return completed
