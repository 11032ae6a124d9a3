"""Training with the frozen base in bfloat16 (`hyperparameters.dtype`, issue 30; on CPU its products only,
trainer/precision.py): every method trains, the LoRA weights it saves are float32, and after one step its loss,
NEFTune, held-out evaluation and forgetting figure read as in float32, to within bf16's rounding. After 12 steps the
training benchmark's losses are within 0.5% of float32's on three seeds (docs/performance.md). Runs on any CPU (bf16
is emulated where the units are missing, only slower)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from adapters import auto
from adapters.dataset import parse_dataset, rows_to_jsonl
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.schema import Hyperparameters, Method
from adapters.templates import get_template
from tests.test_continue_training import GRADER, method_rows
from trainer.loop import TrainResult, train
from trainer.methods import method_for

pytestmark = pytest.mark.slow


def trained(method_type: str, dtype: str, out: Path) -> TrainResult:
    """One step of `method_type` on 8 rows (a quarter held out), NEFTune on for supervised, from a fresh LoRA."""
    from adapters.graders import validate

    rl = method_type == "reinforcement"
    dataset = parse_dataset(rows_to_jsonl(method_rows(method_type)), method=method_type,
                            grader=validate(GRADER, "method.grader") if rl else None)  # fmt: skip
    method = method_for(Method(type=method_type, grader=GRADER if rl else None, samples_per_prompt=2 if rl else None))
    neftune = 5.0 if method_type == "supervised" else 0.0
    hp = auto.choose(
        Hyperparameters(rank=8, alpha=16, target_modules=["q_proj", "v_proj"], max_steps=1, batch_size=2, dropout=0.0,
                        eval_fraction=0.25, eval_samples=1, neftune_noise_alpha=neftune, dtype=dtype, seed=7),
        8, method_type,
    )  # fmt: skip
    return train(method, resolve_model(DEFAULT_MODEL), get_template("chatml", None), method.examples(dataset), hp, out)


@pytest.mark.parametrize("method_type", ["supervised", "dpo", "reinforcement"])
def test_every_method_trains_a_float32_lora_on_a_bf16_base_and_its_first_step_reads_as_float32s(
    method_type: str, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    bf16 = trained(method_type, "bfloat16", tmp_path / "bf16")
    fp32 = trained(method_type, "float32", tmp_path / "fp32")

    assert bf16.hyperparameters["dtype"] == "bfloat16" and fp32.hyperparameters["dtype"] == "float32"
    saved = load_file(str(bf16.adapter_dir / "adapter_model.safetensors"))
    assert saved and {str(t.dtype) for t in saved.values()} == {"torch.float32"}
    m16, m32 = bf16.metrics, fp32.metrics
    figures: list[tuple[str, float]] = [("forgetting_agreement", 0.05)]
    if method_type == "supervised":
        # The first step's masked loss is the base's (the LoRA starts at zero): bf16 reads it within its rounding.
        figures += [("train_loss_first", 0.02), ("eval_loss", 0.03)]
    for name, rel in figures:
        assert isinstance(m16.get(name), float) and math.isfinite(m16[name]), (name, m16)
        assert m16[name] == pytest.approx(m32[name], rel=rel), (name, m16[name], m32[name])
    assert m16["forgetting_kl"] >= 0 and math.isfinite(m16["forgetting_kl"])
    shared: set[Any] = {k for k in m32 if k not in ("train_seconds", "train_tokens_per_second")}
    assert shared <= set(m16), sorted(shared - set(m16))  # every figure float32 reports, bf16 reports too
