"""Adapter management: train (POST /adapters), import, list, inspect and delete adapters."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from adapters.dataset import rows_to_jsonl
from adapters.registry.aliases import Keep
from adapters.schema import Aliases, AliasTarget, Manifest, check_name
from service.api.audit import note
from service.api.auth import PrincipalDep, require_admin, require_inference
from service.api.bodies import OffLoopRoute
from service.api.deps import GatewayDep
from service.api.limits import limits_for
from service.errors import APIError
from service.gateway import Gateway
from service.management import adapters as adapter_ops
from service.management import aliases, models
from service.protocol.adapters import (
    AdapterDetail,
    AdapterList,
    CreateAdapterJSON,
    ImportAdapterRequest,
    JobView,
    SetAliasRequest,
)
from service.protocol.common import MANAGEMENT_ERRORS, Deleted, ErrorResponse, error_responses

router = APIRouter(route_class=OffLoopRoute, tags=["adapters"])

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
        "model": {"type": "string", "description": "an adapter to continue from (name, name@version, alias, ft: id)"},
        "hyperparameters": {"type": "string", "description": "JSON object of Hyperparameters"},
        "method": {
            "type": "string",
            "description": "supervised (default) or dpo (preference rows), or a JSON object of Method",
        },
        "eval_gate": {"type": "string", "description": "JSON object of TrainingEvalGate: publish only if it passes"},
    },
}


def _form_method(value: Any) -> Any:
    """The multipart `method` field: a bare type name, or a JSON object of Method."""
    if not isinstance(value, str) or not value.strip():
        return {}
    return json.loads(value) if value.strip().startswith("{") else {"type": value.strip()}


async def _read_request(request: Request, gw: Gateway) -> tuple[CreateAdapterJSON, bytes | None]:
    """The create request from JSON or multipart; the dataset bytes when uploaded or inline."""
    limit = gw.settings.max_dataset_bytes
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        upload = form.get("dataset")
        if not isinstance(upload, UploadFile):
            raise APIError(400, "multipart requests need a `dataset` file field", param="dataset")
        data = await upload.read(limit + 1)
        hyper, method, gate = form.get("hyperparameters"), form.get("method"), form.get("eval_gate")
        fields: dict[str, Any] = {
            "name": form.get("name"),
            **({"template": form.get("template")} if form.get("template") else {}),
            **({"model": form.get("model")} if form.get("model") else {}),
            "hyperparameters": hyper if isinstance(hyper, str) and hyper.strip() else {},
            "method": method,
            "eval_gate": gate if isinstance(gate, str) and gate.strip() else None,
            "rows": [],  # stands for the uploaded file in validation
        }
        return await adapter_ops.off_loop(_form_request, fields), data
    # Parsed on a dataset-check thread; but one json.loads holds the GIL from start to end, whatever thread runs it,
    # so the body it parses is kept small enough not to stall other requests (files go as multipart or /v1/files).
    body = await _json_body_within(request, gw.settings.max_inline_json_bytes)
    return await adapter_ops.off_loop(_json_request, body, gw.settings.max_dataset_rows)


async def _json_body_within(request: Request, limit: int) -> bytes:
    """The JSON body, read only while it stays within `limit`; 413 beyond, declared or streamed."""
    refused = APIError(
        413,
        f"a JSON body of inline rows is limited to {limit} bytes (max_inline_json_bytes): send a larger dataset "
        "as a multipart `dataset` file, or upload it to /v1/files and train with POST /v1/fine_tuning/jobs",
        param="rows",
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise refused
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise refused
        chunks.append(chunk)
    return b"".join(chunks)


def _form_request(fields: dict[str, Any]) -> CreateAdapterJSON:
    """The create request of a multipart form, its JSON fields parsed."""
    hyper = fields["hyperparameters"]
    with _json_errors():
        fields = {
            **fields,
            "hyperparameters": json.loads(hyper) if isinstance(hyper, str) else hyper,
            "method": _form_method(fields["method"]),
            "eval_gate": json.loads(fields["eval_gate"]) if isinstance(fields["eval_gate"], str) else None,
        }
    return _validated(fields)


def _json_request(body: bytes, max_rows: int) -> tuple[CreateAdapterJSON, bytes | None]:
    """The create request of a JSON body, and its inline rows as JSONL."""
    with _json_errors():
        payload = json.loads(body)
    if isinstance(payload, dict) and isinstance(payload.get("rows"), list):
        # Counted before a row is validated, so an oversized dataset is refused at once.
        count = len(payload["rows"])
        if count > max_rows:
            raise APIError(
                400,
                f"dataset has {count} rows; the limit is {max_rows} (max_dataset_rows)",
                param="rows",
                code="invalid_dataset",
            )
    request = _validated(payload)
    try:
        rows = rows_to_jsonl(request.rows) if request.rows is not None else None
    except RecursionError:
        raise APIError(400, "rows: nested too deeply", param="rows", code="invalid_dataset") from None
    return request, rows


@contextlib.contextmanager
def _json_errors() -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as exc:
        raise APIError(400, f"invalid JSON: not UTF-8 ({exc.reason})", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"invalid JSON: {exc.msg}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "invalid JSON: nested too deeply", code="invalid_json") from None


def _validated(payload: Any) -> CreateAdapterJSON:
    """The create request, strictly typed: `"rank": "8"` is an error, not an 8."""
    try:
        return CreateAdapterJSON.model_validate(payload, strict=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    except RecursionError:
        raise APIError(400, "request nested too deeply", code="invalid_json") from None


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
async def create_adapter(request: Request, gw: GatewayDep, principal: PrincipalDep) -> JSONResponse:
    caller = limits_for(principal, gw.settings)
    job = await adapter_ops.submit_training(gw, lambda: _read_request(request, gw), caller)
    return JSONResponse(
        JobView.of(job).model_dump(), status_code=202, headers={"Location": f"/jobs/{job.id}"}
    )


@router.get(
    "/adapters",
    response_model=AdapterList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Every adapter: published ones and names still in training",
)
async def list_adapters(gw: GatewayDep) -> AdapterList:
    return await asyncio.to_thread(adapter_ops.summaries, gw)


@router.get(
    "/adapters/{name}",
    response_model=AdapterDetail,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="One adapter: versions, manifest, metrics, jobs",
)
async def get_adapter(name: str, gw: GatewayDep) -> AdapterDetail:
    check_name(name)
    return await asyncio.to_thread(adapter_ops.detail, gw, name)


@router.get(
    "/adapters/{name}/aliases",
    response_model=Aliases,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="The aliases of an adapter and their revision (what a conditional write names)",
)
async def get_aliases(name: str, gw: GatewayDep) -> Aliases:
    return await aliases.get_aliases(gw, name)


@router.post(
    "/adapters/{name}/aliases",
    response_model=Aliases,
    responses={**ERRORS, 409: {"model": ErrorResponse}},
    dependencies=[Depends(require_admin)],
    summary="Point an alias at a version, split it with a canary, roll it back or remove it (admin)",
)
async def set_alias(name: str, body: SetAliasRequest, request: Request, gw: GatewayDep) -> Aliases:
    canary_weight = body.canary_weight if body.canary is not None else None
    note(request, alias=body.alias, version=body.version, canary=body.canary, canary_weight=canary_weight)
    check_name(name)
    try:
        target = None if body.version is None else AliasTarget(
            version=body.version, canary=body.canary, canary_weight=body.canary_weight
        )
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    gate = body.gate if "gate" in body.model_fields_set else Keep.GATE
    return await aliases.set_alias(gw, name, body.alias, target, body.expected_revision, gate)


@router.delete(
    "/adapters/{model}",
    response_model=Deleted,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Delete an adapter (every version) or one version `name@version`; unloads it (admin)",
)
async def delete_adapter(model: str, gw: GatewayDep) -> Deleted:
    return await models.delete_adapter(gw, model)


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
    return await asyncio.to_thread(adapter_ops.import_directory, gw, body.name, body.uri, body.template)
