"""The object store: one small interface over a local directory (`file://`) and S3 (`s3://bucket/prefix`).

Keys are '/'-separated relative paths such as `adapters/shout/v1/manifest.json`. Every method checks
its key with `check_key` before touching the disk or the network, so no caller can escape the root.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from adapters.errors import AlreadyExists, Conflict, InvalidName, NotFound, StoreUnavailable

# An allow-list, not a deny-list: anything outside it (unicode look-alikes, '%', '\', controls) is refused.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@-]*")
# Writes in flight in a FileStore live beside their target under this prefix; keys can never start with '.'.
_TEMP_PREFIX = ".tmp-"
# A FileStore's compare-and-swap writes in one directory take turns on this file's lock.
_LOCK_NAME = ".lock"


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative store key, else raise InvalidName (before any I/O)."""
    if not isinstance(key, str) or not key:
        raise InvalidName(f"invalid store key {key!r}: empty")
    reason = _key_problem(key)
    if reason:
        raise InvalidName(f"invalid store key {key!r}: {reason}")
    return key


def _key_problem(key: str) -> str | None:
    if not key.isascii():
        return "non-ASCII characters"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        return "control characters"
    if "\\" in key:
        return "backslash"
    if "%" in key:  # '%2e%2e', '%2f', '%5c' would decode to traversal somewhere downstream
        return "percent-encoded characters"
    if key.startswith("/"):
        return "absolute path"
    for segment in key.split("/"):
        if segment == "":
            return "empty path segment"
        if segment in (".", ".."):
            return f"{segment!r} segment"
        if not _SEGMENT_RE.fullmatch(segment):
            return f"segment {segment!r} must start with a letter, digit or '_' and use A-Za-z0-9._+=@-"
    return None


def check_prefix(prefix: str) -> str:
    """A list prefix: '' (everything) or a key, optionally ending in '/'."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


@runtime_checkable
class ObjectStore(Protocol):
    """Where adapters, jobs and datasets live; every replica of the gateway shares one."""

    uri: str

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> None:
        """Write `data` at `key`; with if_absent, raise AlreadyExists if the key is there; with if_match (a tag
        from `get_tagged`), raise Conflict if the object changed since, NotFound if it is gone (race-safe)."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read the object at `key`; NotFound if missing."""
        ...

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """Read the object at `key` with a tag of this version of it, for a later `put_bytes(if_match=tag)`."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Upload the file at `path`, streamed."""
        ...

    def get_file(self, key: str, path: Path) -> None:
        """Download `key` to `path`, streamed; NotFound if missing."""
        ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, recursively, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key`; a missing key is not an error."""
        ...


class FileStore:
    """A store in a local directory: atomic writes by temp file + rename, race-safe if_absent by hard link,
    compare-and-swap (if_match, the tag a sha256 of the content) under a lock on the directory's `.lock`."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _temp_beside(self, target: Path) -> Iterator[Path]:
        """A temp file in the target's directory (same filesystem: rename is atomic), removed at the end."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX)
        os.close(fd)
        temp = Path(name)
        try:
            yield temp
        finally:
            temp.unlink(missing_ok=True)

    def _commit(self, temp: Path, target: Path, key: str, if_absent: bool) -> None:
        if if_absent:
            # link() fails if the target exists, so of two racing writers exactly one wins.
            try:
                os.link(temp, target)
            except FileExistsError:
                raise AlreadyExists(f"{key} already exists in {self.uri}") from None
        else:
            os.replace(temp, target)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> None:
        target = self._path(key)
        if if_absent and target.exists():
            raise AlreadyExists(f"{key} already exists in {self.uri}")
        with self._temp_beside(target) as temp:
            with temp.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if if_match is None:
                self._commit(temp, target, key, if_absent)
                return
            with self._locked(target.parent):  # nobody else's compare and write can come between ours
                if _tag(self.get_bytes(key)) != if_match:
                    raise Conflict(f"{key} changed in {self.uri} since it was read")
                self._commit(temp, target, key, if_absent=False)

    @contextlib.contextmanager
    def _locked(self, directory: Path) -> Iterator[None]:
        with (directory / _LOCK_NAME).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{key} not found in {self.uri}") from None

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, _tag(data)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        with self._temp_beside(target) as temp:
            shutil.copyfile(path, temp)  # copies in chunks, never whole in memory
            self._commit(temp, target, key, if_absent=False)

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFound(f"{key} not found in {self.uri}")
        try:
            shutil.copyfile(source, path)
        except FileNotFoundError:
            if source.is_file():
                raise  # the destination's directory is missing: the caller's error, not ours
            raise NotFound(f"{key} not found in {self.uri}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        # Walk the deepest directory the prefix names in full, then filter by string prefix (S3 semantics).
        start = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for filename in filenames:
                if filename.startswith("."):
                    continue  # writes in flight
                key = filename if rel == "." else f"{rel}/{filename}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()


def _tag(data: bytes) -> str:
    """A FileStore object's version tag: its content's sha256 (a write of the same bytes changes nothing)."""
    return hashlib.sha256(data).hexdigest()


# Fail in seconds when the store is unreachable: the gateway answers 503 rather than hanging a request.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 3
MULTIPART_CHUNK = 16 * 2**20

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict"}


class S3Store:
    """A store in an S3 bucket (S3, MinIO, Ceph, R2 ...); endpoint, region and credentials come from boto3's
    standard settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_REGION/AWS_DEFAULT_REGION, ~/.aws/config)."""

    def __init__(
        self,
        uri: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
        multipart_chunk: int = MULTIPART_CHUNK,
    ):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidName(f"invalid S3 store URI {uri!r}: expected s3://bucket[/prefix]")
        if parts.query or parts.fragment:
            raise InvalidName(f"invalid S3 store URI {uri!r}: no query or fragment allowed")
        self.bucket = parts.netloc
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", self.bucket):
            raise InvalidName(f"invalid S3 bucket name {self.bucket!r}")
        prefix = parts.path.strip("/")
        self.prefix = f"{check_key(prefix)}/" if prefix else ""
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
        )
        # botocore itself reads only AWS_DEFAULT_REGION; AWS_REGION is the name the other AWS SDKs use.
        region = os.environ.get("AWS_REGION") or None
        self._client: Any = boto3.session.Session().client("s3", region_name=region, config=config)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_chunk, multipart_chunksize=multipart_chunk, max_concurrency=4
        )

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _errors(self, key: str, *, if_absent: bool = False, if_match: bool = False) -> Iterator[None]:
        """Map boto3's exceptions to ours, once, so callers see NotFound/AlreadyExists/StoreUnavailable."""
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, S3UploadFailedError, S3TransferFailedError) as exc:
            raise self._translate(exc, key, if_absent, if_match) from exc

    def _translate(self, exc: BaseException, key: str, if_absent: bool, if_match: bool = False) -> Exception:
        from botocore.exceptions import ClientError, NoCredentialsError

        # The transfer manager wraps the real error; look through the chain for it.
        cause: BaseException = exc
        link: BaseException | None = exc
        while link is not None:
            if isinstance(link, (ClientError, NoCredentialsError)):
                cause = link
                break
            link = link.__cause__ or link.__context__
        if isinstance(cause, ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
            status = str(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if if_absent and (code in _CONFLICT_CODES or status in ("412", "409")):
                return AlreadyExists(f"{key} already exists in {self.uri}")
            if if_match and (code in _CONFLICT_CODES or status in ("412", "409")):
                return Conflict(f"{key} changed in {self.uri} since it was read")
            if code == "NoSuchBucket":
                return NotFound(f"bucket {self.bucket!r} does not exist (store {self.uri})")
            if code in _NOT_FOUND_CODES or status == "404":
                return NotFound(f"{key} not found in {self.uri}")
            return StoreUnavailable(f"store {self.uri} refused {key}: {code or status}: {cause}")
        if isinstance(cause, NoCredentialsError):
            return StoreUnavailable(f"no AWS credentials for store {self.uri}: set AWS_ACCESS_KEY_ID/SECRET")
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError, ...
        return StoreUnavailable(f"store {self.uri} is unreachable: {exc}")

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> None:
        full = self._key(key)
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        if if_match is not None:
            extra["IfMatch"] = if_match  # S3 refuses the write (412) if the object's ETag moved on
        with self._errors(key, if_absent=if_absent, if_match=if_match is not None):
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **extra)

    def get_bytes(self, key: str) -> bytes:
        return self.get_tagged(key)[0]

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        full = self._key(key)
        with self._errors(key):
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            return bytes(response["Body"].read()), str(response["ETag"])

    def put_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        with self._errors(key):
            self._client.upload_file(str(path), self.bucket, full, Config=self._transfer)

    def get_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        with self._errors(key):
            self._client.download_file(self.bucket, full, str(path), Config=self._transfer)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors(key):
                self._client.head_object(Bucket=self.bucket, Key=full)
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        keys: list[str] = []
        with self._errors(prefix or "/"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=full)


def open_store(uri: str) -> ObjectStore:
    """The store a URI names: `file://<absolute dir>`, `s3://bucket[/prefix]`, or a plain local path."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidName("empty store URI")
    if uri.startswith("s3://"):
        return S3Store(uri)
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise InvalidName(f"invalid file store URI {uri!r}: use file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidName(f"invalid file store URI {uri!r}: the path must be absolute")
        return FileStore(path)
    if "://" in uri:
        raise InvalidName(f"unsupported store URI {uri!r}: use file://<dir> or s3://bucket/prefix")
    return FileStore(uri)


class PrefixedStore:
    """A view of another store under one key prefix (a project's namespace, `projects/<id>/`): every key is the
    inner store's key with the prefix before it, so nothing through the view reaches outside it. Its `uri` names the
    same place for open_store (a sub-directory, or a longer S3 prefix), which is how a trainer launched with one of its
    job URIs finds it."""

    def __init__(self, inner: ObjectStore, prefix: str):
        if not prefix.endswith("/"):
            raise InvalidName(f"invalid store prefix {prefix!r}: must end in '/'")
        check_key(prefix[:-1])
        self.inner = inner
        self.prefix = prefix
        self.uri = f"{inner.uri.rstrip('/')}/{prefix[:-1]}"

    def __repr__(self) -> str:
        return f"PrefixedStore({self.inner!r}, {self.prefix!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None) -> None:
        self.inner.put_bytes(self._key(key), data, if_absent=if_absent, if_match=if_match)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(self._key(key))

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_tagged(self._key(key))

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(self._key(key), path)

    def get_file(self, key: str, path: Path) -> None:
        self.inner.get_file(self._key(key), path)

    def exists(self, key: str) -> bool:
        return self.inner.exists(self._key(key))

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        return [key[len(self.prefix) :] for key in self.inner.list(self.prefix + prefix)]

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))
