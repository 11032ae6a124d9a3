"""What routes receive through FastAPI `Depends`: the gateway's parts, built once in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from service.adapter_cache import AdapterCache
from service.engine import Engine
from service.job_reads import JobReads
from service.metrics import Metrics
from service.runner import Runner
from service.settings import Settings


@dataclass
class Gateway:
    """Everything a request may need; one per app."""

    settings: Settings
    engine: Engine
    registry: Any
    store: Any
    cache: AdapterCache
    runner: Runner | None
    metrics: Metrics
    job_reads: JobReads  # job records shared by everyone following a job
    eval_runs: Any = None  # the eval runs' executor (service/management/eval_runs.py), started with the app


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


def get_settings(request: Request) -> Settings:
    return get_gateway(request).settings


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
