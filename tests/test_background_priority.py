"""Background work yields to live requests inside the engine: the real CPU engine started with vLLM's `priority`
policy, eval rows and batch lines sent through the serving path (background.serve_whole, the pipeline, the engine's
generate) at BACKGROUND_PRIORITY, live requests at LIVE_PRIORITY.

With one batch slot (`max_num_seqs=1`) requests run one at a time, so the order they finish in is the order they
started in: a long background request holds the slot, two more wait in the engine, then a live request arrives.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service.engine.core import Engine
from service.gateway import Gateway
from service.management.background import BACKGROUND_PRIORITY, LIVE_PRIORITY, parsed_request, serve_whole
from service.metrics import Metrics
from service.settings import Settings


def one_slot_gateway(root: Path, priority_scheduling: bool) -> Gateway:
    """The engine and what serving the base model needs of a Gateway (no store, no adapters, no training)."""
    settings = Settings(
        store_uri=f"file://{root / 'store'}", cache_dir=root / "cache", max_model_len=512, max_num_seqs=1,
        max_loras=1, max_cpu_loras=1, max_lora_rank=8, kv_cache_space_gb=1, priority_scheduling=priority_scheduling,
    )  # type: ignore[call-arg]
    engine = Engine(settings)
    return Gateway(settings, engine, None, None, None, Metrics(base_model=engine.base_model_id), None)  # type: ignore[arg-type]


async def served_in_order(gw: Gateway) -> tuple[list[str], set[str]]:
    """Three background requests (the first long), then a live one once the other two wait in the engine: the
    order they finish in, and the models that said they answered."""
    finished: list[str] = []
    answered_by: set[str] = set()

    async def send(name: str, priority: int, tokens: int) -> None:
        request = parsed_request("/v1/chat/completions", {
            "model": gw.engine.base_model_id, "messages": [{"role": "user", "content": f"Count to ten ({name})."}],
            "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
        })
        served = await serve_whole(gw, request, priority)
        finished.append(name)
        answered_by.add(served.served_by)

    async def in_engine(count: int) -> None:
        """Until `count` requests are in the engine; a request that ended before (failed, or finished too soon for
        the scenario) fails the test with its error."""
        while gw.engine.unfinished() < count:
            for task in tasks:
                if task.done():
                    task.result()
                    raise AssertionError(f"a request finished before {count} were in the engine: {finished}")
            await asyncio.sleep(0.01)

    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(send("background 0", BACKGROUND_PRIORITY, 96))]
    await in_engine(1)  # the first holds the slot before the others are sent
    tasks += [asyncio.create_task(send(f"background {i}", BACKGROUND_PRIORITY, 4)) for i in (1, 2)]
    await in_engine(3)
    tasks.append(asyncio.create_task(send("live", LIVE_PRIORITY, 4)))
    await asyncio.gather(*tasks)
    return finished, answered_by


@pytest.mark.slow
@pytest.mark.parametrize(
    ("priority_scheduling", "expected"),
    [
        (True, ["background 0", "live", "background 1", "background 2"]),
        (False, ["background 0", "background 1", "background 2", "live"]),  # vLLM's first-come policy
    ],
    ids=["priority policy", "priority_scheduling off"],
)
def test_a_live_request_starts_before_background_requests_queued_earlier(
    tmp_path: Path, priority_scheduling: bool, expected: list[str]
) -> None:
    gw = one_slot_gateway(tmp_path, priority_scheduling)

    async def scenario() -> tuple[list[str], set[str]]:
        await asyncio.to_thread(gw.engine.start)
        try:
            return await served_in_order(gw)
        finally:
            await asyncio.to_thread(gw.engine.shutdown)

    finished, answered_by = asyncio.run(scenario())
    # The running background request keeps its slot to the end (vLLM preempts by priority only when KV blocks run
    # out); the live one goes next, ahead of the background requests that were waiting before it arrived.
    assert finished == expected
    assert answered_by == {gw.engine.base_model_id}  # serve_whole says which model answered
