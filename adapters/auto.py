"""Hyperparameters chosen from the data: every `Auto` field a request leaves out (or sets to null or "auto").

The rules of AUTO_FIELDS depend on the number of rows only, so the gateway (checking a job's size at submit time)
and the trainer choose the same values. Those of TRAINER_AUTO_FIELDS change how a run computes, not what it
learns, and need the encoded rows, the model and the memory free: the trainer decides them (trainer/layout.py).
Each rule's reason is in RULES, which the README's table is made from; the
figures behind them are in BENCHMARKS.md ("Skill quality").
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.schema import Hyperparameters, Method

AUTO_FIELDS = ("rank", "alpha", "epochs", "learning_rate", "batch_size")
# A method's own fields the data decides (adapters/schema.py `Method`)
METHOD_AUTO_FIELDS = ("samples_per_prompt",)
# Decided by the trainer when it has the rows' lengths and the model (trainer/layout.py `lay_out`)
TRAINER_AUTO_FIELDS = ("padding_free", "gradient_checkpointing")


@dataclass(frozen=True)
class Rule:
    field: str
    rule: str
    reason: str


RULES = (
    Rule(
        "batch_size",
        "4 below 100 rows, 8 below 1,000, else 16",
        "small datasets need steps more than smooth gradients: with 50 rows a batch of 8 is 6 steps an epoch",
    ),
    Rule(
        "epochs",
        "3 up to 1,000 rows, 2 up to 5,000, else 1",
        "on the quality benchmark two epochs at 1e-3 beat four at 3.5e-4 on the format skills (recall, dates, "
        "extract) and trailed by one row of 36 on two others; three leave the best-checkpoint rule room to "
        "choose, in less time than the former default of four",
    ),
    Rule(
        "learning_rate",
        "1e-3 at batch 8, scaled by the square root of batch_size / 8 (DPO: a tenth of that; reinforcement: half)",
        "3.5e-4 under-trained the format skills of the quality benchmark (recall, dates: 3 rows of 36 behind "
        "1e-3); the over-training 1e-3 risks is caught by keeping the best held-out checkpoint; square-root "
        "scaling keeps the update noise alike across batch sizes. Reinforcement: GRPO probes on this model "
        "(NOTES.md) moved the sampled reward at 5e-4 and not at 3e-5, and its updates are noisier than SFT's",
    ),
    Rule(
        "samples_per_prompt",
        "reinforcement only: 8 below 500 rows, else 4; x compute_multiplier (at least 2)",
        "GRPO learns from the spread of rewards within a prompt's group: 8 samples find a correct answer the base "
        "gives one time in eight, while a large dataset has more prompts to learn from and the same time per step",
    ),
    Rule(
        "padding_free",
        "supervised only: on when packing a batch's rows into one row is at most 0.8x the work of padding them to "
        "the longest, counted from the rows' token lengths and the model's sizes",
        "packing drops the padding's work but attends over the whole packed row; on mixed lengths (the training "
        "benchmark's 47-249 tokens) it trained 1.37-1.93x faster, on rows of one length it gains nothing and "
        "changes the batches (every quality-benchmark task stays padded)",
    ),
    Rule(
        "gradient_checkpointing",
        "supervised only: off when the largest batch's activations, measured per token on the model, fit in half "
        "the memory free (the container's limit less its use, or the GPU's); else on",
        "recomputing costs a forward pass a step (up to 1.18x slower in the training benchmark) to save the "
        "activations' memory (1.8x less peak there); where they fit, that memory is there and the time is not",
    ),
    Rule("rank", "8 below 2,000 rows, else 16", "a small skill does not use a larger rank; more data can fill one"),
    Rule("alpha", "2 x rank", "keeps LoRA's scale (alpha / rank) at 2 whatever the rank"),
)


def _batch_size(rows: int) -> int:
    return 4 if rows < 100 else 8 if rows < 1000 else 16


def _epochs(rows: int) -> float:
    return 3.0 if rows <= 1000 else 2.0 if rows <= 5000 else 1.0


def _learning_rate_of(batch_size: int, method: str) -> float:
    rate = 1e-3 * (batch_size / 8) ** 0.5
    divisor = {"dpo": 10, "reinforcement": 2}.get(method, 1)
    return float(f"{rate / divisor:.2g}")


def samples_per_prompt(method: Method, rows: int, compute_multiplier: float = 1.0) -> int:
    """Completions sampled per prompt at each reinforcement step: the method's own if set, else from the rows."""
    if method.samples_per_prompt:
        return method.samples_per_prompt
    return max(2, min(64, round((8 if rows < 500 else 4) * compute_multiplier)))


def held_out_rows(rows: int, eval_fraction: float) -> int:
    """Rows a run holds out of its training rows when it has no validation rows of its own: `eval_fraction` of
    them, at least one when any is asked for, none below 5 rows."""
    return max(1, round(rows * eval_fraction)) if eval_fraction > 0 and rows >= 5 else 0


def steps_per_epoch(rows: int, batch_size: int, method: str = "supervised") -> int:
    """Optimizer steps in one pass over `rows` training rows at `batch_size` rows a step. The last, incomplete batch
    is a step of its own, except in reinforcement: trl's GRPO sampler (RepeatSampler) draws whole groups of
    `batch_size` prompts and drops the rest each epoch."""
    return rows // batch_size if method == "reinforcement" else -(-rows // batch_size)


def choose(hp: Hyperparameters, rows: int, method: str = "supervised") -> Hyperparameters:
    """`hp` with every field left to the data filled in for a dataset of `rows` rows; a value the user set stays."""
    batch_size = hp.batch_size or _batch_size(rows)
    rank = hp.rank or (8 if rows < 2000 else 16)
    return hp.model_copy(
        update={
            "batch_size": batch_size,
            "epochs": hp.epochs or _epochs(rows),
            "learning_rate": hp.learning_rate or _learning_rate_of(batch_size, method),
            "rank": rank,
            "alpha": hp.alpha or 2 * rank,
        }
    )


def chosen_fields(hp: Hyperparameters) -> list[str]:
    """The fields of `hp` (as requested) that `choose` or the trainer decide."""
    return [name for name in AUTO_FIELDS + TRAINER_AUTO_FIELDS if getattr(hp, name) is None]
