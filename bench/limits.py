"""Limits under load: one caller sends ten times its limit while another stays within its own.

Issue 31's target: while project B sends 10x its requests-per-minute limit, project A's requests (within its limit)
all succeed and A's TTFT p50 stays within 1.5x of its value with B silent; B's excess gets 429 with Retry-After and
OpenAI's x-ratelimit-* headers. One gateway; A and B are two projects made in its store before it starts (as the
operator API makes them), each with an inference key; B's project has a requests-per-minute limit
(`PROJECT_LIMITS`), A's a limit ten times what it sends in a phase. A sends streamed chat requests one after
another; B sends open-loop at 10x its limit. Phases alternate, alone then with B (ABBA with --repeats 2), so a drift
of the shared machine favours neither.
`python -m bench.limits [--size tiny|full] [--repeats 1]` prints a JSON report (docs/gateway.md has the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from adapters.registry import Registry
from adapters.store import open_store
from bench.servers import BASE_MODEL_ID, EngineShape, start_gateway

SIZES = {
    "tiny": {"a_requests": 8, "b_rpm": 12, "phase_s": 20.0},
    "full": {"a_requests": 40, "b_rpm": 30, "phase_s": 90.0},
}
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests")


def chat_body(i: int) -> dict[str, Any]:
    return {"model": BASE_MODEL_ID, "messages": [{"role": "user", "content": f"Count from {i} to {i + 5}."}],
            "max_tokens": 16, "temperature": 0, "stream": True}  # fmt: skip


async def a_client(client: httpx.AsyncClient, n: int) -> list[dict[str, Any]]:
    """A's streamed requests, one after another: status and time to first token of each."""
    out = []
    for i in range(n):
        started = time.perf_counter()
        ttft = None
        async with client.stream("POST", "/v1/chat/completions", json=chat_body(i)) as reply:
            async for line in reply.aiter_lines():
                if ttft is None and line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    ttft = time.perf_counter() - started
        out.append({"status": reply.status_code, "ttft_ms": None if ttft is None else ttft * 1000})
    return out


async def b_client(client: httpx.AsyncClient, rpm: int, seconds: float) -> list[dict[str, Any]]:
    """B's requests open-loop at 10x its limit for `seconds`: status and the rate-limit headers of each."""

    async def one(i: int) -> dict[str, Any]:
        body = {**chat_body(i), "stream": False}
        reply = await client.post("/v1/chat/completions", json=body)
        found = {h: reply.headers.get(h) for h in (*RATE_HEADERS, "retry-after")}
        return {"status": reply.status_code, "headers": found, "code": reply.json().get("error", {}).get("code")
                if reply.status_code != 200 else None}  # fmt: skip

    every = 60.0 / (10 * rpm)
    tasks = []
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        tasks.append(asyncio.create_task(one(len(tasks))))
        await asyncio.sleep(every)
    return list(await asyncio.gather(*tasks))


def headers_correct(result: dict[str, Any], rpm: int) -> bool:
    """A 429 from the limit: Retry-After, the limit, nothing remaining, a reset; a 200: the limit and what is left."""
    h = result["headers"]
    if result["status"] == 429:
        return (h["retry-after"] is not None and int(h["retry-after"]) >= 1 and h[RATE_HEADERS[0]] == str(rpm)
                and h[RATE_HEADERS[1]] == "0" and h[RATE_HEADERS[2]] is not None)  # fmt: skip
    return h[RATE_HEADERS[0]] == str(rpm) and 0 <= int(h[RATE_HEADERS[1]] or -1) < rpm


async def phase(url: str, keys: dict[str, str], with_b: bool, size: dict[str, Any]) -> dict[str, Any]:
    a_headers, b_headers = ({"Authorization": f"Bearer {keys[who]}"} for who in ("A", "B"))
    async with httpx.AsyncClient(base_url=url, headers=a_headers, timeout=300) as a, \
            httpx.AsyncClient(base_url=url, headers=b_headers, timeout=300) as b:  # fmt: skip
        b_task = asyncio.create_task(b_client(b, size["b_rpm"], size["phase_s"])) if with_b else None
        a_results = await a_client(a, size["a_requests"])
        b_results = await b_task if b_task is not None else []
    ttfts = [r["ttft_ms"] for r in a_results if r["ttft_ms"] is not None]
    figures: dict[str, Any] = {
        "a_sent": len(a_results),
        "a_ok": sum(r["status"] == 200 for r in a_results),
        "a_ttft_p50_ms": round(statistics.median(ttfts), 1) if ttfts else None,
    }
    if with_b:
        figures.update({
            "b_sent": len(b_results),
            "b_ok": sum(r["status"] == 200 for r in b_results),
            "b_429": sum(r["status"] == 429 for r in b_results),
            "b_other": sum(r["status"] not in (200, 429) for r in b_results),
            "b_headers_correct": sum(headers_correct(r, size["b_rpm"]) for r in b_results if r["status"] in (200, 429)),
            "b_429_example": next((r["headers"] for r in b_results if r["status"] == 429), None),
        })  # fmt: skip
    return figures


def two_projects(store_uri: str, size: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """Projects A and B in the store, an inference key each; their limits as the gateway's settings. A's limit
    leaves room for every request it sends in a minute, B's is the size's."""
    registry = Registry(open_store(store_uri))
    keys, limits = {}, {}
    for who, rpm in (("A", 10 * size["a_requests"]), ("B", size["b_rpm"])):
        project = registry.create_project(f"bench {who}")
        _, keys[who] = registry.create_api_key(project.id, "inference", f"bench-{who}")
        limits[project.id] = {"requests_per_minute": rpm}
    return keys, limits


def run(size_name: str, workdir: Path, repeats: int = 1) -> dict[str, Any]:
    size = SIZES[size_name]
    shape = EngineShape(max_num_seqs=4, max_loras=1, max_cpu_loras=1, max_model_len=1024)
    store_uri = f"file://{workdir / 'store'}"
    keys, limits = two_projects(store_uri, size)
    env = {"SKILLSERVE_PROJECT_LIMITS": json.dumps(limits)}  # the static API_KEY: the default project, unused
    order = [name for rep in range(repeats) for name in (("alone", "with B") if rep % 2 == 0 else ("with B", "alone"))]
    phases: dict[str, list[dict[str, Any]]] = {"alone": [], "with B": []}
    with start_gateway(shape, store_uri, workdir, extra_env=env) as server:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {keys['A']}"}, timeout=300) as c:
            c.post("/v1/chat/completions", json={**chat_body(0), "stream": False}).raise_for_status()  # warm
        for name in order:
            time.sleep(2.0)
            phases[name].append(asyncio.run(phase(server.url, keys, name == "with B", size)))
    alone = statistics.fmean(p["a_ttft_p50_ms"] for p in phases["alone"])
    loaded = statistics.fmean(p["a_ttft_p50_ms"] for p in phases["with B"])
    with_b = phases["with B"]
    return {
        "size": size_name,
        "project_limits_rpm": dict(zip("AB", (limit["requests_per_minute"] for limit in limits.values()), strict=True)),
        "b_limit_rpm": size["b_rpm"],
        "phases": phases,
        "a_ttft_p50_with_b_over_alone": round(loaded / alone, 3),
        "targets": {
            "a_all_succeed": all(p["a_ok"] == p["a_sent"] for ps in phases.values() for p in ps),
            "a_ttft_within_1_5x": loaded / alone <= 1.5,
            "b_refused_with_headers": all(
                p["b_429"] > 0 and p["b_headers_correct"] == p["b_ok"] + p["b_429"] for p in with_b
            ),  # fmt: skip
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        print(json.dumps(run(args.size, Path(tmp), args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
