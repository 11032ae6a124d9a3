"""Preference training (DPO) of a LoRA adapter with trl's DPOTrainer: the adapter learns to prefer one answer over
another, measured against the base model (the same weights with the adapter switched off, which trl uses as the
reference model when it trains a peft adapter).

The pairs are tokenized here, not by trl: the prompt with `adapters.masking.encode_preference`, exactly as the
gateway encodes a chat request with the adapter's template, and each answer as the tokens SFT would learn of it
(content and end of turn). trl's own tokenization would render the prompt with the tokenizer's chat template
instead, and cut prompt from answer where two tokenizations first differ.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from adapters import auto
from adapters.dataset import Preference
from adapters.masking import encode_preference
from adapters.schema import Hyperparameters, Method, Phase, Progress
from adapters.templates import ChatTemplate
from trainer import distributed, forgetting
from trainer.evaluate import evaluate_generations, evaluate_preferences
from trainer.sft import (
    BestCheckpoint,
    CheckpointsFn,
    EventFn,
    PlanFn,
    ProgressFn,
    TrainResult,
    _best_callback,
    _progress_callback,
    eval_every,
    patience,
    plan_record,
    save_adapter,
    split_rows,
    train_and_keep,
    trainer_args,
)

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def split_pairs(pairs: list[Preference], eval_fraction: float, seed: int) -> tuple[list[Preference], list[Preference]]:
    """The held-out split of SFT (trainer/sft.py `split_rows`: the same seeded rule), over pairs."""
    train, held_out = split_rows(cast(Any, pairs), eval_fraction, seed)
    return cast(list[Preference], train), cast(list[Preference], held_out)


def encode_pairs(tokenizer: Any, template: ChatTemplate, pairs: list[Preference], max_len: int) -> dict[str, list]:
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


def _trainer_class() -> type:
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


def train_dpo(
    base_dir: Path,
    template: ChatTemplate,
    pairs: list[Preference],
    hp: Hyperparameters,
    method: Method,
    out_dir: Path,
    report: ProgressFn = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    progress_bar: bool | None = None,
    on_plan: PlanFn = lambda h: None,
    eval_pairs: list[Preference] | None = None,
    note: EventFn = lambda e: None,
    on_checkpoints: CheckpointsFn = lambda c: None,
) -> TrainResult:
    """Train a LoRA adapter by DPO on preference `pairs` and save it to out_dir, as `train_lora` does for SFT:
    the same hyperparameters (those left to the data chosen for DPO, adapters/auto.py), progress, cancel, plan,
    events and checkpoints (the one with the lowest held-out DPO loss is kept, `hp.keep`). With held-out pairs (a
    seeded split, or `eval_pairs`), the preference figures of adapter and base model go into the metrics
    (trainer/evaluate.py `evaluate_preferences`)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, set_seed
    from trl import DPOConfig

    report(Progress(phase=Phase.loading_model))
    automatic = auto.chosen_fields(hp)
    hp = auto.choose(hp, len(pairs), "dpo")
    assert hp.batch_size and hp.rank and hp.alpha and hp.epochs and hp.learning_rate  # chosen above
    world = distributed.world()
    device_batch = math.ceil(hp.batch_size / world.size)
    set_seed(hp.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_pairs, held_out = (pairs, eval_pairs) if eval_pairs else split_pairs(pairs, hp.eval_fraction, hp.seed)
    train_columns = encode_pairs(tokenizer, template, train_pairs, hp.max_seq_length)
    eval_columns = encode_pairs(tokenizer, template, held_out, hp.max_seq_length) if held_out else None
    train_data = Dataset.from_dict(train_columns)
    eval_data = Dataset.from_dict(eval_columns) if eval_columns else None
    # Both answers of a pair are read with their prompt, so a pair costs two sequences.
    tokens_per_epoch = sum(
        2 * len(p) + len(c) + len(r) for p, c, r in zip(*(train_columns[k] for k in PAIR_COLUMNS), strict=True)
    )

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=hp.rank, lora_alpha=hp.alpha, lora_dropout=hp.dropout, target_modules=hp.target_modules, task_type="CAUSAL_LM"
    )
    steps_per_epoch = math.ceil(len(train_pairs) / (device_batch * world.size))
    eval_steps = eval_every(steps_per_epoch) if eval_data is not None else None
    rule = BestCheckpoint(patience(hp, len(held_out)))
    keep_best = _best_callback(rule, note, on_checkpoints)
    chosen: dict[str, Any] = {}

    def plan(args: Any, state: Any) -> None:
        chosen.update(plan_record(
            hp, args, state, trainer, world, method="dpo", beta=method.beta, loss_type="sigmoid",
            reference_model="the base model (adapter disabled)",
            # trl switches dropout off in DPO, so the adapter and the reference read the same network.
            dropout_in_training=0.0 if args.disable_dropout else hp.dropout, auto_chosen=automatic,
            steps_per_epoch=steps_per_epoch, eval_every_steps=eval_steps, train_rows=len(train_pairs),
            eval_rows=len(held_out),
        ))
        on_plan(dict(chosen))

    def stop_together() -> bool:
        return distributed.any_rank(should_stop())

    with tempfile.TemporaryDirectory(prefix="skillserve-dpo-") as scratch:
        config = DPOConfig(
            **trainer_args(hp, scratch, device_batch, eval_steps, progress_bar),
            beta=method.beta,
            max_length=hp.max_seq_length,
        )
        trainer = _trainer_class()(
            model=model,
            args=config,
            train_dataset=train_data,
            eval_dataset=eval_data,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[_progress_callback(report, stop_together, tokens_per_epoch, plan, note), keep_best],
        )
        trainer.remove_callback(PrinterCallback)
        trained = train_and_keep(
            trainer, hp, rule, keep_best, rows=len(pairs), train_rows=len(train_pairs), eval_rows=len(held_out),
            tokens_per_epoch=tokens_per_epoch, evaluated=eval_data is not None, scratch=scratch, note=note,
            on_checkpoints=on_checkpoints,
        )
        metrics, peft_model = {"method": "dpo", **trained.metrics}, cast(Any, trainer.model)
        if eval_data is not None:
            # The held-out DPO loss (ln 2 = 0.693 is no preference either way); the base model has none of its own.
            metrics["eval_loss"] = round(float(trainer.evaluate()["eval_loss"]), 6)
        if not world.main:
            return TrainResult(out_dir, metrics, [], [], dict(chosen))
        eval_rows = [[*p.prompt, p.chosen] for p in held_out]
        if held_out:
            assert eval_columns is not None
            metrics.update(evaluate_preferences(peft_model, eval_columns, method.beta))
            if hp.eval_samples:
                # Greedy answers beside the base's, the preferred answer as the reference: what `show` prints.
                metrics.update(evaluate_generations(peft_model, tokenizer, template, eval_rows, hp.eval_samples))
        metrics.update(forgetting.measure(peft_model, tokenizer, template))
        targets = save_adapter(peft_model, out_dir, trained.kept)
    return TrainResult(out_dir, metrics, targets, eval_rows, dict(chosen), trained.checkpoints, trained.kept)
