"""Preference training (DPO) of a LoRA adapter with trl's DPOTrainer: the adapter learns to prefer one answer over
another, measured against the base model (the same weights with the adapter switched off, which trl uses as the
reference model when it trains a peft adapter).

The pairs are tokenized here, not by trl: the prompt with `adapters.masking.encode_preference`, exactly as the
gateway encodes a chat request with the adapter's template, and each answer as the tokens SFT would learn of it
(content and end of turn). trl's own tokenization would render the prompt with the tokenizer's chat template
instead, and cut prompt from answer where two tokenizations first differ.
"""

from __future__ import annotations

from typing import Any

from adapters.dataset import Dataset, Preference
from adapters.masking import encode_preference
from adapters.schema import Hyperparameters
from adapters.templates import ChatTemplate
from trainer.evaluate import evaluate_preferences
from trainer.loop import LOWEST_LOSS, Columns, Messages, TrainerParts

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def encode_pairs(tokenizer: Any, template: ChatTemplate, pairs: list[Preference], max_len: int) -> Columns:
    """The columns of a pre-tokenized preference dataset, each prompt + answer cut to `max_len` tokens (the
    dataset was checked against that limit at submit time, so this only guards a direct call)."""
    columns: dict[str, list] = {name: [] for name in PAIR_COLUMNS}
    for pair in pairs:
        encoded = encode_preference(tokenizer, template, pair.prompt, pair.chosen, pair.rejected)
        prompt = encoded.prompt_ids[:max_len]
        room = max_len - len(prompt)
        columns["prompt_ids"].append(prompt)
        columns["chosen_ids"].append(encoded.chosen_ids[:room])
        columns["rejected_ids"].append(encoded.rejected_ids[:room])
    return columns


def dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):  # type: ignore[misc]
        """DPOTrainer on rows already tokenized by `encode_pairs`.

        trl 1.16 has no switch for a pre-tokenized preference dataset: `_prepare_dataset` always templates and
        tokenizes `prompt`/`chosen`/`rejected` text. Its output is exactly our columns (`prompt_ids`, `chosen_ids`,
        `rejected_ids`), which its collator turns into a completion mask of 1 on the answer tokens only; so the
        rows pass through untouched (tests/test_dpo.py checks the collated batch).
        """

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            missing = set(PAIR_COLUMNS) - set(dataset.column_names)
            if missing:
                raise ValueError(f"{dataset_name} dataset lacks {sorted(missing)}: tokenize it with encode_pairs")
            return dataset

    return PreTokenizedDPOTrainer


class DirectPreference:
    """Direct preference optimization (`method: dpo`): the adapter learns to prefer one answer to the other, against
    the base model (the same weights with the adapter off, which trl uses as the reference for a peft model)."""

    name = "dpo"
    criterion = LOWEST_LOSS

    def __init__(self, beta: float) -> None:
        self.beta = beta

    @property
    def label(self) -> dict[str, Any]:
        return {"method": self.name}

    def examples(self, dataset: Dataset) -> list[Preference]:
        return dataset.pairs

    def encode(self, tokenizer: Any, template: ChatTemplate, examples: list[Preference], max_len: int) -> Columns:
        return encode_pairs(tokenizer, template, examples, max_len)

    def tokens(self, columns: Columns) -> int:
        # Both answers of a pair are read with their prompt, so a pair costs two sequences.
        return sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(*(columns[k] for k in PAIR_COLUMNS), strict=True))

    def eval_rows(self, held_out: list[Preference]) -> list[Messages]:
        # Greedy answers beside the base's, the preferred answer as the reference: what `show` prints.
        return [[*p.prompt, p.chosen] for p in held_out]

    def plan(self, hp: Hyperparameters, args: Any) -> dict[str, Any]:
        return {
            "method": self.name, "beta": self.beta, "loss_type": "sigmoid",
            "reference_model": "the base model (adapter disabled)",
            # trl switches dropout off in DPO, so the adapter and the reference read the same network.
            "dropout_in_training": 0.0 if args.disable_dropout else hp.dropout,
        }

    def build_trainer(self, hp: Hyperparameters, args: dict[str, Any], parts: TrainerParts) -> Any:
        from trl import DPOConfig

        config = DPOConfig(**args, beta=self.beta, max_length=hp.max_seq_length)
        return dpo_trainer_class()(
            model=parts.model, args=config, train_dataset=parts.train_data, eval_dataset=parts.eval_data,
            processing_class=parts.tokenizer, peft_config=parts.lora, callbacks=parts.callbacks,
        )

    def held_out_losses(self, trainer: Any) -> dict[str, Any]:
        # The held-out DPO loss (ln 2 = 0.693 is no preference either way); the base model has none of its own.
        return {"eval_loss": round(float(trainer.evaluate()["eval_loss"]), 6)}

    def held_out_figures(self, model: Any, columns: Columns) -> dict[str, Any]:
        return evaluate_preferences(model, columns, self.beta)
