"""The CPU LoRA ops alone: vLLM's PyTorch ops / the grouped ones (service/vllm_cpu_lora.py), same inputs.

One LoRA linear layer as vLLM's CPU punica wrapper runs it (`add_lora_linear`: a shrink into an fp32
buffer, then an expand-slice into the layer's output), with the shapes of the served model's q
projection (576 -> 576) at rank 16 with 8 adapter slots. vLLM's CPU runner sends every step through the
prefill (`sgmv_*`) ops, so that is what is timed: prefill steps of 16 requests x 128 tokens and decode
steps of 16 requests x 1 token, on one adapter and on eight interleaved. The two implementations run
alternately, each timing the median of its repeats. One torch thread: vLLM's CPU worker runs on one core
here (its OpenMP threads are bound to core 0, the other core reserved), and two threads on a busy 2-core
machine measure the scheduler more than the ops.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from service import vllm_cpu_lora

HIDDEN, OUT, RANK, SLOTS, REQUESTS = 576, 576, 16, 8, 16
SIZES = {"tiny": {"prompt": 32, "repeats": 5}, "full": {"prompt": 128, "repeats": 30}}


def layer(
    ops: dict[str, Callable[..., None]],
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    meta: tuple[Any, ...],
) -> None:
    """What `PunicaWrapperCPU.add_lora_linear` runs for one single-slice layer."""
    buffer = torch.zeros(x.shape[0], RANK, dtype=torch.float32)
    ops["sgmv_shrink"](x, a, buffer, *meta, 1.0)
    ops["sgmv_expand_slice"](buffer, b, y, *meta, 0, OUT, True)


def metadata(slots: list[int], lengths: list[int]) -> tuple[Any, ...]:
    """vLLM's prefill metadata, with consecutive requests on one slot merged as `compute_meta` does."""
    merged: list[list[int]] = []
    for slot, n in zip(slots, lengths, strict=True):
        if merged and merged[-1][0] == slot:
            merged[-1][1] += n
        else:
            merged.append([slot, n])
    lens = [n for _, n in merged]
    starts = [sum(lens[:i]) for i in range(len(lens))]
    idx = [s for s, _ in merged]
    return torch.tensor(starts), torch.tensor(lens), torch.tensor(idx), len(lens), max(lens), sum(lens)


def timed(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def run(size_name: str, workdir: Any = None) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(SIZES[size_name], size_name)
    finally:
        torch.set_num_threads(threads)


def _run(size: dict[str, int], size_name: str) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen) * 0.05
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=gen) * 0.05
    ours, theirs = vllm_cpu_lora.OPS, vllm_cpu_lora.upstream_ops()
    cases = []
    for step, tokens in (("prefill", size["prompt"]), ("decode", 1)):
        for mix, slots in (
            ("one adapter", [0] * REQUESTS),
            ("8 adapters interleaved", [i % SLOTS for i in range(REQUESTS)]),
        ):
            lengths = [tokens] * REQUESTS
            meta = metadata(slots, lengths)
            x = torch.randn(sum(lengths), HIDDEN, generator=gen)
            y_ours, y_theirs = torch.zeros(x.shape[0], OUT), torch.zeros(x.shape[0], OUT)
            layer(ours, x, a, b, y_ours, meta)
            layer(theirs, x, a, b, y_theirs, meta)
            same = bool(torch.allclose(y_ours, y_theirs, rtol=1e-4, atol=1e-5))
            t_theirs, t_ours = [], []
            for _ in range(3):  # alternate, so drift of a shared machine hits both
                t_theirs.append(timed(functools.partial(layer, theirs, x, a, b, y_theirs, meta), size["repeats"]))
                t_ours.append(timed(functools.partial(layer, ours, x, a, b, y_ours, meta), size["repeats"]))
            vllm_ms, ours_ms = 1000 * statistics.median(t_theirs), 1000 * statistics.median(t_ours)
            cases.append(
                {
                    "step": step,
                    "mix": mix,
                    "tokens": x.shape[0],
                    "segments": meta[3],
                    "vllm_ms": round(vllm_ms, 3),
                    "ours_ms": round(ours_ms, 3),
                    "speedup": round(vllm_ms / ours_ms, 1),
                    "same_result": same,
                }
            )
    return {
        "benchmark": "lora_ops",
        "size": size_name,
        "settings": {
            "layer": f"shrink + expand-slice, {HIDDEN} -> {OUT}, rank {RANK}, {SLOTS} slots, fp32",
            "requests": REQUESTS,
            "prompt_tokens": size["prompt"],
            "threads": torch.get_num_threads(),
            "timing": f"median of {size['repeats']} calls, 3 alternating rounds, median of rounds",
        },
        "cases": cases,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "full"), indent=2))
