"""What the background executors (eval runs, batches) share: one task per run or batch, stopped with the gateway and
taken up again by the next start; the bounded slots their requests hold in the engine, a refusal for load waited out
rather than failed; and their one way into the serving path, a request parsed as its route parses it and served
whole, without HTTP.

Live traffic keeps priority, twice over. At most `concurrency` background requests are in the engine at once, so
they hold that many of the engine's `max_num_seqs` batch slots and never queue live requests behind a backlog of
their own. And inside the engine they ask for BACKGROUND_PRIORITY: the gateway starts vLLM with its `priority`
policy (setting `priority_scheduling`), whose waiting queue is ordered by (priority, arrival), so when every slot is
taken a live request that arrives later still starts before a background request that waits. vLLM preempts a
running request for a more urgent one only when KV-cache blocks run out, not for a slot: a background request
already running finishes its step, and its sequence, in its slot.

Every project's work, one executor per replica. A run or batch is executed in its own project: its records and
files are read and written through the project's registry, its requests served by the gateway as the project sees
it (Gateway.for_project), so a model resolves among that project's adapters only, and charged to the project's
per-minute limits. The executor's slots are shared fairly between projects (FairSlots), and a restart takes up
the unfinished work of every project the org registry lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from adapters.errors import InvalidRequest, Overloaded, RateLimited, StoreUnavailable
from adapters.limits import CallerLimits
from adapters.schema import DEFAULT_PROJECT
from service.inference.fairness import FAIR_SPAN, FairShare, Slot
from service.protocol.chat import ChatCompletionRequest
from service.protocol.completions import CompletionRequest

if TYPE_CHECKING:
    from service.gateway import Gateway

T = TypeVar("T")
LIVE_PRIORITY = 0  # what a request through the HTTP routes asks the engine for (vLLM's default)
BACKGROUND_PRIORITY = FAIR_SPAN  # eval rows and batch lines: after every waiting live request, of any project
RETRY_S = (0.5, 30.0)  # first and longest wait before a request refused for load is tried again
REQUEST_MODELS: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
}


class FairSlots:
    """At most `concurrency` background requests at once, over every project's work: a slot that frees goes to the
    waiting project with the fewest requests in flight here (FairShare's count; on a tie, the one served longest
    ago), so projects take turns one request at a time and one project's big batch cannot starve another's. A
    request refused for load (429) or by an engine not ready (503) waits, doubling its wait up to RETRY_S[1]; one
    over its project's per-minute limit waits until the minute resets (Retry-After); neither holds a slot while it
    waits. Only a request its limit can never admit (larger than the limit itself) fails."""

    def __init__(self, concurrency: int):
        self.free = max(1, concurrency)
        self.share = FairShare(self.free)  # in flight per project; one project may hold every slot
        self._waiting: dict[str, deque[asyncio.Future[Slot]]] = {}  # each project's waiting calls, in arrival order
        self._turns = itertools.count()
        self._served: dict[str, int] = {}  # the turn each project was last handed a slot at

    async def call(self, project: str, send: Callable[[], Awaitable[T]]) -> T:
        wait = RETRY_S[0]
        while True:
            slot = await self._enter(project)
            try:
                return await send()
            except RateLimited as exc:
                if exc.never_admitted:
                    raise
                pause = float(exc.retry_after)
            except (Overloaded, StoreUnavailable):  # the 429s and 503s a live request can get
                pause, wait = wait, min(wait * 2, RETRY_S[1])
            finally:
                self._leave(slot)
            await asyncio.sleep(pause)

    async def _enter(self, project: str) -> Slot:
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return self._grant(project)
        granted: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(project, deque()).append(granted)
        try:
            return await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # handed a slot as it was cancelled: pass it on
                self._leave(granted.result())
            else:
                queue = self._waiting.get(project)
                if queue is not None and granted in queue:
                    queue.remove(granted)
                    if not queue:
                        del self._waiting[project]
            raise

    def _leave(self, slot: Slot) -> None:
        slot.release()
        while self._waiting:
            project = min(self._waiting, key=lambda p: (self.share.in_flight[p], self._served.get(p, -1)))
            queue = self._waiting[project]
            granted = queue.popleft()
            if not queue:
                del self._waiting[project]
            if not granted.cancelled():  # a cancelled one's task stopped waiting: the slot goes to the next
                granted.set_result(self._grant(project))
                return
        self.free += 1

    def _grant(self, project: str) -> Slot:
        self._served[project] = next(self._turns)
        return self.share.enter(project)


def task_key(project: str, work_id: str) -> str:
    """What a background task is known by here: the id of what it executes, `<project>/` before it outside the
    default project (ids are unique within a project only)."""
    return work_id if project == DEFAULT_PROJECT else f"{project}/{work_id}"


class BackgroundExecutor:
    """Background tasks by `task_key`: one at a time per key here."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def _start(self, key: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start `work` for `key` (a no-op while `key` is executing here)."""
        if key in self._tasks and not self._tasks[key].done():
            return
        task = asyncio.create_task(work(), name=key)
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None) if self._tasks.get(key) is task else None)

    async def wait(self, key: str) -> None:
        """Until the execution of `key` here has ended (tests, shutdown)."""
        task = self._tasks.get(key)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def stop(self) -> None:
        """Stop executing (shutdown): records stay as they are in the store, for the next start to resume."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def parsed_request(endpoint: str, data: Any, prefix: str = "") -> ChatCompletionRequest | CompletionRequest:
    """`data` as the route of `endpoint` parses its body; a 400 naming the first field at fault (after `prefix`)."""
    try:
        return REQUEST_MODELS[endpoint].model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = prefix + ".".join(str(step) for step in error["loc"])
        message = f"{where or 'body'}: {error['msg']}"
        raise InvalidRequest(message, param=where or None, code="invalid_parameter") from None


@dataclass(frozen=True)
class Served:
    """A request served whole: the response body, and the exact model that answered it (the base id or
    `name@version`: what an alias or an `ft:` id resolved to for this request, the route's version header)."""

    body: BaseModel
    served_by: str


def project_caller(gw: Gateway) -> CallerLimits:
    """Whom a background request of `gw`'s project is charged to: its project's per-minute limits (no key's: the
    work outlives the key that created it), and its project's place in the engine's fair share."""
    return CallerLimits(gw.project, gw.settings.limits_of(gw.project))


async def serve_whole(
    gw: Gateway, request: ChatCompletionRequest | CompletionRequest, priority: int, caller: CallerLimits | None = None
) -> Served:
    """The answer POST /v1/chat/completions or /v1/completions would give `request` in `gw`'s project (the same
    admission, `caller`'s limits, target resolution, template, adapter lease and metrics), whole, at `priority` in the
    engine's waiting queue; the domain error the route would answer otherwise."""
    from service.inference.chat import create_chat_completion
    from service.inference.completions import create_completion
    from service.inference.pipeline import VERSION_HEADER

    async def never_disconnected() -> bool:
        return False

    if isinstance(request, ChatCompletionRequest):
        answer = await create_chat_completion(gw, request, never_disconnected, priority, caller)
    else:
        answer = await create_completion(gw, request, never_disconnected, priority, caller)
    return Served(answer.body, answer.headers.get(VERSION_HEADER, ""))
