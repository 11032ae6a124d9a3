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
    with tempfile.TemporaryDirectory(prefix="skillserve-bench-") as out:
        result = train(
            Supervised(), Path(cfg["model"]), get_template("chatml", None), rows, hp, Path(out),
            hooks=Hooks(progress_bar=False),
        )
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
        "wall_seconds": round(time.monotonic() - started, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print("RESULT " + json.dumps(figures), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
