"""The CPU LoRA path alone: vLLM's / the grouped one (service/engine/cpu_lora.py), same inputs.

One LoRA layer as vLLM's CPU punica wrapper runs it (`PunicaWrapperCPU.add_lora_linear`), with the shapes
of the served model's fused QKV projection (576 -> 576 + 192 + 192, three slices) at rank 16 with 8 adapter
slots. vLLM's side is its own `add_lora_linear` on its own PyTorch ops: a shrink into an fp32 buffer and
an expand-slice per slice. Ours is the replacement: one shrink and one expand over all slices, grouped by
adapter. vLLM's CPU runner sends every step through the prefill (`sgmv_*`) metadata, so that is what is
timed: prefill steps of 16 requests x 128 tokens and decode steps of 16 requests x 1 token, on one
adapter and on eight interleaved, and a decode step of one request; each in float32 and in bfloat16
(the model's dtype, which vLLM keeps the adapters' stacks and the layer's output in). The two
implementations run alternately, each timing the median of its repeats. One torch thread: vLLM's CPU
worker runs on one core here (its OpenMP threads are bound to core 0, the other core reserved), and two
threads on a busy 2-core machine measure the scheduler more than the ops.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from service.engine import cpu_lora as vllm_cpu_lora
from service.engine import cpu_lora_ops

HIDDEN, SLICES, RANK, SLOTS, REQUESTS = 576, (576, 192, 192), 16, 8, 16
SIZES = {"tiny": {"prompt": 32, "repeats": 5}, "full": {"prompt": 128, "repeats": 30}}


@contextlib.contextmanager
def vllms_ops() -> Iterator[None]:
    """vLLM's own PyTorch ops where its CPU wrapper calls them, for as long as the block runs."""
    module = importlib.import_module(vllm_cpu_lora.CPU_WRAPPER_MODULE)
    installed = {name: getattr(module, name) for name in cpu_lora_ops.OPS}
    for name, op in vllm_cpu_lora.upstream_ops().items():
        setattr(module, name, op)
    try:
        yield
    finally:
        for name, op in installed.items():
            setattr(module, name, op)


def vllms_layer(*args: Any) -> None:
    with vllms_ops():
        vllm_cpu_lora.upstream_method("add_lora_linear")(*args)


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


# Two results agree within the dtype's rounding: vLLM's and ours round the shrink's result at other points.
# A row given the wrong adapter, or none, is off by about the whole delta (~0.2 here), past either bound.
AGREE = {torch.float32: {"rtol": 1e-4, "atol": 1e-5}, torch.bfloat16: {"rtol": 2.0**-7, "atol": 1e-2}}


def _run(size: dict[str, int], size_name: str) -> dict[str, Any]:
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(0)
        # vLLM keeps the adapters' stacks in the model's dtype.
        a = tuple((torch.randn(SLOTS, 1, RANK, HIDDEN, generator=gen) * 0.05).to(dtype) for _ in SLICES)
        b = tuple((torch.randn(SLOTS, 1, width, RANK, generator=gen) * 0.05).to(dtype) for width in SLICES)
        for step, tokens in (("prefill", size["prompt"]), ("decode", 1)):
            mixes = [("one adapter", [0] * REQUESTS), ("8 adapters interleaved", [i % SLOTS for i in range(REQUESTS)])]
            if step == "decode":
                mixes.insert(0, ("one request", [0]))
            for mix, slots in mixes:
                cases.append(_case(step, mix, torch.repeat_interleave(torch.tensor(slots), tokens), a, b, dtype, size))
    return {
        "benchmark": "lora_ops",
        "size": size_name,
        "settings": {
            "layer": f"add_lora_linear, {HIDDEN} -> {' + '.join(map(str, SLICES))} (QKV), rank {RANK}, "
            f"{SLOTS} slots, in float32 and in bfloat16",
            "requests": REQUESTS,
            "prompt_tokens": size["prompt"],
            "threads": torch.get_num_threads(),
            "timing": f"median of {size['repeats']} calls, 3 alternating rounds, median of rounds",
        },
        "cases": cases,
    }


def _case(
    step: str,
    mix: str,
    indices: torch.Tensor,
    a: tuple[torch.Tensor, ...],
    b: tuple[torch.Tensor, ...],
    dtype: torch.dtype,
    size: dict[str, int],
) -> dict[str, Any]:
    """One step's layer by vLLM's ops and by ours, same inputs, alternately timed."""
    implementations: dict[str, Callable[..., None]] = {"vllm": vllms_layer, "ours": vllm_cpu_lora.add_lora_linear}
    wrapper = vllm_cpu_lora.cpu_wrapper(indices)
    x = torch.randn(indices.numel(), HIDDEN, generator=torch.Generator().manual_seed(1)).to(dtype)
    ys = {name: torch.zeros(x.shape[0], sum(SLICES), dtype=dtype) for name in implementations}
    calls = {
        name: functools.partial(fn, wrapper, ys[name], x, a, b, 1.0, SLICES) for name, fn in implementations.items()
    }
    for call in calls.values():
        call()
    same = bool(torch.allclose(ys["ours"].float(), ys["vllm"].float(), **AGREE[dtype]))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(3):  # alternate, so drift of a shared machine hits both
        for name, call in calls.items():
            times[name].append(timed(call, size["repeats"]))
    vllm_ms, ours_ms = (1000 * statistics.median(times[name]) for name in ("vllm", "ours"))
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "step": step,
        "mix": mix,
        "tokens": x.shape[0],
        "segments": wrapper.batch_size,
        "vllm_ms": round(vllm_ms, 3),
        "ours_ms": round(ours_ms, 3),
        "speedup": round(vllm_ms / ours_ms, 1),
        "same_result": same,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "full"), indent=2))
