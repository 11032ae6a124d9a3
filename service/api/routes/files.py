"""OpenAI's Files API: upload, list, retrieve, content and delete (service/management/files.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import Response

from service.api.auth import PrincipalDep, require_admin, require_inference
from service.api.bodies import OffLoopRoute
from service.api.deps import GatewayDep
from service.api.limits import limits_for
from service.errors import APIError
from service.management import files
from service.protocol.common import MANAGEMENT_ERRORS, error_responses
from service.protocol.files import FileDeleted, FileList, FileObject

router = APIRouter(route_class=OffLoopRoute, tags=["files"])

ERRORS = MANAGEMENT_ERRORS
UPLOAD_ERRORS = {**ERRORS, **error_responses(413, 429)}


@router.post(
    "/v1/files",
    response_model=FileObject,
    responses=UPLOAD_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Upload a fine-tuning file (JSONL, purpose fine-tune), eval rows (evals) or batch requests (batch) (admin)",
)
async def upload_file(
    gw: GatewayDep,
    principal: PrincipalDep,
    file: Annotated[UploadFile, File(description="JSONL: one training row (or preference pair) per line")],
    purpose: Annotated[str, Form(description="fine-tune, evals or batch")],
    expires_anchor: Annotated[Literal["created_at"] | None, Form(alias="expires_after[anchor]")] = None,
    expires_seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
) -> FileObject:
    limit = gw.settings.max_dataset_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise APIError(
            413, f"file too big: the limit is {limit} bytes (max_dataset_bytes)", param="file", code="file_too_large"
        )
    caller = limits_for(principal, gw.settings)
    return await files.upload_file(gw, file.filename, purpose, data, expires_seconds, caller)


@router.get(
    "/v1/files",
    response_model=FileList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Stored files, newest first by default",
)
async def list_files(
    gw: GatewayDep,
    purpose: str | None = Query(None, description="only files of this purpose"),
    after: str | None = Query(None, description="cursor: the id of the last file of the previous page"),
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = Query("desc", description="by creation time"),
) -> FileList:
    return await asyncio.to_thread(files.list_files, gw, purpose, after, limit, order)


@router.get(
    "/v1/files/{file_id}",
    response_model=FileObject,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="One file's metadata",
)
async def get_file(file_id: str, gw: GatewayDep) -> FileObject:
    return await asyncio.to_thread(files.get_file, gw, file_id)


@router.get(
    "/v1/files/{file_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/jsonl": {}}}, **ERRORS},
    dependencies=[Depends(require_admin)],
    summary="A file's bytes, as uploaded (admin: they are training data)",
)
async def file_content(file_id: str, gw: GatewayDep) -> Response:
    data = await asyncio.to_thread(files.file_content, gw, file_id)
    return Response(data, media_type="application/jsonl")


@router.delete(
    "/v1/files/{file_id}",
    response_model=FileDeleted,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Delete a file (admin); jobs created from it are not affected",
)
async def delete_file(file_id: str, gw: GatewayDep) -> FileDeleted:
    return await asyncio.to_thread(files.delete_file, gw, file_id)
