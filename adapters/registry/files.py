"""Datasets (content-addressed: datasets/<sha256>.jsonl) and OpenAI's Files API records (files/<id>.json)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from typing import Protocol

from pydantic import ValidationError

from adapters.errors import AlreadyExists, ChecksumMismatch, InvalidName, NotFound
from adapters.registry.keys import DATASET_KEY_RE, dataset_key, stored_file_key
from adapters.schema import FILE_ID_RE, JobRecord, StoredFile
from adapters.store import ObjectStore, check_key

log = logging.getLogger("skillserve.registry")


class _ListsJobs(Protocol):
    """What deciding whether a dataset is still named needs: the files and the jobs."""

    def list_files(self) -> list[StoredFile]: ...
    def list_jobs(self) -> list[JobRecord]: ...
    def get_file(self, file_id: str) -> StoredFile: ...
    def dataset_in_use(self, key: str) -> bool: ...

    @property
    def store(self) -> ObjectStore: ...


class FileBook:
    """Datasets and the files uploaded through OpenAI's Files API, whose bytes are datasets."""

    store: ObjectStore

    def put_dataset(self, data: bytes) -> tuple[str, str]:
        """Store a dataset under its sha256 (idempotent); returns (key, sha256)."""
        digest = hashlib.sha256(data).hexdigest()
        key = dataset_key(digest)
        if not self.store.exists(key):
            # Content-addressed: whoever wins a race wrote the same bytes.
            with contextlib.suppress(AlreadyExists):
                self.store.put_bytes(key, data, if_absent=True)
        return key, digest

    def dataset_in_use(self: _ListsJobs, key: str) -> bool:
        """Whether a job or a stored file still names the dataset at `key`."""
        sha = key.removeprefix("datasets/").removesuffix(".jsonl")
        if any(f.sha256 == sha for f in self.list_files()):
            return True
        return any(key in (j.spec.dataset_uri, j.spec.validation_uri) for j in self.list_jobs())

    def stored_dataset(self, key: str) -> bytes:
        """The bytes of a dataset a request names by its key in the store (`dataset_uri`)."""
        return self.store.get_bytes(check_key(key))

    # Files (OpenAI's Files API): files/<id>.json, the bytes content-addressed under datasets/ where jobs find them

    def put_file(self, record: StoredFile, data: bytes) -> StoredFile:
        """Store the bytes (once per content), then the record; returns the record with size and hash filled in."""
        _, digest = self.put_dataset(data)
        stored = record.model_copy(update={"sha256": digest, "bytes": len(data)})
        self.store.put_bytes(stored_file_key(stored.id), stored.model_dump_json(indent=2).encode(), if_absent=True)
        return stored

    def get_file(self, file_id: str) -> StoredFile:
        """A stored file's record; NotFound for an id that is not one, an unknown one or an expired one."""
        not_found = NotFound(f"No such File object: {file_id}")
        if not isinstance(file_id, str) or not FILE_ID_RE.fullmatch(file_id):
            raise not_found
        try:
            record = StoredFile.model_validate_json(self.store.get_bytes(stored_file_key(file_id)))
        except NotFound:
            raise not_found from None
        if record.expires_at is not None and record.expires_at <= time.time():
            raise not_found
        return record

    def list_files(self) -> list[StoredFile]:
        """Every stored file not expired, newest first."""
        records = []
        now = time.time()
        for key in self.store.list("files/"):
            try:
                record = StoredFile.model_validate_json(self.store.get_bytes(key))
            except NotFound:
                continue
            except ValidationError as exc:
                log.warning("skipping unreadable file record %s: %s", key, exc)
                continue
            if record.expires_at is None or record.expires_at > now:
                records.append(record)
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    def file_content(self, file_id: str) -> bytes:
        return self.get_dataset(dataset_key(self.get_file(file_id).sha256))

    def delete_file(self: _ListsJobs, file_id: str) -> StoredFile:
        """Remove a file's record, then its bytes unless a job or another file still names them."""
        record = self.get_file(file_id)
        self.store.delete(stored_file_key(file_id))
        key = dataset_key(record.sha256)
        if not self.dataset_in_use(key):
            self.store.delete(key)
        return record

    def get_dataset(self, key: str) -> bytes:
        """The dataset stored at `key` (a "datasets/<sha256>.jsonl" key), verified against its hash."""
        if not DATASET_KEY_RE.fullmatch(check_key(key)):
            raise InvalidName(f"invalid dataset key {key!r}: expected datasets/<sha256>.jsonl")
        try:
            data = self.store.get_bytes(key)
        except NotFound:
            raise NotFound(f"dataset {key} not found") from None
        expected = key.removeprefix("datasets/").removesuffix(".jsonl")
        if hashlib.sha256(data).hexdigest() != expected:
            raise ChecksumMismatch(f"dataset {key} does not match its sha256")
        return data
