"""Stored chat completions kept off the request's hot path: the request hands its record to a bounded in-memory
queue and goes on; one background writer drains the queue into the registry and enforces the retention limits.

A full queue drops the record and counts it (`skillserve_stored_completions{outcome="dropped"}`), so a slow or
unreachable store costs a chat answer nothing but the record. A write the store refuses is counted as `failed` and
the writer goes on with the next. Records still queued at shutdown get a short grace to be written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from adapters.registry import CompletionBook
from adapters.schema import StoredCompletion
from service.metrics import Metrics
from service.queued import QueuedWriter

log = logging.getLogger("skillserve.stored_completions")

PRUNE_EVERY_S = 60.0  # retention is enforced at most this often: a prune lists every stored completion


def storing(policy: Literal["request", "always", "never"], asked: bool | None) -> bool:
    """Whether a chat completion is stored: the gateway's policy, else what the request's `store` asks."""
    if policy == "request":
        return bool(asked)
    return policy == "always"


class CompletionWriter(QueuedWriter[tuple[StoredCompletion, CompletionBook]]):
    """The bounded queue of stored completions and the one task that writes them."""

    task_name = "stored-completions"

    def __init__(
        self,
        registry: CompletionBook,
        metrics: Metrics,
        queue_size: int,
        max_age_s: float | None = None,
        max_count: int | None = None,
        prune_every_s: float = PRUNE_EVERY_S,
    ):
        super().__init__(queue_size)
        self.registry, self.metrics = registry, metrics
        self.max_age_s, self.max_count, self.prune_every_s = max_age_s, max_count, prune_every_s
        self._pruned_at: float | None = None
        # The registries written to since the last prune, by project: each project's completions are kept apart.
        self._written: dict[str, CompletionBook] = {}

    def offer(self, record: StoredCompletion, registry: CompletionBook | None = None) -> bool:
        """Queue `record` for the writer, into `registry` (a project's; the writer's own by default); never waits: a
        full queue drops it (counted). Whether it was queued."""
        return self._offer((record, registry or self.registry))

    def dropped(self, item: tuple[StoredCompletion, CompletionBook]) -> None:
        self.metrics.stored_completions.labels("dropped").inc()

    async def write(self, item: tuple[StoredCompletion, CompletionBook]) -> None:
        record, registry = item
        self._written[getattr(registry, "project", "")] = registry
        try:
            await asyncio.to_thread(registry.put_completion, record)
        except Exception as exc:  # noqa: BLE001 - the store's failure costs this record, never the writer
            self.metrics.stored_completions.labels("failed").inc()
            log.warning("stored completion %s not written: %s: %s", record.id, type(exc).__name__, exc)
            return
        self.metrics.stored_completions.labels("written").inc()

    async def idle(self) -> None:
        """Enforce the retention limits, at most every `prune_every_s`."""
        if self.max_age_s is None and self.max_count is None:
            return
        now = time.time()
        if self._pruned_at is not None and now - self._pruned_at < self.prune_every_s:
            return
        self._pruned_at = now
        written, self._written = self._written or {"": self.registry}, {}
        for registry in written.values():  # the limits hold per project
            try:
                pruned = await asyncio.to_thread(registry.prune_completions, now, self.max_age_s, self.max_count)
            except Exception as exc:  # noqa: BLE001 - retention is retried at the next prune
                log.warning("stored completions not pruned: %s: %s", type(exc).__name__, exc)
                continue
            self.metrics.stored_completions.labels("pruned").inc(pruned)
