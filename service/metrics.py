"""Prometheus metrics of one gateway: requests, latency, tokens, adapter tiers, jobs by status."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from adapters.schema import JobStatus


class _JobsCollector(Collector):
    """Jobs by status, read when scraped (the store is the truth, shared by every replica)."""

    def __init__(self, count: Callable[[], dict[str, int]]):
        self.count = count

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("skillserve_jobs", "training jobs by status", labels=["status"])
        try:
            counts = self.count()
        except Exception:  # an unreachable store must not break the scrape
            counts = {}
        for status in JobStatus:
            family.add_metric([status.value], counts.get(status.value, 0))
        yield family


class Metrics:
    """One registry per app, so several apps (tests) never collide on global metric names."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "skillserve_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "skillserve_request_seconds",
            "HTTP request latency (to the last byte for streams)",
            ["route"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.tokens = Counter("skillserve_tokens", "tokens processed", ["kind", "model"], registry=r)
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
            "skillserve_requests_in_flight", "generation requests in the engine", registry=r
        )

    def watch_jobs(self, count: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_JobsCollector(count))

    def render(self) -> bytes:
        return generate_latest(self.registry)
