"""`python -m bench [--size tiny|small|full] [--only serving,...,quality]`: run; write JSON, BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import environment, report
from bench.servers import REPO

BENCHMARKS = (
    "serving", "lora_ops", "loading", "training", "calibration", "serving_bf16", "quality", "facts_forms",
    "facts_knobs", "facts_rft", "rft_tasks", "quality_bf16", "products", "train_step",
)  # fmt: skip


def _runner(name: str) -> Callable[..., dict[str, Any]]:
    # Imported on use: each module pulls in heavy libraries only its benchmark needs.
    import functools
    import importlib

    if name == "calibration":  # the serving harness run A/A: vllm serve against itself
        return functools.partial(importlib.import_module("bench.serving").run, calibrate=True)
    if name == "serving_bf16":  # the serving harness on our gateway in float32 and in bfloat16 (issue 30)
        return functools.partial(importlib.import_module("bench.serving").run, bf16=True)
    if name == "facts_forms":  # the quality harness on the facts task in three forms
        return importlib.import_module("bench.quality").run_forms  # type: ignore[no-any-return]
    if name == "facts_knobs":  # the quality harness on the facts task, one knob at a time
        return importlib.import_module("bench.quality").run_knobs  # type: ignore[no-any-return]
    if name == "facts_rft":  # the facts task by SFT, RFT and SFT then RFT (issue 29)
        return importlib.import_module("bench.quality").run_rft  # type: ignore[no-any-return]
    if name == "rft_tasks":  # the other five quality tasks by SFT, and by RFT from each SFT adapter (issue 29)
        return importlib.import_module("bench.quality").run_rft_tasks  # type: ignore[no-any-return]
    return importlib.import_module(f"bench.{name}").run  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--size", choices=("tiny", "small", "full"), default="full", help="tiny or small: a smoke run in minutes"
    )
    parser.add_argument(
        "--only",
        default="serving,lora_ops,loading,training",
        help="comma-separated subset of "
        + ", ".join(BENCHMARKS)
        + " (default: all but calibration, serving_bf16, quality, facts_forms, facts_knobs, facts_rft, rft_tasks, "
        "quality_bf16, products and train_step)",
    )
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--profile", action="store_true", help="serving: py-spy the gateway during the largest mixed case"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="serving: runs per server and case (default: the size's)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch space (default: a temporary directory)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    with tempfile.TemporaryDirectory(prefix="skillserve-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        for name in names:
            print(f"[bench] {name} ({args.size}) ...", file=sys.stderr, flush=True)
            machine = environment.machine()
            started = time.monotonic()
            try:
                extra: dict[str, Any] = {"profile": True} if args.profile and name == "serving" else {}
                if args.repeats is not None and name in ("serving", "calibration", "serving_bf16"):
                    extra["repeats"] = args.repeats
                # Only the quality harness has a size of its own called small; to the others it is their smoke size.
                own_small = ("quality", "facts_forms", "facts_knobs", "facts_rft", "rft_tasks", "quality_bf16")
                size = "tiny" if args.size == "small" and name not in own_small else args.size
                result = _runner(name)(size, workdir / name, **extra)
            except Exception as exc:
                traceback.print_exc()
                failed.append(name)
                result = {"benchmark": name, "size": args.size, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            result["machine"] = machine
            result["seconds"] = round(time.monotonic() - started, 1)
            path = args.results_dir / f"{name}.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
            print(f"[bench] {name}: {result['seconds']} s -> {path}", file=sys.stderr, flush=True)
    report.write(args.results_dir, args.markdown)
    print(f"[bench] table -> {args.markdown}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
