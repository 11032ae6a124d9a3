"""A decode step's matrix products in float32 and in bfloat16: what bf16 gains on them at each batch size.

One product shape of the served model's MLP (576 -> 1536), run through vLLM's own CPU kernel (`onednn_mm`, the one
its linear layers call) on `LAYERS` distinct weights in turn, so each call reads its weight from memory as a decode
step does (the model's weights are far larger than the caches). With one or a few rows a product is bound by the
weight's bytes, which bf16 halves; with many rows (a prompt) by arithmetic, where the CPU's bf16 units (AMX) give
far more. This is the ceiling for serving at low concurrency (docs/performance.md): a step whose products gain at
most their bytes' 2x, plus work bf16 does not shrink, gains less than 2x. One torch thread, as vLLM's CPU worker
runs here; the two dtypes alternate, each the median of its rounds.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

IN, OUT, LAYERS = 576, 1536, 60
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"rows": (1, 16), "rounds": 1},
    "full": {"rows": (1, 4, 16, 64, 128, 512), "rounds": 5},
}
DTYPES = (torch.float32, torch.bfloat16)


def _round(mm: Any, handles: list[Any], x: torch.Tensor) -> float:
    """Seconds per product over one pass through every weight."""
    started = time.perf_counter()
    for handle in handles:
        mm(handle, x, None)
    return (time.perf_counter() - started) / len(handles)


def run(size_name: str, workdir: Any = None) -> dict[str, Any]:
    from adapters.hardware import native_bf16

    native, why = native_bf16()
    if not native:  # vLLM's oneDNN kernel has no bf16 matmul on a CPU without the units (an AVX2-only EPYC, say)
        return {"benchmark": "products", "size": size_name, "skipped": f"no native bf16 here: {why}"}
    from vllm import _custom_ops as ops

    size = SIZES[size_name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        weights = [torch.randn(IN, OUT, generator=gen) * 0.05 for _ in range(LAYERS)]
        handles = {dtype: [ops.create_onednn_mm(w.to(dtype), 32) for w in weights] for dtype in DTYPES}
        cases = []
        for rows in size["rows"]:
            x = torch.randn(rows, IN, generator=gen)
            inputs = {dtype: x.to(dtype) for dtype in DTYPES}
            times: dict[torch.dtype, list[float]] = {dtype: [] for dtype in DTYPES}
            for dtype in DTYPES:  # warm-up: oneDNN makes its kernel for the shape on first use
                _round(ops.onednn_mm, handles[dtype], inputs[dtype])
            for _ in range(size["rounds"]):
                for dtype in DTYPES:
                    times[dtype].append(_round(ops.onednn_mm, handles[dtype], inputs[dtype]))
            fp32, bf16 = (statistics.median(times[dtype]) for dtype in DTYPES)
            cases.append(
                {
                    "rows": rows,
                    "float32_us": round(fp32 * 1e6, 1),
                    "bfloat16_us": round(bf16 * 1e6, 1),
                    "bf16_speedup": round(fp32 / bf16, 2),
                    "float32_weight_gb_per_s": round(IN * OUT * 4 / fp32 / 1e9, 1),
                    "float32_gflop_per_s": round(2 * rows * IN * OUT / fp32 / 1e9, 1),
                    "bfloat16_gflop_per_s": round(2 * rows * IN * OUT / bf16 / 1e9, 1),
                }
            )
    finally:
        torch.set_num_threads(threads)
    return {
        "benchmark": "products",
        "size": size_name,
        "settings": {
            "product": f"{IN} -> {OUT}, vLLM's onednn_mm, {LAYERS} distinct weights in turn (read from memory)",
            "threads": 1,
            "timing": f"median of {size['rounds']} rounds, the dtypes alternating",
            "native_bf16": native,
            "native_bf16_why": why,
        },
        "cases": cases,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "full"), indent=2))
