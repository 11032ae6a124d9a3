"""Training jobs: status, live progress (SSE) and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from adapters.schema import Manifest, check_job_id
from service.api.auth import require_admin, require_inference
from service.api.deps import GatewayDep
from service.gateway import Gateway
from service.management import adapters as adapter_ops
from service.management import fine_tuning
from service.management.jobs import JOB_READ_TTL_S
from service.protocol import MANAGEMENT_ERRORS, ErrorResponse, JobList, JobView

router = APIRouter(tags=["jobs"])

ERRORS = MANAGEMENT_ERRORS


async def _job(gw: Gateway, job_id: str) -> JobView:
    check_job_id(job_id)
    return JobView.of(await asyncio.to_thread(gw.registry.get_job, job_id))


@router.get(
    "/jobs",
    response_model=JobList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Every training job, newest first",
)
async def list_jobs(gw: GatewayDep) -> JobList:
    return JobList(data=[JobView.of(j) for j in await asyncio.to_thread(gw.registry.list_jobs)])


@router.get(
    "/jobs/{job_id}",
    response_model=JobView,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="A job: status, progress (step, loss, ETA), metrics, error",
)
async def get_job(job_id: str, gw: GatewayDep) -> JobView:
    return await _job(gw, job_id)


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
    check_job_id(job_id)
    first = await gw.job_reads.record(job_id)  # 404 before the stream starts

    async def events() -> AsyncIterator[str]:
        record, seen, last = first, None, ""
        while True:
            if record is not seen:  # a new read of the record: render it (the same read is the same object)
                seen = record
                data = JobView.of(record).model_dump_json()
                if data != last:
                    yield f"event: job\ndata: {data}\n\n"
                    last = data
            if record.status.finished or await request.is_disconnected():
                return
            await asyncio.sleep(interval)
            record = await gw.job_reads.record(job_id)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.delete(
    "/jobs/{job_id}",
    response_model=JobView,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Cancel a queued or running job; nothing is published (admin)",
)
async def cancel_job(job_id: str, gw: GatewayDep) -> JobView:
    await adapter_ops.cancel(gw, job_id)
    return await _job(gw, job_id)


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
    return await fine_tuning.publish_checkpoint(gw, job_id, step)
