"""How good a trained skill is: greedy answers on held-out rows, scored against the references, beside the base's.

The prompt of a held-out row is every message before its last assistant turn, encoded exactly as the gateway
encodes a request (`adapters.masking.encode` with the generation prompt); the reference is that turn's content.
Both the adapter and the base model (the same weights with the adapter switched off) answer greedily, so the
gain the skill brings is visible in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from adapters.errors import SkillserveError
from adapters.masking import encode
from adapters.templates import ChatTemplate

Messages = list[dict[str, str]]

SAMPLE_ROWS = 5
SAMPLE_CHARS = 500
MAX_NEW_TOKENS = 128
BATCH_SIZE = 8
_WORD = re.compile(r"\w+", re.UNICODE)


class BelowMinimumScore(SkillserveError):
    """The trained adapter scored below the training request's min_score, so it was not published."""

    code = "below_min_score"


@dataclass(frozen=True)
class HeldOut:
    """One held-out row as an evaluation case."""

    prompt: Messages
    reference: str


def held_out_cases(rows: list[Messages], limit: int) -> list[HeldOut]:
    """Up to `limit` rows as cases: the messages before the last assistant turn, and its content."""
    cases = []
    for messages in rows:
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None:
            continue
        cases.append(HeldOut(messages[:last], messages[last]["content"]))
        if len(cases) >= limit:
            break
    return cases


class _WordTokenizer:
    """Lower-cased runs of word characters in any script (rouge-score's default keeps only a-z and 0-9)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text.lower())


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 of an answer against its reference (rouge-score's longest-common-subsequence scorer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    return float(scorer.score(reference, answer)["rougeL"].fmeasure)


def exact_match(answer: str, reference: str) -> bool:
    """Equal once surrounding whitespace is dropped: anything else is a different answer."""
    return answer.strip() == reference.strip()


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """The answer up to the first stop sequence, as the gateway would return it."""
    cut = len(text)
    for stop in stops:
        found = text.find(stop)
        if stop and found != -1:
            cut = min(cut, found)
    return text[:cut]


def greedy_answers(
    model: Any, tokenizer: Any, template: ChatTemplate, prompts: list[Messages], max_new_tokens: int
) -> list[str]:
    """Greedy answers, batched with left padding, stopping where the gateway stops (stop ids, then stop text)."""
    import torch

    encoded = [encode(tokenizer, template, p, add_generation_prompt=True).input_ids for p in prompts]
    stop_ids = template.stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    for start in range(0, len(encoded), BATCH_SIZE):
        batch = encoded[start : start + BATCH_SIZE]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=stop_ids or None,
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        for row in out[:, width:].tolist():
            text = tokenizer.decode(row, skip_special_tokens=True)
            answers.append(cut_at_stop(text, template.stop))
    return answers


def _last_user(prompt: Messages) -> str:
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def _clip(text: str) -> str:
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 1] + "…"


def evaluate_generations(
    model: Any, tokenizer: Any, template: ChatTemplate, eval_rows: list[Messages], limit: int
) -> dict[str, Any]:
    """Adapter and base answers on up to `limit` held-out rows: exact match, ROUGE-L and a few samples.

    `model` is a peft model; the base answers come from the same model with its adapter disabled.
    """
    cases = held_out_cases(eval_rows, limit)
    if not cases:
        return {}
    references = [c.reference for c in cases]
    longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references)
    # Room for the longest reference plus its end-of-turn, and a margin to see a rambling answer ramble.
    budget = min(MAX_NEW_TOKENS, longest + 16)
    prompts = [c.prompt for c in cases]
    was_training = model.training
    model.eval()
    try:
        adapter = greedy_answers(model, tokenizer, template, prompts, budget)
        with model.disable_adapter():
            base = greedy_answers(model, tokenizer, template, prompts, budget)
    finally:
        model.train(was_training)

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 4)

    return {
        "eval_generated": len(cases),
        "eval_exact_match": mean([float(exact_match(a, r)) for a, r in zip(adapter, references, strict=True)]),
        "eval_rouge_l": mean([rouge_l(a, r) for a, r in zip(adapter, references, strict=True)]),
        "base_exact_match": mean([float(exact_match(b, r)) for b, r in zip(base, references, strict=True)]),
        "base_rouge_l": mean([rouge_l(b, r) for b, r in zip(base, references, strict=True)]),
        "samples": [
            {
                "prompt": _clip(_last_user(c.prompt)),
                "reference": _clip(c.reference),
                "base": _clip(b.strip()),
                "adapter": _clip(a.strip()),
            }
            for c, a, b in list(zip(cases, adapter, base, strict=True))[:SAMPLE_ROWS]
        ],
    }


def check_min_score(metrics: dict[str, Any], min_score: float | None) -> None:
    """The regression guard: raise BelowMinimumScore, naming the figures, when the adapter falls short."""
    if min_score is None:
        return
    score = metrics.get("eval_rouge_l")
    if score is None:
        raise BelowMinimumScore(
            f"min_score={min_score} was set but nothing was evaluated: it needs held-out rows "
            "(eval_fraction > 0, at least 5 rows) and eval_samples > 0"
        )
    if score < min_score:
        raise BelowMinimumScore(
            f"adapter ROUGE-L {score:.4f} on {metrics.get('eval_generated')} held-out rows is below "
            f"min_score {min_score} (base model: {metrics.get('base_rouge_l')}, exact match: adapter "
            f"{metrics.get('eval_exact_match')}, base {metrics.get('base_exact_match')}); not published"
        )
