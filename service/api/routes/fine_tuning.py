"""OpenAI's fine-tuning jobs API: create, list, retrieve, cancel, events and checkpoints
(service/management/fine_tuning.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request

from service.api.auth import PrincipalDep, require_admin, require_inference
from service.api.bodies import OffLoopRoute
from service.api.deps import GatewayDep
from service.api.limits import limits_for
from service.management import fine_tuning
from service.protocol.common import MANAGEMENT_ERRORS, error_responses
from service.protocol.fine_tuning import (
    CreateFineTuningJob,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
)

router = APIRouter(route_class=OffLoopRoute, tags=["fine-tuning"])

ERRORS = MANAGEMENT_ERRORS
# Training may be at its max_pending_jobs (429); a job on another runner cannot be cancelled here (409).
CREATE_ERRORS = {**ERRORS, **error_responses(429)}
CANCEL_ERRORS = {**ERRORS, **error_responses(409)}


@router.post(
    "/v1/fine_tuning/jobs",
    response_model=FineTuningJob,
    responses=CREATE_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Create a fine-tuning job from uploaded files; it trains an adapter like POST /adapters (admin)",
)
async def create_job(body: CreateFineTuningJob, gw: GatewayDep, principal: PrincipalDep) -> FineTuningJob:
    return await fine_tuning.create_job(gw, body, limits_for(principal, gw.settings))


@router.get(
    "/v1/fine_tuning/jobs",
    response_model=FineTuningJobList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Every fine-tuning job (POST /adapters' too), newest first; `metadata[key]=value` filters",
)
async def list_jobs(
    request: Request,
    gw: GatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last job of the previous page"),
    limit: int = Query(20, ge=1, le=100),
) -> FineTuningJobList:
    metadata = {
        key[len("metadata[") : -1]: value
        for key, value in request.query_params.items()
        if key.startswith("metadata[") and key.endswith("]")
    }
    return await asyncio.to_thread(fine_tuning.list_jobs, gw, after, limit, metadata)


@router.get(
    "/v1/fine_tuning/jobs/{job_id}",
    response_model=FineTuningJob,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="One fine-tuning job: ftjob-<id>, or the id GET /jobs/{id} knows it by",
)
async def get_job(job_id: str, gw: GatewayDep) -> FineTuningJob:
    return await asyncio.to_thread(fine_tuning.get_job, gw, job_id)


@router.post(
    "/v1/fine_tuning/jobs/{job_id}/cancel",
    response_model=FineTuningJob,
    responses=CANCEL_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Cancel a queued or running job; nothing is published (admin)",
)
async def cancel_job(job_id: str, gw: GatewayDep) -> FineTuningJob:
    return await fine_tuning.cancel_job(gw, job_id)


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/events",
    response_model=FineTuningJobEventList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="A job's history, newest first: status messages and step metrics",
)
async def list_events(
    job_id: str,
    gw: GatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last event of the previous page"),
    limit: int = Query(20, ge=1, le=1000),
) -> FineTuningJobEventList:
    return await fine_tuning.list_events(gw, job_id, after, limit)


@router.get(
    "/v1/fine_tuning/jobs/{job_id}/checkpoints",
    response_model=FineTuningJobCheckpointList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="A job's checkpoints, latest step first: step, train and validation loss; the best is its model",
)
async def list_checkpoints(
    job_id: str,
    gw: GatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last checkpoint of the previous page"),
    limit: int = Query(10, ge=1, le=100),
) -> FineTuningJobCheckpointList:
    return await asyncio.to_thread(fine_tuning.list_checkpoints, gw, job_id, after, limit)
