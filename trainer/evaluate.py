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


def answer_logps(model: Any, prompts: list[list[int]], answers: list[list[int]]) -> list[float]:
    """The log-probability of each answer after its prompt (summed over the answer's tokens, teacher-forced)."""
    import torch

    sums: list[float] = []
    for start in range(0, len(prompts), BATCH_SIZE):
        batch = [p + a for p, a in zip(prompts[start : start + BATCH_SIZE], answers[start : start + BATCH_SIZE],
                                       strict=True)]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in batch])
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch])
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
        for row, (prompt, answer) in enumerate(
            zip(prompts[start : start + BATCH_SIZE], answers[start : start + BATCH_SIZE], strict=True)
        ):
            # Position i predicts token i + 1: the answer's tokens are predicted from len(prompt) - 1 on.
            first = len(prompt) - 1
            sums.append(float(token_logps[row, first : first + len(answer)].sum()))
    return sums


def evaluate_preferences(model: Any, pairs: dict[str, list], beta: float) -> dict[str, Any]:
    """How often the adapter, and the base model, prefer the preferred answer of held-out pairs.

    `pairs` are the columns of trainer/dpo.py `encode_pairs` (prompt ids as the gateway sends them, each answer's
    learned tokens). `model` is a peft model; the base is the same model with its adapter disabled, which is also
    DPO's reference. Log-probabilities are summed over an answer's tokens, not length-normalised: the probability
    of the whole answer, the quantity DPO's reward is made of.
    """
    prompts, chosen, rejected = pairs["prompt_ids"], pairs["chosen_ids"], pairs["rejected_ids"]
    if not prompts:
        return {}
    was_training = model.training
    model.eval()
    try:
        adapter_c, adapter_r = answer_logps(model, prompts, chosen), answer_logps(model, prompts, rejected)
        with model.disable_adapter():
            base_c, base_r = answer_logps(model, prompts, chosen), answer_logps(model, prompts, rejected)
    finally:
        model.train(was_training)
    # DPO's implicit reward of an answer: beta x log(p_adapter / p_base).
    margins = [
        beta * ((ac - bc) - (ar - br)) for ac, ar, bc, br in zip(adapter_c, adapter_r, base_c, base_r, strict=True)
    ]
    n = len(prompts)

    def share(flags: list[bool]) -> float:
        return round(sum(flags) / n, 4)

    return {
        "eval_pairs": n,
        "eval_preference_accuracy": share([m > 0 for m in margins]),
        "eval_reward_margin": round(sum(margins) / n, 4),
        "eval_likelihood_preference": share([c > r for c, r in zip(adapter_c, adapter_r, strict=True)]),
        "base_preference_accuracy": share([c > r for c, r in zip(base_c, base_r, strict=True)]),
        "eval_logp_preferred": round(sum(adapter_c) / n, 4),
        "base_logp_preferred": round(sum(base_c) / n, 4),
    }
