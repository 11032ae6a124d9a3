"""Training jobs: status, live progress (SSE) and cancellation."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from adapters.schema import Manifest
from service.api.auth import require_admin, require_inference
from service.api.deps import GatewayDep
from service.management import jobs
from service.management.jobs import JOB_READ_TTL_S
from service.protocol.adapters import JobList, JobView
from service.protocol.common import MANAGEMENT_ERRORS, ErrorResponse

router = APIRouter(tags=["jobs"])

ERRORS = MANAGEMENT_ERRORS


@router.get(
    "/jobs",
    response_model=JobList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Every training job, newest first",
)
async def list_jobs(gw: GatewayDep) -> JobList:
    return await jobs.list_jobs(gw)


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="A job: status, progress (step, loss, ETA), metrics, error",
)
async def get_job(job_id: str, gw: GatewayDep) -> JobView:
    return await jobs.get_job(gw, job_id)


@router.get(
    "/jobs/{job_id}/events",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "one `job` event per change"},
        **ERRORS,
    },
    dependencies=[Depends(require_inference)],
    summary="Follow a job live: Server-Sent Events with the job on every change, ending when it finishes",
)
async def job_events(
    job_id: str,
    request: Request,
    gw: GatewayDep,
    interval: float = Query(
        0.5, ge=JOB_READ_TTL_S, le=10,
        description="seconds between looks at the job (every follower of a job shares one read of its record)",
    ),
) -> StreamingResponse:
    events = await jobs.follow_job(gw, job_id, interval, request.is_disconnected)  # 404 before the stream
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Cancel a queued or running job; nothing is published (admin)",
)
async def cancel_job(job_id: str, gw: GatewayDep) -> JobView:
    return await jobs.cancel_job(gw, job_id)


@router.post(
    "/jobs/{job_id}/checkpoints/{step}/publish",
    response_model=Manifest,
    status_code=201,
    responses={**ERRORS, 409: {"model": ErrorResponse}},
    dependencies=[Depends(require_admin)],
    summary="Publish a checkpoint the job kept as a new version of its adapter (admin); its ft: checkpoint "
    "model id serves it",
)
async def publish_checkpoint(job_id: str, step: int, gw: GatewayDep) -> Manifest:
    return await jobs.publish_checkpoint(gw, job_id, step)
