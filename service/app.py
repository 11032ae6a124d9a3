"""The gateway app: create_app(settings) wires store, registry, engine, adapter cache, runner and routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.registry import Registry
from adapters.store import open_store
from service import errors, logs
from service.adapter_cache import AdapterCache
from service.api.routes import evals as eval_routes
from service.api.routes import graders as grader_routes
from service.auth import KeyGate
from service.dependencies import Gateway
from service.engine import Engine
from service.job_reads import JobReads
from service.management.eval_runs import start_eval_runs
from service.metrics import Metrics
from service.routes import adapters, chat, completions, files, fine_tuning, health, jobs, models, ui
from service.runner import Runner, trainer_command
from service.settings import Settings

log = logging.getLogger("skillserve.http")

DESCRIPTION = (
    "OpenAI-compatible inference over vLLM with LoRA adapters hot-loaded from an object store, "
    "plus training and management of those adapters."
)


class RequestContext:
    """Pure ASGI middleware (streams and disconnects pass untouched): request ids, access logs, metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            # The route template keeps label cardinality bounded (no adapter names or job ids in paths).
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
            if label not in ("/health", "/metrics", "/ready"):
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": logs.elapsed_ms(started),
                    },
                )
            logs.request_id.reset(token)


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies over their limit with 413, declared or streamed.

    Inference bodies (/v1/...) have a far smaller limit than uploads: the JSON of a request is parsed on the
    event loop, so its size bounds how long one request can hold every other."""

    def __init__(self, app: ASGIApp, limit: int, inference_limit: int):
        self.app = app
        self.limit = limit
        self.inference_limit = inference_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Fine-tuning files are uploads, however OpenAI's path names them.
        inference = scope["path"].startswith("/v1/") and not scope["path"].startswith("/v1/files")
        limit = min(self.limit, self.inference_limit) if inference else self.limit
        setting = "max_request_bytes" if limit == self.limit else "max_inference_request_bytes"
        message = f"request body too large: the limit is {limit} bytes ({setting})"
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            # Refused before a byte of the body is read.
            await errors.render(errors.APIError(413, message, code="request_too_large"))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message_ = await receive()
            seen += len(message_.get("body", b""))
            if seen > limit:  # a chunked body that lied by omission: stop reading it
                raise HTTPException(413, message)
            return message_

        await self.app(scope, counted, send)


def build_runner(settings: Settings, registry: Registry) -> Runner:
    if settings.runner == "kubernetes" and settings.k8s_job_kind == "trainjob":
        from service.runner_kubeflow import KubeflowRunner

        return KubeflowRunner(settings, registry)
    if settings.runner == "kubernetes":
        from service.runner_kubernetes import KubernetesRunner

        return KubernetesRunner(settings, registry)
    from service.runner_local import LocalRunner

    return LocalRunner(
        registry,
        settings.store_uri,
        settings.cache_dir / "jobs",
        settings.train_concurrency,
        command=[sys.executable, *trainer_command(settings.train_processes_per_job)],
        max_seconds=settings.max_job_seconds,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway; its lifespan starts the engine (unless disabled) and the job runner."""
    settings = settings or Settings()
    metrics = Metrics(settings.metrics_max_models, settings.base_model_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.configure(settings.log_level)
        store = open_store(settings.store_uri)
        registry = Registry(store)
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
        runner = build_runner(settings, registry) if settings.training_enabled else None
        metrics.watch_jobs(lambda: dict(Counter(job.status.value for job in registry.list_jobs())))
        metrics.watch_loras(cache.in_use, settings.max_loras)
        metrics.watch_engine(lambda: engine.in_flight, engine.unfinished, lambda: engine.grammar.in_flight)
        metrics.watch_residency(cache.resident)
        app.state.gateway = Gateway(settings, engine, registry, store, cache, runner, metrics, JobReads(registry))
        metrics_server = metrics.serve(settings.host, settings.metrics_port) if settings.metrics_port else None
        if runner is not None:
            runner.start()
        watch: asyncio.Task[None] | None = None
        try:
            if settings.load_engine:
                engine.start()
                if settings.engine_stall_seconds:
                    watch = asyncio.create_task(engine.watch(every=min(5.0, settings.engine_stall_seconds / 4)))
            await start_eval_runs(app.state.gateway)  # after the engine: runs left running resume on it
            yield
        finally:
            if app.state.gateway.eval_runs is not None:
                await app.state.gateway.eval_runs.stop()
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            if runner is not None:
                runner.stop()
            if metrics_server is not None:
                metrics_server.shutdown()
            engine.shutdown()

    app = FastAPI(title="skillserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    errors.install(app)
    for module in (chat, completions, models, files, fine_tuning, eval_routes, grader_routes, adapters, jobs, health):
        app.include_router(module.router)
    ui.install(app)  # the dashboard at /ui, after the API routes
    app.add_middleware(
        BodyLimit, limit=settings.max_request_bytes, inference_limit=settings.max_inference_request_bytes
    )
    # Outside the body limit: a request without a key is refused before anything else looks at it.
    app.add_middleware(KeyGate, settings=settings)
    app.add_middleware(RequestContext, metrics=metrics)
    _document_manual_bodies(app)
    return app


def _document_manual_bodies(app: FastAPI) -> None:
    """Put the request models that routes parse themselves (POST /adapters takes JSON or multipart, so FastAPI
    never sees its model) into the OpenAPI components, so the `$ref`s that point at them resolve."""
    from service.protocol import CreateAdapterJSON

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
