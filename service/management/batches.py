"""OpenAI's Batch API: create a batch over a /v1/files file of requests, list, retrieve, cancel.

A batch's input file is checked line by line when the batch is created: a line that is not JSON, a repeated
`custom_id`, a method other than POST, a `url` other than the batch's endpoint, a body the endpoint would refuse, a
model this gateway does not serve. As OpenAI does, such a file makes the batch `failed` with `errors.data` naming each
line (a 200); a request the batch itself cannot take (its endpoint, window, file) is a 400 naming the field. A valid
batch is stored `validating` and run in the background (batch_runs.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.dataset import MAX_REPORTED, lines
from adapters.errors import BatchNotCancellable, InvalidName, InvalidRequest, NotFound
from adapters.schema import BATCH_ENDPOINTS, BatchRecord, BatchStatus
from service.management.adapters import off_loop
from service.management.background import parsed_request
from service.management.evals import bad, check_metadata, file_of_purpose
from service.protocol.batches import (
    BatchError,
    BatchErrors,
    BatchList,
    BatchObject,
    BatchRequestCounts,
    BatchUsage,
    CreateBatch,
)
from service.protocol.common import page

if TYPE_CHECKING:
    from service.gateway import Gateway

BATCH_PURPOSE = "batch"  # OpenAI's purpose of a batch's input file
OUTPUT_PURPOSE = "batch_output"  # ... and of the output and error files a batch writes
COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
MAX_LINES = 50_000  # OpenAI's limit of requests in one batch
OUTPUT_EXPIRES_AFTER_S = (3600, 30 * 86400)


@dataclass(frozen=True)
class BatchRequest:
    """One line of a batch's input file: its number in the file (from 1), its custom_id and its request body."""

    line: int
    custom_id: str
    body: dict[str, Any]


def parse_batch_file(data: bytes, endpoint: str, max_lines: int) -> tuple[list[BatchRequest], list[dict[str, Any]]]:
    """(requests, errors) of a batch's input file: each error OpenAI's {code, line, message, param}, the first
    MAX_REPORTED of them."""
    requests: list[BatchRequest] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def problem(line: int | None, code: str, message: str, param: str | None = None) -> None:
        if len(errors) < MAX_REPORTED:
            errors.append({"code": code, "line": line, "message": message, "param": param})

    for number, raw in lines(data):
        if len(requests) >= max_lines:
            problem(number, "too_many_requests", f"a batch holds at most {max_lines} requests")
            break
        try:
            row = json.loads(raw)
        except (ValueError, RecursionError):
            problem(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        found = _line_problem(row, endpoint, seen)
        if found is not None:
            problem(number, *found)
            continue
        seen.add(row["custom_id"])
        requests.append(BatchRequest(number, row["custom_id"], row["body"]))
    if not requests and not errors:
        problem(None, "empty_file", "the input file holds no requests")
    return requests, errors


def _line_problem(row: Any, endpoint: str, seen: set[str]) -> tuple[str, str, str | None] | None:
    """(code, message, param) of what is wrong with one parsed line; None for a request the endpoint takes."""
    if not isinstance(row, dict):
        return "invalid_json_line", "each line is an object: {custom_id, method, url, body}", None
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "missing_required_parameter", "custom_id: a string naming the request in the output", "custom_id"
    if custom_id in seen:
        return "duplicate_custom_id", f"custom_id {custom_id!r} is on an earlier line: each must be unique", "custom_id"
    if row.get("method") != "POST":
        return "invalid_method", f"method must be POST, not {row.get('method')!r}", "method"
    if row.get("url") != endpoint:
        return "mismatched_url", f"url {row.get('url')!r} is not this batch's endpoint {endpoint}", "url"
    body = row.get("body")
    if not isinstance(body, dict):
        return "missing_required_parameter", "body: the request, as the endpoint takes it", "body"
    if body.get("stream"):
        return "invalid_request", "body.stream: a batch's requests are answered whole", "body.stream"
    try:
        parsed_request(endpoint, body, prefix="body.")
    except InvalidRequest as exc:
        return "invalid_request", str(exc), exc.param
    return None


def batch_requests(gw: Gateway, batch: BatchRecord) -> list[BatchRequest]:
    """A batch's requests, read again from its input file (checked when the batch was created)."""
    data = gw.registry.file_content(batch.input_file_id)
    return parse_batch_file(data, batch.endpoint, MAX_LINES)[0]


async def _serves(gw: Gateway, model: str) -> bool:
    if model == gw.engine.base_model_id:
        return True
    try:
        await gw.cache.manifest(model)
    except (NotFound, InvalidName, ValueError):
        return False
    return True


async def _unserved(gw: Gateway, requests: list[BatchRequest]) -> list[dict[str, Any]]:
    """An error for each line naming a model this gateway does not serve (each model looked up once)."""
    by_model: dict[str, list[int]] = {}
    for request in requests:
        by_model.setdefault(str(request.body.get("model")), []).append(request.line)
    errors: list[dict[str, Any]] = []
    for model, numbers in by_model.items():
        if not await _serves(gw, model):
            errors += [{"code": "model_not_found", "line": number, "message": f"The model `{model}` does not exist.",
                        "param": "body.model"} for number in numbers]
        if len(errors) >= MAX_REPORTED:
            break
    return sorted(errors, key=lambda error: error["line"])[:MAX_REPORTED]


def batch_object(batch: BatchRecord) -> BatchObject:
    def stamp(value: float | None) -> int | None:
        return int(value) if value is not None else None

    counts = batch.counts
    return BatchObject(
        id=batch.id,
        endpoint=batch.endpoint,
        model=batch.model,
        errors=BatchErrors(data=[BatchError(**e) for e in batch.errors]) if batch.errors else None,
        input_file_id=batch.input_file_id,
        completion_window=batch.completion_window,
        status=batch.status.value,  # type: ignore[arg-type]
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        created_at=int(batch.created_at),
        expires_at=int(batch.expires_at),
        **{f"{name}_at": stamp(getattr(batch, f"{name}_at")) for name in
           ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")},
        request_counts=BatchRequestCounts(total=batch.total, completed=counts.completed, failed=counts.failed),
        usage=BatchUsage(input_tokens=counts.input_tokens, output_tokens=counts.output_tokens,
                         total_tokens=counts.input_tokens + counts.output_tokens),
        metadata=batch.metadata or None,
    )


async def create_batch(gw: Gateway, body: CreateBatch) -> BatchObject:
    """Check the batch and its input file line by line; store it `validating` (then run in the background) or
    `failed` with the lines at fault."""
    if body.endpoint not in BATCH_ENDPOINTS:
        raise bad("endpoint", f"{body.endpoint!r} is not offered: batches here run {' or '.join(BATCH_ENDPOINTS)}",
                  "invalid_value")
    if body.completion_window != COMPLETION_WINDOW:
        raise bad("completion_window", f"must be {COMPLETION_WINDOW!r}, as OpenAI's", "invalid_value")
    expires_after = body.output_expires_after.seconds if body.output_expires_after else None
    if expires_after is not None and not OUTPUT_EXPIRES_AFTER_S[0] <= expires_after <= OUTPUT_EXPIRES_AFTER_S[1]:
        raise bad("output_expires_after.seconds", "must be between 3600 (an hour) and 2592000 (30 days)")
    metadata = check_metadata(body.metadata)
    data = await file_of_purpose(gw, body.input_file_id, BATCH_PURPOSE, "input_file_id")
    limit = min(MAX_LINES, gw.settings.max_dataset_rows)
    requests, errors = await off_loop(parse_batch_file, data, body.endpoint, limit)
    if not errors:
        errors = await _unserved(gw, requests)
    models = {str(request.body.get("model")) for request in requests}
    now = time.time()
    record = BatchRecord(
        endpoint=body.endpoint,  # type: ignore[arg-type]
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        created_at=now,
        expires_at=now + WINDOW_S,
        metadata=metadata,
        model=models.pop() if len(models) == 1 else None,
        total=len(requests),
        errors=errors,
        status=BatchStatus.failed if errors else BatchStatus.validating,
        failed_at=now if errors else None,
        output_expires_after_s=expires_after,
    )
    await asyncio.to_thread(gw.registry.put_batch, record)
    if not errors:
        assert gw.batches is not None  # started with the app
        gw.batches.submit(record.id, gw.project)
    return batch_object(record)


def _batch(gw: Gateway, batch_id: str) -> BatchRecord:
    try:
        return gw.registry.get_batch(batch_id)  # type: ignore[no-any-return]
    except (NotFound, InvalidName):
        raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id") from None


def list_batches(gw: Gateway, after: str | None, limit: int) -> BatchList:
    """Newest first, as OpenAI lists them."""
    chosen, more = page(gw.registry.list_batches(), after, limit, lambda b: b.id)
    data = [batch_object(b) for b in chosen]
    return BatchList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=more)


def get_batch(gw: Gateway, batch_id: str) -> BatchObject:
    return batch_object(_batch(gw, batch_id))


async def cancel_batch(gw: Gateway, batch_id: str) -> BatchObject:
    """A validating or running batch goes `cancelling`: its executor starts no more lines, then writes what was
    answered and goes `cancelled` (executed here too, so a batch no executor holds is finished). A batch past
    running (finalizing, finished) is a 409."""
    batch = await asyncio.to_thread(_cancel, gw, batch_id)
    assert gw.batches is not None  # started with the app
    gw.batches.submit(batch_id, gw.project)
    return batch_object(batch)


def _cancel(gw: Gateway, batch_id: str) -> BatchRecord:
    _batch(gw, batch_id)

    def cancel(batch: BatchRecord) -> BatchRecord | None:
        if batch.status not in (BatchStatus.validating, BatchStatus.in_progress):
            return None
        return batch.model_copy(update={"status": BatchStatus.cancelling, "cancelling_at": time.time()})

    written = gw.registry.update_batch(batch_id, cancel)
    if written is None:
        latest = _batch(gw, batch_id)
        if latest.status is BatchStatus.cancelling:
            return latest
        raise BatchNotCancellable(
            f"batch {batch_id} is {latest.status.value}: only a validating or running batch can be cancelled"
        )
    return written
