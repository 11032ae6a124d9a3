"""Our side of the training benchmark: `trainer.loop.train` with the supervised method, run alone in this process.

    python -m bench.train_ours <config.json>

Prints one JSON line of the same figures the baseline prints.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16")


def read_loss(model_dir: Path, adapter_dir: Path, template: Any, rows: list[Any], dtype: str) -> float:
    """The mean loss over the assistant's tokens of `rows` (every token weighing the same), the adapter read on the base
    in `dtype`: one figure for adapters trained in either dtype, so what training learned is told apart from how
    precisely a forward pass in bf16 reads it."""
    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.masking import encode

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            e = encode(tokenizer, template, row)
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1].float()
            scored = torch.tensor(e.assistant_mask[1:], dtype=torch.bool)
            targets = torch.tensor(e.input_ids[1:])
            total += float(F.cross_entropy(logits[scored], targets[scored], reduction="sum"))
            count += int(scored.sum())
    return round(total / max(count, 1), 4)


def lora_delta(model_dir: Path, adapter_dir: Path, template: Any, row: Any) -> dict[str, float]:
    """How large the adapter's change to each LoRA layer's output is against bf16's resolution, on one row read in
    float32: the median over layers of median |change| / median |base output|, and of the error the change takes
    when the layer's output is rounded to bf16 (|round(base + change) - round(base) - change| / |change|). A change
    under bf16's relative spacing (2^-8) is read in bf16 with an error as large as itself."""
    import statistics

    import torch
    from peft import PeftModel
    from peft.tuners.lora import Linear
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.masking import encode

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    ratio: list[float] = []
    error: list[float] = []

    def measure(module: Any, inputs: Any, output: torch.Tensor) -> None:
        plain = module.base_layer(inputs[0])
        change = output - plain
        if float(change.norm()) == 0.0:  # a module the adapter leaves as it was
            return
        kept = (plain + change).bfloat16().float() - plain.bfloat16().float()
        ratio.append(float(change.abs().median() / plain.abs().median()))
        error.append(float((kept - change).norm() / change.norm()))

    for module in model.modules():
        if isinstance(module, Linear):
            module.register_forward_hook(measure)
    with torch.no_grad():
        model(input_ids=torch.tensor([encode(tokenizer, template, row).input_ids]))
    return {"layers": len(ratio), "change_over_output_median": round(statistics.median(ratio), 5),
            "change_error_in_bf16_median": round(statistics.median(error), 3)}  # fmt: skip


def main(config_path: str) -> None:
    from transformers import AutoTokenizer

    from adapters.schema import Hyperparameters
    from adapters.templates import get_template
    from trainer.loop import Hooks, split_rows, train
    from trainer.sft import Supervised, encode_rows

    cfg = json.loads(Path(config_path).read_text())
    started = time.monotonic()
    lines = Path(cfg["rows"]).read_text().splitlines()
    rows = [json.loads(line)["messages"] for line in lines if line.strip()]
    hp = Hyperparameters(**cfg["hyperparameters"])
    template = get_template("chatml", None)
    with tempfile.TemporaryDirectory(prefix="skillserve-bench-") as out:
        result = train(
            Supervised(), Path(cfg["model"]), template, rows, hp, Path(out),
            hooks=Hooks(progress_bar=False),
        )
        wall = time.monotonic() - started
        peak_rss_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        # The published adapter's held-out loss read on the base in each dtype, after the timed run.
        read = {d: read_loss(Path(cfg["model"]), result.adapter_dir, template, result.eval_rows, d) for d in DTYPES}
        change = lora_delta(Path(cfg["model"]), result.adapter_dir, template, result.eval_rows[0])
    m = result.metrics
    # Tokens the loss is taken over (the assistant mask), to compare masks with the baseline.
    train_rows, _ = split_rows(rows, hp.eval_fraction, hp.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    masks = encode_rows(tokenizer, get_template("chatml", None), train_rows, hp.max_seq_length)["assistant_masks"]
    figures = {
        "steps": m["steps"],
        "train_tokens": m["train_tokens"],
        "loss_tokens_per_epoch": sum(sum(mask) for mask in masks),
        "train_seconds": m["train_seconds"],
        "tokens_per_second": round(m["train_tokens"] / m["train_seconds"], 1),
        "train_loss": m.get("train_loss"),
        "train_loss_mean": m["train_loss_mean"],
        "eval_loss": m.get("eval_loss"),
        "eval_loss_read_in": read,
        "lora_change": change,
        "wall_seconds": round(wall, 2),
        "peak_rss_mib": peak_rss_mib,
        # How the batches were laid out, as given or as the trainer chose (trainer/layout.py)
        "padding_free": result.hyperparameters.get("padding_free"),
        "gradient_checkpointing": result.hyperparameters.get("gradient_checkpointing"),
    }
    print("RESULT " + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
