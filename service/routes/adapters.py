"""Adapter management: train (POST /adapters), import, list, inspect and delete adapters."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from adapters.dataset import Dataset, parse_dataset, rows_to_jsonl
from adapters.errors import InvalidAdapter, InvalidName, NotFound
from adapters.registry import new_manifest
from adapters.schema import (
    Aliases,
    AliasTarget,
    Hyperparameters,
    JobRecord,
    JobSpec,
    Manifest,
    check_name,
    parse_ref,
)
from adapters.servable import allowed_file, base_linear_shapes, check_files, lora_info, supported_modules
from adapters.store import check_key
from adapters.templates import get_template
from service.auth import require_admin, require_inference
from service.dependencies import Gateway, GatewayDep
from service.errors import APIError, overloaded
from service.protocol import (
    MANAGEMENT_ERRORS,
    AdapterDetail,
    AdapterList,
    AdapterSummary,
    AdapterVersion,
    CreateAdapterJSON,
    Deleted,
    ErrorResponse,
    ImportAdapterRequest,
    JobView,
    SetAliasRequest,
    error_responses,
)

router = APIRouter(tags=["adapters"])

ERRORS = MANAGEMENT_ERRORS
# Bodies may be too large (413) and training may be at its max_pending_jobs (429).
CREATE_ERRORS = {**ERRORS, **error_responses(413, 429)}

MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["name", "dataset"],
    "properties": {
        "name": {"type": "string"},
        "dataset": {"type": "string", "format": "binary", "description": "JSONL file, one row per line"},
        "template": {"type": "string", "default": "chatml"},
        "hyperparameters": {"type": "string", "description": "JSON object of Hyperparameters"},
    },
}


def _store_key(gw: Gateway, uri: str) -> str:
    """A key inside this gateway's store, from a bare key or a URI under the store's root."""
    root = gw.settings.store_uri.rstrip("/") + "/"
    if "://" in uri:
        if not uri.startswith(root):
            # The store's own URI is not told: on a file store it is a path on this machine.
            raise InvalidName(f"{uri!r} is not inside this gateway's store")
        uri = uri[len(root) :]
    return check_key(uri)  # an absolute path is refused, not read as a key


async def _read_request(request: Request, gw: Gateway) -> tuple[CreateAdapterJSON, bytes | None]:
    """The create request from JSON or multipart; the dataset bytes when uploaded or inline."""
    limit = gw.settings.max_dataset_bytes
    ctype = request.headers.get("content-type", "")
    try:
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=16)
            upload = form.get("dataset")
            if not isinstance(upload, UploadFile):
                raise APIError(400, "multipart requests need a `dataset` file field", param="dataset")
            data = await upload.read(limit + 1)
            hyper = form.get("hyperparameters")
            fields: dict[str, Any] = {
                "name": form.get("name"),
                "template": form.get("template") or "chatml",
                "hyperparameters": json.loads(hyper) if isinstance(hyper, str) and hyper.strip() else {},
                "rows": [],  # stands for the uploaded file in validation
            }
            return _validated(fields), data
        payload = await request.json()
    except json.JSONDecodeError as exc:
        raise APIError(400, f"invalid JSON: {exc.msg}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "invalid JSON: nested too deeply", code="invalid_json") from None
    if isinstance(payload, dict) and isinstance(payload.get("rows"), list):
        # Counted before a row is validated, so an oversized dataset is refused at once.
        count = len(payload["rows"])
        if count > gw.settings.max_dataset_rows:
            raise APIError(
                400,
                f"dataset has {count} rows; the limit is {gw.settings.max_dataset_rows} (max_dataset_rows)",
                param="rows",
                code="invalid_dataset",
            )
    body = _validated(payload)
    try:
        rows = rows_to_jsonl(body.rows) if body.rows is not None else None
    except RecursionError:
        raise APIError(400, "rows: nested too deeply", param="rows", code="invalid_dataset") from None
    return body, rows


def _validated(payload: Any) -> CreateAdapterJSON:
    """The create request, strictly typed: `"rank": "8"` is an error, not an 8."""
    try:
        return CreateAdapterJSON.model_validate(payload, strict=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    except RecursionError:
        raise APIError(400, "request nested too deeply", code="invalid_json") from None


def _check_plan(gw: Gateway, hyper: Hyperparameters, dataset: Dataset) -> None:
    """Refuse at submit time what the operator's per-job limits, or the base model, would refuse later."""
    settings = gw.settings
    if hyper.rank > settings.max_lora_rank:
        raise APIError(
            400,
            f"hyperparameters.rank={hyper.rank} exceeds this gateway's max_lora_rank {settings.max_lora_rank}",
            param="hyperparameters.rank",
        )
    if isinstance(hyper.target_modules, list):
        supported = supported_modules(base_linear_shapes(gw.engine.model_dir))
        unknown = sorted(set(hyper.target_modules) - supported) if supported else []
        if unknown:
            raise APIError(
                400,
                f"hyperparameters.target_modules {unknown} are not linear layers of the base model's blocks "
                f"(choose from {sorted(supported)}, or 'all-linear')",
                param="hyperparameters.target_modules",
            )
    rows = len(dataset.rows)
    steps = hyper.max_steps or math.ceil(math.ceil(rows / hyper.batch_size) * hyper.epochs)
    if steps > settings.max_job_steps:
        raise APIError(
            400,
            f"this job would run {steps} optimizer steps; the limit is {settings.max_job_steps} (max_job_steps)",
            param="hyperparameters",
            code="job_too_large",
        )
    per_row = sum(dataset.tokens) / len(dataset.tokens) if dataset.tokens else hyper.max_seq_length
    tokens = int(steps * hyper.batch_size * per_row) if hyper.max_steps else int(sum(dataset.tokens) * hyper.epochs)
    if tokens > settings.max_job_tokens:
        raise APIError(
            400,
            f"this job would train on about {tokens} tokens; the limit is {settings.max_job_tokens} "
            "(max_job_tokens)",
            param="hyperparameters",
            code="job_too_large",
        )


@router.post(
    "/adapters",
    status_code=202,
    response_model=JobView,
    responses=CREATE_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Train an adapter: validate the dataset, store it, queue a training job (admin)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CreateAdapterJSON"}},
                "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            },
        }
    },
)
async def create_adapter(request: Request, gw: GatewayDep) -> JSONResponse:
    if gw.runner is None:
        raise APIError(
            503, "training is disabled on this gateway", type="server_error", code="training_disabled"
        )
    body, data = await _read_request(request, gw)
    settings = gw.settings
    check_name(body.name)
    tokenizer = gw.engine.tokenizer
    template = get_template(body.template, tokenizer)
    hyper = body.hyperparameters
    if data is None:
        assert body.dataset_uri is not None
        data = await asyncio.to_thread(gw.store.get_bytes, _store_key(gw, body.dataset_uri))
    assert data is not None
    dataset = await asyncio.to_thread(
        parse_dataset,
        data,
        max_bytes=settings.max_dataset_bytes,
        max_rows=settings.max_dataset_rows,
        tokenizer=tokenizer,
        template=template,
        max_row_tokens=min(settings.max_row_tokens, hyper.max_seq_length),
    )
    _check_plan(gw, hyper, dataset)
    pending = await asyncio.to_thread(lambda: sum(not job.status.finished for job in gw.registry.list_jobs()))
    if pending >= settings.max_pending_jobs:
        raise overloaded(
            f"{pending} training jobs are queued or running (max_pending_jobs); retry when one finishes",
            retry_after=60,
        )
    # Only a valid dataset reaches the store.
    key, sha = await asyncio.to_thread(gw.registry.put_dataset, data)
    spec = JobSpec(
        name=body.name,
        base_model=str(gw.engine.model_dir),
        base_model_id=gw.engine.base_model_id,
        template=body.template,
        dataset_uri=key,
        dataset_sha256=sha,
        dataset_rows=len(dataset.rows),
        hyperparameters=hyper,
    )
    job = JobRecord(spec=spec, runner=gw.runner.name)
    await asyncio.to_thread(gw.registry.put_job, job)
    await asyncio.to_thread(gw.runner.submit, job)
    return JSONResponse(
        JobView.of(job).model_dump(), status_code=202, headers={"Location": f"/jobs/{job.id}"}
    )


def _version(m: Manifest) -> AdapterVersion:
    return AdapterVersion(
        version=m.version,
        created_at=m.created_at,
        base_model=m.base_model,
        template=m.template_name,
        rank=m.lora.rank,
        metrics=m.metrics,
    )


@router.get(
    "/adapters",
    response_model=AdapterList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Every adapter: published ones and names still in training",
)
async def list_adapters(gw: GatewayDep) -> AdapterList:
    def collect() -> AdapterList:
        summaries: dict[str, AdapterSummary] = {}
        for m in gw.registry.adapters():
            summaries[m.name] = AdapterSummary(
                name=m.name, latest=m.version, versions=len(gw.registry.versions(m.name)), status="ready"
            )
        for job in gw.registry.list_jobs():  # newest first: the first job seen per name is its status
            if job.spec.name not in summaries:
                summaries[job.spec.name] = AdapterSummary(
                    name=job.spec.name, latest=None, versions=0, status=job.status.value
                )
        return AdapterList(data=[summaries[n] for n in sorted(summaries)])

    return await asyncio.to_thread(collect)


@router.get(
    "/adapters/{name}",
    response_model=AdapterDetail,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="One adapter: versions, manifest, metrics, jobs",
)
async def get_adapter(name: str, gw: GatewayDep) -> AdapterDetail:
    check_name(name)

    def collect() -> AdapterDetail:
        versions = gw.registry.versions(name)
        jobs = [JobView.of(j) for j in gw.registry.list_jobs() if j.spec.name == name]
        if not versions and not jobs:
            raise NotFound(f"adapter {name!r} not found")
        return AdapterDetail(
            name=name,
            status="ready" if versions else jobs[0].status,
            latest=versions[-1].version if versions else None,
            versions=[_version(m) for m in versions],
            manifest=versions[-1] if versions else None,
            jobs=jobs,
        )

    return await asyncio.to_thread(collect)


@router.get(
    "/adapters/{name}/aliases",
    response_model=Aliases,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="The aliases of an adapter and their revision (what a conditional write names)",
)
async def get_aliases(name: str, gw: GatewayDep) -> Aliases:
    check_name(name)
    return await asyncio.to_thread(gw.registry.aliases, name)  # type: ignore[no-any-return]


@router.post(
    "/adapters/{name}/aliases",
    response_model=Aliases,
    responses={**ERRORS, 409: {"model": ErrorResponse}},
    dependencies=[Depends(require_admin)],
    summary="Point an alias at a version, split it with a canary, roll it back or remove it (admin)",
)
async def set_alias(name: str, body: SetAliasRequest, gw: GatewayDep) -> Aliases:
    check_name(name)
    try:
        target = None if body.version is None else AliasTarget(
            version=body.version, canary=body.canary, canary_weight=body.canary_weight
        )
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    written: Aliases = await asyncio.to_thread(
        gw.registry.set_alias, name, body.alias, target, expected_revision=body.expected_revision
    )
    await gw.cache.forget_aliases(name)
    return written


@router.delete(
    "/adapters/{model}",
    response_model=Deleted,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Delete an adapter (every version) or one version `name@version`; unloads it (admin)",
)
async def delete_adapter(model: str, gw: GatewayDep) -> Deleted:
    name, version = parse_ref(model)  # `name@` is a 400, never "every version"
    await asyncio.to_thread(gw.registry.delete, name, version)
    await gw.cache.forget(name, version)
    return Deleted(id=model, object="adapter")


@router.post(
    "/adapters/import",
    response_model=Manifest,
    status_code=201,
    responses=CREATE_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Publish an existing PEFT LoRA directory from the store as a new adapter version (admin)",
)
async def import_adapter(body: ImportAdapterRequest, gw: GatewayDep) -> Manifest:
    check_name(body.name)
    template = get_template(body.template, gw.engine.tokenizer)
    prefix = _store_key(gw, body.uri.rstrip("/")) + "/"

    def run() -> Manifest:
        keys = [k for k in gw.store.list(prefix) if "/" not in k[len(prefix) :]]
        # PEFT also writes README.md and the like; only what an adapter may hold is carried over.
        wanted = [k for k in keys if allowed_file(k[len(prefix) :]) and not k.endswith("/manifest.json")]
        names = {k[len(prefix) :] for k in wanted}
        for required in ("adapter_config.json", "adapter_model.safetensors"):
            if required not in names:
                raise InvalidAdapter(f"{body.uri} has no {required}: not a PEFT adapter directory")
        work = Path(tempfile.mkdtemp(prefix="skillserve-import-"))
        try:
            for key in wanted:
                gw.store.get_file(key, work / key[len(prefix) :])
            shapes = base_linear_shapes(gw.engine.model_dir)
            lora = lora_info(
                json.loads((work / "adapter_config.json").read_text()),
                base_model_id=gw.engine.base_model_id,
                base_dir=gw.engine.model_dir,
                max_lora_rank=gw.settings.max_lora_rank,
                supported=supported_modules(shapes),
            )
            manifest = new_manifest(
                body.name, template, lora, base_model=gw.engine.base_model_id, base_dir=gw.engine.model_dir,
                metrics={"imported_from": body.uri},
            )
            check_files(work, manifest, gw.settings.max_lora_rank, shapes)
            return gw.registry.publish(manifest, work)  # type: ignore[no-any-return]
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return await asyncio.to_thread(run)
