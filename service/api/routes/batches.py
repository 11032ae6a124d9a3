"""OpenAI's Batch API: create, list, retrieve, cancel (service/management/batches.py; the executor in
batch_runs.py). Reading takes any key; creating and cancelling take an admin key (a batch spends the engine's time,
and its input file was uploaded with one)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query

from service.api.auth import require_admin, require_inference
from service.api.deps import GatewayDep
from service.management import batches
from service.protocol.batches import BatchList, BatchObject, CreateBatch
from service.protocol.common import MANAGEMENT_ERRORS, error_responses

router = APIRouter(tags=["batches"])

ERRORS = MANAGEMENT_ERRORS
CANCEL_ERRORS = {**ERRORS, **error_responses(409)}


@router.post(
    "/v1/batches",
    response_model=BatchObject,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Create a batch over a file of requests (purpose batch), each line checked; runs in the background "
    "(admin)",
)
async def create_batch(body: CreateBatch, gw: GatewayDep) -> BatchObject:
    return await batches.create_batch(gw, body)


@router.get(
    "/v1/batches",
    response_model=BatchList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Batches, newest first",
)
async def list_batches(
    gw: GatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last batch of the previous page"),
    limit: int = Query(20, ge=1, le=100),
) -> BatchList:
    return await asyncio.to_thread(batches.list_batches, gw, after, limit)


@router.get(
    "/v1/batches/{batch_id}",
    response_model=BatchObject,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="One batch: status, request counts, output and error files",
)
async def get_batch(batch_id: str, gw: GatewayDep) -> BatchObject:
    return await asyncio.to_thread(batches.get_batch, gw, batch_id)


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=BatchObject,
    responses=CANCEL_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Cancel a validating or running batch; lines already answered are kept in its output (admin)",
)
async def cancel_batch(batch_id: str, gw: GatewayDep) -> BatchObject:
    return await batches.cancel_batch(gw, batch_id)
