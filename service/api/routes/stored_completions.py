"""Stored chat completions (service/management/stored_completions.py): OpenAI's list, retrieve, update, delete and
messages, and ours, feedback and export. They hold users' conversations, so reading, changing, deleting and exporting
them take an admin key, as reading a file's rows does; feedback takes any key, so an application can pass its users'
ratings on."""

from __future__ import annotations

import asyncio
import re
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from service.api.auth import require_admin, require_inference
from service.api.deps import GatewayDep
from service.management import stored_completions as stored
from service.protocol.common import MANAGEMENT_ERRORS
from service.protocol.files import FileObject
from service.protocol.stored_completions import (
    ExportStoredCompletions,
    GiveFeedback,
    StoredChatCompletion,
    StoredCompletionDeleted,
    StoredCompletionList,
    StoreMessageList,
    UpdateStoredCompletion,
)

router = APIRouter(tags=["stored completions"])

ERRORS = MANAGEMENT_ERRORS
_METADATA_KEY = re.compile(r"metadata\[(.+)\]")


def metadata_filter(request: Request) -> dict[str, str]:
    """OpenAI's `metadata[key]=value` query pairs."""
    found = {}
    for key, value in request.query_params.multi_items():
        match = _METADATA_KEY.fullmatch(key)
        if match:
            found[match.group(1)] = value
    return found


@router.get(
    "/v1/chat/completions",
    response_model=StoredCompletionList,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Stored chat completions, oldest first unless order=desc; filtered by model, metadata[key]=value and "
    "(ours) rating (admin)",
)
async def list_stored(
    request: Request,
    gw: GatewayDep,
    model: str | None = Query(None, description="the model as sent, or as answered (`adapter@version`)"),
    after: str | None = Query(None, description="cursor: the id of the last completion of the previous page"),
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("asc"),
    rating: Literal["good", "bad", "unrated"] | None = Query(
        None, description="ours: only completions given this rating (unrated: no rating yet)"
    ),
) -> StoredCompletionList:
    return await asyncio.to_thread(
        stored.list_stored, gw, model, metadata_filter(request), after, limit, order, rating
    )


@router.post(
    "/v1/chat/completions/exports",
    response_model=FileObject,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Ours: export stored completions matching a filter as a /v1/files file of SFT rows, DPO pairs or eval "
    "items, checked as an upload is (admin)",
)
async def export_stored(body: ExportStoredCompletions, gw: GatewayDep) -> FileObject:
    return await stored.export_stored(gw, body)


@router.get(
    "/v1/chat/completions/{completion_id}",
    response_model=StoredChatCompletion,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="A stored chat completion (admin)",
)
async def get_stored(completion_id: str, gw: GatewayDep) -> StoredChatCompletion:
    return await asyncio.to_thread(stored.get_stored, gw, completion_id)


@router.post(
    "/v1/chat/completions/{completion_id}",
    response_model=StoredChatCompletion,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Replace a stored chat completion's metadata (admin)",
)
async def update_stored(completion_id: str, body: UpdateStoredCompletion, gw: GatewayDep) -> StoredChatCompletion:
    return await asyncio.to_thread(stored.update_stored, gw, completion_id, body.metadata)


@router.delete(
    "/v1/chat/completions/{completion_id}",
    response_model=StoredCompletionDeleted,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Delete a stored chat completion (admin)",
)
async def delete_stored(completion_id: str, gw: GatewayDep) -> StoredCompletionDeleted:
    return await asyncio.to_thread(stored.delete_stored, gw, completion_id)


@router.get(
    "/v1/chat/completions/{completion_id}/messages",
    response_model=StoreMessageList,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="A stored chat completion's request messages (admin)",
)
async def stored_messages(
    completion_id: str,
    gw: GatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last message of the previous page"),
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("asc"),
) -> StoreMessageList:
    return await asyncio.to_thread(stored.stored_messages, gw, completion_id, after, limit, order)


@router.post(
    "/v1/chat/completions/{completion_id}/feedback",
    response_model=StoredChatCompletion,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Ours: rate a stored chat completion and/or give the answer it should have given",
)
async def give_feedback(completion_id: str, body: GiveFeedback, gw: GatewayDep) -> StoredChatCompletion:
    return await asyncio.to_thread(stored.give_feedback, gw, completion_id, body)
