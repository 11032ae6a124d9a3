"""A batch under live load, a gateway killed mid-batch, and what storing chat completions costs live traffic.

Issue 32's targets, three cases in one report:
- **live**: a batch file of /v1/chat/completions lines over 4 adapters (mixed in one file; 1,000 lines at full size)
  runs while the serving benchmark's c=4 load (`vllm bench serve` on the base model, as bench/eval_load.py) runs
  against the same gateway. Order: alone, with, with, alone (ABBA): the batch is submitted before the first "with"
  run, which starts once a line is answered, and it must still be running when the second ends; the last "alone" run
  starts after the batch has completed. Target: live TTFT p50 with the batch at most 1.5x alone, the batch completes.
- **restart**: a second batch, the gateway SIGKILLed once a third of its lines are answered, a new gateway started on
  the same store, the batch let finish. The output and error files must hold every custom_id exactly once, and each
  line finished before the kill (read from the store while no gateway runs) with the answer it had then (its
  request id), not a second run.
- **store**: the serving benchmark's c=16 base case on /v1/chat/completions, `store: true` in every request vs not,
  on one gateway, ABBA. Stored completions go through the gateway's real path (the request's queue, the background
  writer, the registry) into a `file://` store; the report counts what was written. Target: output tok/s with the
  store at least 0.97x without.
`python -m bench.batch_load [--size tiny|full] [--only batch|store]` prints a JSON report (docs/batches.md and
docs/data-loop.md have the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from adapters.registry import Registry
from adapters.store import FileStore
from bench.eval_load import COUNTRIES
from bench.lora_files import make_adapters, publish
from bench.servers import API_KEY, BASE_MODEL_ID, EngineShape, Server, start_gateway
from bench.serving import RANK, SIZES, combine, cpu_seconds, figures, vllm_bench, warm

CHAT = "/v1/chat/completions"
# Lines of the live case's batch and of the restart case's. Tiny: enough for the batch to outlast both "with" runs
# and for the kill to land mid-batch, no more: the smoke checks the cases, not the figures.
SIZES_LINES = {"tiny": 24, "full": 1000}
RESTART_LINES = {"tiny": 12, "full": 1000}
ADAPTERS = 4
LINE_TOKENS = 16
STORE_CONCURRENCY = 16
FINISHED = ("completed", "failed", "expired", "cancelled")
# The bench's key is also an admin key here: uploads and batches take one.
ADMIN_ENV = {"SKILLSERVE_ADMIN_KEYS": json.dumps([API_KEY])}


def batch_lines(n: int, models: list[str], tag: str) -> list[dict[str, Any]]:
    """`n` chat lines, the models taken in turn; each asks for exactly LINE_TOKENS tokens (ignore_eos), so every
    line is the same work whatever the random adapter answers."""
    return [
        {
            "custom_id": f"{tag}-{i:04d}",
            "method": "POST",
            "url": CHAT,
            "body": {
                "model": models[i % len(models)],
                "messages": [{"role": "user", "content": f"{i}: name the capital of {COUNTRIES[i % len(COUNTRIES)]}."}],
                "max_tokens": LINE_TOKENS,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]


def submit(client: httpx.Client, lines: list[dict[str, Any]]) -> str:
    """Upload `lines` as a batch file and create the batch; its id."""
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    r = client.post("/v1/files", files={"file": ("batch.jsonl", data, "application/jsonl")}, data={"purpose": "batch"})
    r.raise_for_status()
    r = client.post("/v1/batches", json={"input_file_id": r.json()["id"], "endpoint": CHAT, "completion_window": "24h"})
    r.raise_for_status()
    return str(r.json()["id"])


def batch_state(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/batches/{batch_id}")
    r.raise_for_status()
    return dict(r.json())


def wait_batch(
    client: httpx.Client, batch_id: str, until: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Poll the batch until `until` holds or it has finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = batch_state(client, batch_id)
        if until(state) or state["status"] in FINISHED:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {state['status']} after {timeout_s:.0f} s")
        time.sleep(0.5)


def answered(at_least: int) -> Callable[[dict[str, Any]], bool]:
    return lambda state: int(state["request_counts"]["completed"]) + int(state["request_counts"]["failed"]) >= at_least


def result_lines(client: httpx.Client, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The lines of a finished batch's output and error files."""
    out: list[dict[str, Any]] = []
    for file_id in (state.get("output_file_id"), state.get("error_file_id")):
        if file_id:
            r = client.get(f"/v1/files/{file_id}/content")
            r.raise_for_status()
            out += [json.loads(line) for line in r.text.splitlines()]
    return out


def exactly_once(expected: list[str], lines: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The custom ids of `expected` missing from `lines`, those there more than once, and those not expected."""
    seen = Counter(line["custom_id"] for line in lines)
    return {
        "missing": sorted(set(expected) - set(seen)),
        "duplicated": sorted(custom_id for custom_id, n in seen.items() if n > 1),
        "unexpected": sorted(set(seen) - set(expected)),
    }


def timeout_for(lines: int) -> float:
    return 600 + 10.0 * lines  # about ten times a line's time on a loaded two-core machine


def kill(server: Server) -> None:
    """SIGKILL the gateway, as the OOM killer would; its engine processes die with it (PR_SET_PDEATHSIG), and this
    waits until they have, so the next gateway does not share the machine with them."""
    import psutil

    children = psutil.Process(server.proc.pid).children(recursive=True)
    server.proc.kill()
    server.proc.wait()
    _, alive = psutil.wait_procs(children, timeout=60)
    for proc in alive:  # the engine processes this bench started, should PDEATHSIG not have reached them
        proc.kill()


def live_case(
    server: Server, client: httpx.Client, size_name: str, models: list[str], n_lines: int, log: Path
) -> dict[str, Any]:
    """The c=4 live load alone, with the batch running, with it, alone."""
    size = replace(SIZES[size_name], requests_per_case=48 if size_name == "full" else 8, adapters=1)
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "with batch": []}
    overlap: list[dict[str, Any]] = []
    lines = batch_lines(n_lines, models, "live")

    def measure(name: str, seed: int, batch_id: str | None = None) -> None:
        time.sleep(size.settle_s)
        before = batch_state(client, batch_id) if batch_id else None
        runs[name].append(figures(vllm_bench(server.url, size, 4, [], log, seed=seed), size, 4))
        if before is not None and batch_id:
            after = batch_state(client, batch_id)
            overlap.append({
                "answered_before": before["request_counts"]["completed"] + before["request_counts"]["failed"],
                "answered_after": after["request_counts"]["completed"] + after["request_counts"]["failed"],
                "still_running_after": after["status"] == "in_progress",
            })  # fmt: skip

    measure("alone", 0)
    started = time.monotonic()
    batch_id = submit(client, lines)
    wait_batch(client, batch_id, answered(1), timeout_s=600)  # the batch is in the engine before the load starts
    measure("with batch", 1, batch_id)
    measure("with batch", 2, batch_id)
    state = wait_batch(client, batch_id, lambda _: False, timeout_for(n_lines))
    wall_s = round(time.monotonic() - started, 1)
    measure("alone", 3)
    outcome = exactly_once([line["custom_id"] for line in lines], result_lines(client, state))
    p50 = {name: statistics.fmean(r["ttft_p50_ms"] for r in rs) for name, rs in runs.items()}
    ratio = round(p50["with batch"] / p50["alone"], 3)
    completed = state["status"] == "completed" and state["request_counts"]["completed"] == n_lines
    overlapped = all(o["still_running_after"] for o in overlap)
    return {
        "settings": {
            "live": asdict(size) | {"concurrency": 4, "mix": "base"},
            "order": f"alone, with batch, with batch, alone; {size.settle_s:g} s idle before each",
        },
        "live": runs,
        "ttft_p50_ms": {k: round(v, 2) for k, v in p50.items()},
        "batch": {
            "id": batch_id,
            "lines": n_lines,
            "status": state["status"],
            "request_counts": state["request_counts"],
            "usage": state.get("usage"),
            "wall_s": wall_s,
            "lines_per_s": round(n_lines / wall_s, 3),
            "during_live_runs": overlap,
            **outcome,
        },
        "target": {
            "value": ratio,
            "target": "<= 1.5, the batch running through both 'with' runs and completing",
            "met": ratio <= 1.5 and completed and overlapped and not any(outcome.values()),
        },
    }


def restart_case(
    server: Server, client: httpx.Client, shape: EngineShape, workdir: Path, models: list[str], n_lines: int
) -> dict[str, Any]:
    """A batch, the gateway SIGKILLed mid-batch, a new gateway on the same store; what the output files hold."""
    lines = batch_lines(n_lines, models, "restart")
    kill_at = max(1, n_lines // 3)
    started = time.monotonic()
    batch_id = submit(client, lines)
    at_kill = wait_batch(client, batch_id, answered(kill_at), timeout_for(kill_at))
    kill(server)
    registry = Registry(FileStore(workdir / "store"))  # no gateway runs now: what the store holds is what finished
    finished_before = {r.custom_id: r.request_id for r in registry.list_batch_lines(batch_id)}
    counted_before = registry.get_batch(batch_id).counts
    with (
        start_gateway(shape, f"file://{workdir / 'store'}", workdir / "restarted", extra_env=ADMIN_ENV) as again,
        httpx.Client(base_url=again.url, headers=client.headers, timeout=60) as after,
    ):
        state = wait_batch(after, batch_id, lambda _: False, timeout_for(n_lines))
        results = result_lines(after, state)
    outcome = exactly_once([line["custom_id"] for line in lines], results)
    by_id = {line["custom_id"]: line for line in results}
    # A line finished before the kill is kept if the output holds the answer it had then (same request id).
    lost = sorted(
        custom_id for custom_id, request_id in finished_before.items()
        if ((by_id.get(custom_id) or {}).get("response") or {}).get("request_id") != request_id
    )  # fmt: skip
    clean = state["status"] == "completed" and not lost and not any(outcome.values())
    return {
        "batch": {
            "id": batch_id,
            "lines": n_lines,
            "status": state["status"],
            "request_counts": state["request_counts"],
        },
        "killed_after_answered": at_kill["request_counts"],
        "finished_before_kill": len(finished_before),
        "counted_before_kill": counted_before.completed + counted_before.failed,
        "answered_after_restart": n_lines - len(finished_before),
        "restart_ready_s": again.started_s,
        "wall_s": round(time.monotonic() - started, 1),
        "output_lines": len(results),
        "finished_before_kill_lost": lost,
        **outcome,
        "target": {
            "value": {"lost": len(lost), "duplicated": len(outcome["duplicated"]), "missing": len(outcome["missing"])},
            "target": "every custom_id exactly once; every line finished before the kill kept as it was",
            "met": clean,
        },
    }


def batch_run(size_name: str, workdir: Path, lines: int, restart_lines: int) -> dict[str, Any]:
    """The live and restart cases, on one gateway (the restart case kills it) with 4 adapters published."""
    shape = EngineShape(
        max_num_seqs=4, max_loras=ADAPTERS, max_cpu_loras=ADAPTERS, max_lora_rank=RANK, max_model_len=1024
    )
    workdir.mkdir(parents=True, exist_ok=True)
    models = [f"bench-{i}" for i in range(ADAPTERS)]
    registry = Registry(FileStore(workdir / "store"))
    for name, directory in zip(models, make_adapters(workdir / "loras", RANK, ADAPTERS), strict=True):
        publish(registry, directory, name, RANK)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with start_gateway(shape, f"file://{workdir / 'store'}", workdir, extra_env=ADMIN_ENV) as server:
        warm(server, [BASE_MODEL_ID, *models])
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            live = live_case(server, client, size_name, models, lines, workdir / "vllm-bench.log")
            restart = restart_case(server, client, shape, workdir, models, restart_lines)
    return {
        "engine": asdict(shape),
        "batch_lines": {
            "adapters": models,
            "max_tokens": LINE_TOKENS,
            "ignore_eos": True,
            "batch_concurrency": "the gateway's default (1)",
        },
        "live": live,
        "restart": restart,
    }


def stored_counts(client: httpx.Client) -> dict[str, int]:
    """The stored-completions writer's counters, by outcome, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    r.raise_for_status()
    counts = {"written": 0, "dropped": 0, "failed": 0}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name == "skillserve_stored_completions_total" and sample.labels["outcome"] in counts:
                counts[sample.labels["outcome"]] = int(sample.value)
    return counts


def drain(client: httpx.Client, expected: int, timeout_s: float = 120) -> dict[str, int]:
    """Until the writer has dealt with `expected` records (written, dropped or failed); its counts."""
    deadline = time.monotonic() + timeout_s
    while sum((counts := stored_counts(client)).values()) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return counts


def store_run(size_name: str, workdir: Path, repeats: int = 1) -> dict[str, Any]:
    """The serving benchmark's c=16 base case on chat completions, store on vs off, ABBA on one gateway, `repeats`
    times (each ABBA is balanced: a steady drift of the machine favours neither arm)."""
    size = SIZES[size_name]
    shape = EngineShape(max_num_seqs=STORE_CONCURRENCY, max_loras=1, max_cpu_loras=1, max_lora_rank=RANK)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "vllm-bench.log"
    arms: dict[str, dict[str, Any] | None] = {"store off": None, "store on": {"store": True}}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with start_gateway(shape, f"file://{workdir / 'store'}", workdir) as server:
        warm(server, [BASE_MODEL_ID])
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            # The chat path warmed too (its template), so neither arm's first run pays for it.
            client.post(CHAT, json={"model": BASE_MODEL_ID, "messages": [{"role": "user", "content": "Hello"}],
                                    "max_tokens": 2}).raise_for_status()  # fmt: skip
            expected = 0  # store-on requests so far
            abba = ("store off", "store on", "store on", "store off")
            order = [name for _ in range(repeats) for name in abba]
            for i, name in enumerate(order):
                time.sleep(size.settle_s)
                before = cpu_seconds(server.proc.pid)
                result = vllm_bench(server.url, size, STORE_CONCURRENCY, [], log, seed=i, endpoint=CHAT,
                                    extra_body=arms[name])  # fmt: skip
                run = figures(result, size, STORE_CONCURRENCY)
                expected += run["completed"] if arms[name] else 0
                run["stored_backlog_at_end"] = expected - sum(stored_counts(client).values())
                # The writer's backlog is drained before the next run, so no run carries another's writes; the
                # CPU seconds are taken after it, so they hold every write of this run.
                drained = time.monotonic()
                counts = drain(client, expected)
                run["drain_s"] = round(time.monotonic() - drained, 2)
                after = cpu_seconds(server.proc.pid)
                run["front_cpu_s"] = round(after[0] - before[0], 2)
                run["engine_cpu_s"] = round(after[1] - before[1], 2)
                runs[name].append(run)
    measured = {name: combine(rs) for name, rs in runs.items()}
    on, off = measured["store on"], measured["store off"]
    ratio = round(on["output_tok_s"] / off["output_tok_s"], 3)
    by_repeat = [
        round(a["output_tokens"] / a["duration_s"] / (b["output_tokens"] / b["duration_s"]), 3)
        for a, b in zip(runs["store on"], runs["store off"], strict=True)  # the pairs in run order
    ]
    return {
        "settings": {
            **asdict(size),
            "concurrency": STORE_CONCURRENCY,
            "requests": size.requests(STORE_CONCURRENCY),
            "engine": asdict(shape),
            "endpoint": f"{CHAT} (streamed), base model",
            "store": "file:// store through the gateway's CompletionWriter (queue, background writer, registry)",
            "order": f"{', '.join(name.split()[1] for name in order)}; {size.settle_s:g} s idle before each, the "
            "writer's backlog drained",
        },
        "store off": off,
        "store on": on,
        "ratio": {name: round(on[name] / off[name], 3) for name in ("output_tok_s", "ttft_p50_ms", "e2e_p50_ms")},
        # The same work in CPU seconds (gateway and engine processes), off over on. On a shared machine the engine's
        # share follows the load (its threads spin while they wait); the writer's cost is in each arm's front_cpu_s.
        "cpu_s_ratio_off_over_on": round(
            (off["front_cpu_s"] + off["engine_cpu_s"]) / (on["front_cpu_s"] + on["engine_cpu_s"]), 3
        ),
        "tok_s_ratio_by_pair": by_repeat,
        "stored": counts | {"store_on_requests": expected},
        "target": {
            "value": ratio,
            "target": ">= 0.97 (store on over off, output tok/s), every store-on request written",
            "met": ratio >= 0.97 and counts["written"] == expected,
        },
    }


def run(size_name: str, workdir: Path, only: str | None = None, lines: int | None = None,
        restart_lines: int | None = None, repeats: int = 1) -> dict[str, Any]:  # fmt: skip
    n_lines = lines or SIZES_LINES[size_name]
    result: dict[str, Any] = {"benchmark": "batch_load", "size": size_name}
    if only in (None, "batch"):
        result["batch"] = batch_run(size_name, workdir / "batch", n_lines, restart_lines or RESTART_LINES[size_name])
    if only in (None, "store"):
        result["store"] = store_run(size_name, workdir / "store-cost", repeats)
    targets = {}
    if "batch" in result:
        targets["live_ttft_p50_with_batch_over_alone"] = result["batch"]["live"]["target"]
        targets["restart_keeps_every_line_once"] = result["batch"]["restart"]["target"]
    if "store" in result:
        targets["store_on_over_off_output_tok_s"] = result["store"]["target"]
    result["targets"] = targets
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--size", choices=tuple(SIZES_LINES), default="full")
    parser.add_argument("--only", choices=("batch", "store"), default=None, help="the batch cases, or the store's")
    parser.add_argument("--lines", type=int, default=None, help="lines in the live case's batch")
    parser.add_argument("--restart-lines", type=int, default=None, help="lines in the restart case's batch")
    parser.add_argument("--repeats", type=int, default=1, help="the store case's ABBA, this many times")
    parser.add_argument("--workdir", type=Path, default=None, help="kept (logs, store); default: a temp dir")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    from bench import environment

    machine = environment.machine()  # before the run, so its load average is the machine's, not the bench's
    with tempfile.TemporaryDirectory(prefix="skillserve-batch-load-") as scratch:
        workdir = args.workdir or Path(scratch)
        result = run(args.size, workdir, args.only, args.lines, args.restart_lines, args.repeats)
    result["machine"] = machine
    report = json.dumps(result, indent=2)
    if args.output:
        args.output.write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
