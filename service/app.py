"""The gateway app: create_app(settings) wires the Gateway (store, registry, engine, adapter cache, runner), the
routers and the middleware. Wiring only: what a request does lives in service/api, inference and management."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from adapters.registry import ProjectJobs, Registry
from adapters.store import open_store
from service import errors, logs
from service.api.audit import AuditTrail
from service.api.auth import KeyGate
from service.api.middleware import BodyLimit, RequestContext
from service.api.routes import (
    adapters,
    batches,
    chat,
    completions,
    files,
    fine_tuning,
    health,
    jobs,
    models,
    organization,
    ui,
)
from service.api.routes import audit as audit_routes
from service.api.routes import evals as eval_routes
from service.api.routes import graders as grader_routes
from service.api.routes import stored_completions as stored_routes
from service.engine.adapter_cache import AdapterCache
from service.engine.core import Engine
from service.gateway import Gateway
from service.inference.fairness import FairShare
from service.inference.ratelimit import rate_limiter
from service.inference.stored import CompletionWriter
from service.management.audit import AuditWriter
from service.management.batch_runs import start_batches
from service.management.eval_runs import start_eval_runs
from service.management.jobs import JobReads
from service.metrics import Metrics
from service.runners.base import Runner, trainer_command
from service.settings import Settings

DESCRIPTION = (
    "OpenAI-compatible inference over vLLM with LoRA adapters hot-loaded from an object store, "
    "plus training and management of those adapters."
)


def build_runner(settings: Settings, registry: Registry) -> Runner:
    if settings.runner == "kubernetes" and settings.k8s_job_kind == "trainjob":
        from service.runners.kubeflow import KubeflowRunner

        return KubeflowRunner(settings, registry)
    if settings.runner == "kubernetes":
        from service.runners.kubernetes import KubernetesRunner

        return KubernetesRunner(settings, registry)
    from service.runners.local import LocalRunner

    return LocalRunner(
        registry,
        settings.store_uri,
        settings.cache_dir / "jobs",
        settings.train_concurrency,
        command=[sys.executable, *trainer_command(settings.train_processes_per_job)],
        max_seconds=settings.max_job_seconds,
    )


def build_gateway(settings: Settings, metrics: Metrics) -> Gateway:
    """The gateway's parts over one store: registry, engine, adapter cache and runner, with their metrics watched."""
    registry = Registry(open_store(settings.store_uri))
    engine = Engine(settings, metrics)
    cache = AdapterCache(
        registry,
        settings.cache_dir,
        settings.cache_max_bytes,
        engine.base_model_id,
        settings.max_lora_rank,
        metrics,
        unload=engine.remove_lora,
        base_dir=engine.model_dir,
        max_names=settings.name_cache_entries,
    )
    # Runners see every project's jobs (each launched inside its project's namespace); so does the jobs gauge.
    jobs = ProjectJobs(registry)
    runner = build_runner(settings, jobs) if settings.training_enabled else None  # type: ignore[arg-type]
    metrics.watch_jobs(lambda: dict(Counter(job.status.value for job in jobs.list_jobs())))
    metrics.watch_loras(cache.in_use, settings.max_loras)
    metrics.watch_engine(lambda: engine.in_flight, engine.unfinished, lambda: engine.grammar.in_flight)
    metrics.watch_residency(cache.resident)
    writer = CompletionWriter(
        registry,
        metrics,
        settings.stored_completion_queue,
        max_age_s=settings.stored_completion_max_age_s or None,
        max_count=settings.stored_completion_max_count or None,
    )
    audit = AuditWriter(registry, metrics, settings.audit_queue, max_age_s=settings.audit_max_age_s or None)
    return Gateway(
        settings, engine, registry, cache, runner, metrics, JobReads(registry), completions=writer,
        limits=rate_limiter(settings.limits_backend, registry.store, settings.limits_claim_share),
        fair=FairShare(settings.max_project_queue),
        audit=audit,
    )


@asynccontextmanager
async def running(gw: Gateway) -> AsyncIterator[None]:
    """The gateway's background parts for the app's life: metrics server, runner, engine (and its stall watch), eval
    runs, batches, the stored completions' and the audit log's writers; stopped in the reverse order."""
    settings, engine, runner = gw.settings, gw.engine, gw.runner
    metrics_server = gw.metrics.serve(settings.host, settings.metrics_port) if settings.metrics_port else None
    if runner is not None:
        runner.start()
    watch: asyncio.Task[None] | None = None
    try:
        if settings.load_engine:
            engine.start()
            if settings.engine_stall_seconds:
                watch = asyncio.create_task(engine.watch(every=min(5.0, settings.engine_stall_seconds / 4)))
        await start_eval_runs(gw)  # after the engine: runs left running resume on it
        await start_batches(gw)  # likewise batches
        if gw.completions is not None:
            gw.completions.start()
        if gw.audit is not None:
            gw.audit.start()
        yield
    finally:
        if gw.audit is not None:
            await gw.audit.stop()
        if gw.completions is not None:
            await gw.completions.stop()
        for executor in (gw.batches, gw.eval_runs):
            if executor is not None:
                await executor.stop()
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if runner is not None:
            runner.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        engine.shutdown()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway; its lifespan builds the Gateway and starts the engine (unless disabled) and the job runner."""
    settings = settings or Settings()
    metrics = Metrics(settings.metrics_max_models, settings.base_model_id, settings.metrics_project_label)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.configure(settings.log_level)
        app.state.gateway = build_gateway(settings, metrics)
        async with running(app.state.gateway):
            yield

    app = FastAPI(title="skillserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    for module in (
        chat, stored_routes, completions, models, files, batches, fine_tuning, eval_routes, grader_routes, adapters,
        jobs, organization, audit_routes, health,
    ):
        app.include_router(module.router)
    ui.install(app)  # the dashboard at /ui, after the API routes
    app.add_middleware(
        BodyLimit, limit=settings.max_request_bytes, inference_limit=settings.max_inference_request_bytes
    )
    # Inside the key check, which tells it who acts; outside the body limit, whose refusals are outcomes too.
    app.add_middleware(AuditTrail, settings=settings)
    # Outside the body limit: a request without a key is refused before anything else looks at it.
    app.add_middleware(KeyGate, settings=settings)
    app.add_middleware(RequestContext, metrics=metrics)
    _document_manual_bodies(app)
    return app


def _document_manual_bodies(app: FastAPI) -> None:
    """Put the request models that routes parse themselves (POST /adapters takes JSON or multipart, so FastAPI
    never sees its model) into the OpenAPI components, so the `$ref`s that point at them resolve."""
    from service.protocol.adapters import CreateAdapterJSON

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        model = CreateAdapterJSON.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in model.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault("CreateAdapterJSON", model)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
