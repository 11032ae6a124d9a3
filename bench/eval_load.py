"""An eval run under live load: the serving benchmark's c=4 load, alone and with a 200-row eval in flight.

Issue 28's target: while a 200-row eval runs against a skill, the live requests' TTFT p50 stays within 1.5x of
what it is without the eval, and the eval finishes. One gateway, one synthetic adapter (the serving benchmark's
`bench-0`); the live load is `vllm bench serve` at concurrency 4 on the base model (as the serving benchmark's
base case), the eval samples the adapter through the chat serving path. Order: alone, with, with, alone (ABBA),
so a drift of the shared machine favours neither; each "with" run starts a fresh eval run and waits until at
least one row is graded before the live load begins, so the eval is in the engine the whole time.
`python -m bench.eval_load [--size tiny|full] [--rows N] [--repeats 2]` prints a JSON report (docs/evals.md has
the figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import httpx

from adapters.registry import Registry
from adapters.store import FileStore
from bench.lora_files import make_adapters, publish
from bench.servers import API_KEY, BASE_MODEL_ID, EngineShape, start_gateway
from bench.serving import RANK, SIZES, figures, vllm_bench, warm

COUNTRIES = ("France", "Japan", "Peru", "Kenya", "Norway", "Chile", "Egypt", "India", "Spain", "Canada")
SIZES_ROWS = {"tiny": 24, "full": 200}


def quiet_adapter(source: Path, out: Path, scale: float = 0.02) -> Path:
    """The serving benchmark's random adapter with its B matrices scaled down: the engine does the same LoRA
    work, and the answers stay close to the base model's, so eval rows run their full length rather than
    stopping at an early end-of-sequence token as a full-strength random adapter's do."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(source / "adapter_model.safetensors"))
    scaled = {k: v * scale if "lora_B" in k else v for k, v in tensors.items()}
    save_file(scaled, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_bytes((source / "adapter_config.json").read_bytes())
    return out


def eval_rows(n: int) -> list[dict[str, Any]]:
    return [{"item": {"country": COUNTRIES[i % len(COUNTRIES)], "row": i}} for i in range(n)]


def create_eval(client: httpx.Client) -> str:
    r = client.post("/v1/evals", json={
        "name": "under load",
        "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
        "testing_criteria": [{"type": "string_check", "name": "answers", "operation": "ne",
                              "input": "{{sample.output_text}}", "reference": ""}],
    })  # fmt: skip
    r.raise_for_status()
    return str(r.json()["id"])


def start_run(client: httpx.Client, eval_id: str, model: str, rows: list[dict[str, Any]]) -> str:
    r = client.post(f"/v1/evals/{eval_id}/runs", json={
        "name": f"{len(rows)} rows on {model}",
        "data_source": {
            "type": "completions", "model": model,
            "input_messages": {"type": "template", "template": [
                {"role": "user", "content": "Name the capital of {{item.country}} and one fact about it."}]},
            "sampling_params": {"temperature": 0, "max_completion_tokens": 16},
            "source": {"type": "file_content", "content": rows},
        },
    })  # fmt: skip
    r.raise_for_status()
    return str(r.json()["id"])


def run_state(client: httpx.Client, eval_id: str, run_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/evals/{eval_id}/runs/{run_id}")
    r.raise_for_status()
    return dict(r.json())


def wait_until(client: httpx.Client, eval_id: str, run_id: str, done: bool, timeout_s: float) -> dict[str, Any]:
    """Poll the run until it has graded a row (done=False) or ended (done=True)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = run_state(client, eval_id, run_id)
        ended = state["status"] not in ("queued", "in_progress")
        if ended or (not done and state["result_counts"]["total"] > 0):
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"eval run {run_id} still {state['status']} after {timeout_s:.0f} s")
        time.sleep(0.5)


def run(size_name: str, workdir: Path, repeats: int = 2, rows: int | None = None) -> dict[str, Any]:
    n_rows = rows or SIZES_ROWS[size_name]
    size = replace(SIZES[size_name], requests_per_case=48 if size_name == "full" else 8, adapters=1)
    shape = EngineShape(max_num_seqs=4, max_loras=1, max_cpu_loras=1, max_lora_rank=RANK, max_model_len=1024)
    workdir.mkdir(parents=True, exist_ok=True)
    (random_dir,) = make_adapters(workdir / "loras", RANK, 1)
    adapter_dir = quiet_adapter(random_dir, workdir / "loras" / "quiet")
    publish(Registry(FileStore(workdir / "store")), adapter_dir, "bench-0", RANK)
    log = workdir / "vllm-bench.log"
    runs: dict[str, list[dict[str, Any]]] = {"alone": [], "with eval": []}
    evals: list[dict[str, Any]] = []
    # The bench's key is also an admin key here: creating evals and runs takes one.
    admin = {"SKILLSERVE_ADMIN_KEYS": json.dumps([API_KEY])}
    with start_gateway(shape, f"file://{workdir / 'store'}", workdir, extra_env=admin) as server:
        warm(server, [BASE_MODEL_ID, "bench-0"])
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            eval_id = create_eval(client)
            order = [
                name
                for rep in range(repeats)
                for name in (("alone", "with eval") if rep % 2 == 0 else ("with eval", "alone"))
            ]
            for i, name in enumerate(order):
                time.sleep(2.0)
                run_id = None
                if name == "with eval":
                    started = time.monotonic()
                    run_id = start_run(client, eval_id, "bench-0", eval_rows(n_rows))
                    wait_until(client, eval_id, run_id, done=False, timeout_s=300)
                runs[name].append(figures(vllm_bench(server.url, size, 4, [], log, seed=i), size, 4))
                if run_id is not None:
                    state = wait_until(client, eval_id, run_id, done=True, timeout_s=3600)
                    evals.append(
                        {
                            "run": run_id,
                            "status": state["status"],
                            "counts": state["result_counts"],
                            "usage": state.get("per_model_usage"),
                            "wall_s": round(time.monotonic() - started, 1),
                        }
                    )
    p50 = {name: statistics.fmean(r["ttft_p50_ms"] for r in rs) for name, rs in runs.items()}
    ratio = round(p50["with eval"] / p50["alone"], 3)
    finished = all(e["status"] == "completed" and e["counts"]["total"] == n_rows for e in evals)
    return {
        "benchmark": "eval_load",
        "size": size_name,
        "settings": {
            "rows": n_rows,
            "repeats": repeats,
            "live": asdict(size) | {"concurrency": 4, "mix": "base"},
            "engine": asdict(shape),
            "order": "alone/with eval in ABBA order, 2 s idle before each",
        },
        "live": runs,
        "ttft_p50_ms": {k: round(v, 2) for k, v in p50.items()},
        "evals": evals,
        "targets": {
            "ttft_p50_with_eval_over_alone": {
                "value": ratio,
                "target": "<= 1.5 and the eval finishes",
                "met": ratio <= 1.5 and finished,
            }
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_load", description=__doc__)
    parser.add_argument("--size", choices=tuple(SIZES_ROWS), default="full")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    from bench import environment

    with tempfile.TemporaryDirectory(prefix="skillserve-eval-load-") as scratch:
        result = run(args.size, Path(scratch), repeats=args.repeats, rows=args.rows)
    result["machine"] = environment.machine()
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
