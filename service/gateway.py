"""The Gateway: the parts every request may need, built once in the app's lifespan (service/app.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.engine.adapter_cache import AdapterCache
from service.engine.core import Engine
from service.management.jobs import JobReads
from service.metrics import Metrics
from service.runners.base import Runner
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
