"""Hostile structured outputs, tools and uploads (issue 26, cases 2-5) sent 8 at a time, against one gateway.

    python -m bench.hostile              # every case (a few minutes on two CPU cores)
    python -m bench.hostile --only 3: --only "4: 20,000"   # the cases whose name holds either

For each case, `copies` clients (in a process of their own) send the same hostile request at once while a
prober times `/health` every 0.1 s and a victim sends 1-token base chats one after another. Reported per case:
what the hostile requests got (status, seconds), the worst and median `/health`, the victim's median chat next
to its idle median, and the peak resident memory of the gateway process (the engine core and the grammar
workers are its children and are reported apart). The target: `/health` under 100 ms, the victim within 2x of idle,
the gateway's memory flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.environment import machine
from bench.servers import API_KEY, BASE_MODEL_ID, EngineShape, start_gateway

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "hostile.json"
ASK = [{"role": "user", "content": "Say hello."}]
ADMIN_KEY = "bench-admin-key"


@dataclass(frozen=True)
class Upload:
    """A fine-tuning file of `x` lines (no row parses: 400) posted to /v1/files as multipart, with an admin key."""

    megabytes: int


def cases() -> dict[str, dict[str, Any] | Upload]:
    huge_array = {"type": "array", "minItems": 1000000000}
    slow = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 100 + i} for i in range(50)}}
    wide = {"type": "object", "properties": {f"p{i:05d}": {"type": "string"} for i in range(20_000)}}
    wide["required"] = list(wide["properties"])
    tools = [{"type": "function", "function": {"name": f"t{i}", "description": "d" * 30_000}} for i in range(128)]
    return {
        "2: json_schema minItems 1e9": {"response_format": _schema(huge_array)},
        "2: tool parameters minItems 1e9, required": {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": huge_array}}],
            "tool_choice": "required",
        },
        "2: regex ((a{0,1000}){0,1000}){0,1000}": {
            "structured_outputs": {"regex": "((a{0,1000}){0,1000}){0,1000}"}
        },
        "3: /v1/files, 4 MB of x lines": Upload(4),
        "3: /v1/files, 40 MB of x lines": Upload(40),
        "4: 20,000 required properties (1.2 MB)": {"response_format": _schema(wide)},
        "4: 50 bounded strings (85 s to compile)": {"response_format": _schema(slow)},
        "5: 128 tools, 3.9 MB of descriptions": {"tools": tools},
    }


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}


def _family_rss(pid: int) -> tuple[float, float]:
    """(the gateway's RSS, its children's: engine core and grammar workers), in MiB."""
    proc = psutil.Process(pid)
    children = sum(c.memory_info().rss for c in proc.children(recursive=True))
    return proc.memory_info().rss / 2**20, children / 2**20


async def _chat(http: httpx.AsyncClient, **fields: Any) -> tuple[int, float]:
    started = time.perf_counter()
    body = {"model": BASE_MODEL_ID, "messages": ASK, "max_tokens": 1, "temperature": 0, **fields}
    reply = await http.post("/v1/chat/completions", json=body)
    return reply.status_code, time.perf_counter() - started


async def _upload(http: httpx.AsyncClient, data: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    reply = await http.post(
        "/v1/files",
        data={"purpose": "fine-tune"},
        files={"file": ("x.jsonl", data)},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    )
    return reply.status_code, time.perf_counter() - started


async def _hostile(http: httpx.AsyncClient, case: dict[str, Any] | Upload, copies: int) -> list[tuple[int, float]]:
    if isinstance(case, Upload):
        data = b"x\n" * (case.megabytes * 2**19)  # one file, shared by every copy
        return await asyncio.gather(*[_upload(http, data) for _ in range(copies)])
    return await asyncio.gather(*[_chat(http, **case) for _ in range(copies)])


def send_hostile(url: str, case: dict[str, Any] | Upload, copies: int) -> list[tuple[int, float]]:
    """The hostile requests of one case, (status, seconds) each, sent from a process of its own: a client that sends
    8 x 40 MB from the prober's own event loop delays its probes by up to 300 ms, which a prober in another process
    did not see from the gateway."""

    async def send() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600) as http:
            return await _hostile(http, case, copies)

    return asyncio.run(send())


async def _health(http: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    await http.get("/health")
    return time.perf_counter() - started


async def measure(
    url: str, pid: int, fields: dict[str, Any] | Upload | None, copies: int, senders: ProcessPoolExecutor
) -> dict[str, Any]:
    """One case (None: idle), until its hostile requests, sent by `senders`, are all answered (idle: 10 victim
    chats)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
        done = asyncio.Event()
        health: list[float] = []
        victim: list[float] = []
        peak = [0.0, 0.0]

        async def probe() -> None:
            while not done.is_set():
                health.append(await _health(http))
                gateway, children = _family_rss(pid)
                peak[0], peak[1] = max(peak[0], gateway), max(peak[1], children)
                await asyncio.sleep(0.1)

        async def victims() -> None:
            while not done.is_set() or len(victim) < 3:
                status, seconds = await _chat(http)
                if status == 200:
                    victim.append(seconds)
                if fields is None and len(victim) >= 10:
                    done.set()

        tasks = [asyncio.ensure_future(probe()), asyncio.ensure_future(victims())]
        hostile: list[tuple[int, float]] = []
        if fields is not None:
            await asyncio.sleep(0.5)
            hostile = await asyncio.get_running_loop().run_in_executor(senders, send_hostile, url, fields, copies)
            done.set()
        await asyncio.gather(*tasks)
    return {
        "hostile_status": sorted({status for status, _ in hostile}),
        "hostile_max_s": round(max((s for _, s in hostile), default=0.0), 2),
        "health_max_ms": round(max(health) * 1000, 1),
        "health_p50_ms": round(statistics.median(health) * 1000, 1),
        "victim_p50_s": round(statistics.median(victim), 3),
        "victim_max_s": round(max(victim), 3),
        "gateway_peak_rss_mib": round(peak[0]),
        "children_peak_rss_mib": round(peak[1]),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        admin = {"SKILLSERVE_ADMIN_KEYS": json.dumps([ADMIN_KEY])}  # uploads take an admin key
        server = start_gateway(EngineShape(), f"file://{workdir / 'store'}", workdir, extra_env=admin)
        senders = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        senders.submit(time.sleep, 0).result()  # started before any measurement
        try:
            results: dict[str, Any] = {"idle": asyncio.run(measure(server.url, server.proc.pid, None, 0, senders))}
            for name, fields in cases().items():
                if args.only and not any(part in name for part in args.only):
                    continue
                results[name] = asyncio.run(measure(server.url, server.proc.pid, fields, args.copies, senders))
                print(name, json.dumps(results[name]), flush=True)
            alive = server.proc.poll() is None
        finally:
            senders.shutdown()
            server.stop()
    return {"machine": machine(), "copies": args.copies, "gateway_survived": alive, "cases": results}


def table(result: dict[str, Any]) -> str:
    idle = result["cases"]["idle"]
    lines = [
        f"{result['copies']} copies of each at once; idle: base chat p50 {idle['victim_p50_s']} s, /health max "
        f"{idle['health_max_ms']} ms, gateway RSS {idle['gateway_peak_rss_mib']} MiB",
        "",
        "| case | hostile got | slowest hostile (s) | /health max (ms) | base chat p50 (s) | vs idle "
        "| gateway RSS peak (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in result["cases"].items():
        if name == "idle":
            continue
        ratio = row["victim_p50_s"] / idle["victim_p50_s"]
        lines.append(
            f"| {name} | {', '.join(map(str, row['hostile_status']))} | {row['hostile_max_s']} | "
            f"{row['health_max_ms']} | {row['victim_p50_s']} | {ratio:.2f}x | {row['gateway_peak_rss_mib']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=8, help="hostile requests of each case sent at once")
    parser.add_argument(
        "--only", action="append", default=[], help="run only the cases whose name contains this (repeatable)"
    )
    args = parser.parse_args(argv)
    result = run(args)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
