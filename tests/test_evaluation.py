"""Every trained skill is evaluated on its held-out rows, beside the base model, and a score guard can stop it."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.registry import Registry, job_uri
from adapters.schema import JobRecord, JobStatus
from adapters.store import FileStore
from adapters.templates import get_template
from client.cli import main
from tests.gateway_fixtures import API_KEY, GatewayServer
from tests.rows import stored_job
from tests.shout import shout_rows
from trainer.evaluate import (
    BelowMinimumScore,
    check_min_score,
    cut_at_stop,
    evaluate_generations,
    exact_match,
    held_out_cases,
    rouge_l,
)
from trainer.job import run_job

EVALUATION_KEYS = {
    "eval_loss", "base_eval_loss", "eval_generated", "eval_exact_match", "eval_rouge_l", "base_exact_match",
    "base_rouge_l", "samples",
}
# A short run of the shout skill: enough to beat the base model on held-out rows, quick on two cores.
QUICK_SHOUT = {"rank": 8, "alpha": 16, "max_steps": 12, "batch_size": 8, "learning_rate": 3e-3, "eval_fraction": 0.2,
               "gradient_checkpointing": False}  # short rows fit without it (tests/shout.py)


# --- the scores themselves --------------------------------------------------------------------------------


def test_scores_are_exact_match_and_rouge_l() -> None:
    assert exact_match(" CAT DOG! \n", "CAT DOG!") and not exact_match("CAT DOG", "CAT DOG!")
    assert rouge_l("CAT DOG!", "CAT DOG!") == 1.0
    assert rouge_l("cat dog", "CAT DOG!") == 1.0  # a token-overlap score: case and punctuation do not count
    assert rouge_l("a cat and a dog", "cat dog") == pytest.approx(2 * (2 / 5 * 1.0) / (2 / 5 + 1.0))
    assert rouge_l("nothing alike", "CAT DOG!") == 0.0
    assert rouge_l("Ünïcode wörds", "ünïcode wörds") == 1.0  # words of any script, not only a-z
    assert cut_at_stop("A!\n### Instruction:\nmore", ("### Instruction:",)) == "A!\n"


def test_held_out_case_is_everything_before_the_last_answer() -> None:
    turns = [
        {"role": "system", "content": "Be loud."},
        {"role": "user", "content": "Shout: sun"},
        {"role": "assistant", "content": "SUN!"},
        {"role": "user", "content": "Shout: sea"},
        {"role": "assistant", "content": "SEA!"},
    ]
    [case] = held_out_cases([turns, turns], limit=1)
    assert case.prompt == turns[:4] and case.reference == "SEA!"


def test_guard_passes_or_names_the_figures() -> None:
    figures = {"eval_generated": 4, "eval_rouge_l": 0.5, "base_rouge_l": 0.1, "eval_exact_match": 0.25,
               "base_exact_match": 0.0}
    check_min_score(figures, None)
    check_min_score(figures, 0.5)
    with pytest.raises(BelowMinimumScore, match=r"ROUGE-L 0\.5000 on 4 held-out rows is below min_score 0\.6"):
        check_min_score(figures, 0.6)
    with pytest.raises(BelowMinimumScore, match="needs held-out rows"):
        check_min_score({"eval_loss": 1.0}, 0.1)


# --- generation on the real model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_base_answers_come_from_the_base_weights_and_adapter_answers_differ(peft_adapter_dir: Path) -> None:
    """The base column is the plain base model (adapter switched off), the adapter column is the adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    template = get_template("chatml")
    rows = [
        [{"role": "user", "content": p["instruction"]}, {"role": "assistant", "content": p["output"]}]
        for p in shout_rows(3, seed=7)
    ]
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    from trainer.evaluate import greedy_answers

    plain_answers = greedy_answers(plain, tokenizer, template, [r[:1] for r in rows], 12)
    model = PeftModel.from_pretrained(plain, peft_adapter_dir)
    metrics = evaluate_generations(model, tokenizer, template, rows, limit=2)

    assert metrics["eval_generated"] == 2 and len(metrics["samples"]) == 2
    samples = metrics["samples"]
    assert [s["reference"] for s in samples] == [r[1]["content"] for r in rows[:2]]
    assert [s["prompt"] for s in samples] == [r[0]["content"] for r in rows[:2]]
    # The answer budget is larger than 12 tokens, so the plain answers are prefixes of the base column.
    assert all(s["base"].startswith(a.strip()) for s, a in zip(samples, plain_answers, strict=False))
    assert [s["adapter"] for s in samples] != [s["base"] for s in samples]
    assert 0.0 <= metrics["eval_rouge_l"] <= 1.0 and 0.0 <= metrics["base_rouge_l"] <= 1.0


# --- a trained skill, end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_shout(gateway: GatewayServer) -> tuple[Registry, JobRecord]:
    """The shout skill trained briefly through a stored job, published into the gateway's own store."""
    record = stored_job(gateway.registry, shout_rows(40, seed=3), "shout-eval", "alpaca", **QUICK_SHOUT)
    assert run_job(job_uri(gateway.store_uri, record.id)) == 0
    return gateway.registry, gateway.registry.get_job(record.id)


@pytest.mark.slow
def test_trained_skill_is_scored_against_the_base_model(quick_shout: tuple[Registry, JobRecord]) -> None:
    registry, record = quick_shout
    assert record.status == JobStatus.succeeded, record.error
    metrics = record.metrics
    assert set(metrics) >= EVALUATION_KEYS
    assert metrics["eval_generated"] == 8  # 20% of 40 rows held out, all of them under eval_samples=16
    # The gain is visible: the skill beats the base model on rows it never saw.
    assert metrics["eval_rouge_l"] > metrics["base_rouge_l"] + 0.3, metrics
    assert metrics["eval_loss"] < metrics["base_eval_loss"]
    assert len(metrics["samples"]) == 5
    assert set(metrics["samples"][0]) == {"prompt", "reference", "base", "adapter"}
    manifest = registry.manifest("shout-eval")
    assert {k: manifest.metrics[k] for k in EVALUATION_KEYS} == {k: metrics[k] for k in EVALUATION_KEYS}


@pytest.mark.slow
def test_the_published_adapter_is_the_best_evaluated_checkpoint(quick_shout: tuple[Registry, JobRecord]) -> None:
    """Every evaluation during training is a checkpoint; the one with the lowest held-out loss is published, and
    the published weights are that checkpoint's (their held-out loss, measured again after training, is its)."""
    registry, record = quick_shout
    checkpoints = record.checkpoints
    assert len(checkpoints) >= 2 and [c.step for c in checkpoints] == sorted({c.step for c in checkpoints})
    assert all(c.eval_loss is not None and c.train_loss is not None for c in checkpoints)
    best = min(checkpoints, key=lambda c: (c.eval_loss, c.step))
    assert [c.step for c in checkpoints if c.best] == [best.step]
    manifest = registry.manifest("shout-eval")
    assert best.version == manifest.version
    metrics = manifest.metrics
    assert metrics["kept"] == "best" and metrics["kept_step"] == best.step
    assert metrics["best_eval_loss"] == pytest.approx(best.eval_loss)
    assert metrics["eval_loss"] == pytest.approx(best.eval_loss, abs=1e-4)
    assert f"at step {best.step} of " in metrics["kept_reason"]
    if best.step != checkpoints[-1].step:  # the last step's weights are kept too, publishable later
        assert checkpoints[-1].stored and registry.store.list(checkpoints[-1].stored)
    # The forgetting figure: how far the skill moved the model on general prompts, next to its score.
    assert metrics["forgetting_prompts"] == 24
    assert metrics["forgetting_kl"] > 0.0 and 0.0 < metrics["forgetting_agreement"] <= 1.0
    # The job's history: the start, the plan, every evaluation, the kept step, the end.
    messages = [e.message for e in record.events if e.type == "message"]
    assert any(m.startswith("running") for m in messages) and messages[-1].startswith("succeeded")
    assert sum(m.startswith("evaluation at step") for m in messages) == len(checkpoints)
    assert any(m.startswith("kept: lowest held-out loss") for m in messages)
    steps = [e.data["step"] for e in record.events if e.type == "metrics" and "train_loss" in e.data]
    assert steps == list(range(1, record.metrics["steps"] + 1))


@pytest.mark.slow
def test_a_dataset_too_small_to_hold_rows_out_keeps_the_last_step(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    record = stored_job(registry, shout_rows(4, seed=5), "tiny", "chatml", max_steps=2, batch_size=2)
    assert run_job(job_uri(f"file://{tmp_path / 'store'}", record.id)) == 0
    metrics = registry.manifest("tiny").metrics
    assert metrics["kept"] == "last" and metrics["kept_step"] == 2
    assert metrics["kept_reason"].startswith("no held-out rows (4 rows")
    assert registry.get_job(record.id).checkpoints == []


@pytest.mark.slow
def test_adapter_detail_and_cli_show_the_evaluation(
    gateway: GatewayServer, quick_shout: tuple[Registry, JobRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    _, record = quick_shout
    with gateway.client(API_KEY) as client:
        detail = client.get("/adapters/shout-eval").json()
    assert detail["manifest"]["metrics"]["eval_rouge_l"] == record.metrics["eval_rouge_l"]
    assert detail["versions"][-1]["metrics"]["samples"] == record.metrics["samples"]

    assert detail["forgetting"] == {
        "kl": record.metrics["forgetting_kl"], "agreement": record.metrics["forgetting_agreement"], "prompts": 24,
    }
    assert detail["kept"] == record.metrics["kept_reason"]

    assert main(["--url", gateway.url, "--key", API_KEY, "show", "shout-eval"]) == 0
    out = capsys.readouterr().out
    assert f"kept: {record.metrics['kept_reason']}" in out
    assert f"forgetting on 24 general prompts: KL from the base {record.metrics['forgetting_kl']:.3f}" in out
    assert "evaluation on 8 held-out rows" in out
    assert f"{record.metrics['eval_rouge_l']:.3f}" in out and f"{record.metrics['base_rouge_l']:.3f}" in out
    assert repr(record.metrics["samples"][0]["reference"]) in out


@pytest.mark.slow
def test_an_adapter_below_min_score_is_not_published(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path / "store"))
    record = stored_job(
        registry, shout_rows(10, seed=5), "guarded", "chatml",
        max_steps=1, batch_size=4, eval_fraction=0.2, eval_samples=2, min_score=0.99,
    )
    assert run_job(job_uri(f"file://{tmp_path / 'store'}", record.id)) == 1
    failed = registry.get_job(record.id)
    assert failed.status == JobStatus.failed
    assert failed.error is not None and failed.error.startswith("BelowMinimumScore: adapter ROUGE-L ")
    assert f"{failed.metrics['eval_rouge_l']:.4f}" in failed.error and "min_score 0.99" in failed.error
    assert failed.metrics["eval_generated"] == 2
    assert registry.adapters() == [] and registry.versions("guarded") == []


@pytest.mark.slow
def test_train_command_does_not_publish_below_min_score(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adapters.dataset import rows_to_jsonl
    from trainer.__main__ import main as trainer_main

    data = tmp_path / "data.jsonl"
    data.write_bytes(rows_to_jsonl(shout_rows(10, seed=5)))
    store = tmp_path / "store"
    argv = ["train", str(data), "--out", str(tmp_path / "guarded"), "--publish", f"file://{store}",
            "--max-steps", "1", "--batch-size", "4", "--eval-fraction", "0.2", "--eval-samples", "2",
            "--min-score", "0.99", "--no-padding-free"]  # fmt: skip
    assert trainer_main(argv) == 1
    assert "below min_score 0.99" in capsys.readouterr().err
    assert Registry(FileStore(store)).adapters() == []


@pytest.mark.slow
def test_neftune_noise_reaches_training_only(tmp_path: Path) -> None:
    """NEFTune (on by default, alpha 5) changes what a training step sees; evaluation runs without it."""
    registry = Registry(FileStore(tmp_path / "store"))
    metrics = {}
    for alpha in (0.0, 5.0):
        record = stored_job(
            registry, shout_rows(10, seed=11), f"noise-{alpha:g}", "chatml",
            max_steps=2, batch_size=2, eval_samples=0, neftune_noise_alpha=alpha,
        )  # fmt: skip
        assert run_job(job_uri(f"file://{tmp_path / 'store'}", record.id)) == 0
        metrics[alpha] = registry.get_job(record.id).metrics
    # Same seed, same rows, same first batch: only the noise on the embeddings differs.
    assert metrics[0.0]["train_loss_first"] != metrics[5.0]["train_loss_first"]
    # The base model's held-out loss is measured in eval mode, where the noise hook does nothing.
    assert metrics[0.0]["base_eval_loss"] == metrics[5.0]["base_eval_loss"]
    assert registry.get_job(record.id).spec.hyperparameters.neftune_noise_alpha == 5.0
