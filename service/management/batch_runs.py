"""The background executor of batches: each line's request through the serving path, its answer written once, the
batch's counts kept as a fold of its lines' results, and at the end the output and error files in /v1/files.

Live traffic keeps priority: at most `batch_concurrency` lines (all batches of all projects together, shared fairly
between projects) are in the engine at once, they wait in the engine's queue behind live requests
(BACKGROUND_PRIORITY), a line refused for load (429) or by an engine not ready (503) waits and is tried again, and
one over its project's per-minute limit waits for the next minute (background.py). A batch runs in its project: its
records and files in the project's namespace, its lines resolving models among the project's adapters only. The
completion window is a deadline: no line starts after it, lines still running are stopped, and the batch ends
`expired` with what was answered in its output file and the rest in its error file.

Restart: a batch of any project left validating, in progress or cancelling is resumed when a gateway starts. A
line's result is written only if absent, under a key named by the line, so a line answered before the stop is not
run again, one that was running at the stop runs again but is written once, and two executors on one batch (two
replicas) write each line once. The output and error files have ids named by the batch, so they too are written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from adapters.errors import AlreadyExists, NotFound, SkillserveError
from adapters.registry import Registry
from adapters.schema import (
    DEFAULT_PROJECT,
    BatchCounts,
    BatchLineResult,
    BatchRecord,
    BatchStatus,
    StoredFile,
    batch_file_id,
    batch_request_id,
)
from service.errors import answer_of
from service.management.background import (
    BACKGROUND_PRIORITY,
    BackgroundExecutor,
    FairSlots,
    parsed_request,
    project_caller,
    serve_whole,
    task_key,
)
from service.management.batches import OUTPUT_PURPOSE, BatchRequest, batch_requests

if TYPE_CHECKING:
    from service.gateway import Gateway

log = logging.getLogger("skillserve.batches")

Sender = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (project, endpoint, body) -> the body
EXPIRED = {"code": "batch_expired", "message": "This request could not be executed before the completion window "
           "expired."}
CANCELLED = {"code": "batch_cancelled", "message": "This request was not executed because the batch was cancelled."}
STAMPS = {BatchStatus.completed: "completed_at", BatchStatus.expired: "expired_at",
          BatchStatus.cancelled: "cancelled_at", BatchStatus.failed: "failed_at"}


class BatchFailed(Exception):
    """The whole batch cannot go on (its input file is gone, no engine serves here): it ends `failed`."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- what a batch does with its results (pure)


def tally(batch: BatchRecord, result: BatchLineResult) -> BatchRecord:
    counts = batch.counts.model_copy()
    if result.succeeded:
        counts.completed += 1
    else:
        counts.failed += 1
    counts.input_tokens += result.input_tokens
    counts.output_tokens += result.output_tokens
    return batch.model_copy(update={"counts": counts})


def tally_into(result: BatchLineResult, batch: BatchRecord) -> BatchRecord | None:
    """`result` counted into the stored batch; nothing once it has finished, whose counts are final."""
    return None if batch.status.finished else tally(batch, result)


def recount(batch: BatchRecord, results: Sequence[BatchLineResult]) -> BatchRecord:
    fresh = batch.model_copy(update={"counts": BatchCounts()})
    for result in results:
        fresh = tally(fresh, result)
    return fresh


def output_line(result: BatchLineResult) -> dict[str, Any]:
    """A line of the output (or error) file, in OpenAI's format."""
    return {
        "id": batch_request_id(result.batch_id, result.index),
        "custom_id": result.custom_id,
        "response": {"status_code": result.status_code, "request_id": result.request_id, "body": result.body},
        "error": None,
    }


def unrun_line(batch_id: str, index: int, custom_id: str, why: dict[str, str]) -> dict[str, Any]:
    """The error file's line for a request never answered (the batch expired or was cancelled first)."""
    return {"id": batch_request_id(batch_id, index), "custom_id": custom_id, "response": None, "error": why}


def started(done: Sequence[BatchLineResult], now: float, batch: BatchRecord) -> BatchRecord | None:
    """`batch` running, its counts made again from its results (what a crash between a result and its count left);
    None when it is no longer to run (cancelling, finished)."""
    if batch.status not in (BatchStatus.validating, BatchStatus.in_progress):
        return None
    return recount(batch, done).model_copy(
        update={"status": BatchStatus.in_progress, "in_progress_at": batch.in_progress_at or now}
    )


# ---------------------------------------------------------------- the executor


class BatchRunner(BackgroundExecutor):
    """Runs every project's batches in the background, `concurrency` lines at a time over all of them (shared fairly
    between projects)."""

    def __init__(
        self,
        registry: Registry,
        send: Sender,
        requests: Callable[[str, BatchRecord], list[BatchRequest]],
        concurrency: int = 1,
        serving: bool = True,
    ):
        super().__init__()
        self.registry = registry  # the org's: each batch is executed through its project's view of it
        self.send = send
        self.requests = requests  # (project, batch) -> the batch's requests, from its input file
        self.concurrency = max(1, concurrency)
        self.serving = serving
        self._slots = FairSlots(concurrency)

    def submit(self, batch_id: str, project: str = DEFAULT_PROJECT) -> None:
        """Start executing a batch of `project` (a no-op when it is already executing here)."""
        registry = self.registry.for_project(project)
        self._start(task_key(project, batch_id), lambda: self._execute(registry, batch_id))

    async def resume(self) -> list[str]:
        """Take up every project's batches not finished (after a restart); their task keys."""
        projects = await asyncio.to_thread(self.registry.list_projects)
        resumed = []
        for project in projects:
            batches = await asyncio.to_thread(self.registry.for_project(project.id).list_batches)
            for batch in reversed(batches):  # oldest first
                if not batch.status.finished:
                    log.info("resuming batch %s of %s (%s)", batch.id, project.id, batch.status.value)
                    self.submit(batch.id, project.id)
                    resumed.append(task_key(project.id, batch.id))
        return resumed

    async def _execute(self, registry: Registry, batch_id: str) -> None:
        try:
            await self._run(registry, batch_id)
        except asyncio.CancelledError:
            raise
        except BatchFailed as exc:
            await self._fail(registry, batch_id, exc.code, exc.message)
        except NotFound:
            log.info("batch %s was deleted while it ran", batch_id)
        except Exception as exc:  # noqa: BLE001 - the batch records why it stopped; the gateway goes on
            log.exception("batch %s failed", batch_id)
            with contextlib.suppress(Exception):
                await self._fail(registry, batch_id, "internal_error", f"{type(exc).__name__}: {exc}")

    async def _run(self, registry: Registry, batch_id: str) -> None:
        batch = await asyncio.to_thread(registry.get_batch, batch_id)
        if batch.status.finished:
            return
        try:
            requests = await asyncio.to_thread(self.requests, registry.project, batch)
        except (NotFound, ValueError) as exc:
            raise BatchFailed("invalid_input_file", f"the batch's input file cannot be read: {exc}") from None
        if batch.status in (BatchStatus.validating, BatchStatus.in_progress):
            if not self.serving:
                raise BatchFailed("no_engine", "this gateway serves no models (load_engine is off): no line can run")
            done = await asyncio.to_thread(registry.list_batch_lines, batch_id)
            running = await asyncio.to_thread(
                registry.update_batch, batch_id, functools.partial(started, done, time.time())
            )
            if running is not None:
                await self._lines(registry, running, requests, {result.index for result in done})
        await self._finish(registry, batch_id, requests)

    async def _lines(
        self, registry: Registry, batch: BatchRecord, requests: list[BatchRequest], done: set[int]
    ) -> None:
        """Every line not yet answered, `concurrency` workers taking the next; stopped by a cancel or the deadline
        (lines still running then are stopped too)."""
        pending = deque(index for index in range(len(requests)) if index not in done)

        async def worker() -> None:
            while pending:
                # another worker may take the last while we read
                if await self._stopping(registry, batch) or not pending:
                    return
                index = pending.popleft()
                result = await self._line(registry.project, batch, index, requests[index])
                if await asyncio.to_thread(registry.put_batch_line, result):
                    await asyncio.to_thread(registry.update_batch, batch.id, functools.partial(tally_into, result))

        workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(pending)))]
        if not workers:
            return
        try:
            ended, running = await asyncio.wait(
                workers, timeout=max(0.0, batch.expires_at - time.time()), return_when=asyncio.FIRST_EXCEPTION
            )
        finally:
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for task in ended:
            task.result()  # a worker's failure fails the batch

    async def _stopping(self, registry: Registry, batch: BatchRecord) -> bool:
        if time.time() >= batch.expires_at:
            return True
        current = await asyncio.to_thread(registry.get_batch, batch.id)
        return current.status is not BatchStatus.in_progress

    async def _line(self, project: str, batch: BatchRecord, index: int, request: BatchRequest) -> BatchLineResult:
        """One request through the serving path, within the batches' slots; its answer, or its error as the
        endpoint would have answered it."""
        request_id = f"req_{uuid.uuid4().hex}"
        try:
            body = await self._slots.call(project, lambda: self.send(project, batch.endpoint, request.body))
            status = 200
        except SkillserveError as exc:
            status, body = answer_of(exc)
        usage = body.get("usage") or {} if status == 200 else {}
        return BatchLineResult(
            batch_id=batch.id, index=index, custom_id=request.custom_id, status_code=status, request_id=request_id,
            body=body, input_tokens=usage.get("prompt_tokens", 0), output_tokens=usage.get("completion_tokens", 0),
        )

    async def _finish(self, registry: Registry, batch_id: str, requests: list[BatchRequest]) -> None:
        """The batch's end: `completed` (through `finalizing`) when every line is answered, `cancelled` after a
        cancel, `expired` past its deadline; its output and error files written first."""
        results = await asyncio.to_thread(registry.list_batch_lines, batch_id)
        answered = {result.index for result in results}
        unrun = [index for index in range(len(requests)) if index not in answered]
        ending = await self._ending(registry, batch_id, bool(unrun))
        if ending is None:
            return
        final, why = ending
        lines = [(result.index, result.succeeded, output_line(result)) for result in results]
        lines += [(index, False, unrun_line(batch_id, index, requests[index].custom_id, why or {})) for index in unrun]
        lines.sort(key=lambda entry: entry[0])
        batch = await asyncio.to_thread(registry.get_batch, batch_id)
        output_id = await self._write(registry, batch, "output", [line for _, ok, line in lines if ok])
        error_id = await self._write(registry, batch, "error", [line for _, ok, line in lines if not ok])

        def finish(current: BatchRecord) -> BatchRecord | None:
            if current.status.finished:
                return None
            return recount(current, results).model_copy(update={
                "status": final, STAMPS[final]: time.time(), "output_file_id": output_id, "error_file_id": error_id,
            })

        await asyncio.to_thread(registry.update_batch, batch_id, finish)

    async def _ending(
        self, registry: Registry, batch_id: str, unrun: bool
    ) -> tuple[BatchStatus, dict[str, str] | None] | None:
        """How the batch ends, and why its unrun lines were not run; None when it is not this executor's to end."""
        batch = await asyncio.to_thread(registry.get_batch, batch_id)
        if batch.status.finished:
            return None
        if batch.status is BatchStatus.cancelling:
            return BatchStatus.cancelled, CANCELLED
        if unrun:
            # Stopped by the deadline; before it, another executor is still running the batch.
            return (BatchStatus.expired, EXPIRED) if time.time() >= batch.expires_at else None

        def finalizing(current: BatchRecord) -> BatchRecord | None:
            if current.status is not BatchStatus.in_progress:
                return None
            return current.model_copy(update={"status": BatchStatus.finalizing, "finalizing_at": time.time()})

        if await asyncio.to_thread(registry.update_batch, batch_id, finalizing) is None:
            status = (await asyncio.to_thread(registry.get_batch, batch_id)).status
            if status is not BatchStatus.finalizing:
                return await self._ending(registry, batch_id, unrun)  # cancelled meanwhile, or finished elsewhere
        return BatchStatus.completed, None

    async def _write(
        self, registry: Registry, batch: BatchRecord, kind: str, lines: list[dict[str, Any]]
    ) -> str | None:
        """The output or error file (purpose batch_output) in /v1/files, under an id named by the batch; None when
        there is no line for it."""
        if not lines:
            return None
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        now = time.time()
        lifetime = batch.output_expires_after_s
        record = StoredFile(
            id=batch_file_id(batch.id, kind),  # type: ignore[arg-type]
            filename=f"{batch.id}_{kind}.jsonl",
            purpose=OUTPUT_PURPOSE,
            bytes=len(data),
            sha256="",
            created_at=now,
            expires_at=now + lifetime if lifetime is not None else None,
            rows=len(lines),
        )
        with contextlib.suppress(AlreadyExists):  # written by another executor, or before a restart
            await asyncio.to_thread(registry.put_file, record, data)
        return record.id

    async def _fail(self, registry: Registry, batch_id: str, code: str, message: str) -> None:
        def fail(current: BatchRecord) -> BatchRecord | None:
            if current.status.finished:
                return None
            error = {"code": code, "line": None, "message": message, "param": None}
            return current.model_copy(update={"status": BatchStatus.failed, "failed_at": time.time(),
                                              "errors": [error]})

        with contextlib.suppress(NotFound):
            await asyncio.to_thread(registry.update_batch, batch_id, fail)


async def start_batches(gw: Gateway) -> BatchRunner:
    """The gateway's batch executor, on its serving path, with every project's batches not finished resumed: a line
    is served by the gateway as its batch's project sees it, and charged to that project's limits."""

    async def send(project: str, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        view = gw.for_project(project)
        request = parsed_request(endpoint, body, prefix="body.")
        served = await serve_whole(view, request, BACKGROUND_PRIORITY, project_caller(view))
        return served.body.model_dump(mode="json")

    runner = BatchRunner(
        gw.registry, send, lambda project, batch: batch_requests(gw.for_project(project), batch),
        gw.settings.batch_concurrency, gw.settings.load_engine,
    )
    gw.batches = runner
    await runner.resume()
    return runner
