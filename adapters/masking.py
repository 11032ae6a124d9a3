"""Masked SFT encoding: token ids plus a mask that is 1 exactly on what the model should learn to say.

Both the trainer (every example) and the gateway (every prompt) encode through `encode`, so the prompt
tokens a request sends to the engine are the very tokens the adapter was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.errors import TemplateError
from adapters.templates import ChatTemplate, render


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    assistant_mask: list[int]

    @property
    def labels(self) -> list[int]:
        """Causal-LM labels: -100 wherever the model must not learn."""
        return [tok if keep else -100 for tok, keep in zip(self.input_ids, self.assistant_mask, strict=True)]


def _tokenize(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(with_special) and with_special[0] == bos and with_special != _tokenize(tokenizer, "a")


def encode(
    tokenizer: Any,
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool = False,
) -> Encoded:
    """Render `messages` with `template` and tokenize it span by span.

    Prompt and assistant spans are tokenized apart, so no token straddles the boundary and a prompt encodes
    to the same ids whether or not its answer follows. A tokenizer that starts sequences with BOS gets
    exactly one, whether or not the template writes it.
    """
    rendered = render(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )
    ids: list[int] = []
    mask: list[int] = []
    cursor = 0
    for start, end in [*rendered.spans, (len(rendered.text), len(rendered.text))]:
        prompt = _tokenize(tokenizer, rendered.text[cursor:start])
        answer = _tokenize(tokenizer, rendered.text[start:end])
        ids += prompt + answer
        mask += [0] * len(prompt) + [1] * len(answer)
        cursor = end
    if _adds_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        ids.insert(0, tokenizer.bos_token_id)
        mask.insert(0, 0)
    return Encoded(ids, mask)


@dataclass(frozen=True)
class EncodedPreference:
    """A preference pair as DPO trains on it: the prompt's ids, and the ids of each answer after it."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


def _answer_ids(tokenizer: Any, template: ChatTemplate, prompt: list[dict[str, Any]], answer: dict[str, Any],
                prompt_ids: list[int]) -> list[int]:
    full = encode(tokenizer, template, [*prompt, answer])
    if full.input_ids[: len(prompt_ids)] != prompt_ids:
        raise TemplateError(
            f"template {template.name!r} renders the prompt differently when an answer follows it, so the "
            "trained prompt would not be the one the gateway sends"
        )
    tail = full.assistant_mask[len(prompt_ids) :]
    if 1 not in tail:
        raise TemplateError("nothing to learn: the template leaves no answer tokens")
    # The answer is what SFT would learn of that turn: its content and end-of-turn. Template text after it
    # (chatml's newline) is neither learned nor ever generated, so it is left out here too.
    end = len(tail) - tail[::-1].index(1)
    if 0 in tail[:end]:
        raise TemplateError("the answer's learned tokens are not one span")
    return full.input_ids[len(prompt_ids) : len(prompt_ids) + end]


def encode_preference(
    tokenizer: Any,
    template: ChatTemplate,
    prompt: list[dict[str, Any]],
    chosen: dict[str, Any],
    rejected: dict[str, Any],
) -> EncodedPreference:
    """Encode a preference pair: the prompt exactly as the gateway encodes a chat request (generation prompt
    added), then each answer's learned tokens as `encode` marks them. Only the answers get a loss; the prompt,
    earlier assistant turns included, is context."""
    prompt_ids = encode(tokenizer, template, prompt, add_generation_prompt=True).input_ids
    return EncodedPreference(
        prompt_ids,
        _answer_ids(tokenizer, template, prompt, chosen, prompt_ids),
        _answer_ids(tokenizer, template, prompt, rejected, prompt_ids),
    )
