"""Masked SFT of a LoRA adapter with trl's SFTTrainer: the loss covers assistant tokens only (a method of the shared
loop, trainer/loop.py)."""

from __future__ import annotations

from typing import Any

from adapters.dataset import Dataset
from adapters.masking import encode
from adapters.schema import Hyperparameters
from adapters.templates import ChatTemplate
from trainer.loop import LOWEST_LOSS, Columns, Messages, TrainerParts


def encode_rows(tokenizer: Any, template: ChatTemplate, rows: list[Messages], max_len: int) -> Columns:
    """Columns trl takes as an already tokenized dataset; it turns `assistant_masks` into -100 labels."""
    ids, masks = [], []
    for messages in rows:
        encoded = encode(tokenizer, template, messages)
        ids.append(encoded.input_ids[:max_len])
        masks.append(encoded.assistant_mask[:max_len])
    return {"input_ids": ids, "assistant_masks": masks}


class Supervised:
    """Supervised fine-tuning on the assistant's answers (`method: supervised`, the default)."""

    name = "supervised"
    criterion = LOWEST_LOSS

    @property
    def label(self) -> dict[str, Any]:
        return {}

    def examples(self, dataset: Dataset) -> list[Messages]:
        return dataset.rows

    def encode(self, tokenizer: Any, template: ChatTemplate, examples: list[Messages], max_len: int) -> Columns:
        return encode_rows(tokenizer, template, examples, max_len)

    def tokens(self, columns: Columns) -> int:
        return sum(len(ids) for ids in columns["input_ids"])

    def eval_rows(self, held_out: list[Messages]) -> list[Messages]:
        return held_out

    def plan(self, hp: Hyperparameters, args: Any) -> dict[str, Any]:
        return {}

    def build_trainer(self, hp: Hyperparameters, args: dict[str, Any], parts: TrainerParts) -> Any:
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(
            **args,
            # encode_rows truncates already; trl refuses a max_length it cannot enforce without packing.
            max_length=None if hp.padding_free else hp.max_seq_length,
            # One unpadded row per batch; position ids restart per example, and transformers turns them into a
            # block-diagonal mask on sdpa/eager too, so no example attends to another (tests/test_padding_free.py).
            padding_free=bool(hp.padding_free),  # decided by now (trainer/layout.py)
            # Noisy embeddings while training (NEFTune): on the quality benchmark, alpha 5 scored as well or better
            # than none on every task (BENCHMARKS.md), at no cost in time. Off for 0. Its noise shrinks with the row's
            # length, so packed rows get a larger alpha (trainer/layout.py `neftune_scale`).
            neftune_noise_alpha=hp.neftune_noise_alpha * parts.neftune_scale or None,
        )
        return SFTTrainer(
            model=parts.model, args=config, train_dataset=parts.train_data, eval_dataset=parts.eval_data,
            processing_class=parts.tokenizer, peft_config=parts.lora, callbacks=parts.callbacks,
        )

    def held_out_losses(self, trainer: Any) -> dict[str, Any]:
        losses = {"eval_loss": round(float(trainer.evaluate()["eval_loss"]), 6)}
        # Under another prefix, so the progress callback does not take the base's loss for the adapter's.
        with trainer.model.disable_adapter():
            losses["base_eval_loss"] = round(float(trainer.evaluate(metric_key_prefix="base")["base_loss"]), 6)
        return losses

    def held_out_figures(self, model: Any, columns: Columns) -> dict[str, Any]:
        return {}
