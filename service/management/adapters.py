"""The adapter use cases behind the management API: train, import, list and describe (deletion is the served
models' own: service/management/models.py).

Routes parse a request, call one of these and render what it returns; these hold the rules (limits checked
at submit time, quotas, what an importable directory is) and reach the store only through the registry.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from adapters import auto, graders
from adapters.dataset import Dataset, parse_dataset
from adapters.errors import DatasetError, InvalidAdapter, InvalidName, InvalidRequest, NotFound, Overloaded
from adapters.limits import CallerLimits
from adapters.parents import inherited
from adapters.registry import new_manifest
from adapters.schema import (
    LATEST,
    Hyperparameters,
    JobEvent,
    JobRecord,
    JobSpec,
    Manifest,
    Method,
    check_name,
    parse_ref,
)
from adapters.servable import allowed_file, base_linear_shapes, check_files, lora_info, supported_modules
from adapters.templates import get_template
from service.engine.adapter_cache import FT_PREFIX
from service.gateway import Gateway
from service.management import gates, jobs, quotas
from service.protocol.adapters import (
    AdapterDetail,
    AdapterList,
    AdapterSummary,
    AdapterVersion,
    CreateAdapterJSON,
    Forgetting,
    JobView,
)

T = TypeVar("T")

# Dataset checks (JSON parsing, row validation, tokenizing) run on these threads, never on the event loop, and
# two at a time at most: each holds the GIL between its lines, and the fewer threads contend for it, the sooner
# the loop wins it back to answer /health and stream tokens. Later uploads wait their turn, holding their bytes.
DATASET_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dataset-check")


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on a dataset-check thread."""
    return await asyncio.get_running_loop().run_in_executor(DATASET_CHECKS, functools.partial(fn, *args, **kwargs))


def _store_key(gw: Gateway, uri: str) -> str:
    """A key inside the caller's project's records, from a bare key or a URI under its namespace."""
    return gw.registry.key_named(uri)


def _check_plan(gw: Gateway, hyper: Hyperparameters, dataset: Dataset, method: Method, validated: bool = False) -> int:
    """Refuse at submit time what the operator's per-job limits, or the base model, would refuse later (with the
    values the trainer will choose from the data for what the request left out); else the tokens the job plans to
    train on. `validated`: the job has its own validation rows, so none of its training rows are held out."""
    settings = gw.settings
    hyper = auto.choose(hyper, len(dataset.rows), method.type)
    assert hyper.rank and hyper.batch_size and hyper.epochs  # chosen above
    if hyper.rank > settings.max_lora_rank:
        raise InvalidRequest(
            f"hyperparameters.rank={hyper.rank} exceeds this gateway's max_lora_rank {settings.max_lora_rank}",
            param="hyperparameters.rank",
        )
    if isinstance(hyper.target_modules, list):
        supported = supported_modules(base_linear_shapes(gw.engine.model_dir))
        unknown = sorted(set(hyper.target_modules) - supported) if supported else []
        if unknown:
            raise InvalidRequest(
                f"hyperparameters.target_modules {unknown} are not linear layers of the base model's blocks "
                f"(choose from {sorted(supported)}, or 'all-linear')",
                param="hyperparameters.target_modules",
            )
    rows = len(dataset.rows)
    train_rows = rows if validated else rows - auto.held_out_rows(rows, hyper.eval_fraction)
    per_epoch = auto.steps_per_epoch(train_rows, hyper.batch_size, method.type)
    if not per_epoch:
        raise InvalidRequest(
            f"hyperparameters.batch_size={hyper.batch_size} is more than the {train_rows} training prompts: "
            "reinforcement samples whole batches of prompts (lower batch_size, or add rows)",
            param="hyperparameters.batch_size",
        )
    steps = hyper.max_steps or math.ceil(per_epoch * hyper.epochs)
    if steps > settings.max_job_steps:
        raise InvalidRequest(
            f"this job would run {steps} optimizer steps; the limit is {settings.max_job_steps} (max_job_steps)",
            param="hyperparameters",
            code="job_too_large",
        )
    per_row = sum(dataset.tokens) / len(dataset.tokens) if dataset.tokens else hyper.max_seq_length
    tokens = int(steps * hyper.batch_size * per_row) if hyper.max_steps else int(sum(dataset.tokens) * hyper.epochs)
    if method.type == "reinforcement":  # each prompt is read once per sample, with the sample
        samples = auto.samples_per_prompt(method, rows)
        tokens = int(steps * hyper.batch_size * samples * (per_row + method.max_completion_tokens))
    if tokens > settings.max_job_tokens:
        raise InvalidRequest(f"this job would train on about {tokens} tokens; the limit is {settings.max_job_tokens} "
            "(max_job_tokens)",
            param="hyperparameters",
            code="job_too_large",
        )
    return tokens


async def train(
    gw: Gateway, body: CreateAdapterJSON, data: bytes | None, *, validation: bytes | None = None,
    learning_rate_multiplier: float | None = None, events: list[JobEvent] | None = None,
    grader_param: str = "method.grader", caller: CallerLimits | None = None,
) -> JobRecord:
    """Validate a training request and its dataset, store the dataset and the job, and queue the job.

    `validation` is a dataset evaluated on instead of a held-out split (OpenAI's `validation_file`); a bad one is a
    400 with `param` "validation". `learning_rate_multiplier` scales the learning rate the data would choose. A
    reinforcement method's grader is checked as /v1/fine_tuning/alpha/graders/validate checks it (a 400 whose
    `param` starts with `grader_param`), and refused if it needs a judge model. `events` start the job's history;
    it counts against the `caller`'s project's quotas."""
    here = jobs.runner(gw)
    check_name(body.name)  # before any I/O
    parent = None
    if body.model is not None and body.model != gw.engine.base_model_id:
        parent = await asyncio.to_thread(parent_of, gw, body.model)
        body = continued(body, parent)
    grader = None
    if body.method.type == "reinforcement":
        grader = graders.check_local(graders.validate(body.method.grader, grader_param), grader_param)
    raw = data if data is not None else await _stored_dataset(gw, body)
    parse = _dataset_parser(gw, body, grader)
    dataset = await off_loop(parse, raw)
    held_out = None if validation is None else await _validation_set(parse, validation)
    hyper = body.hyperparameters
    if learning_rate_multiplier is not None:
        hyper = scaled_learning_rate(hyper, len(dataset.rows), body.method.type, learning_rate_multiplier)
    method = body.method
    if method.type == "reinforcement" and method.samples_per_prompt is None:  # chosen now: the job says what it runs
        method = method.model_copy(update={"samples_per_prompt": auto.samples_per_prompt(method, len(dataset.rows))})
    tokens = _check_plan(gw, hyper, dataset, method, validated=held_out is not None)
    if body.eval_gate is not None:
        await gates.check_eval_gate(gw, body.eval_gate)
    await _check_pending(gw)
    await quotas.check_training(gw, caller, tokens)
    # Only a valid dataset reaches the store.
    key, sha = await asyncio.to_thread(gw.registry.put_dataset, raw)
    validation_key = None if validation is None else (await asyncio.to_thread(gw.registry.put_dataset, validation))[0]
    spec = JobSpec(
        name=body.name,
        base_model=str(gw.engine.model_dir),
        base_model_id=gw.engine.base_model_id,
        template=body.template,
        dataset_uri=key,
        dataset_sha256=sha,
        dataset_rows=len(dataset.rows),
        validation_uri=validation_key,
        validation_rows=len(held_out.rows) if held_out is not None else None,
        hyperparameters=hyper,
        method=method,
        metadata=body.metadata,
        eval_gate=body.eval_gate,
        parent=parent.ref if parent is not None else None,
        planned_tokens=tokens,
    )
    job = JobRecord(spec=spec, runner=here.name, events=list(events or []))
    await asyncio.to_thread(gw.registry.put_job, job)
    await asyncio.to_thread(here.submit, job)
    return job


def parent_of(gw: Gateway, model: str) -> Manifest:
    """The adapter version a job continues from, pinned now: `model` as the chat route takes it (`name`, an alias
    `name@alias` (its version, not a canary), `name@version` or an `ft:` id); NotFound naming `model`, or
    InvalidRequest when it was trained on another base."""
    try:
        if model.startswith(FT_PREFIX):
            fine_tuned = gw.registry.fine_tuned_model(model)
            manifest: Manifest = gw.registry.manifest(fine_tuned.name, fine_tuned.version)
        else:
            name, ref = parse_ref(model)
            # An alias's own version, never its canary: what a job trains from does not depend on a coin toss.
            target = gw.registry.aliases(name).aliases.get(ref or LATEST)
            manifest = gw.registry.manifest(name, target.version if target is not None else ref)
    except (NotFound, InvalidName):
        raise NotFound(f"model {model!r} is neither this gateway's base model ({gw.engine.base_model_id}) nor a "
                       "published adapter (name, name@version, an alias or an ft: id)", param="model") from None
    if manifest.base_model != gw.engine.base_model_id:
        raise InvalidRequest(f"model {model!r} ({manifest.ref}) was trained on {manifest.base_model!r}; this gateway "
                             f"trains on {gw.engine.base_model_id!r}", param="model", code="model_not_available")
    return manifest


def continued(body: CreateAdapterJSON, parent: Manifest) -> CreateAdapterJSON:
    """The request as it trains when it continues from `parent`: the parent's template and LoRA shape, or a 400
    naming the field the request set otherwise."""
    if "template" in body.model_fields_set and body.template != parent.template_name:
        raise InvalidRequest(f"template {body.template!r} does not fit {parent.ref}, trained and served with "
                             f"{parent.template_name!r}: training continues with its template (leave template out)",
                             param="template")
    hyper = inherited(body.hyperparameters, parent.lora, parent.ref)
    return body.model_copy(update={"template": parent.template_name, "hyperparameters": hyper})


async def _stored_dataset(gw: Gateway, body: CreateAdapterJSON) -> bytes:
    """The bytes of a dataset the request names by `dataset_uri` in this gateway's store."""
    assert body.dataset_uri is not None
    return await asyncio.to_thread(gw.registry.stored_dataset, _store_key(gw, body.dataset_uri))  # type: ignore[no-any-return]


def _dataset_parser(gw: Gateway, body: CreateAdapterJSON, grader: Any = None) -> Callable[[bytes], Dataset]:
    """The dataset check this request's rows go through: the operator's limits, the template, the method."""
    settings = gw.settings
    return functools.partial(
        parse_dataset,
        max_bytes=settings.max_dataset_bytes,
        max_rows=settings.max_dataset_rows,
        max_line_bytes=settings.max_dataset_line_bytes,
        tokenizer=gw.engine.tokenizer,
        template=get_template(body.template, gw.engine.tokenizer),
        max_row_tokens=min(settings.max_row_tokens, body.hyperparameters.max_seq_length),
        method=body.method.type,
        grader=grader,
    )


async def _validation_set(parse: Callable[[bytes], Dataset], validation: bytes) -> Dataset:
    try:
        return await off_loop(parse, validation)
    except DatasetError as exc:
        raise exc.about("validation", "validation ") from None


async def _check_pending(gw: Gateway) -> None:
    """429 while training is at its max_pending_jobs."""
    pending = await asyncio.to_thread(lambda: sum(not job.status.finished for job in gw.registry.list_jobs()))
    if pending >= gw.settings.max_pending_jobs:
        raise Overloaded(
            f"{pending} training jobs are queued or running (max_pending_jobs); retry when one finishes",
            retry_after=60,
        )


async def submit_training(
    gw: Gateway, read: Callable[[], Awaitable[tuple[CreateAdapterJSON, bytes | None]]],
    caller: CallerLimits | None = None,
) -> JobRecord:
    """POST /adapters: refused at once when training is disabled, before the body is read; then `read` (the
    route's parser) and train, against the `caller`'s project's quotas."""
    jobs.runner(gw)
    body, data = await read()
    return await train(gw, body, data, caller=caller)


def scaled_learning_rate(hyper: Hyperparameters, rows: int, method: str, multiplier: float) -> Hyperparameters:
    """`hyper` with the learning rate set to `multiplier` x the one it would train with on `rows` rows: its own if
    given, else what adapters/auto.py chooses from the data (OpenAI's `learning_rate_multiplier`)."""
    rate = auto.choose(hyper, rows, method).learning_rate
    assert rate is not None  # chosen when not given
    return hyper.model_copy(update={"learning_rate": rate * multiplier})


def _version(m: Manifest) -> AdapterVersion:
    return AdapterVersion(
        version=m.version,
        created_at=m.created_at,
        base_model=m.base_model,
        template=m.template_name,
        rank=m.lora.rank,
        metrics=m.metrics,
    )


def summaries(gw: Gateway) -> AdapterList:
    """Every adapter: published ones, and names still in training with their newest job's status."""
    found: dict[str, AdapterSummary] = {}
    for m in gw.registry.adapters():
        found[m.name] = AdapterSummary(
            name=m.name, latest=m.version, versions=len(gw.registry.versions(m.name)), status="ready"
        )
    for job in gw.registry.list_jobs():  # newest first: the first job seen per name is its status
        if job.spec.name not in found:
            found[job.spec.name] = AdapterSummary(name=job.spec.name, latest=None, versions=0, status=job.status.value)
    return AdapterList(data=[found[n] for n in sorted(found)])


def detail(gw: Gateway, name: str) -> AdapterDetail:
    """One adapter: its versions, newest manifest and jobs; NotFound if there is neither."""
    versions = gw.registry.versions(name)
    jobs = [JobView.of(j) for j in gw.registry.list_jobs() if j.spec.name == name]
    if not versions and not jobs:
        raise NotFound(f"adapter {name!r} not found")
    return AdapterDetail(
        name=name,
        status="ready" if versions else jobs[0].status,
        latest=versions[-1].version if versions else None,
        versions=[_version(m) for m in versions],
        forgetting=Forgetting.of(versions[-1].metrics) if versions else None,
        kept=versions[-1].metrics.get("kept_reason") if versions else None,
        manifest=versions[-1] if versions else None,
        jobs=jobs,
    )


def import_directory(gw: Gateway, name: str, uri: str, template_name: str) -> Manifest:
    """Publish a PEFT LoRA directory already in the store as a new version of `name`, checked like any other."""
    template = get_template(template_name, gw.engine.tokenizer)
    prefix = _store_key(gw, uri.rstrip("/")) + "/"
    # PEFT also writes README.md and the like; only what an adapter may hold is carried over.
    names = {n for n in gw.registry.unpublished_files(prefix) if allowed_file(n) and n != "manifest.json"}
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if required not in names:
            raise InvalidAdapter(f"{uri} has no {required}: not a PEFT adapter directory")
    work = Path(tempfile.mkdtemp(prefix="skillserve-import-"))
    try:
        gw.registry.get_unpublished_files(prefix, sorted(names), work)
        shapes = base_linear_shapes(gw.engine.model_dir)
        lora = lora_info(
            json.loads((work / "adapter_config.json").read_text()),
            base_model_id=gw.engine.base_model_id,
            base_dir=gw.engine.model_dir,
            max_lora_rank=gw.settings.max_lora_rank,
            supported=supported_modules(shapes),
        )
        manifest = new_manifest(
            name, template, lora, base_model=gw.engine.base_model_id, base_dir=gw.engine.model_dir,
            metrics={"imported_from": uri},
        )
        check_files(work, manifest, gw.settings.max_lora_rank, shapes)
        return gw.registry.publish(manifest, work)  # type: ignore[no-any-return]
    finally:
        shutil.rmtree(work, ignore_errors=True)
