"""Data-parallel training under torchrun: two real trainer processes (gloo, CPU) learn what one process learns on
the same global batch, and publish one adapter between them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters.registry import Registry
from adapters.schema import JobRecord, JobStatus
from adapters.store import FileStore
from service.runners.base import trainer_command
from tests.rows import stored_job
from tests.shout import shout_rows

REPO = Path(__file__).resolve().parents[1]
# Small enough for two processes on two cores: 12 training rows, 3 steps of 4 examples, 4 held-out rows.
# No LoRA dropout and no NEFTune: each rank draws its own dropout masks and embedding noise (whose scale also
# follows the padded length of its half-batch), which would make the runs differ by chance.
TINY = {
    "rank": 4, "alpha": 8, "dropout": 0.0, "max_steps": 3, "batch_size": 4, "learning_rate": 2e-3,
    "eval_fraction": 0.25, "eval_samples": 0, "max_seq_length": 64, "neftune_noise_alpha": 0,
    # float32 wherever this runs: a bf16 product's rounding depends on the batch's shape, which splitting it changes
    # (1.3e-3 apart on the first loss here), and this compares the split, not the dtype.
    "dtype": "float32",
}


def _train(tmp: Path, processes: int) -> tuple[Registry, JobRecord, subprocess.CompletedProcess[str]]:
    store = FileStore(tmp / f"store-{processes}")
    registry = Registry(store)
    record = stored_job(registry, shout_rows(16), "shout", "alpaca", **TINY)
    job_uri = f"{store.uri}/jobs/{record.id}.json"  # what runners launch the trainer with
    command = [sys.executable, *trainer_command(processes), job_uri]
    # One thread per process: two processes on two cores, and the same arithmetic in both runs.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    return registry, registry.get_job(record.id), done


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Any]:
    tmp = tmp_path_factory.mktemp("distributed")
    return {processes: _train(tmp, processes) for processes in (1, 2)}


@pytest.mark.slow
def test_two_ranks_learn_what_one_process_learns_on_the_same_global_batch(runs: dict[int, Any]) -> None:
    (_, one, done_one), (_, two, done_two) = runs[1], runs[2]
    assert done_one.returncode == 0 and one.status == JobStatus.succeeded, (one.error, done_one.stderr[-3000:])
    assert done_two.returncode == 0 and two.status == JobStatus.succeeded, (two.error, done_two.stderr[-3000:])
    assert one.hyperparameters["world_size"] == 1 and one.hyperparameters["per_device_batch_size"] == 4
    assert two.hyperparameters["world_size"] == 2 and two.hyperparameters["per_device_batch_size"] == 2
    assert one.hyperparameters["global_batch_size"] == two.hyperparameters["global_batch_size"] == 4
    assert one.metrics["steps"] == two.metrics["steps"] == 3
    # Training: the same examples per step, token-averaged across ranks, so the same losses up to float order.
    for key in ("train_loss_first", "train_loss", "train_loss_mean"):
        assert two.metrics[key] == pytest.approx(one.metrics[key], rel=1e-3, abs=1e-4), key
    # Evaluation averages per-batch means, and each rank's batch holds half the rows: close, not equal.
    for key in ("eval_loss", "base_eval_loss"):
        assert two.metrics[key] == pytest.approx(one.metrics[key], rel=0.02), key
    assert two.progress.step == two.progress.total_steps == 3


@pytest.mark.slow
def test_only_rank_zero_publishes(runs: dict[int, Any]) -> None:
    registry, record, _ = runs[2]
    assert [m.version for m in registry.versions("shout")] == [record.spec.version]
    manifests = [key for key in registry.store.list("adapters/") if key.endswith("manifest.json")]
    assert len(manifests) == 1, manifests
    assert record.metrics["adapter"] == registry.manifest("shout").ref
