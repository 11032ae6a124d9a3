"""OpenAI's Files API: fine-tuning files (datasets stored through the registry, checked on upload by the dataset
parser), eval rows and batch input files; upload, list, retrieve, content and delete. Batches write their output
and error files here too (purpose batch_output)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import unicodedata

from adapters.dataset import MAX_REPORTED, Dataset, lines, parse_dataset
from adapters.errors import DatasetError, InvalidRequest
from adapters.limits import CallerLimits
from adapters.schema import StoredFile
from service.gateway import Gateway
from service.management.adapters import off_loop
from service.management.batches import BATCH_PURPOSE
from service.management.evals import EVALS_PURPOSE, parse_eval_rows
from service.management.quotas import check_storage
from service.protocol.common import page
from service.protocol.files import FileDeleted, FileList, FileObject
from service.settings import Settings

PURPOSE = "fine-tune"
DEFAULT_FILENAME = "upload.jsonl"
MAX_FILENAME_CHARS = 255
# OpenAI's expires_after: seconds after creation, between an hour and 30 days.
EXPIRES_AFTER_S = (3600, 30 * 86400)

def file_object(stored: StoredFile) -> FileObject:
    return FileObject(
        id=stored.id,
        bytes=stored.bytes,
        created_at=int(stored.created_at),
        filename=stored.filename,
        purpose=stored.purpose,
        expires_at=int(stored.expires_at) if stored.expires_at is not None else None,
    )


def _kind_of_rows(data: bytes, max_line_bytes: int) -> str:
    """What the first row that parses (of the first few) is: one of OpenAI's preference rows (DPO), a prompt ending in
    the user's turn (reinforcement), or else one to learn from."""
    for _, raw in itertools.islice(lines(data), MAX_REPORTED):
        if len(raw) > max_line_bytes:
            continue
        try:
            row = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if not isinstance(row, dict):
            return "supervised"
        if "preferred_output" in row or "non_preferred_output" in row:
            return "preference"
        messages = row.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
                and messages[-1].get("role") == "user":
            return "prompts"
        return "supervised"
    return "supervised"


METHOD_OF_KIND = {"preference": "dpo", "prompts": "reinforcement", "supervised": "supervised"}


def _checked_file(data: bytes, settings: Settings) -> tuple[str, Dataset]:
    """(kind, rows) of an uploaded file: on a dataset-check thread, rows counted before any is parsed."""
    kind = _kind_of_rows(data, settings.max_dataset_line_bytes)
    dataset = parse_dataset(
        data,
        max_bytes=settings.max_dataset_bytes,
        max_rows=settings.max_dataset_rows,
        max_line_bytes=settings.max_dataset_line_bytes,
        method=METHOD_OF_KIND[kind],  # type: ignore[arg-type]
    )
    return kind, dataset


# Characters a file name loses: controls (CR, LF, NUL), format characters (the bidi overrides, zero-width ones),
# surrogates and unassigned code points, line and paragraph separators.
_DROPPED = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def safe_filename(name: str | None) -> str:
    """A client's file name as stored and shown: its last path segment, without control or bidi characters,
    markup characters as '_', at most 255 characters; `upload.jsonl` when nothing is left."""
    base = re.split(r"[/\\]", name or "")[-1][: 4 * MAX_FILENAME_CHARS]
    kept = "".join(c for c in base if unicodedata.category(c) not in _DROPPED)
    kept = re.sub(r"[<>\"'&`]", "_", kept)
    kept = " ".join(kept.split()).strip(". ")
    return kept[:MAX_FILENAME_CHARS] or DEFAULT_FILENAME


async def upload_file(
    gw: Gateway, filename: str | None, purpose: str, data: bytes, expires_after_s: int | None = None,
    caller: CallerLimits | None = None,
) -> FileObject:
    """Store a fine-tuning file once its rows are valid (every bad line reported, nothing stored otherwise), within
    the `caller`'s project's stored_bytes.

    Rows are checked for their format here; their length in tokens depends on the template a job trains with,
    so it is checked when a job is created."""
    if purpose not in (PURPOSE, EVALS_PURPOSE, BATCH_PURPOSE):
        raise InvalidRequest(
            f"purpose {purpose!r} is not supported: this gateway keeps files for fine-tuning ('{PURPOSE}'), "
            f"eval rows ('{EVALS_PURPOSE}') and batches' requests ('{BATCH_PURPOSE}')",
            param="purpose",
            code="invalid_purpose",
        )
    if expires_after_s is not None and not EXPIRES_AFTER_S[0] <= expires_after_s <= EXPIRES_AFTER_S[1]:
        raise InvalidRequest("expires_after.seconds must be between 3600 (an hour) and 2592000 (30 days)",
            param="expires_after.seconds",
        )
    filename = safe_filename(filename)
    await check_storage(gw, caller, len(data))
    if purpose == EVALS_PURPOSE:
        return await _upload_eval_rows(gw, filename, data, expires_after_s)
    if purpose == BATCH_PURPOSE:
        return await _upload_batch_requests(gw, filename, data, expires_after_s)
    try:
        kind, dataset = await off_loop(_checked_file, data, gw.settings)
    except DatasetError as exc:
        raise exc.about("file", f"file {filename!r}: ") from None
    now = time.time()
    record = StoredFile(
        filename=filename,
        purpose=purpose,
        bytes=len(data),
        sha256=dataset.sha256,
        created_at=now,
        expires_at=now + expires_after_s if expires_after_s is not None else None,
        rows=len(dataset.rows),
        kind=kind,
    )
    stored = await asyncio.to_thread(gw.registry.put_file, record, data)
    return file_object(stored)


async def _upload_eval_rows(gw: Gateway, filename: str, data: bytes, expires_after_s: int | None) -> FileObject:
    """A file of eval rows (`{"item": {...}}` per line), checked for that shape; its items are checked against an
    eval's item_schema when a run names it."""
    try:
        rows = await off_loop(parse_eval_rows, data, gw.settings.max_dataset_rows)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"file {filename!r}: {exc}", param="file", code="invalid_file") from None
    return await _keep(gw, filename, EVALS_PURPOSE, data, expires_after_s, len(rows))


async def _upload_batch_requests(gw: Gateway, filename: str, data: bytes, expires_after_s: int | None) -> FileObject:
    """A batch's input file, kept as sent: its lines are checked against the endpoint a batch names when the batch
    is created (service/management/batches.py), as OpenAI does."""
    count = await off_loop(lambda: sum(1 for _ in lines(data)))
    if not count:
        raise InvalidRequest(f"file {filename!r}: no lines", param="file", code="invalid_file")
    return await _keep(gw, filename, BATCH_PURPOSE, data, expires_after_s, count)


async def _keep(gw: Gateway, filename: str, purpose: str, data: bytes, expires_after_s: int | None,
                rows: int) -> FileObject:
    """Store a file whose rows are not a dataset to train on (no dataset kind)."""
    now = time.time()
    record = StoredFile(
        filename=filename,
        purpose=purpose,
        bytes=len(data),
        sha256="",
        created_at=now,
        expires_at=now + expires_after_s if expires_after_s is not None else None,
        rows=rows,
    )
    return file_object(await asyncio.to_thread(gw.registry.put_file, record, data))


def list_files(gw: Gateway, purpose: str | None, after: str | None, limit: int, order: str) -> FileList:
    files = [f for f in gw.registry.list_files() if purpose is None or f.purpose == purpose]
    if order == "asc":
        files.reverse()
    chosen, more = page(files, after, limit, lambda f: f.id)
    return FileList(
        data=[file_object(f) for f in chosen],
        first_id=chosen[0].id if chosen else None,
        last_id=chosen[-1].id if chosen else None,
        has_more=more,
    )


def get_file(gw: Gateway, file_id: str) -> FileObject:
    return file_object(gw.registry.get_file(file_id))


def file_content(gw: Gateway, file_id: str) -> bytes:
    return gw.registry.file_content(file_id)  # type: ignore[no-any-return]


def delete_file(gw: Gateway, file_id: str) -> FileDeleted:
    """Forget a file; jobs created from it keep their own copy of its rows."""
    gw.registry.delete_file(file_id)
    return FileDeleted(id=file_id)
