"""The Gateway: the typed parts every request may need, built once in the app's lifespan (service/app.py) and handed
to routes through FastAPI `Depends` (service/api/deps.py).

Its fields' types live in the layers that own them; they are imported for type checking only, so this root module
depends on nothing above it at run time."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from adapters.registry import Registry
from adapters.schema import DEFAULT_PROJECT
from service.metrics import Metrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.engine.adapter_cache import AdapterCache
    from service.engine.core import Engine
    from service.inference.fairness import FairShare
    from service.inference.ratelimit import RateLimiter
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
    limits: RateLimiter | None = None  # projects' and keys' per-minute inference limits, shared over the store
    fair: FairShare | None = None  # each project's share of the queue and its requests' engine priority
    project: str = DEFAULT_PROJECT  # whose objects `registry` and `cache` reach (for_project)
    _scopes: dict[str, Gateway] = field(default_factory=dict, repr=False)

    @property
    def owner(self) -> str:
        """The owner in `ft:<base>:<owner>:...` ids: the project, or the configured owner for the default one."""
        return self.settings.fine_tune_owner if self.project == DEFAULT_PROJECT else self.project

    def for_project(self, project: str) -> Gateway:
        """This gateway as one project sees it: its registry a view of that project's namespace and its adapter
        cache keyed by project, so no route can reach another project's objects; the engine, runner and metrics
        shared (the stored completions' writer too: chat hands it the project's registry), and the background executors
        (eval runs, batches), which run each project's work in its project."""
        if project == self.project:
            return self
        scoped = self._scopes.get(project)
        if scoped is None:
            registry = self.registry.for_project(project)
            scoped = self._scopes[project] = dataclasses.replace(
                self,
                registry=registry,
                cache=self.cache.scoped(project, registry),
                job_reads=type(self.job_reads)(registry),
                project=project,
                _scopes={},
            )
        # The executors start after the gateway is built, and a view may be made before (a run resumed at start).
        scoped.eval_runs, scoped.batches = self.eval_runs, self.batches
        return scoped
