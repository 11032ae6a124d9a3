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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from adapters.errors import InvalidRequest, Overloaded, StoreUnavailable
from service.inference.fairness import FAIR_SPAN
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


class Slots:
    """At most `concurrency` requests at once; one refused for load (429) or by an engine not ready (503) waits,
    doubling its wait up to RETRY_S[1], and is tried again."""

    def __init__(self, concurrency: int):
        self._slots = asyncio.Semaphore(max(1, concurrency))

    async def call(self, send: Callable[[], Awaitable[T]]) -> T:
        wait = RETRY_S[0]
        while True:
            try:
                async with self._slots:
                    return await send()
            except (Overloaded, StoreUnavailable):  # the 429s and 503s a live request can get
                pass
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_S[1])


class BackgroundExecutor:
    """Background tasks by the id of what they execute: one at a time per id here."""

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


async def serve_whole(gw: Gateway, request: ChatCompletionRequest | CompletionRequest, priority: int) -> Served:
    """The answer POST /v1/chat/completions or /v1/completions would give `request` (the same admission, target
    resolution, template, adapter lease and metrics), whole, at `priority` in the engine's waiting queue; the domain
    error the route would answer otherwise."""
    from service.inference.chat import create_chat_completion
    from service.inference.completions import create_completion
    from service.inference.pipeline import VERSION_HEADER

    async def never_disconnected() -> bool:
        return False

    if isinstance(request, ChatCompletionRequest):
        answer = await create_chat_completion(gw, request, never_disconnected, priority)
    else:
        answer = await create_completion(gw, request, never_disconnected, priority)
    return Served(answer.body, answer.headers.get(VERSION_HEADER, ""))
