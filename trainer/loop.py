"""The training loop every method shares: a LoRA adapter trained with trl, checkpoints evaluated on held-out rows,
the best one kept and saved, progress and cancel through the caller's hooks.

A method (trainer/sft.py, trainer/dpo.py; chosen by name in trainer/methods.py) supplies what differs: how its
examples are encoded (always through adapters/masking.py, the encoding the gateway serves with), its trl trainer
and loss, and its own held-out figures. `train` does the rest, the same for every method.
"""

from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from adapters import auto
from adapters.dataset import Dataset
from adapters.hardware import resolve_dtype
from adapters.schema import Checkpoint, Hyperparameters, JobEvent, Phase, Progress
from adapters.templates import ChatTemplate
from trainer import distributed, forgetting
from trainer.evaluate import evaluate_generations
from trainer.layout import lay_out

ProgressFn = Callable[[Progress], None]
# The step figures a job's metrics events carry, when the method logs them (reinforcement: reward, its spread, KL
# to the base, and the seconds spent sampling and grading).
LOGGED = ("loss", "eval_loss", "learning_rate", "reward", "reward_std", "kl", "eval_reward", "sampling_seconds",
          "completions/mean_length")
PlanFn = Callable[[dict[str, Any]], None]
EventFn = Callable[[JobEvent], None]
CheckpointsFn = Callable[[list[Checkpoint]], None]
Messages = list[dict[str, str]]
Columns = dict[str, list]
Example = TypeVar("Example")
# Early stopping needs a held-out loss that means something: on fewer rows than this, one odd row decides,
# and on the quality benchmark it stopped small skills too soon. The best checkpoint is still kept.
MIN_ROWS_TO_STOP_EARLY = 8
# Evaluations per epoch when an epoch has enough steps: finer than one per epoch, so the best point is not
# missed by most of an epoch; each costs a forward pass over the held-out rows (a tenth of the data).
EVALS_PER_EPOCH = 2


class Cancelled(Exception):
    """Training was stopped on request; nothing is published."""


@dataclass
class TrainResult:
    adapter_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    target_modules: list[str] = field(default_factory=list)
    eval_rows: list[Messages] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    # Adapter directories of checkpoints kept beside the published one (the last step's, when the best was
    # earlier), by step: publishable as versions later.
    kept: dict[int, Path] = field(default_factory=dict)


def _ignore(*_: Any) -> None:
    return None


@dataclass
class Hooks:
    """What the caller hears of a run, and how it stops one: `report` gets progress (phase, step, losses, ETA),
    `on_plan` every hyperparameter in use once training starts (the trainer's own choices included), `note` the
    job's events, `on_checkpoints` the evaluations so far; `should_stop` is asked after every step (a cancel)."""

    report: ProgressFn = _ignore
    should_stop: Callable[[], bool] = lambda: False
    progress_bar: bool | None = None  # tqdm on stderr; None: when stderr is a terminal
    on_plan: PlanFn = _ignore
    note: EventFn = _ignore
    on_checkpoints: CheckpointsFn = _ignore


@dataclass
class TrainerParts:
    """What the loop hands a method to build its trl trainer with."""

    model: Any  # the base model in float32; the trainer wraps it with `lora`
    tokenizer: Any
    lora: Any  # peft's LoraConfig, from the hyperparameters
    train_data: Any  # a datasets.Dataset of the method's encoded columns
    eval_data: Any  # the same of the held-out examples, or None
    callbacks: list[Any]  # progress, cancel and best-kept: pass them on
    neftune_scale: float = 1.0  # NEFTune's alpha multiplier on packed rows (trainer/layout.py)


@dataclass(frozen=True)
class Criterion:
    """The held-out figure a method's checkpoints are compared by: its name in trl's evaluation metrics, and which
    way is better."""

    metric: str = "eval_loss"
    higher_is_better: bool = False

    @property
    def label(self) -> str:
        return self.metric.removeprefix("eval_").replace("_", " ")


LOWEST_LOSS = Criterion()


# The methods whose loss holds the adapter near a reference model (DPO's implicit reward, reinforcement's KL term),
# and the name of the adapter trl reads a peft model's reference from when there is one.
REFERENCE_METHODS = ("dpo", "reinforcement")
REFERENCE_ADAPTER = "ref"


class TrainingMethod(Protocol):
    """What a training method supplies to the shared loop (`train`); the loop owns the rest: the held-out split, the
    LoRA and the schedule, checkpoints and the one kept, progress, cancel, the saved adapter. Chosen by name in
    trainer/methods.py."""

    @property
    def name(self) -> str:
        """The job's `method.type`; also picks this method's defaults in adapters/auto.py."""
        ...

    @property
    def criterion(self) -> Criterion:
        """What the best checkpoint is chosen by: the lowest held-out loss (supervised, DPO) or the highest held-out
        reward (reinforcement)."""
        ...

    @property
    def label(self) -> dict[str, Any]:
        """What the metrics say first about the method (nothing for supervised, the default)."""
        ...

    def examples(self, dataset: Dataset) -> list[Any]:
        """What it trains on, from a parsed dataset: conversations, preference pairs."""
        ...

    def encode(self, tokenizer: Any, template: ChatTemplate, examples: list[Any], max_len: int) -> Columns:
        """The pre-tokenized dataset's columns, the prompt encoded by adapters/masking.py as the gateway encodes it."""
        ...

    def tokens(self, columns: Columns) -> int:
        """Tokens the model reads in one pass over the encoded examples (for the throughput figures)."""
        ...

    def eval_rows(self, held_out: list[Any]) -> list[Messages]:
        """Held-out examples as conversations ending in the reference answer, for the greedy evaluation."""
        ...

    def plan(self, hp: Hyperparameters, args: Any) -> dict[str, Any]:
        """Its own figures for the plan record, given trl's final training arguments."""
        ...

    def build_trainer(self, hp: Hyperparameters, args: dict[str, Any], parts: TrainerParts) -> Any:
        """Its trl trainer (its loss), configured with `args` (`trainer_args`, shared) and its own settings."""
        ...

    def held_out_losses(self, trainer: Any) -> dict[str, Any]:
        """The kept adapter's held-out loss, and what it compares with; run on every rank (collective)."""
        ...

    def held_out_figures(self, model: Any, columns: Columns) -> dict[str, Any]:
        """Its own figures of the kept adapter on the encoded held-out examples; rank 0 only."""
        ...


def eval_every(steps_per_epoch: int) -> int:
    """Optimizer steps between two held-out evaluations."""
    return max(1, steps_per_epoch // EVALS_PER_EPOCH) if steps_per_epoch >= 2 * EVALS_PER_EPOCH else steps_per_epoch


def patience(hp: Hyperparameters, eval_rows: int) -> int:
    """Evaluations without a better held-out loss that stop training; 0 (never) for keep=last or a split too small
    to stop on."""
    return hp.early_stopping_patience if hp.keep == "best" and eval_rows >= MIN_ROWS_TO_STOP_EARLY else 0


class BestCheckpoint:
    """Which evaluation had the best held-out figure (by `criterion`: the lowest loss unless told otherwise), and
    whether training should stop: the rule alone, so it is unit-tested without a trainer. `patience` evaluations in
    a row without a better figure stop training (0: never).
    """

    def __init__(self, patience: int, criterion: Criterion = LOWEST_LOSS):
        self.patience = patience
        self.criterion = criterion
        self.best_step: int | None = None
        self.best_loss = -math.inf if criterion.higher_is_better else math.inf  # the best figure, loss or not
        self.since_best = 0
        self.stopped_at: int | None = None

    def update(self, step: int, figure: float) -> bool:
        """Record one evaluation; True when it is the best so far (ties keep the earlier, less-trained one)."""
        better = figure > self.best_loss if self.criterion.higher_is_better else figure < self.best_loss
        if better:
            self.best_step, self.best_loss, self.since_best = step, figure, 0
            return True
        self.since_best += 1
        return False

    def should_stop(self, step: int) -> bool:
        if self.patience and self.since_best >= self.patience:
            self.stopped_at = step
            return True
        return False


def split_rows(rows: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded shuffle, then the last `eval_fraction` (at least one row when any is asked for) held out; the same
    rule for every method's examples."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = auto.held_out_rows(len(rows), eval_fraction)
    train_idx, eval_idx = order[: len(rows) - n_eval], order[len(rows) - n_eval :]
    return [rows[i] for i in train_idx], [rows[i] for i in eval_idx]


def _progress_callback(
    report: ProgressFn,
    should_stop: Callable[[], bool],
    tokens_per_epoch: int,
    plan: Callable[[Any, Any], None],
    note: EventFn,
) -> Any:
    from transformers import TrainerCallback

    class ReportProgress(TrainerCallback):
        """Forwards phase, step, loss, eval loss and ETA; stops training when the job was cancelled."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.progress = Progress(phase=Phase.loading_model)
            self.finished = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # Only now are the step count and the warmup known; the ETA counts from the first step's start.
            plan(args, state)
            self.started = time.monotonic()
            p = self.progress
            p.phase, p.total_steps = Phase.training, state.max_steps
            report(p.model_copy())

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.finished = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if should_stop():
                control.should_training_stop = True
                raise Cancelled("job cancelled")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            logs = logs or {}
            elapsed = time.monotonic() - self.started
            p = self.progress
            p.step, p.total_steps, p.epoch = state.global_step, state.max_steps, float(state.epoch or 0)
            if state.global_step >= state.max_steps:
                p.phase, p.eta_seconds = Phase.evaluating, None  # the final evaluation's loss arrives here
            if "loss" in logs:
                p.loss = float(logs["loss"])
            if "eval_loss" in logs:
                p.eval_loss = float(logs["eval_loss"])
            if "learning_rate" in logs:
                p.learning_rate = float(logs["learning_rate"])
            if logs.get("reward") is not None:
                p.reward = float(logs["reward"])
            if logs.get("eval_reward") is not None:
                p.eval_reward = float(logs["eval_reward"])
            if p.step and p.phase is Phase.training:
                p.eta_seconds = round(elapsed / p.step * max(p.total_steps - p.step, 0), 1)
                p.tokens_per_second = round(tokens_per_epoch * p.epoch / elapsed, 1) if elapsed else None
            report(p.model_copy())
            figures = {k: round(float(logs[k]), 6) for k in LOGGED if logs.get(k) is not None}
            if figures and not self.finished:  # the evaluations after training are in the metrics, not history
                data = {"step": p.step, "epoch": round(p.epoch, 4), **figures}
                if "loss" in data:
                    data["train_loss"] = data.pop("loss")
                said = ", ".join(f"{k} {v:.4g}" for k, v in data.items() if k not in ("step", "epoch"))
                note(JobEvent(type="metrics", message=f"step {p.step}/{p.total_steps}: {said}", data=data))

    return ReportProgress()


def _best_callback(rule: BestCheckpoint, note: EventFn, on_checkpoints: CheckpointsFn) -> Any:
    from transformers import TrainerCallback

    class KeepBest(TrainerCallback):
        """Evaluates at the last step too, snapshots the LoRA weights at every new best held-out loss (in memory:
        the same on every rank, no checkpoint files) and stops early by `rule`."""

        def __init__(self) -> None:
            self.best: dict[str, Any] = {}
            self.checkpoints: list[Checkpoint] = []
            self.train_loss: float | None = None
            self.training = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= state.max_steps and args.eval_strategy != "no":
                control.should_evaluate = True

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.train_loss = round(float(logs["loss"]), 6)

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
            criterion = rule.criterion
            figure = (metrics or {}).get(criterion.metric)
            if not self.training or figure is None:
                return  # the evaluations after training (adapter and base) are reports, not candidates
            step = state.global_step
            if self.checkpoints and self.checkpoints[-1].step == step:
                return  # the last step's forced evaluation, when it fell on a scheduled one too
            better = rule.update(step, float(figure))
            seen = {k: round(float(v), 6) for k, v in (metrics or {}).items() if k in ("eval_loss", "eval_reward")}
            checkpoint = Checkpoint(
                step=step, epoch=round(float(state.epoch or 0), 4), train_loss=self.train_loss, **seen,
            )
            self.checkpoints.append(checkpoint)
            if better:
                model = kwargs["model"]
                self.best = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            verdict = "best so far" if better else f"best is still step {rule.best_step} ({rule.best_loss:.4g})"
            note(JobEvent(message=f"evaluation at step {step}: held-out {criterion.label} {figure:.4g}, {verdict}",
                          data={"step": step, criterion.metric: round(float(figure), 6)}))
            if step < state.max_steps and rule.should_stop(step):
                control.should_training_stop = True
                direction = "higher" if criterion.higher_is_better else "lower"
                note(JobEvent(message=f"stopping early at step {step}: {rule.since_best} evaluations without a "
                              f"{direction} held-out {criterion.label} than step {rule.best_step}'s"))
            on_checkpoints(list(self.checkpoints))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.training = False

        def restore_best(self, model: Any) -> None:
            import torch

            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.best:
                        param.copy_(self.best[name])

    return KeepBest()


def plan_record(
    hp: Hyperparameters, args: Any, state: Any, trainer: Any, world: Any, dtype: str = "float32", **figures: Any
) -> dict[str, Any]:
    """Every hyperparameter with its default filled in, then what the trainer chose itself (`figures` adds the
    method's own: rows, steps per epoch, ...); written to the job once training starts."""
    targets = trainer.model.peft_config["default"].target_modules  # "all-linear" is resolved to names by now
    device_batch = args.per_device_train_batch_size
    return {
        **hp.model_dump(mode="json"),
        **figures,
        "total_steps": state.max_steps,
        "warmup_steps": args.get_warmup_steps(state.max_steps),
        "lora_target_modules": sorted(targets) if not isinstance(targets, str) else [targets],
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "adam_beta1": args.adam_beta1,
        "adam_beta2": args.adam_beta2,
        "adam_epsilon": args.adam_epsilon,
        "max_grad_norm": args.max_grad_norm,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "dtype": dtype,  # the frozen base's; the LoRA weights and optimizer state are float32
        "device": str(args.device),
        "world_size": world.size,
        "per_device_batch_size": device_batch,
        "global_batch_size": device_batch * world.size,
    }


def float32_adapter(model: Any) -> None:
    """The trainable (LoRA) weights in float32 whatever the base's dtype, before the optimizer is built, so its
    state and the updates keep full precision over a bf16 base."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def trainer_args(
    hp: Hyperparameters, scratch: str, device_batch: int, eval_steps: int | None, progress_bar: bool | None
) -> dict[str, Any]:
    """The TrainingArguments SFT and DPO share: the schedule, evaluation, seeds, fp32 on the CPU, no saving (the
    best checkpoint is kept in memory by `BestCheckpoint`)."""
    import torch

    return {
        "output_dir": scratch,
        "per_device_train_batch_size": device_batch,
        "per_device_eval_batch_size": device_batch,
        "num_train_epochs": hp.epochs,
        "max_steps": hp.max_steps or -1,
        "learning_rate": hp.learning_rate,
        "warmup_steps": hp.warmup_ratio,  # a float below 1 is a share of all steps
        "weight_decay": hp.weight_decay,
        "lr_scheduler_type": "linear",
        "logging_steps": 1,
        "eval_strategy": "steps" if eval_steps is not None else "no",
        "eval_steps": eval_steps,
        "save_strategy": "no",
        "report_to": [],
        "seed": hp.seed,
        "data_seed": hp.seed,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
        "fp16": False,
        "dataloader_num_workers": 0,
        # The trainer's choice unless set (trainer/layout.py): off where the activations fit in the memory free.
        "gradient_checkpointing": hp.gradient_checkpointing,
        "disable_tqdm": not (sys.stderr.isatty() if progress_bar is None else progress_bar),
        "pad_to_multiple_of": None,
    }


@dataclass
class Trained:
    """What `train_and_keep` gives back: the run's figures, its checkpoints, the kept extra adapters."""

    metrics: dict[str, Any]
    checkpoints: list[Checkpoint]
    kept: dict[int, Path]


def train_and_keep(
    trainer: Any, hp: Hyperparameters, rule: BestCheckpoint, keep_best: Any, *, rows: int, train_rows: int,
    eval_rows: int, tokens_per_epoch: int, evaluated: bool, scratch: str, note: EventFn,
    on_checkpoints: CheckpointsFn,
) -> Trained:
    """Run the trainer, then put the kept checkpoint's weights back into the model (saving the last step's beside
    them when the best was earlier) and say which was kept and why."""
    started = time.monotonic()
    output = trainer.train()
    runtime = time.monotonic() - started
    metrics: dict[str, Any] = {
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "steps": output.global_step,
        "train_loss_mean": round(float(output.training_loss), 6),
        "train_seconds": round(runtime, 2),
        "train_tokens": int(tokens_per_epoch * float(trainer.state.epoch or 0)),
    }
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    if losses:
        metrics["train_loss"] = round(float(losses[-1]), 6)
        metrics["train_loss_first"] = round(float(losses[0]), 6)
    metrics["tokens_per_second"] = round(metrics["train_tokens"] / runtime, 1) if runtime else None
    final_step = output.global_step
    kept: dict[int, Path] = {}
    metrics.update(kept_record(hp, rule, final_step, rows, evaluated))
    if metrics["kept_step"] != final_step:
        if distributed.world().main:  # the last step's weights stay publishable beside the best's
            kept[final_step] = Path(scratch) / f"step-{final_step}"
            trainer.model.save_pretrained(
                kept[final_step], safe_serialization=True, selected_adapters=["default"]
            )
        keep_best.restore_best(trainer.model)
    checkpoints = [c.model_copy(update={"best": c.step == metrics["kept_step"]}) for c in keep_best.checkpoints]
    on_checkpoints(checkpoints)
    note(JobEvent(message=f"kept: {metrics['kept_reason']}"))
    return Trained(metrics, checkpoints, kept)


def save_adapter(peft_model: Any, out_dir: Path, kept: dict[int, Path]) -> list[str]:
    """Save the adapter to out_dir and move the kept extra checkpoints beside it (out of the scratch directory
    before it goes: the caller stores them); returns the modules it adapts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir, safe_serialization=True, selected_adapters=["default"])  # not the reference
    for step, path in list(kept.items()):
        kept[step] = out_dir.parent / f"{out_dir.name}-step-{step}"
        path.rename(kept[step])
    targets = json.loads((out_dir / "adapter_config.json").read_text()).get("target_modules") or []
    return sorted(targets) if isinstance(targets, list) else [targets]


def train(
    method: TrainingMethod, base_dir: Path, template: ChatTemplate, examples: list[Any], hp: Hyperparameters,
    out_dir: Path, held_out: list[Any] | None = None, hooks: Hooks | None = None, start_from: Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter on `examples` by `method` and save it (adapter_config.json, adapter_model.safetensors)
    to out_dir.

    Hyperparameters left to the data are chosen first (adapters/auto.py, per method). With held-out examples (the
    job's own `held_out`, else a seeded split), the adapter is evaluated during training, the checkpoint with the
    lowest held-out loss is the one saved (`hp.keep`), and the method's figures and greedy answers beside the
    base's go into the metrics; the forgetting measure always does. `start_from`, a PEFT adapter directory (a
    published parent's files), is where the LoRA's weights start instead of peft's fresh ones; its rank, alpha and
    targets must be `hp`'s (adapters/parents.py `inherited` makes them so)."""
    from transformers import set_seed

    hooks = hooks or Hooks()
    hooks.report(Progress(phase=Phase.loading_model))
    automatic = auto.chosen_fields(hp)
    hp = auto.choose(hp, len(examples), method.name)
    set_seed(hp.seed)
    tokenizer = load_tokenizer(base_dir)
    data = encode_split(method, tokenizer, template, examples, held_out, hp)
    with tempfile.TemporaryDirectory(prefix="skillserve-train-") as scratch:
        run = build_run(method, base_dir, tokenizer, data, hp, automatic, hooks, scratch, start_from)
        trained = train_and_keep(
            run.trainer, hp, run.rule, run.keep_best, rows=len(examples), train_rows=len(data.train),
            eval_rows=len(data.held_out), tokens_per_epoch=data.tokens_per_epoch, evaluated=data.evaluated,
            scratch=scratch, note=hooks.note, on_checkpoints=hooks.on_checkpoints,
        )
        metrics, peft_model = {**method.label, **trained.metrics}, cast(Any, run.trainer.model)
        if data.evaluated:
            metrics.update(method.held_out_losses(run.trainer))
        eval_rows = method.eval_rows(data.held_out)
        if not distributed.world().main:
            # The evaluations above are collective (every rank takes part); what follows is rank 0's alone: its
            # copy of the weights is every rank's, and only it reports and publishes.
            return TrainResult(out_dir, metrics, [], eval_rows, dict(run.plan))
        metrics.update(evaluate_kept(method, peft_model, tokenizer, template, data, hp))
        targets = save_adapter(peft_model, out_dir, trained.kept)
    return TrainResult(out_dir, metrics, targets, eval_rows, dict(run.plan), trained.checkpoints, trained.kept)


def load_tokenizer(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass
class Encoded:
    """A run's examples split into training and held-out ones, each encoded by the method."""

    train: list[Any]
    held_out: list[Any]
    train_data: Any  # datasets.Dataset
    eval_data: Any  # datasets.Dataset, or None without held-out examples
    eval_columns: Columns | None
    tokens_per_epoch: int

    @property
    def evaluated(self) -> bool:
        return self.eval_data is not None


def encode_split(
    method: TrainingMethod, tokenizer: Any, template: ChatTemplate, examples: list[Any], held_out: list[Any] | None,
    hp: Hyperparameters,
) -> Encoded:
    """Hold out the job's own validation examples (OpenAI's `validation_file`) or else a seeded split, and encode
    both with the method's encoder, cut to `max_seq_length`."""
    import datasets

    train, held_out = (examples, held_out) if held_out else split_rows(examples, hp.eval_fraction, hp.seed)
    train_columns = method.encode(tokenizer, template, train, hp.max_seq_length)
    eval_columns = method.encode(tokenizer, template, held_out, hp.max_seq_length) if held_out else None
    return Encoded(
        train, held_out, datasets.Dataset.from_dict(train_columns),
        datasets.Dataset.from_dict(eval_columns) if eval_columns else None, eval_columns, method.tokens(train_columns),
    )


@dataclass
class Run:
    """A trainer ready to train, with the rule that keeps the best checkpoint and the plan it fills in."""

    trainer: Any
    rule: BestCheckpoint
    keep_best: Any
    plan: dict[str, Any]


def build_run(
    method: TrainingMethod, base_dir: Path, tokenizer: Any, data: Encoded, hp: Hyperparameters, automatic: list[str],
    hooks: Hooks, scratch: str, start_from: Path | None = None,
) -> Run:
    """The base model with a fresh LoRA (or one holding `start_from`'s weights), in the method's trainer, with the
    shared schedule and callbacks."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, PrinterCallback

    assert hp.batch_size and hp.rank and hp.alpha and hp.epochs and hp.learning_rate  # chosen by auto.choose
    world = distributed.world()
    # `batch_size` is examples per optimizer step, across all ranks; each rank takes its share (rounded up).
    device_batch = math.ceil(hp.batch_size / world.size)
    on_gpu = torch.cuda.is_available()
    dtype, dtype_reason = resolve_dtype(hp.dtype, on_gpu, "training")
    if dtype == "bfloat16" and not on_gpu:
        # Only the frozen products in bf16: a whole bf16 base rounds the LoRA's small change away (precision.py).
        from trainer.precision import bf16_products

        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        layers = bf16_products(model)
        dtype_reason += f"; the base's {layers} linear layers multiply in bf16, the rest stays float32"
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype))
    hooks.note(JobEvent(message=f"base weights in {dtype}: {dtype_reason}"))
    lengths = [len(ids) for ids in data.train_data["input_ids"]] if method.name == "supervised" else []
    layout = lay_out(hp, method.name, model, lengths, device_batch)
    hp = layout.hp
    assert hp.rank and hp.alpha  # as auto.choose set them
    for reason in layout.reasons:
        hooks.note(JobEvent(message=reason))
    lora = LoraConfig(
        r=hp.rank, lora_alpha=hp.alpha, lora_dropout=hp.dropout, target_modules=hp.target_modules, task_type="CAUSAL_LM"
    )
    steps_per_epoch = auto.steps_per_epoch(len(data.train), device_batch * world.size, method.name)
    if not steps_per_epoch:  # the gateway refuses such a job at submit time; this guards a direct call
        raise ValueError(f"{len(data.train)} training rows make no whole batch of {device_batch * world.size}")
    eval_steps = (hp.eval_interval or eval_every(steps_per_epoch)) if data.evaluated else None
    rule = BestCheckpoint(patience(hp, len(data.held_out)), method.criterion)
    keep_best = _best_callback(rule, hooks.note, hooks.on_checkpoints)
    chosen: dict[str, Any] = {}

    referenced_parent = start_from is not None and method.name in REFERENCE_METHODS

    def plan(args: Any, state: Any) -> None:
        figures = method.plan(hp, args)
        if referenced_parent:
            figures["reference_model"] = "the parent adapter (a frozen copy of the weights this run starts from)"
        chosen.update(plan_record(
            hp, args, state, trainer, world, dtype, **figures, auto_chosen=automatic,
            steps_per_epoch=steps_per_epoch, eval_every_steps=eval_steps, train_rows=len(data.train),
            eval_rows=len(data.held_out),
        ))
        hooks.on_plan(dict(chosen))

    def stop_together() -> bool:
        # A cancel seen by one rank stops them all at the same step (a no-op without torchrun).
        return distributed.any_rank(hooks.should_stop())

    progress = _progress_callback(hooks.report, stop_together, data.tokens_per_epoch, plan, hooks.note)
    parts = TrainerParts(
        model, tokenizer, lora, data.train_data, data.eval_data, [progress, keep_best], layout.neftune_scale
    )
    trainer = method.build_trainer(hp, trainer_args(hp, scratch, device_batch, eval_steps, hooks.progress_bar), parts)
    float32_adapter(trainer.model)
    if start_from is not None:
        load_parent_weights(trainer.model, start_from)
    if referenced_parent:
        reference_is_the_parent(trainer.model)
    # With tqdm off, transformers prints every log dict to stdout; progress goes to the job record instead,
    # and stdout is left to the caller (`python -m trainer train` prints its metrics there as JSON).
    trainer.remove_callback(PrinterCallback)
    return Run(trainer, rule, keep_best, chosen)


def reference_is_the_parent(peft_model: Any) -> None:
    """Hold a run that continues a skill near that skill: a frozen copy of the LoRA weights just loaded, as the
    adapter named "ref", which trl's DPO and GRPO trainers take a peft model's reference from (without it, the
    base: the adapter switched off). A fine-tuned model fine-tuned again keeps its own as the reference, as
    supervised then reinforcement needs: against the base, the KL term pulls the skill it starts from back out.
    The copy has no dropout: trl reads the reference in the training step, in training mode, and a reference that
    drops different inputs on each read puts noise in the loss."""
    import dataclasses

    import torch

    config = dataclasses.replace(peft_model.peft_config["default"], lora_dropout=0.0)
    peft_model.add_adapter(REFERENCE_ADAPTER, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".default." in name:
                reference = peft_model.get_parameter(name.replace(".default.", f".{REFERENCE_ADAPTER}."))
                reference.copy_(param)
                reference.requires_grad_(False)
    peft_model.set_adapter("default")


def load_parent_weights(peft_model: Any, parent_dir: Path) -> None:
    """Put a saved adapter's LoRA weights into `peft_model`'s fresh LoRA, in place (before the optimizer is built
    from those very tensors); ValueError if any weight of either is left unmatched: a LoRA of another shape would
    otherwise train from a half-loaded start without a word."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    config = json.loads((parent_dir / "adapter_config.json").read_text())
    peft_config = peft_model.peft_config["default"]
    if (config.get("r"), config.get("lora_alpha")) != (peft_config.r, peft_config.lora_alpha):
        raise ValueError(f"{parent_dir} is a LoRA of rank {config.get('r')}, alpha {config.get('lora_alpha')}; this "
                         f"run's is rank {peft_config.r}, alpha {peft_config.lora_alpha}")
    state = load_file(str(parent_dir / "adapter_model.safetensors"))
    loaded: Any = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    if missing or loaded.unexpected_keys:
        raise ValueError(f"{parent_dir}'s weights do not fit this run's LoRA: missing {missing[:3]}, unexpected "
                         f"{list(loaded.unexpected_keys)[:3]}")


def evaluate_kept(
    method: TrainingMethod, model: Any, tokenizer: Any, template: ChatTemplate, data: Encoded, hp: Hyperparameters
) -> dict[str, Any]:
    """Rank 0's figures of the kept adapter: the method's own on the held-out examples, greedy answers beside the
    base's (trainer/evaluate.py), and how much it forgot (trainer/forgetting.py)."""
    metrics: dict[str, Any] = {}
    if data.eval_columns is not None:
        metrics.update(method.held_out_figures(model, data.eval_columns))
        if hp.eval_samples:
            rows = method.eval_rows(data.held_out)
            metrics.update(evaluate_generations(model, tokenizer, template, rows, hp.eval_samples))
    metrics.update(forgetting.measure(model, tokenizer, template))
    return metrics


def kept_record(
    hp: Hyperparameters, rule: BestCheckpoint, final_step: int, rows: int, evaluated: bool
) -> dict[str, Any]:
    """Which step's weights are published, and why, for the manifest."""
    if not evaluated:
        return {
            "kept": "last", "kept_step": final_step,
            "kept_reason": f"no held-out rows ({rows} rows, eval_fraction {hp.eval_fraction}): nothing to choose a "
            f"checkpoint by, so the last step ({final_step}) is kept",
        }
    if hp.keep == "last" or rule.best_step is None:
        return {"kept": "last", "kept_step": final_step, "kept_reason": f"the last step ({final_step}): keep=last"}
    stopped = f"; stopped early at step {rule.stopped_at}" if rule.stopped_at is not None else ""
    criterion = rule.criterion
    best = "highest" if criterion.higher_is_better else "lowest"
    return {
        "kept": "best", "kept_step": rule.best_step, f"best_{criterion.metric}": round(rule.best_loss, 6),
        "stopped_early": rule.stopped_at is not None,
        "kept_reason": f"{best} held-out {criterion.label} ({rule.best_loss:.4g}) at step {rule.best_step} of "
        f"{final_step}" + stopped,
    }
