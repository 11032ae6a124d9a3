"""The Gateway: the typed parts every request may need, built once in the app's lifespan (service/app.py) and handed
to routes through FastAPI `Depends` (service/api/deps.py).

Its fields' types live in the layers that own them; they are imported for type checking only, so this root module
depends on nothing above it at run time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from adapters.registry import Registry
from service.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.engine.adapter_cache import AdapterCache
    from service.engine.core import Engine
    from service.inference.stored import CompletionWriter
    from service.management.audit import AuditWriter
    from service.management.batch_runs import BatchRunner
    from service.management.eval_runs import EvalRunner
    from service.management.jobs import JobReads
    from service.runners.base import Runner


@dataclass
class Gateway:
    """Everything a request may need; one per app."""

    settings: Settings
    engine: Engine
    registry: Registry
    cache: AdapterCache
    runner: Runner | None  # None: training is disabled (service.management.jobs.runner says so)
    metrics: Metrics
    job_reads: JobReads  # job records shared by everyone following a job
    eval_runs: EvalRunner | None = None  # the eval runs' executor, started with the app
    batches: BatchRunner | None = None  # the batches' executor, started with the app
    completions: CompletionWriter | None = None  # stored completions' writer, started with the app
    audit: AuditWriter | None = None  # the audit log's writer, started with the app
