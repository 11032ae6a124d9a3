"""The reference the gateway's greedy output is held to: transformers + peft on the trainer's prompt ids.

tests/test_parity.py holds the gateway to it token for token in float32; bench/quality_bf16.py measures how far an
adapter trained and served in bfloat16 follows it in bfloat16 (issue 30).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from adapters.models import DEFAULT_MODEL, resolve_model


def hf_greedy(
    adapter_dir: Path, prompts: list[list[int]], pad_id: int, new_tokens: int, dtype: str = "float32", batch: int = 12
) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy ids and their log-probabilities from transformers + peft with the base in `dtype`, `new_tokens` for
    every prompt (end-of-sequence ignored), prompts left-padded `batch` at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    base = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL), dtype=getattr(torch, dtype))
    base.generation_config.eos_token_id = None  # the model's own default would stop rows at <|im_end|>
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    config = GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, min_new_tokens=0, eos_token_id=None, pad_token_id=pad_id,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    ids_out: list[list[int]] = []
    logprobs_out: list[list[float]] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=config)
        new = out.sequences[:, width:]
        logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in out.logits], dim=1)
        chosen = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        ids_out += new.tolist()
        logprobs_out += chosen.tolist()
    return ids_out, logprobs_out


T = TypeVar("T")


def first_difference(a: Sequence[T], b: Sequence[T]) -> int | None:
    """The index of the first token where two token sequences differ, or where the shorter ends (None: the same
    tokens)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
