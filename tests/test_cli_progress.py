"""What `skillserve train --follow` says about a job at each point of its life (pure text; no gateway needed)."""

from __future__ import annotations

from typing import Any

from client.cli import _summary, progress_text


def job(status: str, **progress: Any) -> dict[str, Any]:
    return {"id": "830059c18d16", "status": status, "progress": {"step": 0, "total_steps": 0, **progress}}


def test_a_running_job_shows_its_phase_before_the_first_step() -> None:
    assert progress_text(job("queued")) == "queued"
    assert progress_text(job("running", phase="validating")) == "validating"
    assert progress_text(job("running", phase="loading_model")) == "loading model"


def test_training_shows_losses_as_they_come_and_the_servers_eta() -> None:
    training = job("running", phase="training", step=12, total_steps=40, loss=0.13671, eta_seconds=140.2)
    assert progress_text(training) == "training, loss 0.1367, ETA 2m20s"
    training["progress"]["eval_loss"] = 0.2375
    assert progress_text(training) == "training, loss 0.1367, eval loss 0.2375, ETA 2m20s"


def test_evaluation_and_publishing_say_so_without_an_eta() -> None:
    evaluating = job("running", phase="evaluating", step=40, total_steps=40, loss=0.0161, eta_seconds=None)
    assert progress_text(evaluating) == "evaluating, loss 0.0161"
    assert progress_text(job("running", phase="publishing", step=40, total_steps=40)) == "publishing"


def test_a_finished_job_is_summed_up_with_the_trainers_own_figures() -> None:
    done = job("succeeded", phase="publishing", step=40, total_steps=40, loss=0.0161, eval_loss=0.1135)
    done["metrics"] = {"train_seconds": 347.2, "tokens_per_second": 44.4}
    assert _summary(done) == "830059c1: succeeded, loss 0.0161, eval loss 0.1135; 40/40 steps in 5m47s (44 tokens/s)"
    failed = job("failed", phase="loading_model")
    assert _summary(failed) == "830059c1: failed"
