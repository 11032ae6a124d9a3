"""OpenAI's fine-tuning jobs over skillserve's one job machinery: create, list, retrieve, cancel, events and
checkpoints, and the `ft:` model names (files: service/management/files.py; deleting a model: models.py).

A job created here is an `adapters.train` job like any from POST /adapters, so GET /jobs/{id} and
GET /adapters/{name} show it too; what only this API names is kept beside it (registry `FineTune`): the files, the
hyperparameters as requested and the `ft:<base>:<owner>:<suffix>:<id>` model id, an alias of the adapter version
the job publishes, which the adapter cache resolves like `name@version` (registry `FineTunedModel`).
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import time
import uuid
from typing import Any, TypeVar

from adapters import auto
from adapters.errors import DatasetError, InvalidRequest, JobRefused, NotFound
from adapters.limits import CallerLimits
from adapters.registry import dataset_key
from adapters.schema import (
    Checkpoint,
    FineTune,
    FineTunedModel,
    Hyperparameters,
    JobEvent,
    JobRecord,
    JobSpec,
    JobStatus,
    Manifest,
    Method,
    StoredFile,
)
from service.engine.adapter_cache import FT_PREFIX
from service.gateway import Gateway
from service.management import adapters as adapter_ops
from service.management import jobs
from service.management.files import PURPOSE
from service.management.jobs import checkpoint_model, ftjob_id, job_id_of
from service.protocol.adapters import CreateAdapterJSON
from service.protocol.common import page
from service.protocol.fine_tuning import (
    CheckpointMetrics,
    CreateFineTuningJob,
    DpoHyperparameters,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    FineTuningJobError,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
    ReinforcementHyperparameters,
    ReinforcementMethod,
    SupervisedHyperparameters,
)

# The suffix becomes part of an adapter name (lowercased) and of a model id split by ':'.
SUFFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")

T = TypeVar("T")


# ---------------------------------------------------------------- jobs


def _method(body: CreateFineTuningJob) -> tuple[str, SupervisedHyperparameters, ReinforcementMethod | None]:
    """The method's type, its hyperparameters and (reinforcement) its grader, from `method` or the deprecated
    top-level `hyperparameters`."""
    if body.method is None:
        return "supervised", body.hyperparameters or SupervisedHyperparameters(), None
    if body.hyperparameters is not None:
        raise InvalidRequest("give hyperparameters in `method` only (the top-level `hyperparameters` is deprecated)",
            param="hyperparameters",
        )
    method = body.method
    given = [name for name in ("supervised", "dpo", "reinforcement") if getattr(method, name) is not None]
    if [name for name in given if name != method.type]:
        raise InvalidRequest(f"method.type is {method.type!r}: give only method.{method.type}", param="method")
    if method.type == "reinforcement":
        if method.reinforcement is None:
            raise InvalidRequest("method reinforcement needs method.reinforcement.grader: the reward its samples are "
                                 "scored by", param="method.reinforcement.grader")
        if method.reinforcement.response_format is not None:
            raise InvalidRequest("method.reinforcement.response_format is not supported: the samples are plain text "
                                 "(send null)", param="method.reinforcement.response_format")
        return "reinforcement", method.reinforcement.hyperparameters, method.reinforcement
    if method.type == "dpo":
        return "dpo", method.dpo.hyperparameters if method.dpo else DpoHyperparameters(), None
    return "supervised", method.supervised.hyperparameters if method.supervised else SupervisedHyperparameters(), None


def _reinforcement(
    requested: ReinforcementHyperparameters, grader: dict[str, Any], rows: int
) -> tuple[Method, list[JobEvent]]:
    """The job's reinforcement method from OpenAI's hyperparameters, and a note for each one accepted unused."""
    method = Method(type="reinforcement", grader=grader)
    if requested.compute_multiplier != "auto":
        method.samples_per_prompt = auto.samples_per_prompt(method, rows, float(requested.compute_multiplier))
    notes = []
    if requested.eval_samples != "auto":
        notes.append(JobEvent(level="warn", message=f"eval_samples={requested.eval_samples} is not used: the "
                              "held-out reward is the grader's score of one greedy answer per held-out prompt"))
    if requested.reasoning_effort != "auto":
        notes.append(JobEvent(level="warn", message=f"reasoning_effort={requested.reasoning_effort!r} is not used: "
                              "the models served here do not reason apart from their answer"))
    return method, notes


def _hyperparameters(requested: SupervisedHyperparameters, seed: int) -> Hyperparameters:
    """Only what was given is set: "auto" stays unset, so the data decides it (adapters/auto.py)."""
    given: dict[str, Any] = {"seed": seed}
    if requested.n_epochs != "auto":
        given["epochs"] = float(requested.n_epochs)
    if requested.batch_size != "auto":
        given["batch_size"] = requested.batch_size
    if isinstance(requested, ReinforcementHyperparameters) and requested.eval_interval != "auto":
        given["eval_interval"] = requested.eval_interval
    return Hyperparameters(**given)


async def _job_file(gw: Gateway, file_id: str, param: str) -> StoredFile:
    try:
        stored: StoredFile = await asyncio.to_thread(gw.registry.get_file, file_id)
    except NotFound:
        raise InvalidRequest(f"invalid {param}: {file_id} does not exist", param=param, code="invalid_file") from None
    if stored.purpose != PURPOSE:
        raise InvalidRequest(f"invalid {param}: {file_id} was not uploaded for fine-tuning", param=param)
    return stored


def _check_request(gw: Gateway, body: CreateFineTuningJob) -> None:
    """What this gateway refuses of a job request before reading any file."""
    if body.integrations:
        raise InvalidRequest("integrations are not supported: send null or []", param="integrations")
    if body.suffix is not None and not SUFFIX_RE.fullmatch(body.suffix):
        raise InvalidRequest(
            "suffix: up to 40 letters, digits, '-' or '_', starting with a letter or digit", param="suffix"
        )


async def create_job(gw: Gateway, body: CreateFineTuningJob, caller: CallerLimits | None = None) -> FineTuningJob:
    """Check the request and its files, then train through `adapters.train` (the job of POST /adapters, in the
    `caller`'s quotas), and keep what this API names beside the job: the files, its hyperparameters and model id."""
    _check_request(gw, body)
    parent, (kind, requested, reinforcement) = await _parent(gw, body.model), _method(body)
    training = await _job_file(gw, body.training_file, "training_file")
    validation = None
    if body.validation_file is not None:
        await _job_file(gw, body.validation_file, "validation_file")
        validation = await asyncio.to_thread(gw.registry.file_content, body.validation_file)
    jobs.runner(gw)
    short = uuid.uuid4().hex[:8]
    suffix = body.suffix or None
    seed = body.seed if body.seed is not None else random.randrange(2**31)
    beta = getattr(requested, "beta", "auto")
    notes: list[JobEvent] = []
    if reinforcement is not None:
        assert isinstance(requested, ReinforcementHyperparameters)
        method, notes = _reinforcement(requested, reinforcement.grader, training.rows)
    else:
        method = Method(type=kind, **({} if beta == "auto" else {"beta": beta}))  # type: ignore[arg-type]
    # A job continuing from an adapter takes its template unless one is asked for (then it must be the same).
    given = {"template": body.template} if parent is None or "template" in body.model_fields_set else {}
    request = CreateAdapterJSON(
        **given,
        name=f"{suffix.lower()}-{short}" if suffix else f"ft-{short}",
        model=parent.ref if parent is not None else None,
        dataset_uri=dataset_key(training.sha256),
        hyperparameters=_hyperparameters(requested, seed),
        method=method,
        metadata=body.metadata or {},
        eval_gate=body.eval_gate,
    )
    multiplier = None if requested.learning_rate_multiplier == "auto" else float(requested.learning_rate_multiplier)
    fine_tune_of = functools.partial(
        FineTune,
        model=f"{FT_PREFIX}{gw.engine.base_model_id}:{gw.owner}:{suffix or ''}:{short}",
        suffix=suffix,
        training_file=training.id,
        validation_file=body.validation_file,
        requested=requested.model_dump(),
        learning_rate_multiplier=multiplier,
        organization_id=gw.owner,
        parent_model=body.model if parent is not None else None,
    )
    try:
        job = await adapter_ops.train(
            gw, request, None, validation=validation, learning_rate_multiplier=multiplier, events=notes,
            grader_param="method.reinforcement.grader", caller=caller,
        )
    except DatasetError as exc:
        if exc.param == "validation":
            raise exc.about("validation_file", f"validation_file {body.validation_file}: ") from None
        raise exc.about("training_file", f"training_file {training.id}: ") from None
    except JobRefused as refused:
        # The runner failed the job with the cluster's reason: it is listed as this API's job, failed.
        await asyncio.to_thread(gw.registry.put_fine_tune, fine_tune_of(job_id=refused.job_id))
        said = f"{refused.reason}; fine-tuning job {ftjob_id(refused.job_id)} is recorded as failed"
        raise refused.said_as(said) from None
    return await _recorded(gw, job, fine_tune_of(job_id=job.id))


async def _parent(gw: Gateway, model: str) -> Manifest | None:
    """The adapter version a job on `model` continues from (None for the base model); a 400 naming `model` when it
    is neither the base nor a published adapter (OpenAI's model_not_available)."""
    if model == gw.engine.base_model_id:
        return None
    try:
        return await asyncio.to_thread(adapter_ops.parent_of, gw, model)
    except NotFound:
        raise InvalidRequest(
            f"model {model!r} cannot be fine-tuned here: this gateway fine-tunes {gw.engine.base_model_id!r} and "
            "the adapters it serves (name@version, an alias or an ft: id)",
            param="model",
            code="model_not_available",
        ) from None


async def _recorded(gw: Gateway, job: JobRecord, fine_tune: FineTune) -> FineTuningJob:
    """Keep what this API names beside a job: its FineTune, and its ft: model id as an alias of its version."""
    await asyncio.to_thread(gw.registry.put_fine_tune, fine_tune)
    alias = FineTunedModel(id=fine_tune.model, name=job.spec.name, version=job.spec.version, job_id=job.id)
    await asyncio.to_thread(gw.registry.put_fine_tuned_model, alias)
    return render_job(gw, job, fine_tune)


def _chosen(spec: JobSpec, **unset: None) -> Hyperparameters:
    """The hyperparameters the trainer uses for `spec` (every "auto" decided from the data, as it decides them)."""
    return auto.choose(spec.hyperparameters.model_copy(update=unset), spec.dataset_rows, spec.method.type)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)


def resolved_hyperparameters(record: JobRecord) -> dict[str, Any]:
    """n_epochs, batch_size and learning_rate_multiplier as trained (and beta for dpo), "auto" resolved."""
    spec = record.spec
    used = _chosen(spec)
    planned = record.hyperparameters  # the trainer's own account, once it started
    epochs = planned.get("epochs", used.epochs)
    batch_size = planned.get("batch_size", used.batch_size)
    rate = planned.get("learning_rate", used.learning_rate)
    data_rate = _chosen(spec, learning_rate=None).learning_rate
    resolved: dict[str, Any] = {
        "n_epochs": _number(epochs) if epochs is not None else "auto",
        "batch_size": batch_size if batch_size is not None else "auto",
        "learning_rate_multiplier": _number(rate / data_rate) if rate and data_rate else "auto",
    }
    if spec.method.type == "dpo":
        resolved["beta"] = _number(spec.method.beta)
    if spec.method.type == "reinforcement":
        samples = planned.get("samples_per_prompt", auto.samples_per_prompt(spec.method, spec.dataset_rows))
        resolved["compute_multiplier"] = _number(samples / auto.samples_per_prompt(Method(
            type="reinforcement", grader=spec.method.grader), spec.dataset_rows))
        interval = planned.get("eval_every_steps", spec.hyperparameters.eval_interval or None)
        resolved["eval_interval"] = interval if interval else "auto"
        resolved["eval_samples"] = "auto"
        resolved["reasoning_effort"] = "auto"
    return resolved


def _model_of(record: JobRecord, fine_tune: FineTune | None) -> str:
    """What the job's model is called: its ft: id, or name@version for a job from POST /adapters."""
    return fine_tune.model if fine_tune is not None else f"{record.spec.name}@{record.spec.version}"


def render_job(gw: Gateway, record: JobRecord, fine_tune: FineTune | None) -> FineTuningJob:
    spec = record.spec
    status = record.status
    hyper = resolved_hyperparameters(record)
    eta = record.progress.eta_seconds
    error = None
    if status is JobStatus.failed:
        error = FineTuningJobError(code="training_failed", message=record.error or "the job failed")
    return FineTuningJob(
        id=ftjob_id(record.id),
        created_at=int(record.created_at),
        error=error,
        fine_tuned_model=_model_of(record, fine_tune) if status is JobStatus.succeeded else None,
        finished_at=int(record.finished_at) if record.finished_at is not None else None,
        hyperparameters=hyper,
        model=(fine_tune.parent_model if fine_tune is not None else None) or spec.parent or spec.base_model_id,
        organization_id=fine_tune.organization_id if fine_tune is not None else gw.owner,
        seed=spec.hyperparameters.seed,
        status=status.value,
        trained_tokens=record.metrics.get("train_tokens") if status.finished else None,
        training_file=fine_tune.training_file if fine_tune is not None else spec.dataset_uri,
        validation_file=fine_tune.validation_file if fine_tune is not None else spec.validation_uri,
        estimated_finish=int(time.time() + eta) if status is JobStatus.running and eta is not None else None,
        metadata=spec.metadata or None,
        method={"type": spec.method.type, spec.method.type: {
            "hyperparameters": hyper, **({"grader": spec.method.grader} if spec.method.grader is not None else {})}},
        user_provided_suffix=fine_tune.suffix if fine_tune is not None else None,
        job_id=record.id,
        adapter=f"{spec.name}@{spec.version}",
    )


def get_job(gw: Gateway, ftjob: str) -> FineTuningJob:
    job_id = job_id_of(ftjob)
    return render_job(gw, gw.registry.get_job(job_id), gw.registry.get_fine_tune(job_id))


def list_jobs(gw: Gateway, after: str | None, limit: int, metadata: dict[str, str]) -> FineTuningJobList:
    """Every job, from this API or POST /adapters, newest first; `metadata` keeps those carrying all its pairs."""
    records = [
        r for r in gw.registry.list_jobs() if all(r.spec.metadata.get(k) == v for k, v in metadata.items())
    ]
    chosen, more = page(records, after, limit, lambda r: ftjob_id(r.id))
    return FineTuningJobList(
        data=[render_job(gw, r, gw.registry.get_fine_tune(r.id)) for r in chosen], has_more=more
    )


async def cancel_job(gw: Gateway, ftjob: str) -> FineTuningJob:
    job_id = job_id_of(ftjob)
    await jobs.cancel_job(gw, job_id)
    return await asyncio.to_thread(get_job, gw, job_id)


# ---------------------------------------------------------------- events and checkpoints


def _history(record: JobRecord, model: str) -> list[JobEvent]:
    """A job's status changes and last figures told from its record, for jobs whose trainer wrote no events."""
    said: list[JobEvent] = []
    if record.started_at is not None:
        said.append(JobEvent(at=record.started_at, message="Fine-tuning job started"))
    progress = record.progress
    if progress.step:
        figures = {"step": progress.step, "total_steps": progress.total_steps, "train_loss": progress.loss,
                   "valid_loss": progress.eval_loss}
        loss = f", training loss={progress.loss:.4f}" if progress.loss is not None else ""
        said.append(JobEvent(at=record.finished_at or record.started_at or record.created_at, type="metrics",
                             message=f"Step {progress.step}/{progress.total_steps}{loss}", data=figures))
    at = record.finished_at or record.created_at
    if record.status is JobStatus.succeeded:
        said.append(JobEvent(at=at, message=f"New fine-tuned model created: {model}"))
        said.append(JobEvent(at=at, message="The job has successfully completed"))
    elif record.status is JobStatus.failed:
        said.append(JobEvent(at=at, level="error", message=f"The job failed: {record.error}"))
    elif record.status is JobStatus.cancelled:
        said.append(JobEvent(at=at, message="The job was cancelled"))
    return said


def _openai_figures(data: dict[str, Any]) -> dict[str, Any]:
    """A metrics event's figures with OpenAI's names beside the trainer's (`valid_loss` for `eval_loss`)."""
    if "eval_loss" in data and "valid_loss" not in data:
        return {**data, "valid_loss": data["eval_loss"]}
    return data


async def list_events(gw: Gateway, ftjob: str, after: str | None, limit: int) -> FineTuningJobEventList:
    """The job's history, newest first: the trainer's messages and step figures, or what its record tells. Clients
    poll this: the record comes from the shared read of the job (one store read per job per 0.1 s, however many)."""
    job_id = job_id_of(ftjob)
    record, fine_tune = await gw.job_reads.with_fine_tune(job_id)
    return await asyncio.to_thread(_events_page, record, _model_of(record, fine_tune), after, limit)


def _events_page(record: JobRecord, model: str, after: str | None, limit: int) -> FineTuningJobEventList:
    job_id = record.id
    created = JobEvent(at=record.created_at, message=f"Created fine-tuning job: {ftjob_id(job_id)}")
    history = [created, *(record.events or _history(record, model))]
    # Numbered oldest first, so an event keeps its id as the history grows.
    events = [
        FineTuningJobEvent(
            id=f"ftevent-{job_id}-{number}",
            created_at=int(event.at),
            level=event.level,
            message=event.message,
            type=event.type,
            data=_openai_figures(event.data) or None,
        )
        for number, event in enumerate(history)
    ]
    chosen, more = page(events[::-1], after, limit, lambda e: e.id)
    return FineTuningJobEventList(data=chosen, has_more=more)


def _checkpoints_of(record: JobRecord) -> list[Checkpoint]:
    """The job's checkpoints; a finished job from before checkpoints were kept has one, what it published."""
    if record.checkpoints or record.status is not JobStatus.succeeded:
        return list(record.checkpoints)
    metrics, progress = record.metrics, record.progress
    return [
        Checkpoint(
            step=metrics.get("steps", progress.step),
            epoch=progress.epoch,
            train_loss=metrics.get("train_loss", progress.loss),
            eval_loss=metrics.get("eval_loss", progress.eval_loss),
            at=record.finished_at or record.created_at,
            best=True,
            version=record.spec.version,
        )
    ]


def _checkpoint(record: JobRecord, model: str, checkpoint: Checkpoint) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=f"ftckpt-{record.id}-{checkpoint.step}",
        created_at=int(checkpoint.at),
        fine_tuned_model_checkpoint=checkpoint_model(model, checkpoint),
        fine_tuning_job_id=ftjob_id(record.id),
        metrics=CheckpointMetrics(
            step=checkpoint.step,
            train_loss=checkpoint.train_loss,
            valid_loss=checkpoint.eval_loss,
            full_valid_loss=checkpoint.eval_loss,  # evaluated on the whole validation set every time
        ),
        step_number=checkpoint.step,
        best=checkpoint.best,
        version=checkpoint.version,
        publishable=checkpoint.stored is not None and checkpoint.version is None,
    )


def list_checkpoints(gw: Gateway, ftjob: str, after: str | None, limit: int) -> FineTuningJobCheckpointList:
    """The checkpoints a job recorded, latest step first."""
    job_id = job_id_of(ftjob)
    record = gw.registry.get_job(job_id)
    model = _model_of(record, gw.registry.get_fine_tune(job_id))
    points = sorted(_checkpoints_of(record), key=lambda c: c.step, reverse=True)
    chosen, more = page([_checkpoint(record, model, c) for c in points], after, limit, lambda c: c.id)
    return FineTuningJobCheckpointList(
        data=chosen,
        first_id=chosen[0].id if chosen else None,
        last_id=chosen[-1].id if chosen else None,
        has_more=more,
    )


