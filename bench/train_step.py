"""Where a CPU training step's time goes, by kind of work, in float32 and with the products in bf16 (issue 30).

bf16 speeds up the frozen base's matrix products (AMX, AVX-512 BF16) and nothing else: the LoRA's own products
(float32, bound by the memory their outputs take), dropout's random draws, the elementwise work (norms, rotary
embeddings, activations, the LoRA's scaling and sums), attention and the loss run as before. So the share of
float32's step spent in the base's products bounds what bf16 can give a step at the same settings: with a fraction f
of the step in them, bf16 gives at most 1 / (1 - f), even if its products took no time at all.

One step of the trainer's defaults on the default model (an all-linear LoRA of rank 8, dropout 0.05, gradient
checkpointing on, AdamW), 8 rows of 130 tokens, profiled with torch.profiler after warm-up steps; the two runs time
their steps side by side, alternating. Only float32's step is profiled: the bound needs its shares alone, and under
the profiler a step with bf16 products reported more self time (22.7 s) than two threads have in its 7.6 s.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

RANK = 8
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"rows": 2, "tokens": 16, "rounds": 1},
    "full": {"rows": 8, "tokens": 130, "rounds": 3},
}
# Each profiled op's self time, by kind. Products: the base's matrix multiplications, which bf16 speeds up; a
# product with the LoRA's rank as one of its sides is the LoRA's own, float32 in both runs, and counted apart.
# Conversions: dtype casts (the bf16 products' inputs and outputs). What is not named is counted as "other" (the
# autograd engine's own bookkeeping, views, the optimizer's loops).
KINDS = {
    "products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "dropout draws": ("aten::bernoulli_", "aten::uniform_", "aten::random_"),
    "elementwise": ("aten::mul", "aten::add", "aten::add_", "aten::mul_", "aten::div", "aten::div_", "aten::pow",
                    "aten::rsqrt", "aten::mean", "aten::silu", "aten::silu_backward", "aten::neg", "aten::cat",
                    "aten::sum", "aten::fill_", "aten::where", "aten::masked_fill", "aten::masked_fill_",
                    "aten::embedding", "aten::embedding_dense_backward", "aten::sqrt", "aten::lerp_",
                    "aten::addcmul_", "aten::addcdiv_", "aten::_foreach_mul_", "aten::_foreach_add_",
                    "aten::_foreach_lerp_", "aten::_foreach_addcmul_", "aten::_foreach_addcdiv_",
                    "aten::_foreach_sqrt", "aten::_foreach_div_", "aten::native_dropout"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "loss": ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward",
             "aten::nll_loss_backward"),
    "conversions": ("aten::copy_", "aten::_to_copy"),
}  # fmt: skip


def _model(dtype: str) -> tuple[Any, Any, int]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters.models import DEFAULT_MODEL, resolve_model
    from trainer.precision import bf16_products

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL), dtype=torch.float32)
    if dtype == "bfloat16":
        bf16_products(model)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora).train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    return peft_model, optimizer, model.config.vocab_size


def _stepper(dtype: str, size: dict[str, Any]) -> Any:
    model, optimizer, vocab = _model(dtype)
    ids = torch.randint(0, vocab, (size["rows"], size["tokens"]), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        logits = model(input_ids=ids).logits[:, :-1]
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def _profile(step: Any) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    wall = time.perf_counter() - started
    self_us: dict[str, float] = {}
    lora_us = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        self_us[event.key] = self_us.get(event.key, 0) + event.self_cpu_time_total
        if event.key in KINDS["products"] and any(RANK in shape for shape in event.input_shapes if shape):
            lora_us += event.self_cpu_time_total  # a product with the LoRA's rank as a side: the LoRA's own
    total = sum(self_us.values())
    kinds = {kind: sum(self_us.get(op, 0) for op in ops) for kind, ops in KINDS.items()}
    kinds["products"] -= lora_us
    kinds["LoRA products"] = lora_us
    kinds["other"] = total - sum(kinds.values())
    named = {op for ops in KINDS.values() for op in ops}
    others = sorted(((us, op) for op, us in self_us.items() if op not in named), reverse=True)[:6]
    return {
        "step_s": round(wall, 3),
        "self_cpu_s": round(total / 1e6, 3),
        "shares": {k: round(v / total, 3) for k, v in kinds.items()},
        "largest_other": {op: round(us / total, 3) for us, op in others},
    }


def run(size_name: str, workdir: Any = None) -> dict[str, Any]:
    from adapters.hardware import native_bf16

    size = SIZES[size_name]
    native, why = native_bf16()
    steps = {dtype: _stepper(dtype, size) for dtype in ("float32", "bfloat16")}
    for step in steps.values():
        step()  # warm-up: the first step allocates and picks its kernels
    times: dict[str, list[float]] = {dtype: [] for dtype in steps}
    for _ in range(size["rounds"]):
        for dtype, step in steps.items():
            started = time.perf_counter()
            step()
            times[dtype].append(time.perf_counter() - started)
    profile = _profile(steps["float32"])
    products = profile["shares"]["products"]
    fp32_s, bf16_s = (statistics.median(times[dtype]) for dtype in steps)
    return {
        "benchmark": "train_step",
        "size": size_name,
        "settings": {
            "step": f"{size['rows']} rows x {size['tokens']} tokens, LoRA all-linear r={RANK} dropout 0.05, gradient "
            "checkpointing on, AdamW",
            "threads": torch.get_num_threads(),
            "timing": f"median of {size['rounds']} steps per dtype, alternating, after a warm-up step each; then one "
            "float32 step under torch.profiler (self time by op)",
            "native_bf16": native,
            "native_bf16_why": why,
        },
        "step_s": {"float32": round(fp32_s, 3), "bfloat16": round(bf16_s, 3)},
        "bf16_speedup": round(fp32_s / bf16_s, 3),
        "float32_profile": profile,
        # bf16 shortens the base's products only: with a share f of float32's step in them, no product speed-up
        # gives the step more than 1 / (1 - f).
        "bf16_speedup_bound": round(1 / (1 - products), 3),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "full"), indent=2))
