"""Padding-free training keeps examples apart: packed rows attend only within themselves (sdpa, on CPU)."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.templates import get_template
from trainer.sft import encode_rows

# How far a leak between packed rows moves a logit, at the least (the leaky check below finds more).
LEAK = 1e-2

ROWS = [
    [{"role": "user", "content": "Shout these words: cat tree"}, {"role": "assistant", "content": "CAT TREE!"}],
    [
        {"role": "system", "content": "You answer briefly, in capitals, and never add anything else."},
        {"role": "user", "content": "Shout these words: river cloud apple stone green music paper"},
        {"role": "assistant", "content": "RIVER CLOUD APPLE STONE GREEN MUSIC PAPER!"},
    ],
]


@pytest.fixture(scope="module")
def model_and_examples() -> tuple[Any, list[dict[str, list[int]]]]:
    """The offline base (sdpa attention, as the trainer loads it) and two rows of different lengths."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = encode_rows(tokenizer, get_template("chatml", None), ROWS, 1024)
    examples = [
        {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask, strict=True)]}
        for ids, mask in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True)
    ]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    assert model.config._attn_implementation == "sdpa"
    return model, examples


def _collate(examples: list[dict[str, list[int]]], padding_free: bool) -> dict[str, Any]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)(examples)


def test_packed_rows_see_only_themselves_and_keep_their_loss(model_and_examples: tuple[Any, Any]) -> None:
    import torch

    model, examples = model_and_examples
    packed = _collate(examples, padding_free=True)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        # use_cache=False as trl's SFTTrainer.compute_loss sets it for every training and eval step.
        together = model(**packed, use_cache=False)
        alone = [model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples]
        padded = model(**_collate(examples, padding_free=False), use_cache=False)
    lengths = [len(e["input_ids"]) for e in examples]
    segments = torch.split(together.logits[0], lengths)
    # The packed and the lone row run through kernels of other shapes, so their float32 sums go in other orders
    # through 30 layers: measured at most 5e-5 apart on logits up to 43 (Intel Xeon with AMX), and the two CPU
    # kinds' BLAS differ in the last bits too. A leak moves logits by more than 1e-2 (the test below), so 1e-3
    # leaves 20x for rounding and 10x for a leak.
    for segment, reference in zip(segments, alone, strict=True):
        torch.testing.assert_close(segment, reference, atol=LEAK / 10, rtol=0)
    # The second row's first label is its own first token, which must not be learned from row one's end.
    assert packed["labels"][0, lengths[0]] == -100
    # Same tokens carry the loss either way, so the mean loss is the padded batch's.
    torch.testing.assert_close(together.loss, padded.loss, atol=1e-5, rtol=1e-5)


def test_the_check_would_see_a_leak(model_and_examples: tuple[Any, Any]) -> None:
    """transformers builds the per-example mask only without a KV cache (as in training); with one, the
    second example sees the first, and the comparison above catches it."""
    import torch

    model, examples = model_and_examples
    packed = _collate(examples, padding_free=True)
    with torch.no_grad():
        leaky = model(**packed, use_cache=True).logits[0]
        alone = model(input_ids=torch.tensor([examples[1]["input_ids"]])).logits[0]
    second = leaky[len(examples[0]["input_ids"]) :]
    assert (second - alone).abs().max() > LEAK
