"""One training job end to end: job record in, adapter and manifest out, status written all along."""

from __future__ import annotations

import logging
import signal
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from adapters.dataset import Dataset, parse_dataset
from adapters.errors import InvalidAdapter, SkillserveError
from adapters.lifecycle import advance
from adapters.models import resolve_model, weights_hash
from adapters.parents import inherited
from adapters.registry import Registry, new_manifest, open_registry, parse_job_uri
from adapters.schema import (
    DEFAULT_PROJECT,
    AuditActor,
    AuditEntry,
    Checkpoint,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    LoraInfo,
    Manifest,
    Phase,
    Progress,
    new_audit_id,
    parse_ref,
)
from adapters.servable import MAX_RANK, base_linear_shapes, check_files
from adapters.templates import ChatTemplate, get_template
from trainer import distributed
from trainer.evaluate import check_min_score
from trainer.gate import check_training_gate
from trainer.loop import Cancelled, Hooks, TrainingMethod, TrainResult, train
from trainer.methods import method_for

log = logging.getLogger("skillserve.trainer")
REPORT_EVERY_S = 1.0
CANCEL_CHECK_EVERY_S = 2.0


class Terminated(Exception):
    """The process got SIGTERM (a cancel, or a Kubernetes eviction)."""


def trained_manifest(
    result: TrainResult, template: ChatTemplate, *, name: str, version: str, base_model_id: str, base_dir: Path,
    dataset_sha256: str | None, dataset_rows: int | None, job_id: str | None = None, parent: str | None = None,
) -> Manifest:
    """The manifest of a freshly trained adapter, whose files were checked by the rules every servable adapter
    meets (adapters/servable.py); `files` is filled in when it is published."""
    hp = result.hyperparameters
    lora = LoraInfo(rank=hp["rank"], alpha=hp["alpha"], dropout=hp["dropout"], target_modules=result.target_modules)
    manifest = new_manifest(
        name, template, lora, base_model=base_model_id, base_dir=base_dir, version=version,
        dataset_sha256=dataset_sha256, dataset_rows=dataset_rows, metrics=result.metrics, job_id=job_id,
        hyperparameters=hp, parent=parent,
    )
    check_files(result.adapter_dir, manifest, MAX_RANK, base_linear_shapes(base_dir))
    return manifest


class JobReporter:
    """Writes progress into the job record at most once a second (at once for a new phase, eval loss or the last
    step, which followers wait for), and notices a cancel made elsewhere."""

    def __init__(self, registry: Registry, record: JobRecord):
        self.registry, self.record = registry, record
        self._last_write = 0.0
        self._last_check = time.monotonic()
        self._refused = False

    def save(self) -> None:
        written = advance(
            self.registry, self.record.id, JobStatus.running, progress=self.record.progress,
            metrics=self.record.metrics, hyperparameters=self.record.hyperparameters, events=self.record.events,
            checkpoints=self.record.checkpoints,
        )
        # Refused: the job was finished elsewhere (a cancel, a runner's verdict); training stops at the next check.
        self._refused = written is None
        self._last_write = time.monotonic()

    def report(self, progress: Progress) -> None:
        previous, self.record.progress = self.record.progress, progress
        news = (progress.phase, progress.eval_loss) != (previous.phase, previous.eval_loss)
        due = time.monotonic() - self._last_write >= REPORT_EVERY_S
        if news or due or (progress.total_steps and progress.step >= progress.total_steps):
            self.save()

    def phase(self, phase: Phase) -> None:
        self.report(self.record.progress.model_copy(update={"phase": phase, "eta_seconds": None}))

    def plan(self, hyperparameters: dict[str, Any]) -> None:
        self.record.hyperparameters = hyperparameters
        auto = hyperparameters.get("auto_chosen") or []
        chosen = ", ".join(f"{name} {hyperparameters[name]}" for name in auto)
        self.note(JobEvent(message=f"training {hyperparameters.get('total_steps')} steps"
                           + (f"; chosen from the data: {chosen}" if chosen else "")))

    def note(self, event: JobEvent) -> None:
        """Add to the job's history: messages are written at once, step figures with the next progress write."""
        self.record.events.append(event)
        if event.type == "message":
            self.save()

    def checkpoints(self, checkpoints: list[Checkpoint]) -> None:
        self.record.checkpoints = checkpoints

    def cancelled(self) -> bool:
        if self._refused:
            return True
        if time.monotonic() - self._last_check < CANCEL_CHECK_EVERY_S:
            return False
        self._last_check = time.monotonic()
        return self.registry.get_job(self.record.id).status == JobStatus.cancelled


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated("terminated by SIGTERM")


def run_job(job_uri: str) -> int:
    """Run the job at `job_uri`; returns the process exit code (0 succeeded or already finished, 1 failed).

    Under torchrun every rank trains; rank 0 alone writes the record and publishes (trainer/distributed.py)."""
    store_uri, job_id = parse_job_uri(job_uri)
    here = distributed.init()
    try:
        return _run_main(store_uri, job_id) if here.main else _run_rank(store_uri, job_id)
    finally:
        distributed.shutdown()


def _prepare(registry: Registry, spec: JobSpec) -> tuple[Path, ChatTemplate, Dataset]:
    """Base model, template and dataset, the same on every rank; rank 0 first, so only it fetches the model."""
    with distributed.main_first():
        base_dir = resolve_model(spec.base_model)
    template = load_template(spec.template, base_dir)
    dataset = parse_dataset(
        registry.get_dataset(spec.dataset_uri), max_bytes=1 << 40, max_rows=1 << 40, method=spec.method.type
    )
    return base_dir, template, dataset


def _validation_rows(registry: Registry, spec: JobSpec, method: TrainingMethod) -> list[Any] | None:
    """The job's own validation rows (OpenAI's `validation_file`), or None to hold out a split of the training rows."""
    if spec.validation_uri is None:
        return None
    held_out = parse_dataset(
        registry.get_dataset(spec.validation_uri), max_bytes=1 << 40, max_rows=1 << 40, method=spec.method.type
    )
    return method.examples(held_out)


def _audit_published(registry: Registry, job_id: str, manifest: Manifest) -> None:
    """The audit log's entry for the version a job published: the gateway's own work, outside any request (the job's
    creation has its own entry, naming the job), in the job's project's log. A store that refuses it costs the entry,
    never the job."""
    at = time.time()
    entry = AuditEntry(
        id=new_audit_id(at), at=at, actor=AuditActor(role="runner", project=registry.project),
        action="adapter.publish", object_id=manifest.ref, params={"job_id": job_id}, outcome="succeeded",
    )
    try:
        registry.for_project(DEFAULT_PROJECT).put_audit(entry)  # every project's log lies at the root
    except Exception as exc:  # noqa: BLE001 - the version is published whatever the audit log's store says
        log.warning("audit entry for %s (job %s) not written: %s: %s", manifest.ref, job_id, type(exc).__name__, exc)


def _train(spec: JobSpec, registry: Registry, base_dir: Path, template: ChatTemplate, dataset: Dataset, out_dir: Path,
           hooks: Hooks) -> TrainResult:
    """The job's method (trainer/methods.py) on the shared loop, with its validation rows when it has them, from
    its parent adapter's weights when it names one."""
    method = method_for(spec.method)
    held_out = _validation_rows(registry, spec, method)
    hp = spec.hyperparameters
    with tempfile.TemporaryDirectory(prefix="skillserve-parent-") as tmp:
        start_from = None
        if spec.parent is not None:
            parent = registry.manifest(*parse_ref(spec.parent))
            if parent.base_model_sha256 != weights_hash(base_dir):
                raise InvalidAdapter(f"{spec.parent} was trained on other base weights than {spec.base_model_id}'s")
            hp = inherited(hp, parent.lora, spec.parent)
            start_from = registry.fetch(parent, Path(tmp) / "parent")
            hooks.note(JobEvent(message=f"continuing from {spec.parent}: its LoRA weights (rank {parent.lora.rank}, "
                                f"{len(parent.lora.target_modules)} target modules) and its template"))
        return train(method, base_dir, template, method.examples(dataset), hp, out_dir, held_out, hooks, start_from)


def _run_rank(store_uri: str, job_id: str) -> int:
    """A rank other than 0: train in step with the others, write nothing to the store."""
    registry = open_registry(store_uri)
    record = registry.get_job(job_id)
    if record.status.finished:  # rank 0 sees the same and stops too
        return 0
    try:
        base_dir, template, dataset = _prepare(registry, record.spec)
        with tempfile.TemporaryDirectory(prefix="skillserve-adapter-") as tmp:
            _train(record.spec, registry, base_dir, template, dataset, Path(tmp) / "adapter", Hooks(progress_bar=False))
        return 0
    except Cancelled:
        return 0
    except Exception:  # rank 0 records the job's fate; this rank's reason goes to its log
        log.error("job %s, rank %d failed\n%s", job_id, distributed.world().rank, traceback.format_exc())
        return 1


def _run_main(store_uri: str, job_id: str) -> int:
    registry = open_registry(store_uri)
    record = registry.get_job(job_id)
    if record.status.finished:
        log.info("job %s is already %s; nothing to do", job_id, record.status.value)
        return 0
    spec = record.spec
    started = advance(registry, job_id, JobStatus.running, error=None, progress=Progress(phase=Phase.validating))
    if started is None:
        log.info("job %s cannot start from %s; nothing to do", job_id, registry.get_job(job_id).status.value)
        return 0
    record = started
    reporter = JobReporter(registry, record)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        base_dir, template, dataset = _prepare(registry, spec)
        with tempfile.TemporaryDirectory(prefix="skillserve-adapter-") as tmp:
            hooks = Hooks(
                report=reporter.report, should_stop=reporter.cancelled, progress_bar=False, on_plan=reporter.plan,
                note=reporter.note, on_checkpoints=reporter.checkpoints,
            )
            result = _train(spec, registry, base_dir, template, dataset, Path(tmp) / "adapter", hooks)
            if registry.get_job(job_id).status == JobStatus.cancelled:
                raise Cancelled("job cancelled")
            record.metrics = dict(result.metrics)  # kept when the guard below fails the job: the figures say why
            check_min_score(result.metrics, spec.hyperparameters.min_score)
            if spec.eval_gate is not None:
                reporter.phase(Phase.evaluating)
                gated = check_training_gate(
                    registry, spec.eval_gate, f"{spec.name}@{spec.version}", job_id, template, base_dir,
                    result.adapter_dir,
                )
                result.metrics.update(gated)
                record.metrics = dict(result.metrics)
            reporter.phase(Phase.publishing)
            manifest = trained_manifest(
                result, template, name=spec.name, version=spec.version, base_model_id=spec.base_model_id,
                base_dir=base_dir, dataset_sha256=spec.dataset_sha256, dataset_rows=spec.dataset_rows, job_id=job_id,
                parent=spec.parent,
            )
            published = registry.publish(manifest, result.adapter_dir)
            _audit_published(registry, job_id, published)
            record.checkpoints = _stored(registry, job_id, result, published.version)
        record.metrics = {**result.metrics, "adapter": published.ref}
        record.status = JobStatus.succeeded
        return 0
    except Cancelled:
        record.status, record.error = JobStatus.cancelled, record.error or "cancelled"
        return 0
    except (Terminated, KeyboardInterrupt) as exc:
        record.status, record.error = JobStatus.failed, f"trainer stopped: {exc or 'interrupted'}"
        return 1
    except SkillserveError as exc:
        record.status, record.error = JobStatus.failed, f"{type(exc).__name__}: {exc}"
        return 1
    except Exception as exc:  # the job record must say why, whatever went wrong
        log.error("job %s failed\n%s", job_id, traceback.format_exc())
        record.status, record.error = JobStatus.failed, f"{type(exc).__name__}: {exc}"
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        # The table decides: a cancel or a runner's verdict recorded meanwhile stands, unless the adapter was
        # published (cancelled -> succeeded).
        advance(
            registry, job_id, record.status, error=record.error, progress=record.progress, metrics=record.metrics,
            hyperparameters=record.hyperparameters, events=record.events, checkpoints=record.checkpoints,
        )


def _stored(registry: Registry, job_id: str, result: TrainResult, version: str) -> list[Checkpoint]:
    """The job's checkpoints once published: the kept one names its version, the others kept are uploaded."""
    stored = {step: registry.store_checkpoint(job_id, step, path) for step, path in result.kept.items()}
    return [
        c.model_copy(update={"version": version if c.best else None, "stored": stored.get(c.step)})
        for c in result.checkpoints
    ]


def load_template(name: str, base_dir: Path) -> ChatTemplate:
    """A built-in template by name; `base` is the base model's own, from its tokenizer."""
    tokenizer: Any = None
    if name == "base":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_dir)
    return get_template(name, tokenizer)
