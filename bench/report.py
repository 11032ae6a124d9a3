"""BENCHMARKS.md from bench/results/*.json: one table per benchmark, every figure as ours / theirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ORDER = (
    "serving", "calibration", "serving_bf16", "products", "lora_ops", "loading", "training", "train_step", "quality",
    "facts_forms", "facts_knobs", "facts_rft", "rft_tasks", "quality_bf16",
)  # fmt: skip


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _met(target: dict[str, Any]) -> str:
    if target.get("met") is None:
        return "not measured at this size"
    return "**met**" if target["met"] else "**missed**"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _units(machine: dict[str, Any]) -> str:
    """The CPU's native bf16 units; results from before they were recorded say so."""
    if "bf16_units" not in machine:
        return "not recorded"
    return ", ".join(machine["bf16_units"]) or "none"


def machine_section(results: list[dict[str, Any]]) -> list[str]:
    lines = ["## Machine", ""]
    rows = []
    for r in results:
        m = r.get("machine") or {}
        rows.append(
            [
                r["benchmark"],
                m.get("date", "-"),
                str(m.get("nproc", "-")),
                m.get("cpu_model", "-"),
                _units(m),
                _f(m.get("memory_gib"), 1),
                " ".join(_f(x) for x in m.get("load_average_at_start", [])),
                r.get("size", "-"),
                m.get("commit") or "-",
            ]
        )
    header = ["benchmark", "date (UTC)", "nproc", "CPU", "bf16 units", "GiB", "load avg at start", "size", "commit"]
    lines += _table(header, rows)
    versions: dict[str, str] = next((r["machine"].get("versions") for r in results if r.get("machine")), {}) or {}
    python = next((r["machine"].get("python") for r in results if r.get("machine")), "-")
    lines += ["", f"Python {python}; " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), ""]
    return lines


def _repeats(values: list[float] | None) -> str:
    return f" ({', '.join(_f(x, 3) for x in values)})" if values and len(values) > 1 else ""


def serving_section(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    calibration = r["benchmark"] == "calibration"
    lines = [
        "## Harness calibration: `vllm serve` / `vllm serve` (A/A)" if calibration
        else "## Serving: our gateway / `vllm serve`",
        "",
    ]
    if calibration:
        lines += [
            "The serving benchmark with a second `vllm serve` in the gateway's place: two identical servers, so",
            "every ratio should be 1.0. How far they stray is the bias and noise of the harness on this machine,",
            "the yardstick for the gateway's ratios above.",
            "",
        ]
    lines += [
        f"Client: {s['client']}. Prompt {s['input_len']} tokens, output {s['output_len']} tokens, "
        f"rank-{s['lora_rank']} adapters on {s['lora_targets']}; {s['order']}. Engine: "
        + ", ".join(f"{k}={v}" for k, v in s["engine"].items())
        + f". Start-up: gateway {r['startup']['gateway_s']} s, vllm serve {r['startup']['vllm_serve_s']} s.",
        "",
        "Each ratio is ours / vLLM's: above 1 is better for throughput, below 1 is better for latency. "
        "Front CPU is the API server process (our gateway, or vLLM's OpenAI server); engine CPU is its "
        "engine core and workers.",
        "",
    ]
    rows = []
    for c in r["cases"]:
        o, v, q = c["ours"], c["vllm"], c["ratio"]
        rows.append(
            [
                c["mix"],
                str(c["concurrency"]),
                str(c["requests"]),
                f"{_f(o['output_tok_s'], 1)} / {_f(v['output_tok_s'], 1)}",
                _f(q["output_tok_s"], 3) + _repeats(c.get("tok_s_ratio_by_repeat")),
                _f(q["requests_s"], 3),
                f"{_f(o['ttft_p50_ms'], 1)} / {_f(v['ttft_p50_ms'], 1)}",
                _f(c["ttft_p50_overhead_ms"], 1),
                _f(q["ttft_p99_ms"], 3),
                _f(q["itl_p50_ms"], 3),
                _f(q["e2e_p50_ms"], 3),
                _f(q["e2e_p99_ms"], 3),
                f"{_f(o.get('front_cpu_s'), 1)} / {_f(v.get('front_cpu_s'), 1)}",
                f"{_f(o.get('engine_cpu_s'), 0)} / {_f(v.get('engine_cpu_s'), 0)}",
            ]
        )
    header = [
        "mix", "conc.", "requests", "output tok/s (ours / vLLM)", "tok/s ratio (per repeat)", "req/s ratio",
        "TTFT p50 ms (ours / vLLM)", "TTFT p50 overhead ms", "TTFT p99 ratio", "ITL p50 ratio",
        "E2E p50 ratio", "E2E p99 ratio", "front CPU s (ours / vLLM)", "engine CPU s (ours / vLLM)",
    ]  # fmt: skip
    lines += _table(header, rows)
    if calibration:
        return [*lines, ""]
    lines += adapter_vs_base_section(r)
    t = r["targets"]
    mix = t["mixed_vs_one_adapter_throughput"]
    by_c = ", ".join(
        f"c={c}: ours {_f(x['ours'], 3)}, vLLM {_f(x['vllm'], 3)}" for c, x in mix["by_concurrency"].items()
    )
    base, adapters = t["base_throughput_ratio_min"], t["adapter_throughput_ratio_min"]
    lines += [
        "Targets:",
        f"- one adapter >= 0.8x the base model on our gateway: worst {_f(t['one_adapter_vs_base']['value'], 3)}: "
        f"{_met(t['one_adapter_vs_base'])}",
        f"- eight mixed adapters >= 0.75x the base model on our gateway: worst "
        f"{_f(t['mixed_adapters_vs_base']['value'], 3)}: {_met(t['mixed_adapters_vs_base'])}",
        f"- adapter cases >= 3x `vllm serve`: worst {_f(adapters['value'], 2)}, median {_f(adapters['median'], 2)}: "
        f"{_met(adapters)}",
        f"- base cases >= 0.97x `vllm serve`: worst {_f(base['value'], 3)}, median {_f(base['median'], 3)}: "
        f"{_met(base)}",
        f"- TTFT p50 overhead <= 5 ms ({t['ttft_p50_overhead_ms_max']['target']}): worst case "
        f"{_f(t['ttft_p50_overhead_ms_max']['value'], 1)} ms, median {_f(t['ttft_p50_overhead_ms_max']['median'], 1)} "
        f"ms: {_met(t['ttft_p50_overhead_ms_max'])}",
        f"- mixed adapters >= 0.9x one adapter (ours): worst {_f(mix['value'], 3)} ({by_c}): {_met(mix)}",
        "",
    ]
    prof = r.get("gateway_profile")
    if prof and "samples" in prof:
        leaves = "; ".join(f"`{x['frame']}` {x['share']:.1%}" for x in prof["top_leaves"][:8])
        lines += [
            f"Gateway process profile (py-spy, {prof['case']}, {prof['samples']} samples of the API process; the "
            f"engine core is another process): our code on the stack in "
            f"{_f(prof['share_with_our_code_on_stack'], 3)} of samples. Top leaves: {leaves}.",
            "",
        ]
    return lines


def serving_bf16_section(r: dict[str, Any]) -> list[str]:
    """Our gateway in float32 and in bfloat16, the serving benchmark's cases side by side (issue 30)."""
    lines = ["## Serving in bfloat16: our gateway in bf16 / in float32 (issue 30)", ""]
    if "skipped" in r:
        return [*lines, f"Not run: {r['skipped']}.", ""]
    s = r["settings"]
    lines += [
        f"Command: `python -m bench --only serving_bf16 --size {r['size']}`. The serving benchmark's cases (prompt "
        f"{s['input_len']} tokens, output {s['output_len']}, rank-{s['lora_rank']} adapters on {s['lora_targets']}) "
        f"on two of our gateways, one `SKILLSERVE_DTYPE=float32`, one `bfloat16`; {s['order']}. Start-up: float32 "
        f"{r['startup']['float32_s']} s, bfloat16 {r['startup']['bfloat16_s']} s. Each ratio is bf16 / float32.",
        "",
    ]
    rows = [
        [c["mix"], str(c["concurrency"]), str(c["requests"]),
         f"{_f(c['float32']['output_tok_s'], 1)} / {_f(c['bfloat16']['output_tok_s'], 1)}",
         _f(c["bf16_over_float32"]["output_tok_s"], 3) + _repeats(c.get("bf16_over_float32_tok_s_by_repeat")),
         f"{_f(c['float32']['ttft_p50_ms'], 1)} / {_f(c['bfloat16']['ttft_p50_ms'], 1)}",
         _f(c["bf16_over_float32"]["itl_p50_ms"], 3)]
        for c in r["cases"]
    ]  # fmt: skip
    header = ["mix", "conc.", "requests", "output tok/s (float32 / bf16)", "bf16 / float32 tok/s (per repeat)",
              "TTFT p50 ms (float32 / bf16)", "ITL p50 bf16 / float32"]  # fmt: skip
    view = r["adapter_vs_base"]
    concurrencies = sorted({int(c) for by_c in view["bfloat16"].values() for c in by_c})
    adapter_rows = [
        [mix, *(f"{_f(view['float32'][mix].get(str(c)), 3)} / {_f(by_c.get(str(c)), 3)}" for c in concurrencies)]
        for mix, by_c in view["bfloat16"].items()
    ]
    speedup = {c["concurrency"]: c["bf16_over_float32"]["output_tok_s"] for c in r["cases"] if c["mix"] == "base"}
    kept_rows = [
        [mix, *(_kept_lora_time(view["float32"][mix].get(str(c)), by_c.get(str(c)), speedup.get(c))
                for c in concurrencies)]
        for mix, by_c in view["bfloat16"].items()
    ]  # fmt: skip
    t = r["targets"]
    base, adapters = t["base_bf16_over_float32_tok_s_min"], t["adapters_vs_base_in_bf16_min"]
    return [
        *lines,
        *_table(header, rows),
        "",
        "Adapter mix / base model, output tok/s, each gateway against itself:",
        "",
        *_table(["mix", *(f"c={c} (float32 / bf16)" for c in concurrencies)], adapter_rows),
        "",
        "If an adapter added the same time to a step in both dtypes, bf16 would give it 1 / (1 + (1 / r - 1) x s) of "
        "the base, r its ratio in float32 and s the base's bf16 speed-up; the cut in that added time bf16's 0.9 needs "
        "is 1 - (1 / 0.9 - 1) / (s x (1 / r - 1)):",
        "",
        *_table(["mix", *(f"c={c}: if kept / measured, cut for 0.9" for c in concurrencies)], kept_rows),
        "",
        "Targets:",
        f"- base model in bf16 >= 2x float32 at every concurrency: worst {_f(base['value'], 3)}: {_met(base)}",
        f"- adapters in bf16 >= 0.9x the base in bf16: worst {_f(adapters['value'], 3)}: {_met(adapters)}",
        "",
    ]


def _kept_lora_time(fp32: float | None, bf16: float | None, speedup: float | None) -> str:
    """An adapter mix's bf16 ratio to the base predicted from its float32 ratio and the base's speed-up, if the
    adapter's added time per step were the same in both dtypes; the measured one; and how much of that added
    time bf16's 0.9 target needs cut (none where the prediction meets it)."""
    if not fp32 or not bf16 or not speedup or fp32 >= 1:
        return "-"
    added = 1 / fp32 - 1  # the adapter's added time, as a share of float32's base step
    allowed = (1 / 0.9 - 1) / speedup  # the same share the target allows, against the faster bf16 step
    cut = max(0.0, 1 - allowed / added)
    return f"{_f(1 / (1 + added * speedup), 3)} / {_f(bf16, 3)}, {cut:.0%}"


def adapter_vs_base_section(r: dict[str, Any]) -> list[str]:
    """Each server's adapter throughput over its own base throughput: what an adapter costs on it."""
    view = r.get("adapter_vs_base") or {}
    if not view:
        return []
    concurrencies = sorted({int(c) for by_c in view.values() for c in by_c})
    def cell(by_c: dict[str, Any], c: int, suffix: str) -> str:
        r = by_c.get(str(c))
        return f"{_f(r.get('ours' + suffix), 3)} / {_f(r.get('vllm' + suffix), 3)}" if r else "-"

    rows = [[mix, *(cell(by_c, c, "") for c in concurrencies)] for mix, by_c in view.items()]
    cpu_rows = [[mix, *(cell(by_c, c, "_cpu") for c in concurrencies)] for mix, by_c in view.items()]
    plugins = ", ".join(r["settings"].get("vllm_serve_plugins") or []) or "none"
    return [
        "",
        "### Adapter / base model, on the same server",
        "",
        "Output tokens/s of each adapter mix over the base model's, at the same concurrency, each server against "
        "itself in the same run: 1.0 means an adapter costs nothing. Ours runs the grouped CPU LoRA ops "
        f"(service/engine/cpu_lora.py); `vllm serve` runs vLLM's own (its plugins: {plugins}).",
        "",
        *_table(["mix", *(f"c={c} (ours / vLLM)" for c in concurrencies)], rows),
        "",
        "The same in compute: engine CPU seconds of the base model over those of the adapter mix, for the same "
        "requests and tokens (1.0: an adapter costs no more CPU). It depends far less than the rates above on the time "
        "other processes take from a shared machine.",
        "",
        *_table(["mix", *(f"c={c} (ours / vLLM)" for c in concurrencies)], cpu_rows),
        "",
    ]


def products_section(r: dict[str, Any]) -> list[str]:
    heading = ["## A decode step's products: bfloat16 / float32 by rows (issue 30)", ""]
    if "skipped" in r:
        return [*heading, f"Not run: {r['skipped']}.", ""]
    s = r["settings"]
    lines = [
        *heading,
        f"Command: `python -m bench --only products`. One product ({s['product']}), {s['threads']} torch thread; "
        f"{s['timing']}. Native bf16: {_f(s['native_bf16'])} ({s['native_bf16_why']}). A decode step at concurrency "
        "c multiplies c rows; a prompt of n tokens, n rows.",
        "",
    ]
    rows = [
        [str(c["rows"]), _f(c["float32_us"], 1), _f(c["bfloat16_us"], 1), _f(c["bf16_speedup"]) + "x",
         _f(c["float32_weight_gb_per_s"], 1), f"{_f(c['float32_gflop_per_s'], 1)} / {_f(c['bfloat16_gflop_per_s'], 1)}"]
        for c in r["cases"]
    ]  # fmt: skip
    header = ["rows", "float32 us", "bf16 us", "bf16 speed-up", "float32 weight GB/s", "GFLOP/s (float32 / bf16)"]
    return [*lines, *_table(header, rows), ""]


def train_step_section(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    profile = r["float32_profile"]
    rows = [[kind, _f(share, 3), _f(share * profile["self_cpu_s"], 2)] for kind, share in profile["shares"].items()]
    return [
        "## A training step's time by kind of work: what bf16 can give it (issue 30)",
        "",
        f"Command: `python -m bench --only train_step`. One step of {s['step']}, {s['threads']} torch threads; "
        f"{s['timing']}. Native bf16: {_f(s['native_bf16'])} ({s['native_bf16_why']}).",
        "",
        f"Step: float32 {_f(r['step_s']['float32'], 3)} s, bf16 products {_f(r['step_s']['bfloat16'], 3)} s: "
        f"**{_f(r['bf16_speedup'], 3)}x**. bf16 shortens the base's products only; with them "
        f"{_f(profile['shares']['products'], 3)} of float32's step, no product speed-up gives the step more than "
        f"**{_f(r['bf16_speedup_bound'], 3)}x** at these settings.",
        "",
        f"float32's profiled step: {_f(profile['step_s'], 3)} s, {_f(profile['self_cpu_s'], 3)} s of self time.",
        "",
        *_table(["kind of work", "share of float32's step", "self s"], rows),
        "",
    ]


def lora_ops_section(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    lines = [
        "## CPU LoRA ops: vLLM's / grouped (service/engine/cpu_lora.py)",
        "",
        f"One LoRA layer ({s['layer']}) as vLLM's CPU punica wrapper runs it, {s['requests']} requests per step, "
        f"{s['prompt_tokens']}-token prompts, {s['threads']} torch threads; {s['timing']}. Same inputs on both; "
        "`same` says the outputs agree.",
        "",
    ]
    rows = [
        [c.get("dtype", "float32"), c["step"], c["mix"], str(c["tokens"]), str(c["segments"]), _f(c["vllm_ms"], 3),
         _f(c["ours_ms"], 3), _f(c["speedup"], 1) + "x", _f(c["same_result"])]
        for c in r["cases"]
    ]  # fmt: skip
    header = ["dtype", "step", "adapters", "tokens", "segments", "vLLM ms", "grouped ms", "speed-up", "same"]
    lines += _table(header, rows)
    return [*lines, ""]


def loading_section(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    lines = [
        "## Adapter loading: manifest published -> first token",
        "",
        f"Request: {s['request']}. Cold: a name never seen (store -> disk -> engine); warm: {s['warm']}; "
        f"hot: in the engine. Medians of {s['repeats']} run(s); S3 is {s['s3']}. The base floor is the same "
        "request to the base model.",
        "",
    ]
    rows = [
        [t["store"], str(t["rank"]), _f(t["cold_s"], 3), _f(t["warm_s"], 3), _f(t["hot_s"], 3),
         _f(t["base_floor_s"], 3)]
        for t in r["tiers"]
    ]  # fmt: skip
    lines += _table(["store", "rank", "cold s", "warm s", "hot s", "base floor s"], rows)
    target = r["targets"]["cold_rank16_file_s"]
    lines += ["", f"Target: cold under 2 s for rank 16 (file store): {_f(target['value'], 3)} s: {_met(target)}", ""]
    many = r.get("many_adapters")
    if many:
        m, one = many["many"], many["one"]
        lines += [
            f"Many adapters: {many['adapters']} distinct rank-8 adapters requested round-robin by vLLM's client "
            f"({many['requests']} requests, concurrency {many['concurrency']}, {many['input_len']} -> "
            f"{many['output_len']} tokens) with {many['engine_slots']} engine slots, vs the same load on one "
            "adapter.",
            "",
        ]
        lines += _table(
            ["load", "output tok/s", "req/s", "TTFT p50 ms", "TTFT p99 ms"],
            [
                [f"{many['adapters']} adapters", _f(m.get("output_throughput"), 1),
                 _f(m.get("request_throughput"), 2), _f(m.get("median_ttft_ms"), 1), _f(m.get("p99_ttft_ms"), 1)],
                ["1 adapter", _f(one.get("output_throughput"), 1), _f(one.get("request_throughput"), 2),
                 _f(one.get("median_ttft_ms"), 1), _f(one.get("p99_ttft_ms"), 1)],
            ],
        )  # fmt: skip
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in many["counts"].items())
        lines += [
            "",
            f"Ratio many / one (output tok/s): {_f(many['ratio_many_over_one']['output_tok_s'], 3)}. "
            f"Counts: {counts} (engine loads are implied by round-robin over more adapters than slots; "
            "vLLM does not report them).",
            "",
        ]
    return lines


def training_section(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    hp = s["hyperparameters"]
    lines = [
        "## Training: our trainer / a plain trl script",
        "",
        f"{s['train_rows']} train + {s['eval_rows']} eval rows of mixed length (row chars min/median/max "
        f"{'/'.join(map(str, s['row_chars_min_median_max']))}); LoRA r={hp['rank']} alpha={hp['alpha']} on "
        f"{s['lora_targets']}, {hp['max_steps']} steps, batch {hp['batch_size']}, lr {hp['learning_rate']}, seed "
        f"{hp['seed']}, fp32. Baseline: {s['baseline']}. {s['eval'].capitalize()}.",
        "",
        f"Loss masks: {s.get('mask', '-')}.",
        "",
    ]
    gc = s.get("gradient_checkpointing")
    if gc:
        lines += [f"Gradient checkpointing: ours {gc['ours']}, baseline {gc['baseline']} (trl's is true).", ""]
    header = [
        "run", "trained tok/s", "train s", "wall s", "peak RSS MiB", "final train loss", "eval loss",
        "loss tokens / epoch", "padding-free / checkpointing",
    ]  # fmt: skip
    rows = []
    for label, run in r["runs"].items():
        rows.append(
            [
                label,
                _f(run.get("tokens_per_second"), 1),
                _f(run.get("train_seconds"), 1),
                _f(run.get("wall_seconds"), 1),
                _f(run.get("peak_rss_mib"), 0),
                _f(run.get("train_loss"), 4),
                _f(run.get("eval_loss"), 4),
                _f(run.get("loss_tokens_per_epoch")),
                # The layout each run trained with (recorded since the trainer chooses it; "-" in older results)
                " / ".join(_f(run.get(k)) for k in ("padding_free", "gradient_checkpointing")),
            ]
        )
    for label, ratio in r["ratio"].items():
        rows.append(
            [
                f"{label} / baseline",
                *(
                    _f(ratio.get(k), 3)
                    for k in (
                        "tokens_per_second", "train_seconds", "wall_seconds", "peak_rss_mib", "train_loss",
                        "eval_loss",
                    )
                ),
                "-",
                "-",
            ]
        )  # fmt: skip
    lines += _table(header, rows)
    t = r["targets"]
    lines += [
        "",
        "Targets:",
        f"- tokens/s >= 1.0x baseline: {_f(t['tokens_per_second_ratio']['value'], 3)}: "
        f"{_met(t['tokens_per_second_ratio'])}",
        f"- train loss within 2%: {_f(t['train_loss_within_2pct']['value'], 3)}: {_met(t['train_loss_within_2pct'])}",
        f"- eval loss within 2%: {_f(t['eval_loss_within_2pct']['value'], 3)}: {_met(t['eval_loss_within_2pct'])}",
        f"- padding_free >= 1.3x baseline tokens/s: {_f(t['padding_free_tokens_per_second_ratio']['value'], 3)}: "
        f"{_met(t['padding_free_tokens_per_second_ratio'])}",
    ]
    if "bf16_tokens_per_second_ratio" in t:
        lines += [
            *(
                f"- {label} >= 2.0x baseline (float32) tokens/s: {_f(t[key]['value'], 3)}: {_met(t[key])}"
                for label, key in (("bf16 with the defaults' layout chosen by the trainer",
                                    "bf16_defaults_tokens_per_second_ratio"),
                                   ("bf16", "bf16_tokens_per_second_ratio"),
                                   ("bf16 padding_free", "bf16_padding_free_tokens_per_second_ratio"),
                                   ("bf16 padding_free without gradient checkpointing",
                                    "bf16_padding_free_no_gradient_checkpointing_tokens_per_second_ratio"))
                if key in t
            ),  # fmt: skip
            *(
                f"- bf16 {figure.replace('_', ' ')} within 2% of float32 (ours): {_f(t[key]['value'], 3)}: "
                f"{_met(t[key])}"
                for figure in ("train_loss", "eval_loss", "eval_loss_read_in_float32")
                if (key := f"bf16_{figure}_within_2pct_of_float32") in t
            ),
        ]
    read = {label: run["eval_loss_read_in"] for label, run in r["runs"].items() if run.get("eval_loss_read_in")}
    if read:
        lines += [
            "",
            "The published adapter's held-out loss read on the base in each dtype (`bench/train_ours.py read_loss`, "
            "every assistant token weighing the same):",
            "",
            *_table(["run", *(f"read in {d}" for d in next(iter(read.values()))), "LoRA change / layer output",
                     "the change's error in bf16"],
                    [[label, *(_f(v, 4) for v in by_dtype.values()),
                      _f((r["runs"][label].get("lora_change") or {}).get("change_over_output_median"), 5),
                      _f((r["runs"][label].get("lora_change") or {}).get("change_error_in_bf16_median"), 3)]
                     for label, by_dtype in read.items()]),
            "",
            "The last two: medians over the adapter's LoRA layers on one held-out row read in float32 "
            "(`bench/train_ours.py lora_delta`); bf16's relative spacing is 2^-8 = 0.0039.",
        ]  # fmt: skip
    if s.get("bf16"):
        lines += ["", f"bf16: {s['bf16']}."]
    lines.append("")
    return lines


def _pct(record: dict[str, Any] | None) -> str:
    if not record or "score" not in record:
        return "failed" if record else "-"
    return f"{record['score']:.0%} ({record['right']}/{record['of']})"


def _over_seeds(task: dict[str, Any], label: str) -> str:
    """A run's score as the mean over its training seeds, each seed's rows right after it; one seed as `_pct`."""
    seeds = (task.get("over_seeds") or {}).get(label) or {}
    if len(seeds.get("right") or []) < 2:
        return _pct(task["adapters"].get(label))
    if seeds["mean"] is None:
        return "failed"
    right = " / ".join(_f(r) for r in seeds["right"])
    return f"{seeds['mean']:.0%} (mean of {right} of {seeds['of']})"


def _hp(record: dict[str, Any]) -> str:
    chosen = record.get("chosen") or {}
    lr, epochs = chosen.get("learning_rate"), chosen.get("epochs")
    parts = [f"lr {lr:g}" if lr is not None else "lr -", f"{epochs:g} ep" if epochs is not None else "- ep"]
    if chosen.get("batch_size") is not None:
        parts.append(f"batch {chosen['batch_size']}")
    if chosen.get("rank") is not None:
        parts.append(f"r {chosen['rank']}")
    if chosen.get("total_steps") is not None:
        parts.append(f"{chosen['total_steps']} steps")
    return ", ".join(parts)


def _kept(record: dict[str, Any]) -> str:
    """The step the trainer published, of the steps it ran (`kept/steps`, early stop marked), if it says."""
    m = record.get("manifest_metrics") or {}
    if m.get("kept_step") is None:
        return "-"
    return f"{m['kept_step']}/{m.get('steps', '?')}" + (" (stopped early)" if m.get("stopped_early") else "")


def _forgetting(record: dict[str, Any]) -> str:
    """Whatever forgetting figures the manifest carries (keys starting with `forgetting`), as they come."""
    m = record.get("manifest_metrics") or {}
    figures = {k.removeprefix("forgetting_"): v for k, v in m.items() if k.startswith("forgetting")}
    shown = [f"{k} {_f(v, 3)}" for k, v in figures.items() if isinstance(v, float)]
    return ", ".join(shown) or "-"


def _seeds_line(settings: dict[str, Any]) -> str:
    seeds = settings.get("seeds") or []
    if not seeds:
        return ""
    return (
        f"The defaults and each sweep point are trained with the trainer's seed (42) and again with seeds "
        f"{', '.join(map(str, seeds))} (`-seedN` below: another split, initialisation and data order, the same "
        "held-out rows); their scores, the choice of the best point and the targets go by the mean over the seeds. "
    )


def quality_section(r: dict[str, Any]) -> list[str]:
    s = r["settings"]
    sweep = ", ".join(f"lr {p['learning_rate']:g} x {p['epochs']:g} ep" for p in s["sweep"])
    lines = [
        "## Skill quality: base model / defaults / best of a sweep",
        "",
        f"Command: `python -m bench --only quality --size {r['size']}` (bench/quality.py, tasks in "
        "bench/quality_tasks.py). Each task's adapters are trained through `POST /adapters` of one gateway and "
        "asked every held-out row (never trained on) through the same gateway with the openai SDK, temperature 0. "
        f"Defaults: no hyperparameters sent. Sweep: only learning rate and epochs set ({sweep}); best = highest "
        f"score, then the shorter training. {_seeds_line(s)}Gateway start-up {_f(r.get('startup_s'), 1)} s; "
        f"training phase {_f(r.get('train_phase_s'), 0)} s; whole run {_f(r.get('seconds'), 0)} s; "
        f"{s.get('train', 'jobs queued on the gateway')}, {s.get('threads_per_process', '-')} thread(s) per process.",
        "",
        "Metrics: exact = the answer, surrounding whitespace stripped, equals the reference; json = the answer "
        "parses as JSON and equals the reference object. Base = the base model asked the same messages; on facts, "
        "in prose = the base model asked the bare question (no format instruction), right when its answer names "
        "the true value as a word: the knowledge the adapter must keep; answer begun = the base model given the "
        "formatted question in the task's template with its answer begun (`KEY=`, through /v1/completions), right "
        "when it goes on with the true value: what it knows in the skill's form before any training.",
        "",
    ]
    rows = []
    for t in r["tasks"]:
        d = t["adapters"]["defaults"]
        best = t["adapters"].get(t["best_sweep"] or "") or {}
        base = _pct(t["base"])
        if t.get("base_prose"):
            base += f"; in prose {_pct(t['base_prose'])}"
        if t.get("base_begun"):
            base += f"; answer begun {_pct(t['base_begun'])}"
        rows.append(
            [
                t["task"], t["template"], t["dataset_format"], t["metric"], f"{t['train_rows']} / {t['held_out_rows']}",
                base, _over_seeds(t, "defaults"), _hp(d), _over_seeds(t, t["best_sweep"] or ""), t["best_sweep"] or "-",
                f"{_f(d.get('train_seconds'), 0)} / {_f(best.get('train_seconds'), 0)}",
            ]
        )  # fmt: skip
    header = [
        "task", "template", "format", "metric", "rows train / held-out", "base", "defaults", "defaults chose",
        "best sweep", "best point", "train s (defaults / best)",
    ]  # fmt: skip
    lines += _table(header, rows)
    labels = list(r["tasks"][0]["adapters"]) if r["tasks"] else []
    lines += [
        "",
        "Every adapter: held-out score, train seconds (the trainer's, steps only), the step published of the steps "
        "run, and from its manifest the eval loss (the trainer's own held-out split of the train rows) and the "
        "forgetting figures where the trainer records them; on facts, in prose = the adapter asked the bare "
        "questions (is the knowledge still there?).",
        "",
    ]
    grid = []
    for t in r["tasks"]:
        for label in labels:
            a = t["adapters"][label]
            m = a.get("manifest_metrics") or {}
            grid.append(
                [
                    t["task"], label, _pct(a), _f(a.get("train_seconds"), 0), _hp(a), _kept(a),
                    _f(m.get("eval_loss"), 3), _f(m.get("base_eval_loss"), 3), _forgetting(a),
                    _pct(a["prose"]) if a.get("prose") else "-",
                ]
            )  # fmt: skip
    lines += _table(
        ["task", "adapter", "score", "train s", "hyperparameters used", "kept", "eval loss", "base eval loss",
         "forgetting", "in prose"],
        grid,
    )  # fmt: skip
    tg = r["targets"]
    per = ", ".join(
        f"{k} {_f(v['defaults'])} vs {_f(v['best'])}" for k, v in tg["defaults_vs_best"]["per_task"].items()
    )
    nf = tg["no_forgetting"]
    lines += [
        "",
        "Targets (issue #11):",
        f"- defaults >= 90% where the best sweep point reaches 95%, and within 5 points of it on every task "
        f"({per}): {_met(tg['defaults_vs_best'])}",
        f"- facts: defaults right on >= as many held-out rows as the base model in prose "
        f"({_f(nf.get('adapter_right'))} vs {_f(nf.get('base_prose_right'))}): {_met(nf)}",
        "",
    ]
    return lines


def facts_forms_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Facts in three forms: the defaults, side by side (a probe)",
        "",
        f"Command: `python -m bench --only facts_forms --size {r['size']}` (bench/quality.py `FORMS`). The quality "
        "harness on the facts task only, defaults only: `KEY=<value>` as in the quality benchmark, the same rows as "
        "`KEY: <value>` (the value keeps the leading-space token it has in prose), and `KEY=` with every item the "
        "held-out rows leave as training rows. What the form costs, apart from what training forgets "
        "(docs/evaluation.md). No targets.",
        "",
    ]
    rows = []
    for t in r["tasks"]:
        d = t["adapters"]["defaults"]
        rows.append([
            t["task"], f"`{t['reference_example']}`" if t.get("reference_example") else "-", str(t["train_rows"]),
            _pct(t.get("base_prose")), _pct(t.get("base_begun")),
            _pct(d) if "score" in d else f"failed: {d.get('error')}", _pct(d.get("prose")),
        ])  # fmt: skip
    header = [
        "task",
        "a reference",
        "train rows",
        "base, in prose",
        "base, answer begun",
        "defaults",
        "defaults, in prose",
    ]
    return [*lines, *_table(header, rows), ""]


def facts_knobs_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## Facts, one knob at a time (a probe)",
        "",
        f"Command: `python -m bench --only facts_knobs --size {r['size']}` (bench/quality.py `KNOBS`). The quality "
        "harness on the facts task (`KEY=<value>`) only: the defaults, then the defaults with one setting sent, "
        "side by side in one run. Does any knob keep more of what the base model knows? Score = held-out rows "
        "right in the skill's form; in prose = the adapter asked the bare questions. No targets.",
        "",
    ]
    header = ["adapter", "sent", "score (`KEY=`)", "in prose", "forgetting", "train s", "eval loss"]
    for t in r["tasks"]:
        base = f"base model: in the skill's form {_pct(t['base'])}, in prose {_pct(t.get('base_prose'))}"
        rows = []
        for label, a in t["adapters"].items():
            sent = ", ".join(f"{k} {v}" for k, v in a["requested"].items()) or "nothing (the defaults)"
            m = a.get("manifest_metrics") or {}
            rows.append([
                label, sent, _pct(a), _pct(a.get("prose")), _forgetting(a), _f(a.get("train_seconds"), 0),
                _f(m.get("eval_loss"), 3),
            ])  # fmt: skip
        lines += [f"Task `{t['task']}`, {t['train_rows']} training rows; {base}.", "", *_table(header, rows), ""]
    return lines


def _per_seed(mean: Any, values: list[Any] | None) -> str:
    """A recipe's mean over the training seeds, each seed's figure after it."""
    return f"{_f(mean, 2)} ({', '.join(_f(x, 0) for x in values or [])})"


def facts_rft_section(r: dict[str, Any]) -> list[str]:
    t = r["task"]
    lines = [
        "## Facts by reinforcement: SFT, RFT, and SFT then RFT (issue 29)",
        "",
        f"Command: `python -m bench --only facts_rft --size {r['size']}` (bench/quality.py `RFT`). The facts task "
        f"(`{t['reference_example']}`, {t['train_rows']} training rows, {t['held_out_rows']} held out): the supervised "
        "defaults; reinforcement (GRPO) toward an exact-match `string_check` grader from the base; and the same from "
        "each supervised adapter (`model` its version). Means over the training seeds "
        f"{', '.join(str(s) for s in r['settings']['seeds'])}. Base model: in the skill's form {_pct(r['base'])}, "
        f"in prose {_pct(r['base_prose'])}"
        + (f"; any of {r['base_sampled']['k']} samples at temperature 1 right on {r['base_sampled']['any_right']} of "
           f"{r['base_sampled']['of']}" if r.get("base_sampled") else "")  # fmt: skip
        + ".",
        "",
    ]
    sampled = any(x is not None for m in r["recipes"].values() for x in m.get("sampled_any_right") or [])
    rows = []
    for recipe, m in r["recipes"].items():
        row = [recipe, _per_seed(m["mean_right"], m["right"]), _per_seed(m["mean_prose_right"], m["prose_right"])]
        if sampled:
            row.append(_per_seed(m.get("mean_sampled_any_right"), m.get("sampled_any_right")))
        rows.append([*row, _f(m["mean_train_seconds"], 0)])
    header = ["recipe", "held-out right (per seed)", "facts named in prose (per seed)",
              *(["any of 8 samples right (per seed)"] if sampled else []), "train s"]  # fmt: skip
    return [*lines, *_table(header, rows), "", *([r["note"], ""] if r.get("note") else [])]


def rft_tasks_section(r: dict[str, Any]) -> list[str]:
    lines = [
        "## The other tasks by reinforcement: SFT, and SFT then RFT (issue 29)",
        "",
        f"Command: `python -m bench --only rft_tasks --size {r['size']}` (bench/quality.py `RFT_TASKS`). Each task "
        "of the quality benchmark but facts, trained by the supervised defaults and then by reinforcement (GRPO, "
        "every setting auto) from each supervised adapter toward the task's grader: exact `string_check`, or "
        "`text_similarity` (fuzzy_match) for JSON answers. Held-out rows scored as the quality benchmark scores "
        f"them; means over the training seeds {', '.join(str(s) for s in r['settings']['seeds'])}.",
        "",
    ]
    rows = []
    for task, t in r["tasks"].items():
        for recipe, m in t["recipes"].items():
            rows.append([task, recipe, _per_seed(m["mean_right"], m["right"]),
                         _per_seed(m.get("mean_sampled_any_right"), m.get("sampled_any_right")),
                         str(t["held_out_rows"]), _f(m["mean_train_seconds"], 0)])  # fmt: skip
    header = ["task", "recipe", "held-out right (per seed)", "any of 8 samples right (per seed)", "of", "train s"]
    return [*lines, *_table(header, rows), ""]


def quality_bf16_section(r: dict[str, Any]) -> list[str]:
    """Each quality task's defaults trained and served in float32 and in bf16, and each dtype's parity (issue 30)."""
    lines = ["## Skill quality in bfloat16: the defaults trained and served in bf16 / in float32 (issue 30)", ""]
    if r.get("skipped"):
        return [*lines, f"Not run: {r['skipped']}.", ""]
    seeds = ", ".join(str(s) for s in r["settings"]["seeds"])
    lines += [
        f"Command: `python -m bench --only quality_bf16 --size {r['size']}` (bench/quality_bf16.py). Every quality "
        f"task by the supervised defaults on training seeds {seeds}, by a gateway training and serving in float32, "
        "then by one in bfloat16 (the frozen base in bf16, LoRA and AdamW in float32); held-out rows scored as the "
        "quality benchmark scores them. Same answers: the two adapters of one seed answering a row with the same "
        "text. Parity: the first seed's adapter, its greedy answer through the gateway against transformers + peft "
        "in the same dtype on the trainer's prompt ids (the answer through the reference's first stop token).",
        "",
    ]
    rows, parity = [], []
    for task, t in r["tasks"].items():
        fp32, bf16 = t["float32"], t["bfloat16"]
        rows.append([task, str(t["of"]), f"{fp32['base_right']} / {bf16['base_right']}",
                     _per_seed(fp32["mean_right"], fp32["right"]), _per_seed(bf16["mean_right"], bf16["right"]),
                     _f(t["bf16_less_float32"]), f"{t['same_answers']} of {t['answers_compared']}",
                     " / ".join(_f(side["mean_prose_right"]) for side in (fp32, bf16))])  # fmt: skip
        for dtype, side in (("float32", fp32), ("bfloat16", bf16)):
            p = side["parity"]
            if p:
                gap = f"{p['max_logprob_gap_before_parting']:.1e}"
                parity.append([task, dtype, f"{p['prompt_tokens_match']} of {p['prompts']}",
                               f"{p['same_answer']} of {p['prompts']}", _f(p["parted_at_median"], 1),
                               _f(p["answer_tokens_median"], 1), gap])  # fmt: skip
    header = ["task", "of", "base right (float32 / bf16)", "float32: right (per seed)", "bf16: right (per seed)",
              "bf16 - float32", "same answers", "facts in prose (float32 / bf16)"]  # fmt: skip
    target = r["targets"]["every_task_within_1_row"]
    parity_header = ["task", "dtype", "prompt tokens match", "answers the same as peft's", "parted at token (median)",
                     "answer tokens (median)", "largest log-prob gap before parting"]  # fmt: skip
    return [
        *lines,
        *_table(header, rows),
        "",
        f"- every task's mean in bf16 within 1 row of float32's: largest difference {_f(target['value'])}: "
        f"{_met(target)}",
        "",
        *_table(parity_header, parity),
        "",
    ]


SECTIONS = {
    "serving": serving_section,
    "calibration": serving_section,
    "serving_bf16": serving_bf16_section,
    "products": products_section,
    "train_step": train_step_section,
    "lora_ops": lora_ops_section,
    "loading": loading_section,
    "training": training_section,
    "quality": quality_section,
    "facts_forms": facts_forms_section,
    "facts_knobs": facts_knobs_section,
    "facts_rft": facts_rft_section,
    "rft_tasks": rft_tasks_section,
    "quality_bf16": quality_bf16_section,
}


def _load(results_dir: Path) -> list[dict[str, Any]]:
    """The results in `results_dir`, in the report's order."""
    paths = (results_dir / f"{name}.json" for name in ORDER)
    return [json.loads(path.read_text()) for path in paths if path.exists()]


def _sections(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        if "error" in r:
            lines += [f"## {r['benchmark']}", "", f"Failed: `{r['error']}`", ""]
            continue
        lines += SECTIONS[r["benchmark"]](r)
    return lines


def other_machine_section(name: str, results: list[dict[str, Any]]) -> list[str]:
    """Views run again on another kind of machine, from a folder of their own beside the main results."""
    return [
        f"# Another machine: {name}",
        "",
        f"From `bench/results/{name}/*.json`: the views below, run on this other kind of machine with",
        "`python -m bench --only ... --results-dir bench/results/" + name + "`. The sections above are the",
        "project's own runs; these show what changes where the CPU differs.",
        "",
        *machine_section(results),
        *_sections(results),
    ]


def render(results_dir: Path) -> str:
    results = _load(results_dir)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m bench`) from `bench/results/*.json`; do not edit by hand.",
        "Every figure is a ratio of two things measured side by side in one run, on the offline model",
        "(SmolLM2-135M-Instruct, fp32) and on the CPUs below. A shared machine is noisy: read ratios, and",
        "the load average at start, before absolute numbers. What the figures mean, and what was done",
        "about the targets they miss: [docs/performance.md](docs/performance.md).",
        "",
    ]
    small = sorted({r["benchmark"] for r in results if r.get("size") != "full"})
    if small:
        lines += [
            f"> **Not a measurement:** {', '.join(small)} ran at `--size tiny`, which checks that the scripts",
            "> work, not how fast anything is. Run `make bench` on an idle machine for figures.",
            "",
        ]
    lines += [*machine_section(results), *_sections(results)]
    for other in sorted(path for path in results_dir.iterdir() if path.is_dir()):
        more = _load(other)
        if more:
            lines += other_machine_section(other.name, more)
    return "\n".join(lines).rstrip() + "\n"


def write(results_dir: Path, markdown: Path) -> None:
    markdown.write_text(render(results_dir))
