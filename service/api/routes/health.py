"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.api.deps import GatewayDep

router = APIRouter(tags=["operations"])
log = logging.getLogger("skillserve.health")


@router.get(
    "/health",
    summary="Liveness: the process answers and its engine, once started, is alive and answering (503 when not)",
    responses={503: {"description": "the engine died, or hung (engine_stall_seconds); restart the gateway"}},
)
async def health(gw: GatewayDep) -> JSONResponse:
    # A dead or hung engine never comes back by itself: fail liveness so Kubernetes restarts the pod.
    if gw.engine.dead:
        return JSONResponse({"status": "engine dead"}, status_code=503)
    silent = gw.engine.stalled(gw.settings.engine_stall_seconds)
    if silent is not None:
        log.warning("the engine has not answered a ping for %.0f s: failing liveness", silent)
        return JSONResponse({"status": "engine not answering", "seconds": round(silent)}, status_code=503)
    # The weights' dtype and why (`dtype: auto` depends on the CPU), once the engine has been started.
    dtype = {"dtype": gw.engine.dtype, "dtype_reason": gw.engine.dtype_reason} if gw.engine.dtype else {}
    return JSONResponse({"status": "ok", **dtype})


@router.get("/ready", summary="Readiness: the engine is loaded (503 until then)")
async def ready(gw: GatewayDep) -> JSONResponse:
    if gw.engine.ready:
        return JSONResponse({"status": "ready", "model": gw.engine.base_model_id})
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})


@router.get(
    "/metrics",
    summary="Prometheus metrics (with auth on: a key, unless public_metrics; or on metrics_port without one)",
    response_class=Response,
)
async def metrics(gw: GatewayDep) -> Response:
    body = await asyncio.to_thread(gw.metrics.render)  # job counts may come from a remote store
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
