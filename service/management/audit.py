"""The audit log kept off the request's path: the request middleware (service/api/audit.py) hands what it saw to a
bounded in-memory queue and goes on; one background writer turns it into an entry (parsing the answer's JSON on a
worker thread, never on the event loop), writes it through the registry and enforces the retention limit.

A full queue drops the entry, counts it (`skillserve_audit_entries{outcome="dropped"}`) and logs it; a write the
store refuses is counted as `failed` and logged. Neither ever changes the answer of the action itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from adapters.registry import AuditBook, AuditFilter
from adapters.schema import AuditActor, AuditEntry
from service.metrics import Metrics
from service.protocol.audit import AuditEntryObject, AuditList
from service.queued import QueuedWriter

log = logging.getLogger("skillserve.audit")

PRUNE_EVERY_S = 600.0  # retention is enforced at most this often: a prune lists every project's entries
MAX_BODY_BYTES = 64 * 1024  # of an answer, kept to find the object's id or the error's code; admin answers are small


@dataclass
class Answered:
    """An action as the middleware saw it; `entry()` makes the audit entry of it on the writer's thread."""

    id: str
    at: float
    actor: AuditActor
    action: str
    method: str
    route: str
    params: dict[str, str]
    detail: dict[str, str]
    status_code: int
    body: bytes = field(repr=False)  # the answer's first MAX_BODY_BYTES

    def entry(self) -> AuditEntry:
        answer = _json(self.body)
        error = answer.get("error") if isinstance(answer.get("error"), dict) else None
        failed = self.status_code >= 400
        return AuditEntry(
            id=self.id, at=self.at, actor=self.actor, action=self.action, method=self.method, route=self.route,
            object_id=_object_id({} if failed else answer, self.params),
            params=self.params, detail=self.detail, status_code=self.status_code,
            error_code=str(error["code"]) if failed and error and error.get("code") else None,
            outcome="failed" if failed else "succeeded",
        )


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:  # cut at MAX_BODY_BYTES, or not JSON
        return {}
    return value if isinstance(value, dict) else {}


def _object_id(answer: dict[str, Any], params: dict[str, str]) -> str | None:
    """The object the action made or changed: the answer's id, else its name@version or name, else the path's (all
    a failed action has)."""
    name, version = answer.get("name"), answer.get("version")
    if isinstance(answer.get("id"), str):
        return str(answer["id"])
    if isinstance(name, str):
        return f"{name}@{version}" if isinstance(version, str) else name
    return "/".join(params.values()) or None


class AuditWriter(QueuedWriter["Answered | AuditEntry"]):
    """The bounded queue of audit entries and the one task that writes them."""

    task_name = "audit-log"

    def __init__(
        self, registry: AuditBook, metrics: Metrics, queue_size: int, max_age_s: float | None = None,
        prune_every_s: float = PRUNE_EVERY_S,
    ):
        super().__init__(queue_size)
        self.registry, self.metrics = registry, metrics
        self.max_age_s, self.prune_every_s = max_age_s, prune_every_s
        self._pruned_at: float | None = None

    def offer(self, item: Answered | AuditEntry) -> bool:
        """Queue an entry for the writer; never waits: a full queue drops it (counted, logged). Whether it was
        queued."""
        return self._offer(item)

    def dropped(self, item: Answered | AuditEntry) -> None:
        self.metrics.audit_entries.labels("dropped").inc()
        log.warning("audit entry %s (%s) dropped: the queue is full", item.id, item.action)

    async def write(self, item: Answered | AuditEntry) -> None:
        try:
            await asyncio.to_thread(self._put, item)
        except Exception as exc:  # noqa: BLE001 - the store's failure costs this entry, never the writer or the action
            self.metrics.audit_entries.labels("failed").inc()
            log.warning("audit entry %s (%s) not written: %s: %s", item.id, item.action, type(exc).__name__, exc)
            return
        self.metrics.audit_entries.labels("written").inc()

    def _put(self, item: Answered | AuditEntry) -> None:
        self.registry.put_audit(item.entry() if isinstance(item, Answered) else item)

    async def idle(self) -> None:
        """Enforce the retention limit, at most every `prune_every_s`."""
        if self.max_age_s is None:
            return
        now = time.time()
        if self._pruned_at is not None and now - self._pruned_at < self.prune_every_s:
            return
        self._pruned_at = now
        try:
            pruned = await asyncio.to_thread(self.registry.prune_audit, now, self.max_age_s)
        except Exception as exc:  # noqa: BLE001 - retention is retried at the next prune
            log.warning("audit log not pruned: %s: %s", type(exc).__name__, exc)
            return
        self.metrics.audit_entries.labels("pruned").inc(pruned)


def list_entries(registry: AuditBook, project: str, after: str | None, limit: int, where: AuditFilter) -> AuditList:
    """A project's audit entries that `where` keeps, newest first, as an OpenAI list."""
    entries, more = registry.list_audit(project, after, limit, where)
    data = [AuditEntryObject.of(entry) for entry in entries]
    return AuditList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=more)
