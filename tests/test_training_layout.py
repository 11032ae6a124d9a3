"""What the trainer decides itself when a request leaves it to it: padded or packed batches, activations kept or
recomputed (trainer/layout.py), on the default model and on its measured memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.schema import Hyperparameters
from trainer.layout import (
    MEMORY_SHARE,
    ModelSize,
    activation_bytes_per_token,
    choose_checkpointing,
    choose_padding_free,
    free_memory,
    largest_batch_tokens,
    lay_out,
    neftune_scale,
    saved_bytes,
    work,
)

# The default model's sizes (SmolLM2-135M: 30 layers of 9 heads of 64, its linear layers and tied head)
SMALL = ModelSize(linear_weights=134_479_872, attention_width=30 * 9 * 64)
MIXED = [30, 200, 60, 45, 240, 35, 90, 50] * 8  # mostly short, a few long: chat rows
EVEN = [48, 50, 49, 51] * 8  # the quality benchmark's kind: one length, give or take


@pytest.fixture(scope="module")
def model() -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(resolve_model(DEFAULT_MODEL)), dtype=torch.float32)


def _saved_bytes_per_token(model: Any, tokens: int) -> float:
    """What autograd keeps for the backward pass of one training forward of `model` as it is, per token."""
    import torch

    ids = torch.arange(tokens).unsqueeze(0)
    model.train()
    return saved_bytes(model, lambda: model(input_ids=ids, labels=ids, use_cache=False)) / tokens


@pytest.mark.parametrize(
    ("targets", "dropout"), [("all-linear", 0.05), ("all-linear", 0.0), (["q_proj", "v_proj"], 0.0)]
)
def test_the_activation_estimate_is_what_autograd_keeps_with_the_lora_in_place(
    model: Any, targets: Any, dropout: float
) -> None:
    import copy

    from peft import LoraConfig, get_peft_model

    estimate = activation_bytes_per_token(model, targets, dropout, rank=8)
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM"))
    measured = _saved_bytes_per_token(wrapped, 16)
    assert measured == pytest.approx(estimate, rel=0.05), (estimate, measured)
    # The probe leaves the model as it found it: every weight still asks for a gradient, and in eval mode.
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_packing_is_chosen_on_mixed_lengths_and_not_on_one_length_or_on_long_packed_rows() -> None:
    mixed = choose_padding_free(MIXED, 8, SMALL)
    assert mixed.value and "30-240 tokens" in mixed.reason
    assert not choose_padding_free(EVEN, 4, SMALL).value
    assert not choose_padding_free(MIXED, 1, SMALL).value  # a batch of one row has no padding
    # Rows ten times as long in batches of 16: the packed row's attention (16 x 940 tokens, squared) outweighs the
    # padding saved.
    long_rows = [10 * length for length in MIXED]
    padded, packed = work(long_rows, 16, SMALL)
    assert packed > padded and not choose_padding_free(long_rows, 16, SMALL).value


def test_the_work_count_is_the_padded_tokens_and_the_packed_ones() -> None:
    attentionless = ModelSize(linear_weights=1, attention_width=0)
    padded, packed = work([10, 10, 10, 10], 2, attentionless)
    assert (padded, packed) == (40, 40)  # two rows of ten, 2 flops a token, either way
    padded, packed = work([1, 3], 2, attentionless)
    # Two rows drawn from {1, 3}: the longest is 3 unless both are 1 (a quarter of the time).
    assert padded == pytest.approx(2 * 2 * (0.25 * 1 + 0.75 * 3)) and packed == pytest.approx(2 * 2 * 2)


def test_neftune_keeps_its_noise_per_value_on_packed_rows() -> None:
    assert neftune_scale([10] * 5, 4) == pytest.approx(2.0)  # four rows of one length: a row four times as long
    assert 1 < neftune_scale(MIXED, 8) < 8**0.5


def test_the_largest_batch_is_the_longest_rows_padded_or_packed() -> None:
    assert largest_batch_tokens([5, 9, 2, 7], 2, padding_free=False) == 18
    assert largest_batch_tokens([5, 9, 2, 7], 2, padding_free=True) == 16


def test_checkpointing_stays_off_while_the_activations_fit_in_a_share_of_the_memory_free() -> None:
    gib = 2**30
    fits = choose_checkpointing(2 * 2**20, 1024, 8 * gib, "the machine's available memory")
    assert not fits.value and "2.00 GiB" in fits.reason and "8.0 GiB" in fits.reason
    assert choose_checkpointing(2 * 2**20, 1024, int(2 * gib / MEMORY_SHARE) - 1, "x").value
    # Two ranks on one machine: each has half of it.
    assert choose_checkpointing(2 * 2**20, 1024, 7 * gib, "x", processes=2).value
    assert not choose_checkpointing(2 * 2**20, 1024, 7 * gib, "x").value


def test_free_memory_is_the_containers_limit_less_its_use_where_that_is_less(tmp_path: Path) -> None:
    meminfo = "MemTotal: 24000000 kB\nMemAvailable: 20000000 kB\n"
    assert free_memory(meminfo, tmp_path) == (20000000 * 1024, "the machine's available memory")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("1000\n")
    assert free_memory(meminfo, tmp_path)[1] == "the machine's available memory"
    (tmp_path / "memory.max").write_text(f"{16 * 2**30}\n")
    (tmp_path / "memory.current").write_text(f"{3 * 2**30}\n")
    assert free_memory(meminfo, tmp_path) == (13 * 2**30, "the container's memory limit less its use")
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(f"{4 * 2**30}\n")
    (v1 / "memory" / "memory.usage_in_bytes").write_text(f"{2**30}\n")
    assert free_memory(meminfo, v1)[0] == 3 * 2**30


def test_the_trainer_decides_what_is_left_to_it_and_keeps_what_is_set(model: Any) -> None:
    lengths = MIXED[:16]
    left = lay_out(Hyperparameters(rank=8), "supervised", model, lengths, 4)
    assert left.hp.padding_free is True and isinstance(left.hp.gradient_checkpointing, bool)
    assert [r.split(" ")[0] for r in left.reasons] == ["padding_free", "gradient_checkpointing", "NEFTune"]
    assert left.neftune_scale == pytest.approx(neftune_scale(lengths, 4))
    set_by_user = lay_out(Hyperparameters(rank=8, padding_free=False, gradient_checkpointing=True), "supervised",
                          model, lengths, 4)
    assert (set_by_user.hp.padding_free, set_by_user.hp.gradient_checkpointing) == (False, True)
    assert set_by_user.reasons == () and set_by_user.neftune_scale == 1.0
    # DPO's and reinforcement's batches are not counted: padded, recomputed, as before.
    other = lay_out(Hyperparameters(rank=8), "dpo", model, [], 4)
    assert (other.hp.padding_free, other.hp.gradient_checkpointing) == (False, True)
