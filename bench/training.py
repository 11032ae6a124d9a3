"""Training: our trainer vs a plain trl script, same model, data, LoRA, steps, batch and seed.

Each run is its own process (so peak RSS is its own), one after another: the baseline
(bench/trl_baseline.py), ours (trainer.loop.train, method supervised), and ours with padding_free. The data
has mixed lengths on purpose: that is where padding costs, and where padding-free should pay.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adapters.hardware import native_bf16
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.schema import Hyperparameters
from bench.servers import REPO
from trainer.loop import split_rows

SYSTEM = "Repeat the words you are given in capitals, then an exclamation mark."
VOCABULARY = (
    "cat house tree river cloud apple stone green music paper chair light window orange table garden bread "
    "horse winter summer candle mirror bottle pencil rocket forest silver yellow dragon castle pillow basket "
    "jacket planet bridge island carpet market door road fish bird milk rain snow wind fire water ship"
)
WORDS = VOCABULARY.split()
FIGURES = ("tokens_per_second", "train_seconds", "wall_seconds", "peak_rss_mib", "train_loss", "eval_loss")


@dataclass(frozen=True)
class TrainingSize:
    rows: int
    max_steps: int
    batch_size: int
    min_words: int
    max_words: int


SIZES = {
    "tiny": TrainingSize(rows=16, max_steps=2, batch_size=4, min_words=2, max_words=24),
    "full": TrainingSize(rows=96, max_steps=12, batch_size=8, min_words=2, max_words=60),
}


def mixed_length_rows(n: int, min_words: int, max_words: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Conversations whose lengths spread over an order of magnitude (a few to a few hundred tokens)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        rows.append(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Shout these words: " + " ".join(words)},
                {"role": "assistant", "content": " ".join(w.upper() for w in words) + "!"},
            ]
        )
    return rows


def _run(module: str, config: dict[str, Any], path: Path) -> dict[str, Any]:
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", module, str(path)], cwd=REPO, capture_output=True, text=True, timeout=3600
    )
    (path.with_suffix(".log")).write_text(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{module} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def run(size_name: str, workdir: Path) -> dict[str, Any]:
    size = SIZES[size_name]
    workdir.mkdir(parents=True, exist_ok=True)
    model = str(resolve_model(DEFAULT_MODEL))
    rows = mixed_length_rows(size.rows, size.min_words, size.max_words)
    hp_fields: dict[str, Any] = {
        "rank": 8,
        "alpha": 16,
        "dropout": 0.05,
        "max_steps": size.max_steps,
        "batch_size": size.batch_size,
        "learning_rate": 1e-3,
        "max_seq_length": 1024,
        "eval_fraction": 0.1,
        "seed": 42,
        "neftune_noise_alpha": 0,  # the baseline's plain trl recipe has no NEFTune: equal settings
        # float32 as the baseline, whatever `auto` picks here; the bf16 runs below ask for bfloat16 (auto's pick on a
        # CPU with native bf16).
        "dtype": "float32",
    }
    if "eval_samples" in Hyperparameters.model_fields:
        hp_fields["eval_samples"] = 0  # generation scoring is not part of the baseline's recipe
    hp = Hyperparameters(**hp_fields)
    # The split ours makes internally, written out for the baseline: both train and evaluate on the same rows.
    train_rows, eval_rows = split_rows(rows, hp.eval_fraction, hp.seed)
    (workdir / "rows.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    for name, part in (("train", train_rows), ("eval", eval_rows)):
        (workdir / f"{name}.jsonl").write_text("".join(json.dumps({"messages": r}) + "\n" for r in part))
    baseline = _run(
        "bench.trl_baseline",
        {
            "model": model,
            "train": str(workdir / "train.jsonl"),
            "eval": str(workdir / "eval.jsonl"),
            "output_dir": str(workdir / "baseline-out"),
            "rank": hp.rank,
            "alpha": hp.alpha,
            "dropout": hp.dropout,
            "max_steps": hp.max_steps,
            "batch_size": hp.batch_size,
            "learning_rate": hp.learning_rate,
            "max_length": hp.max_seq_length,
            "seed": hp.seed,
        },
        workdir / "baseline.json",
    )
    runs: dict[str, dict[str, Any]] = {"baseline": baseline}
    # "ours" lays its batches out as the baseline does (padded, activations recomputed: trl's defaults), so the two
    # compare at equal settings; the variants change one or both, and "ours_defaults" leaves both to the trainer
    # (trainer/layout.py), as a request that does not set them does.
    trl_layout = {"padding_free": False, "gradient_checkpointing": True}
    variants: dict[str, dict[str, Any]] = {
        "ours": trl_layout,
        "ours_padding_free": {**trl_layout, "padding_free": True},
        "ours_no_gradient_checkpointing": {**trl_layout, "gradient_checkpointing": False},
        "ours_defaults": {"padding_free": None, "gradient_checkpointing": None},
    }
    # float32 vs bf16 on the same machine in one run (issue 30): the frozen base in bf16, the LoRA weights and AdamW
    # state in float32. Only where the CPU multiplies bf16 in hardware; elsewhere bf16 is emulated and `auto` keeps
    # float32, so there is nothing to compare.
    native, bf16_why = native_bf16()
    if native:
        variants["ours_bf16"] = {**trl_layout, "dtype": "bfloat16"}
        if size_name == "full":  # the two together: the smoke size runs each of them on its own only
            variants["ours_bf16_padding_free"] = {**trl_layout, "dtype": "bfloat16", "padding_free": True}
            # Both speed-ups at once, for the memory it costs.
            variants["ours_bf16_padding_free_no_gradient_checkpointing"] = {
                "dtype": "bfloat16", "padding_free": True, "gradient_checkpointing": False,
            }
            # Everything a request leaves out, as `auto` decides it on this CPU: bf16, and the trainer's layout.
            variants["ours_bf16_defaults"] = {"dtype": "auto", "padding_free": None, "gradient_checkpointing": None}
    for label, extra in variants.items():
        config = {"model": model, "rows": str(workdir / "rows.jsonl"), "hyperparameters": {**hp_fields, **extra}}
        runs[label] = _run("bench.train_ours", config, workdir / f"{label}.json")
    ratios = {label: {f: _ratio(runs[label].get(f), baseline.get(f)) for f in FIGURES} for label in variants}
    lengths = sorted(len(json.dumps(r)) for r in rows)
    targets = {
        "tokens_per_second_ratio": {
            "value": ratios["ours"]["tokens_per_second"],
            "target": ">= 1.0",
            "met": (ratios["ours"]["tokens_per_second"] or 0) >= 1.0,
        },
        "eval_loss_within_2pct": {
            "value": ratios["ours"]["eval_loss"],
            "target": "0.98 .. 1.02",
            "met": ratios["ours"]["eval_loss"] is not None and abs(ratios["ours"]["eval_loss"] - 1) <= 0.02,
        },
        "train_loss_within_2pct": {
            "value": ratios["ours"]["train_loss"],
            "target": "0.98 .. 1.02",
            "met": ratios["ours"]["train_loss"] is not None and abs(ratios["ours"]["train_loss"] - 1) <= 0.02,
        },
        "padding_free_tokens_per_second_ratio": {
            "value": ratios["ours_padding_free"]["tokens_per_second"],
            "target": ">= 1.3",
            "met": (ratios["ours_padding_free"]["tokens_per_second"] or 0) >= 1.3,
        },
    }
    if native:
        bf16, fp32 = runs["ours_bf16"], runs["ours"]
        for label in [v for v in variants if v.startswith("ours_bf16")]:  # each bf16 run against the 2x
            speed = ratios[label]["tokens_per_second"] or 0
            targets[f"{label.removeprefix('ours_')}_tokens_per_second_ratio"] = {
                "value": speed,
                "target": f">= 2.0 ({label} over the baseline in float32)",
                "met": speed >= 2.0,
            }
        # The loss as each run's trainer reported it (bf16's read through its bf16 base), and the published adapters'
        # held-out loss both read on the float32 base: what bf16 training learned, apart from bf16's reading of it.
        compared = {
            "train_loss": (bf16.get("train_loss"), fp32.get("train_loss")),
            "eval_loss": (bf16.get("eval_loss"), fp32.get("eval_loss")),
            "eval_loss_read_in_float32": (
                (bf16.get("eval_loss_read_in") or {}).get("float32"),
                (fp32.get("eval_loss_read_in") or {}).get("float32"),
            ),
        }
        for figure, (ours_bf16, ours_fp32) in compared.items():
            value = _ratio(ours_bf16, ours_fp32)
            targets[f"bf16_{figure}_within_2pct_of_float32"] = {
                "value": value,
                "target": "0.98 .. 1.02",
                "met": value is not None and abs(value - 1) <= 0.02,
            }
    return {
        "benchmark": "training",
        "size": size_name,
        "settings": {
            **asdict(size),
            "hyperparameters": hp_fields,
            "lora_targets": "all-linear",
            "gradient_checkpointing": {
                "ours": "as the baseline's in ours (on), as each variant sets it, and the trainer's choice in the "
                "defaults runs (each run's layout is in its row)",
                "baseline": "trl default",
            },
            "train_rows": len(train_rows),
            "eval_rows": len(eval_rows),
            "row_chars_min_median_max": [lengths[0], lengths[len(lengths) // 2], lengths[-1]],
            "baseline": "trl SFTTrainer, completion_only_loss on prompt/completion rows (prompt rendered with the "
            "model's chat template, completion = answer + end-of-turn token), fp32 (bf16=False: the float32 recipe "
            "every run here is compared with), trl's other defaults (gradient checkpointing on)",
            "eval": "both evaluate once per epoch during training and once at the end",
            "bf16": (
                "ours_bf16: the frozen base's products in bfloat16; LoRA, AdamW, the residual stream, norms, attention "
                "and the loss in float32 (trainer/precision.py); " if native else "no bf16 run: "
            )
            + bf16_why,
            "mask": "both take the loss over the assistant's tokens through <|im_end|>, where generation stops: "
            "compare loss_tokens_per_epoch. Ours' inputs also carry the template's newline after <|im_end|> "
            "(never in the loss), one token per row more than the baseline's",
        },
        "runs": runs,
        "ratio": ratios,
        "targets": targets,
    }


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if ours is not None and theirs else None
