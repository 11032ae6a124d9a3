"""A bounded in-memory queue and the one background task that drains it: how the gateway keeps writes a request asks
for (stored completions, audit entries) off that request's path.

`offer` never waits: a full queue refuses the item (the subclass counts and logs it in `dropped`). The task hands each
item to `write`, which must not raise for a store's failure (it counts that and goes on), and calls `idle` whenever the
queue runs empty (retention). At shutdown what is queued gets a short grace to be written.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

T = TypeVar("T")

FLUSH_AT_STOP_S = 5.0


class QueuedWriter(Generic[T]):
    """The queue and its task; subclasses say how one item is written and what a dropped one costs."""

    task_name = "queued-writer"

    def __init__(self, queue_size: int):
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None

    def _offer(self, item: T) -> bool:
        """Queue `item`; never waits. Whether it was queued."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped(item)
            return False
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=self.task_name)

    async def stop(self) -> None:
        """Give what is queued a short grace to be written, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), FLUSH_AT_STOP_S)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def flushed(self) -> None:
        """Until every item queued so far has been written or given up on (tests, shutdown)."""
        await self._queue.join()

    async def _drain(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self.write(item)
                if self._queue.empty():
                    await self.idle()
            finally:
                self._queue.task_done()

    def dropped(self, item: T) -> None:
        """A full queue refused `item`."""

    async def write(self, item: T) -> None:
        raise NotImplementedError

    async def idle(self) -> None:
        """The queue ran empty."""
