"""Projects and their API keys: org/projects/<id>.json and org/keys/<sha256 of the key>.json, at the store's root.
Each project's keys are indexed under org/projects/<id>/keys/<sha256>.json, so listing one project's keys reads its
own records only; a store written before the index gets it built by its first listing (`_indexed`).

A key is stored as its SHA-256 only. Keys are 256 random bits, so the hash needs no stretching: a leaked store
gives no key that works, and a presented key is found by one read of its hash's record (no scan, no timing
difference between keys). The key itself is returned once, by the call that made it.

`ProjectJobs` is the runners' view of every project's jobs: a runner is one per gateway, and a job it runs may lie
in any project's namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from adapters.errors import AlreadyExists, InvalidName, NotFound
from adapters.registry.keys import (
    KEY_INDEX_BUILT,
    ORG_KEYS_PREFIX,
    ORG_PROJECTS_PREFIX,
    api_key_key,
    api_keys_prefix,
    job_uri,
    project_key,
    project_key_entry,
    project_keys_prefix,
    project_prefix,
)
from adapters.registry.records import RecordShelf
from adapters.schema import (
    DEFAULT_PROJECT,
    ApiKeyRecord,
    JobRecord,
    KeyIndexEntry,
    KeyRole,
    ProjectRecord,
    check_project_id,
    new_project_id,
)
from adapters.store import ObjectStore

KEY_PREFIX = "sk-proj-"
DEFAULT = ProjectRecord(id=DEFAULT_PROJECT, name="Default project", created_at=0.0)


def key_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def key_id_of(sha256: str) -> str:
    """A key's public id: `key_` and the first 16 hex digits of its hash (what service/api/auth.key_id gives)."""
    return "key_" + sha256[:16]


def _redacted(token: str) -> str:
    return f"{token[:len(KEY_PREFIX) + 2]}...{token[-4:]}"


class ProjectBook(RecordShelf):
    """Projects and their keys' hashes."""

    store: ObjectStore

    # ------------------------------------------------------------ projects

    def create_project(self, name: str) -> ProjectRecord:
        record = ProjectRecord(id=new_project_id(), name=name)
        if not self._put_once(project_key(record.id), record):
            raise AlreadyExists(f"project {record.id} already exists")
        return record

    def get_project(self, project_id: str) -> ProjectRecord:
        """The project; NotFound for an unknown (or malformed) id. The default project always exists."""
        try:
            if check_project_id(project_id) == DEFAULT_PROJECT:
                return DEFAULT
        except ValueError:
            raise NotFound(f"No project found with id '{project_id}'.", param="project_id") from None
        return self._read(project_key(project_id), ProjectRecord, f"No project found with id '{project_id}'.")

    def list_projects(self) -> list[ProjectRecord]:
        """The default project first, then every other, oldest first."""
        stored = self._read_all(ORG_PROJECTS_PREFIX, ProjectRecord, direct=True)
        return [DEFAULT, *sorted(stored, key=lambda p: (p.created_at, p.id))]

    def archive_project(self, project_id: str) -> ProjectRecord:
        """Archive a project: its keys stop working (each revoked); its records stay. The default one cannot be."""
        if check_project_id(project_id) == DEFAULT_PROJECT:
            raise NotFound("the default project cannot be archived", param="project_id")
        now = time.time()
        record = self._swap(
            project_key(project_id), ProjectRecord,
            lambda p: p if p.archived_at else p.model_copy(update={"archived_at": now}),
            f"No project found with id '{project_id}'.",
        )
        for key in self._scan_api_keys(project_id):  # every key, whatever an index written by any version says
            if key.revoked_at is None:
                self.revoke_api_key(project_id, key.id)
        assert record is not None
        return record

    # ------------------------------------------------------------ keys

    def create_api_key(self, project_id: str, role: KeyRole, name: str = "") -> tuple[ApiKeyRecord, str]:
        """A new key of the project: its record and the key itself, which nothing keeps (shown once)."""
        project = self.get_project(project_id)
        if project.archived_at:
            raise NotFound(f"No project found with id '{project_id}'.", param="project_id")
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        sha = key_hash(token)
        record = ApiKeyRecord(
            id=key_id_of(sha), sha256=sha, project=project.id, role=role, name=name, redacted=_redacted(token)
        )
        # The index entry first: one without its key is skipped by a listing, a key without its entry would be unlisted.
        self._put_once(project_key_entry(project.id, sha), KeyIndexEntry(id=record.id, sha256=sha))
        if not self._put_once(api_key_key(sha), record):  # 2^-256: a broken random source, not bad luck
            raise AlreadyExists("a key with this hash already exists")
        return record, token

    def find_api_key(self, token: str) -> ApiKeyRecord | None:
        """The record of a presented key (revoked ones included), or None: one read, by the key's hash."""
        try:
            return self._read(api_key_key(key_hash(token)), ApiKeyRecord, "")
        except NotFound:
            return None

    def list_api_keys(self, project_id: str) -> list[ApiKeyRecord]:
        """The project's keys, revoked ones included, oldest first: its index listed, then its keys' records read."""
        prefix = project_keys_prefix(project_id)
        if not self._indexed():
            return self._scan_api_keys(project_id)
        keys = []
        for entry in self.store.list(prefix):
            sha = entry.removeprefix(prefix).removesuffix(".json")
            try:
                record = self._read(api_key_key(sha), ApiKeyRecord, "")
            except (NotFound, InvalidName):  # an entry whose key was never written (its writer stopped between)
                continue
            if record.project == project_id:
                keys.append(record)
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    def _scan_api_keys(self, project_id: str) -> list[ApiKeyRecord]:
        """The project's keys found by reading every project's: what a store without the index has."""
        check_project_id(project_id)
        keys = self._read_all(ORG_KEYS_PREFIX, ApiKeyRecord, direct=True)
        return sorted((k for k in keys if k.project == project_id), key=lambda k: (k.created_at, k.id))

    def _indexed(self) -> bool:
        """Whether every key has its index entry; if not (a store written before the index), write the missing ones
        from one scan of every key, then say so once for good. A key made by a replica of an older version after
        that is not indexed (docs/security.md: upgrade every replica before making keys)."""
        try:
            self.store.get_bytes(KEY_INDEX_BUILT)
            return True
        except NotFound:
            pass
        for record in self._read_all(ORG_KEYS_PREFIX, ApiKeyRecord, direct=True):
            entry = KeyIndexEntry(id=record.id, sha256=record.sha256)
            self._put_once(project_key_entry(record.project, record.sha256), entry)
        with contextlib.suppress(AlreadyExists):  # another replica built it too
            self.store.put_bytes(KEY_INDEX_BUILT, json.dumps({"built_at": time.time()}).encode(), if_absent=True)
        return False

    def get_api_key(self, project_id: str, key_id: str) -> ApiKeyRecord:
        """One of the project's keys by id; NotFound for a key of another project, as for none."""
        missing = f"No API key found with id '{key_id}' in project '{project_id}'."
        try:
            prefix = api_keys_prefix(key_id)
        except ValueError:
            raise NotFound(missing, param="key_id") from None
        for key in self.store.list(prefix):
            record = self._read(key, ApiKeyRecord, missing)
            if record.project == project_id:
                return record
        raise NotFound(missing, param="key_id")

    def revoke_api_key(self, project_id: str, key_id: str) -> ApiKeyRecord:
        """Mark the key revoked (kept, so who held it stays known); every replica refuses it within its key TTL."""
        record = self.get_api_key(project_id, key_id)
        now = time.time()
        written = self._swap(
            api_key_key(record.sha256), ApiKeyRecord,
            lambda k: None if k.revoked_at else k.model_copy(update={"revoked_at": now}),
            f"No API key found with id '{key_id}'.",
        )
        return written or self.get_api_key(project_id, key_id)

    def rotate_api_key(self, project_id: str, key_id: str) -> tuple[ApiKeyRecord, str]:
        """A new key with the old one's name and role, then the old one revoked: the caller swaps keys once."""
        old = self.get_api_key(project_id, key_id)
        if old.revoked_at is not None:
            raise NotFound(f"No active API key found with id '{key_id}'.", param="key_id")
        new = self.create_api_key(project_id, old.role, old.name)
        self.revoke_api_key(project_id, key_id)
        return new


class _Registry(Protocol):
    store: ObjectStore

    def list_projects(self) -> list[ProjectRecord]: ...
    def for_project(self, project_id: str) -> Any: ...


class ProjectJobs:
    """Every project's jobs, for a runner: listed across projects, found by id in whichever project holds them,
    and launched with the job URI inside that project's namespace (what the trainer opens)."""

    def __init__(self, registry: _Registry):
        self.root = registry
        self._where: dict[str, Any] = {}  # job id -> the registry of its project, once found
        self._lock = threading.Lock()

    def _registries(self) -> list[Any]:
        return [self.root.for_project(p.id) for p in self.root.list_projects()]

    def _of(self, job_id: str) -> Any:
        with self._lock:
            found = self._where.get(job_id)
        if found is not None:
            return found
        for registry in self._registries():
            try:
                registry.get_job(job_id)
            except NotFound:
                continue
            with self._lock:
                self._where[job_id] = registry
            return registry
        raise NotFound(f"job {job_id} not found")

    def list_jobs(self) -> list[JobRecord]:
        """Every project's jobs, newest first."""
        jobs: list[JobRecord] = []
        for registry in self._registries():
            for job in registry.list_jobs():
                with self._lock:
                    self._where[job.id] = registry
                jobs.append(job)
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    def get_job(self, job_id: str) -> JobRecord:
        return self._of(job_id).get_job(job_id)  # type: ignore[no-any-return]

    def update_job(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None:
        return self._of(job_id).update_job(job_id, change)  # type: ignore[no-any-return]

    def job_uri(self, job_id: str) -> str:
        """`<store-uri>[/projects/<id>]/jobs/<job-id>.json`: what the trainer is launched with."""
        return job_uri(self._of(job_id).store.uri, job_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.root, name)  # anything else a runner asks of the registry is the default project's


def scoped_store(store: ObjectStore, project_id: str) -> ObjectStore:
    """The store as one project sees it: itself for the default project, its `projects/<id>/` view for another."""
    from adapters.store import PrefixedStore

    prefix = project_prefix(project_id)
    return store if not prefix else PrefixedStore(store, prefix)
