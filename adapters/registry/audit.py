"""The audit log (audit/<project>/<id>.json): entries written once, never changed, listed newest first by their
time-sortable ids, and deleted only by retention, which reads the time from the id without reading the entry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from adapters.errors import NotFound
from adapters.registry.keys import AUDIT_PREFIX, ORG_AUDIT_LOG, audit_key, audit_prefix
from adapters.registry.records import RecordShelf
from adapters.schema import AUDIT_ID_RE, AuditEntry, audit_id_time

log = logging.getLogger("skillserve.registry")


@dataclass(frozen=True)
class AuditFilter:
    """Which entries a listing keeps; every field given must match. The time range is read from the ids alone."""

    action: str | None = None
    outcome: Literal["succeeded", "failed"] | None = None
    object_id: str | None = None
    actor_key_id: str | None = None  # the acting key's public id, `key_...`
    start_time: float | None = None  # unix seconds, inclusive
    end_time: float | None = None  # unix seconds, exclusive
    # The organisation's log, as OpenAI's `project_ids[]` and `event_types[]`: any of them (none: every one).
    projects: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()

    def keeps(self, entry: AuditEntry) -> bool:
        return (
            (self.action is None or entry.action == self.action)
            and (self.outcome is None or entry.outcome == self.outcome)
            and (self.object_id is None or entry.object_id == self.object_id)
            and (not self.projects or entry.project in self.projects)
            and (not self.actions or entry.action in self.actions)
            and (self.actor_key_id is None or entry.actor.key_id == self.actor_key_id)
        )


EVERY = AuditFilter()


class AuditBook(RecordShelf):
    """Each project's audit entries, and the organisation's (operator actions)."""

    def put_audit(self, entry: AuditEntry, log: str | None = None) -> bool:
        """Write an entry into `log` (a project's id or ORG_AUDIT_LOG; the actor's project by default); never over
        another (ids carry 64 random bits: two replicas cannot collide)."""
        return self._put_once(audit_key(log or entry.actor.project, entry.id), entry)

    def put_operator_audit(self, entry: AuditEntry, project_exists: Callable[[str], bool]) -> None:
        """An operator's action: into the organisation's log, and into the log of the project it was on (when that
        project exists), so the project's admins see who changed their keys."""
        self.put_audit(entry, ORG_AUDIT_LOG)
        if entry.project is not None and project_exists(entry.project):
            self.put_audit(entry, entry.project)

    def list_audit(
        self, project: str, after: str | None = None, limit: int = 20, where: AuditFilter = EVERY
    ) -> tuple[list[AuditEntry], bool]:
        """A project's entries, newest first: the `limit` older than the entry `after` (an id; it need not still be
        there) that `where` keeps, and whether more follow. Reads entries only until the page is full, and none
        outside the time range."""
        keys = sorted(self.store.list(audit_prefix(project)), reverse=True)
        if after is not None:
            keys = [key for key in keys if key < audit_key(project, after)]
        found: list[AuditEntry] = []
        for key in keys:
            leaf = key.rpartition("/")[2].removesuffix(".json")
            if not AUDIT_ID_RE.fullmatch(leaf):
                log.warning("skipping a key not of an audit entry: %s", key)
                continue
            at = audit_id_time(leaf)
            if where.end_time is not None and at >= where.end_time:
                continue
            if where.start_time is not None and at < where.start_time:
                break  # newest first: every key after this one is older still
            try:
                entry = AuditEntry.model_validate_json(self.store.get_bytes(key))
            except NotFound:  # pruned between the list and the read
                continue
            except ValidationError as exc:
                log.warning("skipping unreadable audit entry %s: %s", key, exc)
                continue
            if not where.keeps(entry):
                continue
            if len(found) == limit:
                return found, True
            found.append(entry)
        return found, False

    def prune_audit(self, now: float, max_age_s: float) -> int:
        """Delete every project's entries older than `max_age_s`; how many went."""
        doomed = []
        for key in self.store.list(AUDIT_PREFIX):
            leaf = key.rpartition("/")[2].removesuffix(".json")
            if AUDIT_ID_RE.fullmatch(leaf) and audit_id_time(leaf) < now - max_age_s:
                doomed.append(key)
        for key in doomed:
            self.store.delete(key)
        return len(doomed)
