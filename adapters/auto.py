"""Hyperparameters chosen from the data: every `Auto` field a request leaves out (or sets to null or "auto").

The rules depend on the number of rows only, so the gateway (checking a job's size at submit time) and the
trainer choose the same values. Each rule's reason is in RULES, which the README's table is made from; the
figures behind them are in BENCHMARKS.md ("Skill quality").
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.schema import Hyperparameters

AUTO_FIELDS = ("rank", "alpha", "epochs", "learning_rate", "batch_size")


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
        "4 up to 300 rows, 3 up to 1,000, 2 up to 5,000, else 1",
        "few rows need more passes; the best checkpoint is kept and training stops early when the held-out "
        "loss stops falling, so more epochs cost time only while they help",
    ),
    Rule(
        "learning_rate",
        "5e-4 at batch 8, scaled by the square root of batch_size / 8 (DPO: a tenth of that)",
        "1e-3 over-trained small skills (train loss far below held-out loss, facts the base knew forgotten); "
        "square-root scaling keeps the update noise the same across batch sizes",
    ),
    Rule("rank", "8 below 2,000 rows, else 16", "a small skill does not use a larger rank; more data can fill one"),
    Rule("alpha", "2 x rank", "keeps LoRA's scale (alpha / rank) at 2 whatever the rank"),
)


def _batch_size(rows: int) -> int:
    return 4 if rows < 100 else 8 if rows < 1000 else 16


def _epochs(rows: int) -> float:
    return 4.0 if rows <= 300 else 3.0 if rows <= 1000 else 2.0 if rows <= 5000 else 1.0


def _learning_rate(batch_size: int, method: str) -> float:
    rate = 5e-4 * (batch_size / 8) ** 0.5
    return float(f"{rate / 10 if method == 'dpo' else rate:.2g}")


def choose(hp: Hyperparameters, rows: int, method: str = "supervised") -> Hyperparameters:
    """`hp` with every field left to the data filled in for a dataset of `rows` rows; a value the user set stays."""
    batch_size = hp.batch_size or _batch_size(rows)
    rank = hp.rank or (8 if rows < 2000 else 16)
    return hp.model_copy(
        update={
            "batch_size": batch_size,
            "epochs": hp.epochs or _epochs(rows),
            "learning_rate": hp.learning_rate or _learning_rate(batch_size, method),
            "rank": rank,
            "alpha": hp.alpha or 2 * rank,
        }
    )


def chosen_fields(hp: Hyperparameters) -> list[str]:
    """The fields of `hp` (as requested) that `choose` decides."""
    return [name for name in AUTO_FIELDS if getattr(hp, name) is None]
