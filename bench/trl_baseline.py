"""The baseline: the seed recipe done right by hand, as a plain trl script.

    python -m bench.trl_baseline <config.json>

trl's SFTTrainer with completion-only loss on prompt/completion rows, LoRA via peft. The prompt is the
conversation so far rendered with the model's own chat template (generation prompt included); the
completion is the answer and the template's end-of-turn token, where generation stops. Handing trl the
messages instead would also put the template's newline after that token in the loss: a token no one
ever generates, and an easy one that lowers the mean loss. It shares nothing with skillserve but the
files it is given: the model directory, train/eval JSONL of conversations and the hyperparameters.
Prints one JSON line of figures.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main(config_path: str) -> None:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    cfg = json.loads(Path(config_path).read_text())
    started = time.monotonic()
    set_seed(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    data = load_dataset("json", data_files={"train": cfg["train"], "eval": cfg["eval"]})

    def render(row: dict) -> dict:  # type: ignore[type-arg]
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        return {"prompt": prompt, "completion": row["messages"][-1]["content"] + tokenizer.eos_token}

    data = data.map(render, remove_columns=["messages"])
    steps_per_epoch = -(-len(data["train"]) // cfg["batch_size"])
    args = SFTConfig(
        output_dir=cfg["output_dir"],
        completion_only_loss=True,
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=cfg["batch_size"],
        max_steps=cfg["max_steps"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type="linear",
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=steps_per_epoch,
        save_strategy="no",
        report_to=[],
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        use_cpu=True,
        # trl defaults to bf16 autocast, which is many times slower on these CPUs and changes the numerics;
        # fp32 as ours trains. Everything else (gradient_checkpointing included) stays at trl's defaults.
        bf16=False,
        max_length=cfg["max_length"],
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=cfg["rank"],
        lora_alpha=cfg["alpha"],
        lora_dropout=cfg["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["eval"],
        processing_class=tokenizer,
        peft_config=lora,
    )
    tokens_per_epoch = sum(len(ids) for ids in trainer.train_dataset["input_ids"])  # type: ignore[index,misc]
    # Tokens the loss is taken over (labels not -100), to compare masks with ours.
    loss_tokens = sum(sum(1 for x in labels if x != -100) for labels in trainer.train_dataset["labels"])  # type: ignore[index,misc]
    train_started = time.monotonic()
    output = trainer.train()
    train_seconds = time.monotonic() - train_started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    train_tokens = int(tokens_per_epoch * float(trainer.state.epoch or 0))
    result = {
        "steps": output.global_step,
        "train_tokens": train_tokens,
        "loss_tokens_per_epoch": loss_tokens,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_second": round(train_tokens / train_seconds, 1),
        "train_loss": round(float(losses[-1]), 6),
        "train_loss_mean": round(float(output.training_loss), 6),
        "eval_loss": round(float(trainer.evaluate()["eval_loss"]), 6),
        "wall_seconds": round(time.monotonic() - started, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
