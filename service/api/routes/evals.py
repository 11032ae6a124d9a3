"""OpenAI's Evals API: evals, their runs and the runs' output items (service/management/evals.py).

Reading takes any key; creating, changing and deleting evals and runs takes an admin key (a run spends the
engine's time).
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Depends, Query

from service.api.auth import require_admin, require_inference
from service.api.bodies import OffLoopRoute
from service.api.deps import GatewayDep
from service.management import evals
from service.protocol.common import MANAGEMENT_ERRORS, error_responses
from service.protocol.evals import (
    CreateEval,
    CreateRun,
    EvalDeleted,
    EvalList,
    EvalObject,
    OutputItemList,
    OutputItemObject,
    RunDeleted,
    RunList,
    RunObject,
    UpdateEval,
)

router = APIRouter(route_class=OffLoopRoute, tags=["evals"])

ERRORS = MANAGEMENT_ERRORS
CANCEL_ERRORS = {**ERRORS, **error_responses(409)}


@router.post(
    "/v1/evals",
    response_model=EvalObject,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Create an eval: the rows' item_schema and the graders every run applies (admin)",
)
async def create_eval(body: CreateEval, gw: GatewayDep) -> EvalObject:
    return await evals.create_eval(gw, body)


@router.get(
    "/v1/evals",
    response_model=EvalList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="Evals, oldest first by default",
)
async def list_evals(
    gw: GatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last eval of the previous page"),
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("asc", description="by order_by"),
    order_by: Literal["created_at", "updated_at"] = Query("created_at"),
) -> EvalList:
    return await asyncio.to_thread(evals.list_evals, gw, after, limit, order, order_by)


@router.get(
    "/v1/evals/{eval_id}",
    response_model=EvalObject,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="One eval",
)
async def get_eval(eval_id: str, gw: GatewayDep) -> EvalObject:
    return await asyncio.to_thread(evals.get_eval, gw, eval_id)


@router.post(
    "/v1/evals/{eval_id}",
    response_model=EvalObject,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Rename an eval or replace its metadata (admin)",
)
async def update_eval(eval_id: str, body: UpdateEval, gw: GatewayDep) -> EvalObject:
    return await asyncio.to_thread(evals.update_eval, gw, eval_id, body)


@router.delete(
    "/v1/evals/{eval_id}",
    response_model=EvalDeleted,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Delete an eval with its runs and output items (admin)",
)
async def delete_eval(eval_id: str, gw: GatewayDep) -> EvalDeleted:
    return await asyncio.to_thread(evals.delete_eval, gw, eval_id)


@router.post(
    "/v1/evals/{eval_id}/runs",
    response_model=RunObject,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Start a run: each row's prompt to a served model, its answer graded; runs in the background (admin)",
)
async def create_run(eval_id: str, body: CreateRun, gw: GatewayDep) -> RunObject:
    return await evals.create_run(gw, eval_id, body)


@router.get(
    "/v1/evals/{eval_id}/runs",
    response_model=RunList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="An eval's runs",
)
async def list_runs(
    eval_id: str,
    gw: GatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last run of the previous page"),
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("asc", description="by creation time"),
    status: Literal["queued", "in_progress", "completed", "canceled", "failed"] | None = Query(None),
) -> RunList:
    return await asyncio.to_thread(evals.list_runs, gw, eval_id, after, limit, order, status)


@router.get(
    "/v1/evals/{eval_id}/runs/{run_id}",
    response_model=RunObject,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="One run: status, result counts, per-criterion results, per-model usage",
)
async def get_run(eval_id: str, run_id: str, gw: GatewayDep) -> RunObject:
    return await asyncio.to_thread(evals.get_run, gw, eval_id, run_id)


@router.post(
    "/v1/evals/{eval_id}/runs/{run_id}/cancel",
    response_model=RunObject,
    responses=CANCEL_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Cancel a queued or running run; rows already graded are kept (admin)",
)
@router.post(
    "/v1/evals/{eval_id}/runs/{run_id}",
    response_model=RunObject,
    responses=CANCEL_ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Cancel a run (the API reference's path; the SDK posts to .../cancel) (admin)",
)
async def cancel_run(eval_id: str, run_id: str, gw: GatewayDep) -> RunObject:
    return await asyncio.to_thread(evals.cancel_run, gw, eval_id, run_id)


@router.delete(
    "/v1/evals/{eval_id}/runs/{run_id}",
    response_model=RunDeleted,
    responses=ERRORS,
    dependencies=[Depends(require_admin)],
    summary="Delete a run and its output items; a running one stops (admin)",
)
async def delete_run(eval_id: str, run_id: str, gw: GatewayDep) -> RunDeleted:
    return await asyncio.to_thread(evals.delete_run, gw, eval_id, run_id)


@router.get(
    "/v1/evals/{eval_id}/runs/{run_id}/output_items",
    response_model=OutputItemList,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="A run's output items: each row's sample and each criterion's result, in row order by default",
)
async def list_output_items(
    eval_id: str,
    run_id: str,
    gw: GatewayDep,
    after: str | None = Query(None, description="cursor: the id of the last item of the previous page"),
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = Query("asc", description="by row"),
    status: Literal["pass", "fail", "error"] | None = Query(None, description="only items of this status"),
) -> OutputItemList:
    return await asyncio.to_thread(evals.list_output_items, gw, eval_id, run_id, after, limit, order, status)


@router.get(
    "/v1/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}",
    response_model=OutputItemObject,
    responses=ERRORS,
    dependencies=[Depends(require_inference)],
    summary="One output item",
)
async def get_output_item(eval_id: str, run_id: str, output_item_id: str, gw: GatewayDep) -> OutputItemObject:
    return await asyncio.to_thread(evals.get_output_item, gw, eval_id, run_id, output_item_id)
