"""Serving: our gateway vs `vllm serve`, same engine settings, adapters and request mix, vLLM's own client.

Both servers stay up side by side; each case runs on one then the other, in alternating order, so slow
drift of a shared machine does not favour either. The load generator is `vllm bench serve` (its
`main`, called in this process so vLLM is imported once), on the completions endpoint with a random
fixed-length prompt and `ignore_eos`, so every request does the same work on both.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from adapters.hardware import native_bf16
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.registry import Registry
from adapters.store import FileStore
from bench.lora_files import make_adapters, publish
from bench.servers import (
    API_KEY,
    BASE_MODEL_ID,
    EngineShape,
    Server,
    start_gateway,
    start_vllm_serve,
    vllm_serve_plugins,
)

# vLLM bench result keys -> our figure names; each is reported as ours / vLLM's.
FIGURES = {
    "output_throughput": "output_tok_s",
    "request_throughput": "requests_s",
    "p50_ttft_ms": "ttft_p50_ms",
    "p99_ttft_ms": "ttft_p99_ms",
    "p50_itl_ms": "itl_p50_ms",
    "p50_e2el_ms": "e2e_p50_ms",
    "p99_e2el_ms": "e2e_p99_ms",
}
MIXES = ("base", "one-adapter", "mixed-adapters")
RANK = 16
SETTLE_S = 2.0  # idle gap before each run, so the other server's engine threads are quiet


@dataclass(frozen=True)
class ServingSize:
    concurrencies: tuple[int, ...]
    requests_per_case: int
    input_len: int
    output_len: int
    adapters: int
    repeats: int = 1  # runs per server per case, in ABBA order: single runs on a 2-core machine are noisy
    settle_s: float = SETTLE_S  # idle before each run; a smoke size's figures are not read, so it waits less

    def requests(self, concurrency: int) -> int:
        # At least four full rounds at every concurrency, so steady state dominates ramp-up and drain.
        return max(self.requests_per_case, 4 * concurrency)


SIZES = {
    "tiny": ServingSize(
        concurrencies=(1, 4), requests_per_case=4, input_len=32, output_len=8, adapters=2, settle_s=0.5
    ),
    "full": ServingSize(
        concurrencies=(1, 4, 16), requests_per_case=16, input_len=128, output_len=32, adapters=8, repeats=2
    ),
}


def vllm_bench(
    url: str,
    size: ServingSize,
    concurrency: int,
    loras: list[str],
    log: Path,
    seed: int = 0,
    endpoint: str = "/v1/completions",
    extra_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One `vllm bench serve` run against `url`; returns vLLM's result dict. `endpoint` /v1/chat/completions sends
    the same random prompts as one user message each; `extra_body`'s fields go into every request."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = [
        "--backend", "openai-chat" if endpoint == "/v1/chat/completions" else "openai",
        "--base-url", url, "--endpoint", endpoint,
        "--model", BASE_MODEL_ID, "--tokenizer", str(resolve_model(DEFAULT_MODEL)),
        "--dataset-name", "random", "--random-range-ratio", "0",
        "--random-input-len", str(size.input_len), "--random-output-len", str(size.output_len),
        "--num-prompts", str(size.requests(concurrency)), "--max-concurrency", str(concurrency),
        "--request-rate", "inf", "--ignore-eos", "--temperature", "0", "--seed", str(seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--num-warmups", "0", "--disable-tqdm",
    ]  # fmt: skip
    if loras:
        argv += ["--lora-modules", *loras, "--lora-assignment", "round-robin"]
    if extra_body:
        argv += ["--extra-body", json.dumps(extra_body)]
    args = parser.parse_args(argv)
    os.environ["OPENAI_API_KEY"] = API_KEY  # vLLM's client sends it as the bearer token
    with log.open("a") as out, contextlib.redirect_stdout(out):
        return dict(main(args))


def warm(server: Server, models: list[str]) -> None:
    """One short request per model, so adapter loading is out of the steady-state figures on both sides."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=300) as client:
        for model in models:
            r = client.post("/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 2})
            r.raise_for_status()


def figures(result: dict[str, Any], size: ServingSize, concurrency: int) -> dict[str, Any]:
    out = {ours: round(float(result[key]), 3) for key, ours in FIGURES.items()}
    out["completed"] = int(result["completed"])
    out["failed"] = int(result.get("failed") or 0)
    out["output_tokens"] = int(result["total_output_tokens"])
    out["expected_output_tokens"] = size.requests(concurrency) * size.output_len
    out["duration_s"] = round(float(result["duration"]), 3)
    return out


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's runs of a case: rates over the summed time, latency percentiles averaged over runs."""
    duration = sum(r["duration_s"] for r in runs)
    out: dict[str, Any] = {
        name: round(statistics.fmean(r[name] for r in runs), 3) for name in FIGURES.values()
    }
    out["output_tok_s"] = round(sum(r["output_tokens"] for r in runs) / duration, 3)
    out["requests_s"] = round(sum(r["completed"] for r in runs) / duration, 3)
    for key in ("completed", "failed", "output_tokens", "expected_output_tokens"):
        out[key] = sum(r[key] for r in runs)
    for key in ("front_cpu_s", "engine_cpu_s"):
        out[key] = round(sum(r[key] for r in runs), 2)
    out["runs"] = runs
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds used so far by a server's front process, and by its engine processes (its children)."""
    import psutil

    front = psutil.Process(pid)
    engine = 0.0
    for child in front.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = child.cpu_times()
            engine += t.user + t.system
    t = front.cpu_times()
    return t.user + t.system, engine


def tok_s_by_repeat(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[float]:
    """Output tokens/s of each of one side's runs over the other side's run of the same repeat."""
    return [
        round(a["output_tokens"] / a["duration_s"] / (b["output_tokens"] / b["duration_s"]), 3)
        for a, b in zip(ours, theirs, strict=True)
    ]


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    return {name: (round(ours[name] / theirs[name], 3) if theirs.get(name) else None) for name in FIGURES.values()}


@contextlib.contextmanager
def py_spy(pid: int, out: Path) -> Any:
    """Sample the gateway's own process (not the engine core) with py-spy while the block runs."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            "--full-filenames",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _short(frame: str) -> str:
    """`fn (/long/path/pkg/mod.py:12)` -> `fn (pkg/mod.py:12)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({'/'.join(where.split('/')[-2:])}" if where else frame


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Collapsed stacks -> samples in total, the share whose leaf is our code, and the top leaf functions."""
    leaves: Counter[str] = Counter()
    ours = 0
    total = 0
    if not raw.exists():
        return {"error": "py-spy wrote nothing (is ptrace allowed?)"}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        leaves[_short(stack.split(";")[-1])] += n
        if any(f"/{pkg}/" in frame for frame in stack.split(";") for pkg in ("service", "adapters")):
            ours += n
    return {
        "samples": total,
        "share_with_our_code_on_stack": round(ours / total, 3) if total else None,
        "top_leaves": [{"frame": f, "share": round(n / total, 3)} for f, n in leaves.most_common(top)],
        "file": str(raw),
    }


def run(
    size_name: str,
    workdir: Path,
    profile: bool = False,
    calibrate: bool = False,
    repeats: int | None = None,
    bf16: bool = False,
) -> dict[str, Any]:
    """Our gateway against `vllm serve`; with `calibrate`, a second `vllm serve` stands in for the gateway; with
    `bf16`, our gateway in float32 against our gateway in bfloat16 (`serving_bf16`, issue 30).

    The calibration is an A/A test of the harness itself: two identical servers should measure 1.0, so
    how far they stray is the bias and noise any gateway/vLLM ratio carries on this machine. It runs the
    base and one-adapter mixes at concurrency up to 4, where runs are shortest and noisiest, to keep it
    to a quarter of the serving benchmark's time. The bf16 view runs every case of the serving benchmark on both
    dtypes, only where the CPU multiplies bf16 in hardware (elsewhere `auto` keeps float32 and there is nothing
    to compare).
    """
    if bf16:
        native, why = native_bf16()
        if not native:
            return {"benchmark": "serving_bf16", "size": size_name, "skipped": f"no native bf16 here: {why}"}
    size = SIZES[size_name]
    if repeats is not None:  # fewer runs of the same cases, where a busy machine cannot spare the time
        size = replace(size, repeats=repeats)
    if calibrate:
        size = replace(size, concurrencies=tuple(c for c in size.concurrencies if c <= 4))
    shape = EngineShape(
        max_num_seqs=max(size.concurrencies),
        max_loras=size.adapters,
        max_cpu_loras=size.adapters,
        max_lora_rank=RANK,
        max_model_len=1024,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    dirs = make_adapters(workdir / "loras", RANK, size.adapters)
    names = [f"bench-{i}" for i in range(size.adapters)]
    store = FileStore(workdir / "store")
    registry = Registry(store)
    for name, d in zip(names, dirs, strict=True):
        publish(registry, d, name, RANK)
    log = workdir / "vllm-bench.log"
    mixes = {"base": [], "one-adapter": names[:1], "mixed-adapters": names}
    if calibrate:
        del mixes["mixed-adapters"]
    cases: list[dict[str, Any]] = []
    profiled: dict[str, Any] | None = None
    last = ("mixed-adapters", max(size.concurrencies))
    lora_modules = dict(zip(names, dirs, strict=True))
    store_uri = f"file://{workdir / 'store'}"
    with (
        start_vllm_serve(shape, lora_modules, workdir, label="vllm serve (A)")
        if calibrate
        else start_gateway(shape, store_uri, workdir / "fp32", label="gateway float32")
        if bf16
        else start_gateway(shape, store_uri, workdir) as ours,
        start_gateway(replace(shape, dtype="bfloat16"), store_uri, workdir / "bf16", label="gateway bfloat16")
        if bf16
        else start_vllm_serve(shape, lora_modules, workdir) as theirs,
    ):
        for server in (ours, theirs):
            warm(server, [BASE_MODEL_ID, *names])
        for m, (mix, loras) in enumerate(mixes.items()):
            for c, concurrency in enumerate(size.concurrencies):
                # A checkerboard over (mix, concurrency): who goes first never lines up with either axis.
                first = [theirs, ours] if (m + c) % 2 else [ours, theirs]
                runs: dict[str, list[dict[str, Any]]] = {ours.label: [], theirs.label: []}
                for rep in range(size.repeats):
                    for server in first if rep % 2 == 0 else first[::-1]:  # ABBA
                        time.sleep(size.settle_s)
                        started = time.monotonic()
                        spy = profile and server is ours and (mix, concurrency) == last and rep == 0
                        raw = workdir / "gateway-profile.txt"
                        cpu_before = cpu_seconds(server.proc.pid)
                        with py_spy(ours.proc.pid, raw) if spy else contextlib.nullcontext():
                            # Fresh prompts per case and repeat (same on both servers): no prefix-cache hits.
                            seed = len(cases) * size.repeats + rep
                            result = vllm_bench(server.url, size, concurrency, loras, log, seed=seed)
                        cpu_after = cpu_seconds(server.proc.pid)
                        if spy:
                            profiled = {"case": f"{mix} c={concurrency}", **summarize_profile(raw)}
                        run = figures(result, size, concurrency)
                        run["wall_s"] = round(time.monotonic() - started, 2)
                        run["front_cpu_s"] = round(cpu_after[0] - cpu_before[0], 2)
                        run["engine_cpu_s"] = round(cpu_after[1] - cpu_before[1], 2)
                        runs[server.label].append(run)
                measured = {label: combine(r) for label, r in runs.items()}
                g, v = measured[ours.label], measured[theirs.label]
                cases.append(
                    {
                        "mix": mix,
                        "adapters": len(loras),
                        "concurrency": concurrency,
                        "requests": size.requests(concurrency),
                        "first": first[0].label,
                        "ours": g,
                        "vllm": v,
                        "ratio": ratios(g, v),
                        "tok_s_ratio_by_repeat": tok_s_by_repeat(g["runs"], v["runs"]),
                        "ttft_p50_overhead_ms": round(g["ttft_p50_ms"] - v["ttft_p50_ms"], 2),
                    }
                )
        startup = {"gateway_s": ours.started_s, "vllm_serve_s": theirs.started_s}
    if bf16:
        return bf16_view(size_name, size, shape, cases, startup)
    return {
        "benchmark": "calibration" if calibrate else "serving",
        "sides": [ours.label, theirs.label],
        "size": size_name,
        "settings": {
            **_settings(size, shape),
            "vllm_serve_plugins": vllm_serve_plugins(),
            "client": "vllm bench serve (backend openai, random dataset, ignore_eos, temperature 0, "
            "round-robin adapters)",
            "order": f"both servers up; each case runs {size.repeats}x on each in ABBA order, who goes first "
            f"in a checkerboard over cases, {size.settle_s:g} s idle before each run; rates over the summed "
            "time of a server's runs, latency percentiles averaged over them",
        },
        "startup": startup,
        "cases": cases,
        "adapter_vs_base": adapter_vs_base(cases),
        "targets": targets(cases),
        "gateway_profile": profiled,
    }


def _settings(size: ServingSize, shape: EngineShape) -> dict[str, Any]:
    """What every serving view runs: the size, the engine, the adapters and the endpoint."""
    return {**asdict(size), "engine": asdict(shape), "lora_rank": RANK, "lora_targets": "q,k,v,o",
            "endpoint": "/v1/completions (streamed)"}  # fmt: skip


def bf16_view(
    size_name: str, size: ServingSize, shape: EngineShape, cases: list[dict[str, Any]], startup: dict[str, Any]
) -> dict[str, Any]:
    """The serving cases run on our gateway in float32 (`ours`) and in bfloat16 (`vllm`'s place), as bf16 over
    float32, with issue 30's targets: base output tok/s in bf16 >= 2x float32 at every concurrency, and adapters
    in bf16 >= 0.9x the base in bf16."""
    view = []
    for c in cases:
        view.append(
            {
                "mix": c["mix"],
                "adapters": c["adapters"],
                "concurrency": c["concurrency"],
                "requests": c["requests"],
                "float32": c["ours"],
                "bfloat16": c["vllm"],
                "bf16_over_float32": ratios(c["vllm"], c["ours"]),
                "bf16_over_float32_tok_s_by_repeat": tok_s_by_repeat(c["vllm"]["runs"], c["ours"]["runs"]),
            }
        )
    base = [v["bf16_over_float32"]["output_tok_s"] for v in view if v["mix"] == "base"]
    by_mix = adapter_vs_base(cases)
    by_dtype = {
        dtype: {mix: {c: r[side] for c, r in by_c.items()} for mix, by_c in by_mix.items()}
        for dtype, side in (("float32", "ours"), ("bfloat16", "vllm"))
    }
    in_bf16 = [x for by_c in by_dtype["bfloat16"].values() for x in by_c.values() if x is not None]
    worst_adapter = min(in_bf16, default=None)
    return {
        "benchmark": "serving_bf16",
        "sides": ["gateway float32", "gateway bfloat16"],
        "size": size_name,
        "settings": {
            **_settings(size, shape),
            "order": f"both gateways up on one store; each case {size.repeats}x on each in ABBA order",
        },
        "startup": {"float32_s": startup["gateway_s"], "bfloat16_s": startup["vllm_serve_s"]},
        "cases": view,
        "adapter_vs_base": by_dtype,
        "targets": {
            "base_bf16_over_float32_tok_s_min": {
                "value": min(base, default=None),
                "target": ">= 2.0 at every concurrency",
                "met": bool(base) and min(base) >= 2.0,
            },
            "adapters_vs_base_in_bf16_min": {
                "value": worst_adapter,
                "target": ">= 0.9",
                "met": worst_adapter is not None and worst_adapter >= 0.9,
            },
        },
    }


def _case(cases: list[dict[str, Any]], mix: str, concurrency: int) -> dict[str, Any] | None:
    return next((c for c in cases if c["mix"] == mix and c["concurrency"] == concurrency), None)


def adapter_vs_base(cases: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Each server's adapter throughput over its own base throughput, per mix and concurrency, same run."""
    view: dict[str, dict[str, dict[str, float | None]]] = {}
    for c in cases:
        base = _case(cases, "base", c["concurrency"])
        if c["mix"] == "base" or base is None:
            continue
        ratios = {side: round(c[side]["output_tok_s"] / base[side]["output_tok_s"], 3) for side in ("ours", "vllm")}
        # The same work (equal requests and tokens) in engine CPU seconds, base over adapter: what an adapter
        # costs in compute, which CPU taken by other processes on a shared machine does not bend.
        for side in ("ours", "vllm"):
            cpu = c[side].get("engine_cpu_s")
            ratios[f"{side}_cpu"] = round(base[side]["engine_cpu_s"] / cpu, 3) if cpu else None
        view.setdefault(c["mix"], {})[str(c["concurrency"])] = ratios
    return view


def targets(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """The issues' targets, each with the figure it is judged on and whether it was met."""
    base = [c["ratio"]["output_tok_s"] for c in cases if c["mix"] == "base" and c["ratio"]["output_tok_s"]]
    adapters = [c["ratio"]["output_tok_s"] for c in cases if c["mix"] != "base" and c["ratio"]["output_tok_s"]]
    # The gateway's own added latency shows at concurrency 1; above it, TTFT is mostly time queued behind
    # other requests, which follows throughput (judged above) rather than per-request overhead.
    overheads = [c["ttft_p50_overhead_ms"] for c in cases if c["concurrency"] == 1 and c["mix"] == "base"]
    mix_vs_one: dict[str, dict[str, float]] = {}
    for c in cases:
        if c["mix"] != "mixed-adapters":
            continue
        one = _case(cases, "one-adapter", c["concurrency"])
        if one is None:
            continue
        mix_vs_one[str(c["concurrency"])] = {
            "ours": round(c["ours"]["output_tok_s"] / one["ours"]["output_tok_s"], 3),
            "vllm": round(c["vllm"]["output_tok_s"] / one["vllm"]["output_tok_s"], 3),
        }
    worst_mix = min((v["ours"] for v in mix_vs_one.values()), default=None)
    view = adapter_vs_base(cases)

    def over_base(mix: str, target: float) -> dict[str, Any]:
        ours = [r["ours"] for r in view.get(mix, {}).values() if r["ours"] is not None]
        worst = min(ours, default=None)
        return {
            "by_concurrency": view.get(mix, {}),
            "value": worst,
            "target": f">= {target} (ours)",
            "met": worst is not None and worst >= target,
        }

    return {
        "base_throughput_ratio_min": {
            "value": min(base, default=None),
            "median": round(statistics.median(base), 3) if base else None,
            "target": ">= 0.97",
            "met": bool(base) and min(base) >= 0.97,
        },
        "one_adapter_vs_base": over_base("one-adapter", 0.8),
        "mixed_adapters_vs_base": over_base("mixed-adapters", 0.75),
        "adapter_throughput_ratio_min": {
            "value": min(adapters, default=None),
            "median": round(statistics.median(adapters), 3) if adapters else None,
            "target": ">= 3 (vllm serve keeps vLLM's own LoRA ops)",
            "met": bool(adapters) and min(adapters) >= 3,
        },
        "ttft_p50_overhead_ms_max": {
            "value": max(overheads, default=None),
            "median": round(statistics.median(overheads), 2) if overheads else None,
            "by_case": {f"{c['mix']} c={c['concurrency']}": c["ttft_p50_overhead_ms"] for c in cases},
            "target": "<= 5 (base, concurrency 1)",
            "met": bool(overheads) and max(overheads) <= 5,
        },
        "mixed_vs_one_adapter_throughput": {
            "by_concurrency": mix_vs_one,
            "value": worst_mix,
            "target": ">= 0.9 (ours)",
            "met": worst_mix is not None and worst_mix >= 0.9,
        },
    }
