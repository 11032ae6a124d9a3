"""Prometheus metrics of one gateway: requests, latency, tokens, adapter tiers, jobs by status."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapters.schema import DEFAULT_PROJECT, JobStatus

JOB_COUNTS_MAX_AGE_S = 15.0


class _JobsCollector(Collector):
    """Jobs by status from the store (the truth, shared by every replica), re-read at most every 15 s.

    Counting reads every job record, so scrapes from several Prometheus servers (or a fast interval)
    must not each cost a listing of the store.
    """

    def __init__(self, count: Callable[[], dict[str, int]], max_age_s: float = JOB_COUNTS_MAX_AGE_S):
        self.count, self.max_age_s = count, max_age_s
        self._counts: dict[str, int] = {}
        self._read_at: float | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("skillserve_jobs", "training jobs by status", labels=["status"])
        now = time.monotonic()
        if self._read_at is None or now - self._read_at >= self.max_age_s:
            # An unreachable store must not break the scrape: the last counts stand.
            with contextlib.suppress(Exception):
                self._counts = self.count()
            self._read_at = now
        counts = self._counts
        for status in JobStatus:
            family.add_metric([status.value], counts.get(status.value, 0))
        yield family


class _LoraInfoCollector(Collector):
    """vLLM's `vllm:lora_requests_info`, which adapter-aware routers (the Gateway API inference extension)
    read to send a request where its adapter is already busy. The gateway knows which adapters have
    requests in the engine; it cannot tell running from queued inside it, so all count as running."""

    def __init__(self, in_use: Callable[[], list[str]], max_loras: int):
        self.in_use, self.max_loras = in_use, max_loras

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        )
        family.add_metric([str(self.max_loras), "", ",".join(self.in_use())], time.time())
        yield family


OTHER = "other"
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class ModelLabels:
    """Bounded `model` label values: the base model and the first `limit` adapters this process serves get a
    label of their own, every later adapter shares `other`. A label once given is never taken back, so no
    series vanishes and rates stay right; the bound keeps a store of thousands of skills from becoming
    thousands of series per metric."""

    def __init__(self, limit: int, always: str = ""):
        self.limit, self.always = limit, always
        self._given: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, model: str) -> str:
        if model == self.always or model in self._given:
            return model
        with self._lock:
            if len(self._given) < self.limit:
                self._given.add(model)
                return model
        return OTHER


class RequestMeter:
    """One generation request's per-model figures: time to first token (streamed requests: a request that
    waits for its whole answer has no first token to time), time per output token, tokens, and outcome.
    Labelled by `model`, and by `project` where the operator asked for it (None: no project label)."""

    def __init__(self, metrics: Metrics, model: str, project: str | None = None):
        self.metrics, self.model, self.project = metrics, model, project
        self.labels = (model,) if project is None else (model, project)
        self.started = time.perf_counter()
        self.first: float | None = None

    def token(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            self.metrics.ttft.labels(*self.labels).observe(self.first - self.started)

    def tokens(self, kind: str, count: int) -> None:
        self.metrics.tokens.labels(kind, *self.labels).inc(count)

    def generated(self, count: int) -> None:
        """The request's output is complete: `count` tokens over the time since its first (or its start)."""
        self.tokens("completion", count)
        if count > 0:
            elapsed = time.perf_counter() - (self.first or self.started)
            self.metrics.tpot.labels(*self.labels).observe(elapsed / count)

    def outcome(self, failed: bool) -> None:
        self.metrics.model_requests.labels(*self.labels, "error" if failed else "ok").inc()


class Metrics:
    """One registry per app, so several apps (tests) never collide on global metric names. With `project_label`
    (the operator's `metrics_project_label`), the per-model series also carry the project of the model's adapter;
    without, their labels are as before projects, and two projects' adapters of one name share a series."""

    def __init__(self, max_models: int = 20, base_model: str = "", project_label: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.model_label = ModelLabels(max_models, base_model)
        self.project_label = project_label
        per_model = ["model", "project"] if project_label else ["model"]
        self.model_requests = Counter(
            "skillserve_model_requests", "generation requests per model (top adapters, then other)",
            [*per_model, "outcome"], registry=r,
        )
        self.ttft = Histogram(
            "skillserve_time_to_first_token_seconds", "streamed requests: seconds to the first token, per model",
            per_model, buckets=LATENCY_BUCKETS, registry=r,
        )
        self.tpot = Histogram(
            "skillserve_time_per_output_token_seconds", "seconds per generated token after the first, per model",
            per_model, buckets=TOKEN_BUCKETS, registry=r,
        )
        self.adapter_load = Histogram(
            "skillserve_adapter_load_seconds",
            "seconds to make an adapter version's files ready for a request, by where they were found "
            "(store: fetched and verified; disk: already in the local cache)",
            ["tier"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.resident = Gauge(
            "skillserve_adapters_resident",
            "adapter versions this replica holds on local disk (disk) and with requests in the engine now (in_use)",
            ["tier"], registry=r,
        )
        self.stored_completions = Counter(
            "skillserve_stored_completions",
            "chat completions to store, by outcome: written, dropped (queue full), failed (the store refused), "
            "pruned (retention)",
            ["outcome"], registry=r,
        )
        self.audit_entries = Counter(
            "skillserve_audit_entries",
            "audit log entries, by outcome: written, dropped (queue full), failed (the store refused), pruned "
            "(retention)",
            ["outcome"], registry=r,
        )
        self._serving_metrics(r)

    def _serving_metrics(self, r: CollectorRegistry) -> None:
        """The HTTP, token, adapter-cache, engine and grammar metrics."""
        self.requests = Counter(
            "skillserve_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "skillserve_request_seconds",
            "HTTP request latency (to the last byte for streams)",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "skillserve_tokens", "tokens processed per model (top adapters, then other)",
            ["kind", "model", "project"] if self.project_label else ["kind", "model"], registry=r,
        )
        self.adapter_loads = Counter(
            "skillserve_adapter_loads",
            "adapter versions fetched from the store into the disk cache",
            registry=r,
        )
        self.adapter_evictions = Counter(
            "skillserve_adapter_evictions", "adapter versions evicted from the disk cache", registry=r
        )
        self.adapter_cache_hits = Counter(
            "skillserve_adapter_cache_hits", "adapter requests served from the disk cache", registry=r
        )
        self.engine_unfinished = Gauge(
            "skillserve_engine_unfinished_requests", "requests vLLM is still working on", registry=r
        )
        self.in_flight = Gauge(
            "skillserve_requests_in_flight",
            "requests tokenizing, compiling a grammar or generating (what max_queue bounds)",
            registry=r,
        )
        self.grammar_compile = Histogram(
            "skillserve_grammar_compile_seconds",
            "grammar compiles in the grammar workers, by outcome (ok, refused, timeout, cancelled)",
            ["outcome"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.grammar_in_flight = Gauge(
            "skillserve_grammar_compiles_in_flight", "grammar compiles waiting for or running in a worker",
            registry=r,
        )

    def watch_jobs(self, count: Callable[[], dict[str, int]], max_age_s: float = JOB_COUNTS_MAX_AGE_S) -> None:
        self.registry.register(_JobsCollector(count, max_age_s))

    def watch_loras(self, in_use: Callable[[], list[str]], max_loras: int) -> None:
        self.registry.register(_LoraInfoCollector(in_use, max_loras))

    def watch_engine(
        self, in_flight: Callable[[], int], unfinished: Callable[[], int], compiling: Callable[[], int] = lambda: 0
    ) -> None:
        """Engine gauges read at scrape time, whichever server renders them."""
        self.in_flight.set_function(in_flight)
        self.grammar_in_flight.set_function(compiling)
        self.engine_unfinished.set_function(unfinished)

    def serve(self, host: str, port: int) -> Any:
        """/metrics on a port of its own, for operators who keep scraping off the API port; returns the server."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server

    def meter(self, model: str, project: str = DEFAULT_PROJECT) -> RequestMeter:
        """A request's meter for `model` served to `project`: labelled by the model's name (bounded), and by the
        project where the operator asked for it. Each project's adapters count toward the bound apart."""
        if not self.project_label:
            return RequestMeter(self, self.model_label(model))
        if model == self.model_label.always:
            return RequestMeter(self, model, project)
        given = self.model_label(f"{project}/{model}")  # a project's adapter is one of the bounded labels
        return RequestMeter(self, OTHER if given == OTHER else model, project)

    def watch_residency(self, count: Callable[[str], int]) -> None:
        """Adapter versions on disk and in use in the engine, counted at scrape time."""
        for tier in ("disk", "in_use"):
            self.resident.labels(tier).set_function(lambda tier=tier: count(tier))  # type: ignore[misc]

    def render(self) -> bytes:
        return generate_latest(self.registry)
