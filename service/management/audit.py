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

from adapters.errors import NotFound
from adapters.registry import AuditBook, AuditFilter, Registry
from adapters.registry.keys import ORG_AUDIT_LOG
from adapters.schema import PROJECT_ID_RE, AuditActor, AuditEntry
from service.metrics import Metrics
from service.protocol.audit import AuditEntryObject, AuditList
from service.queued import QueuedWriter

log = logging.getLogger("skillserve.audit")

PRUNE_EVERY_S = 600.0  # retention is enforced at most this often: a prune lists every project's entries
MAX_BODY_BYTES = 64 * 1024  # of an answer, kept to find the object's id or the error's code; admin answers are small
# The operator's routes: their entries go to the organisation's log and to the log of the project acted on.
ORGANIZATION = "/v1/organization/"


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
        object_id = _object_id({} if failed else answer, self.params)
        return AuditEntry(
            id=self.id, at=self.at, actor=self.actor, action=self.action, method=self.method, route=self.route,
            object_id=object_id, params=self.params, detail=self.detail, status_code=self.status_code,
            error_code=str(error["code"]) if failed and error and error.get("code") else None,
            outcome="failed" if failed else "succeeded", project=self.project_acted_on(object_id),
        )

    def project_acted_on(self, object_id: str | None) -> str | None:
        """The project an operator's action was on: the path's, or the one `project.create` made; None for a route
        outside /v1/organization, or a malformed id."""
        if not (self.route or "").startswith(ORGANIZATION):
            return None
        project = self.params.get("project_id") or (object_id if self.action == "project.create" else None)
        return project if project is not None and PROJECT_ID_RE.fullmatch(project) else None


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
        self, registry: Registry, metrics: Metrics, queue_size: int, max_age_s: float | None = None,
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
        entry = item.entry() if isinstance(item, Answered) else item
        if (entry.route or "").startswith(ORGANIZATION):
            self.registry.put_operator_audit(entry, self._project_exists)
        else:
            self.registry.put_audit(entry)

    def _project_exists(self, project: str) -> bool:
        try:
            self.registry.get_project(project)
        except NotFound:  # a 404 for an unknown project: the organisation's log holds it, no stray project log
            return False
        return True

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
    return _listed(entries, more)


def list_organization_entries(
    registry: AuditBook, after: str | None, limit: int, projects: list[str], actions: list[str]
) -> AuditList:
    """The organisation's log (every operator action), newest first, of the given projects and actions if any (as
    OpenAI's `project_ids[]` and `event_types[]`)."""
    where = AuditFilter(projects=tuple(projects), actions=tuple(actions))
    entries, more = registry.list_audit(ORG_AUDIT_LOG, after, limit, where)
    return _listed(entries, more)


def _listed(entries: list[AuditEntry], more: bool) -> AuditList:
    data = [AuditEntryObject.of(entry) for entry in entries]
    return AuditList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=more)
