"""Reinforcement fine-tuning of a LoRA adapter toward a grader's score (`method: reinforcement`), with trl's
GRPOTrainer on the shared loop (trainer/loop.py).

GRPO rather than RLOO: both are trl's, both sample a group of completions per prompt and use the group as the
baseline, without a value model. GRPO is the one probed on this model and machine (NOTES.md, "GRPO"); its KL term
to a reference model (`beta`) is a separate loss term whose reference, for a peft model, is the base itself (the
adapter switched off: no second copy of the weights), or, for a run that continues a published adapter, a frozen
copy of that adapter (trainer/loop.py `reference_is_the_parent`), where RLOO folds the KL into the reward; and its
loss keeps every token of a sampled completion, and only those, in the gradient (tests/test_rft.py checks it).

What this module makes the same as serving:
- the prompt is encoded by `adapters.masking.encode` with the generation prompt, exactly as the gateway encodes a
  chat request with the adapter's template (trl's own tokenization would render the tokenizer's chat template);
- sampling stops at the template's stop tokens, and the completion is cut at its stop text, as the gateway answers;
- the reward is `adapters.graders.grade`, the code the Evals API and /v1/fine_tuning/alpha/graders/run use, with the
  row as sent as the grader's `item` and the completion's text as its `sample`.

The held-out figure checkpoints are kept by is the mean reward of one greedy answer per held-out prompt (the answer a
client asking at temperature 0 gets), higher is better.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, cast

from adapters import auto, graders
from adapters.dataset import Dataset
from adapters.masking import encode
from adapters.schema import Hyperparameters, Method
from adapters.templates import ChatTemplate
from trainer.evaluate import cut_at_stop, greedy_answers
from trainer.loop import Columns, Criterion, Messages, TrainerParts

HIGHEST_REWARD = Criterion("eval_reward", higher_is_better=True)


@dataclass(frozen=True)
class Prompt:
    """One reinforcement example: the conversation the model answers, and the row as sent (the grader's item)."""

    messages: Messages
    item: dict[str, Any]


class Scorer:
    """The grader's score of completions, each decoded and cut as the gateway would return it."""

    def __init__(self, grader: graders.AnyGrader, tokenizer: Any, template: ChatTemplate) -> None:
        self.grader, self.tokenizer, self.template = grader, tokenizer, template

    def text(self, completion_ids: list[int]) -> str:
        return cut_at_stop(self.tokenizer.decode(completion_ids, skip_special_tokens=True), self.template.stop)

    def scores(self, texts: list[str], items: list[dict[str, Any]]) -> list[float]:
        async def grade_all() -> list[graders.GradeResult]:
            return await asyncio.gather(*(graders.grade(self.grader, item, text) for text, item in zip(
                texts, items, strict=True)))

        return [result.score for result in asyncio.run(grade_all())]


def encode_prompts(tokenizer: Any, template: ChatTemplate, prompts: list[Prompt], max_len: int) -> Columns:
    """The columns GRPOTrainer reads: `prompt` (the messages as JSON, encoded when sampled by `prompt_ids`), `item`
    (the row as JSON; datasets cannot hold rows of different shapes as objects) and the prompt's length."""
    return {
        "prompt": [json.dumps(p.messages, ensure_ascii=False) for p in prompts],
        "item": [json.dumps(p.item, ensure_ascii=False) for p in prompts],
        "prompt_tokens": [len(prompt_ids(tokenizer, template, p.messages)[:max_len]) for p in prompts],
    }


def prompt_ids(tokenizer: Any, template: ChatTemplate, messages: Messages) -> list[int]:
    """A prompt's ids as the gateway sends them to the engine."""
    return encode(tokenizer, template, messages, add_generation_prompt=True).input_ids


def grpo_trainer_class() -> type:
    from transformers import Trainer
    from trl import GRPOTrainer

    class GraderGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
        """GRPOTrainer with the prompt encoded by adapters/masking.py, a greedy held-out reward as its evaluation,
        and the seconds spent sampling and grading counted."""

        def __init__(self, *args: Any, scorer: Scorer, max_prompt_tokens: int, **kwargs: Any) -> None:
            self.scorer, self.max_prompt_tokens = scorer, max_prompt_tokens
            self.sampling_seconds = self.grading_seconds = self.held_out_seconds = 0.0
            self._logged_sampling = 0.0
            super().__init__(*args, **kwargs)

        def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
            # The rows' prompts were checked against max_seq_length at submit time; this only guards a direct call.
            ids = [prompt_ids(self.scorer.tokenizer, self.scorer.template, json.loads(p))[-self.max_prompt_tokens:]
                   for p in prompts]
            return ids, None, {}

        def _generate(self, prompts: list) -> Any:
            started = time.monotonic()
            try:
                return super()._generate(prompts)
            finally:
                self.sampling_seconds += time.monotonic() - started

        def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
            started = time.monotonic()
            try:
                return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            finally:
                self.grading_seconds += time.monotonic() - started

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if cast(Any, self.model).training and "loss" in logs:
                logs["sampling_seconds"] = round(self.sampling_seconds - self._logged_sampling, 3)
                self._logged_sampling = self.sampling_seconds
            super().log(logs, start_time)

        def evaluate(
            self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
        ) -> dict[str, float]:
            started = time.monotonic()
            rows: Any = self.eval_dataset if eval_dataset is None else eval_dataset
            reward = held_out_reward(self.model, self.scorer, list(rows["prompt"]), list(rows["item"]),
                                     cast(Any, self.args).max_completion_length)
            self.held_out_seconds += time.monotonic() - started
            metrics = {f"{metric_key_prefix}_reward": round(reward, 6),
                       f"{metric_key_prefix}_runtime": round(time.monotonic() - started, 3)}
            # Trainer.log, not GRPO's: GRPO's would take this for a training log and add its step metrics to it.
            Trainer.log(self, metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return GraderGRPOTrainer


def held_out_reward(model: Any, scorer: Scorer, prompts: list[str], items: list[str], max_new_tokens: int) -> float:
    """The mean grader score of the model's greedy answers to held-out prompts (JSON columns of `encode_prompts`)."""
    was_training = model.training
    model.eval()
    try:
        answers = greedy_answers(model, scorer.tokenizer, scorer.template, [json.loads(p) for p in prompts],
                                 max_new_tokens)
    finally:
        model.train(was_training)
    scores = scorer.scores(answers, [json.loads(item) for item in items])
    return sum(scores) / len(scores) if scores else 0.0


class Reinforcement:
    """On-policy reinforcement learning toward a grader (`method: reinforcement`): GRPO over the adapter's own
    samples, rewarded by the grader, held near the base by a KL term."""

    name = "reinforcement"
    criterion = HIGHEST_REWARD

    def __init__(self, spec: Method) -> None:
        self.spec = spec
        self.grader = graders.check_local(graders.validate(spec.grader, "method.grader"), "method.grader")
        self.rows = 0
        self.tokenizer: Any = None
        self.template: ChatTemplate | None = None

    @property
    def label(self) -> dict[str, Any]:
        return {"method": self.name, "grader": self.grader.type}

    def examples(self, dataset: Dataset) -> list[Prompt]:
        self.rows = len(dataset.rows)
        return [Prompt(messages, item) for messages, item in zip(dataset.rows, dataset.items, strict=True)]

    def encode(self, tokenizer: Any, template: ChatTemplate, examples: list[Prompt], max_len: int) -> Columns:
        self.tokenizer, self.template = tokenizer, template  # what the reward decodes and cuts with
        return encode_prompts(tokenizer, template, examples, max_len)

    def samples_per_prompt(self) -> int:
        return auto.samples_per_prompt(self.spec, self.rows)

    def tokens(self, columns: Columns) -> int:
        # Each prompt is read once per sample, with up to max_completion_tokens of its sample.
        per_sample = [n + self.spec.max_completion_tokens for n in columns["prompt_tokens"]]
        return sum(per_sample) * self.samples_per_prompt()

    def eval_rows(self, held_out: list[Prompt]) -> list[Messages]:
        return []  # no reference answers: the held-out figure is the grader's (held_out_figures)

    def plan(self, hp: Hyperparameters, args: Any) -> dict[str, Any]:
        return {
            "method": self.name, "algorithm": "GRPO (trl)", "grader": self.spec.grader,
            "samples_per_prompt": args.num_generations, "kl_beta": args.beta, "loss_type": args.loss_type,
            "max_completion_tokens": args.max_completion_length, "temperature": args.temperature,
            "reference_model": "the base model (adapter disabled)",
            "prompts_per_step": args.per_device_train_batch_size // args.num_generations,
            "held_out_figure": "mean reward of one greedy answer per held-out prompt",
        }

    def build_trainer(self, hp: Hyperparameters, args: dict[str, Any], parts: TrainerParts) -> Any:
        from trl import GRPOConfig

        assert self.tokenizer is not None and self.template is not None  # encode ran first
        samples = self.samples_per_prompt()
        stop_ids = self.template.stop_token_ids(self.tokenizer)
        if stop_ids:  # sampling stops where the gateway stops
            parts.model.generation_config.eos_token_id = stop_ids
        config = GRPOConfig(
            **{**args, "per_device_train_batch_size": args["per_device_train_batch_size"] * samples,
               "per_device_eval_batch_size": samples},
            num_generations=samples,
            max_completion_length=self.spec.max_completion_tokens,
            temperature=self.spec.temperature,
            top_p=1.0,
            top_k=0,
            beta=self.spec.kl_beta,
            remove_unused_columns=False,
            log_completions=False,
        )
        scorer = Scorer(self.grader, self.tokenizer, self.template)

        def grader(completion_ids: list[list[int]], item: list[str], **_: Any) -> list[float]:
            texts = [scorer.text(ids) for ids in completion_ids]
            return scorer.scores(texts, [json.loads(row) for row in item])

        return grpo_trainer_class()(
            model=parts.model, reward_funcs=[grader], args=config, train_dataset=parts.train_data,
            eval_dataset=parts.eval_data, processing_class=parts.tokenizer, peft_config=parts.lora,
            callbacks=parts.callbacks, scorer=scorer, max_prompt_tokens=hp.max_seq_length,
        )

    def held_out_losses(self, trainer: Any) -> dict[str, Any]:
        # Where the time went: sampling (generation), grading, and the greedy held-out evaluations; the rest of
        # train_seconds is the scoring forward passes and the optimizer steps.
        return {
            "sampling_seconds": round(trainer.sampling_seconds, 2),
            "grading_seconds": round(trainer.grading_seconds, 2),
            "held_out_seconds": round(trainer.held_out_seconds, 2),
            "samples_per_prompt": trainer.num_generations,
        }

    def held_out_figures(self, model: Any, columns: Columns) -> dict[str, Any]:
        assert self.tokenizer is not None and self.template is not None
        scorer = Scorer(self.grader, self.tokenizer, self.template)
        budget = self.spec.max_completion_tokens
        adapter = held_out_reward(model, scorer, columns["prompt"], columns["item"], budget)
        with model.disable_adapter():
            base = held_out_reward(model, scorer, columns["prompt"], columns["item"], budget)
        return {"eval_prompts": len(columns["prompt"]), "eval_reward": round(adapter, 4),
                "base_eval_reward": round(base, 4)}
