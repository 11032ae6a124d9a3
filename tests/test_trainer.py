"""The trainer end to end: a stored job in, a published adapter that has learned its skill out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

from adapters.dataset import rows_to_jsonl
from adapters.masking import encode
from adapters.models import DEFAULT_MODEL, resolve_model, weights_hash
from adapters.registry import Registry, job_uri, parse_job_uri
from adapters.schema import DEFAULT_PROJECT, JobRecord, JobStatus, Method, Phase
from adapters.store import FileStore, S3Store
from adapters.templates import get_template
from tests.rows import stored_job
from tests.shout import SHOUT_TRAINING, held_out_prompt, shout_rows
from trainer.job import run_job
from trainer.methods import METHODS, method_for

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shout_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, JobRecord, int]:
    """The shout skill trained once through a stored job (alpaca template)."""
    store = FileStore(tmp_path_factory.mktemp("trainer") / "store")
    registry = Registry(store)
    record = stored_job(registry, shout_rows(), "shout", "alpaca", **SHOUT_TRAINING)
    code = run_job(job_uri(store.uri, record.id))
    return registry, registry.get_job(record.id), code


def greedy(model: Any, tokenizer: Any, template: str, prompt: str) -> str:
    import torch

    ids = encode(tokenizer, get_template(template), [{"role": "user", "content": prompt}], True).input_ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    return str(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)).strip()


@pytest.mark.slow
def test_trained_adapter_answers_in_its_skill_and_base_does_not(shout_job: Any, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    registry, record, code = shout_job
    assert code == 0 and record.status == JobStatus.succeeded, record.error
    manifest = registry.manifest("shout")
    adapter_dir = registry.fetch(manifest, tmp_path / "adapter")
    base_dir = resolve_model(DEFAULT_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    prompt, expected = held_out_prompt()

    base_answer = greedy(model, tokenizer, "alpaca", prompt)
    tuned = PeftModel.from_pretrained(model, adapter_dir)
    assert greedy(tuned, tokenizer, "alpaca", prompt) == expected
    assert base_answer != expected


@pytest.mark.slow
def test_job_record_and_manifest_tell_the_whole_story(shout_job: Any) -> None:
    registry, record, _ = shout_job
    progress = record.progress
    assert progress.step == progress.total_steps == SHOUT_TRAINING["max_steps"]
    # The last phase it went through; no ETA once the steps are done (evaluation and publishing are not steps).
    assert progress.phase == Phase.publishing and progress.eta_seconds is None and progress.eval_loss is not None
    metrics = record.metrics
    assert metrics["train_loss"] < metrics["train_loss_first"] / 5
    assert metrics["eval_rows"] == 8 and metrics["train_rows"] == 72
    manifest = registry.manifest("shout")
    assert metrics["adapter"] == manifest.ref
    assert manifest.template == get_template("alpaca").text and manifest.stop == ["### Instruction:"]
    assert manifest.base_model == DEFAULT_MODEL
    assert manifest.base_model_sha256 == weights_hash(resolve_model(DEFAULT_MODEL))
    assert manifest.dataset_sha256 == record.spec.dataset_sha256 and manifest.dataset_rows == 80
    assert manifest.lora.rank == 8 and "gate_proj" in manifest.lora.target_modules  # all linear layers
    assert set(manifest.files) >= {"adapter_config.json", "adapter_model.safetensors"}
    assert manifest.metrics["eval_loss"] == metrics["eval_loss"]
    # Every hyperparameter in use, in the record and the manifest alike, the trainer's own choices included.
    assert manifest.hyperparameters == record.hyperparameters
    used = record.hyperparameters
    assert {k: used[k] for k in SHOUT_TRAINING} == SHOUT_TRAINING and used["eval_fraction"] == 0.1
    assert used["total_steps"] == 40 and used["steps_per_epoch"] == 9 and used["warmup_steps"] == 0
    assert used["lora_target_modules"] == manifest.lora.target_modules and used["train_rows"] == 72


@pytest.mark.slow
def test_the_version_a_job_publishes_is_in_the_audit_log_as_the_runners_own_work(shout_job: Any) -> None:
    registry, record, _ = shout_job
    (published,), more = registry.list_audit(DEFAULT_PROJECT)
    assert (published.action, published.object_id, published.params) == (
        "adapter.publish", registry.manifest("shout").ref, {"job_id": record.id})
    assert published.actor.role == "runner" and published.actor.key_id is None and not more


def test_a_failing_job_ends_failed_with_its_reason_and_publishes_nothing(s3_store_uri: str) -> None:
    registry = Registry(S3Store(s3_store_uri))
    record = stored_job(registry, shout_rows(10), "broken", "chatml")
    registry.store.delete(record.spec.dataset_uri)  # the dataset vanished before the trainer started
    assert run_job(job_uri(s3_store_uri, record.id)) == 1
    failed = registry.get_job(record.id)
    assert failed.status == JobStatus.failed and "NotFound" in (failed.error or "")
    assert failed.finished_at is not None and failed.started_at is not None
    assert registry.adapters() == [] and registry.list_audit(DEFAULT_PROJECT) == ([], False)


def test_a_cancelled_job_is_not_run(tmp_path: Path) -> None:
    registry = Registry(FileStore(tmp_path))
    record = stored_job(registry, shout_rows(10), "never", "chatml")
    record.status = JobStatus.cancelled
    registry.put_job(record)
    assert run_job(job_uri(f"file://{tmp_path}", record.id)) == 0
    assert registry.get_job(record.id).status == JobStatus.cancelled and registry.adapters() == []


def test_job_uris_are_checked() -> None:
    assert parse_job_uri("s3://bucket/pre/jobs/abc123.json") == ("s3://bucket/pre", "abc123")
    for bad in ("s3://bucket/jobs/../x.json", "file:///tmp/jobs/", "file:///tmp/other/abc.json"):
        with pytest.raises(ValueError):
            parse_job_uri(bad)


def test_every_method_a_job_may_name_has_a_trainer() -> None:
    """The methods a job spec accepts are the ones the trainer registers, each built from the spec by name."""
    assert set(METHODS) == set(get_args(Method.model_fields["type"].annotation))
    grader = {"type": "string_check", "name": "same", "input": "{{sample.output_text}}", "reference": "{{item.a}}",
              "operation": "eq"}
    for name in METHODS:
        assert method_for(Method(type=name, grader=grader if name == "reinforcement" else None)).name == name


@pytest.mark.slow
def test_train_command_writes_adapter_and_manifest(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_bytes(rows_to_jsonl(shout_rows(12)))
    out = tmp_path / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", str(data), "--out", str(out), "--template", "instruction",
         "--max-steps", "2", "--batch-size", "4", "--rank", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "tiny" and manifest["template_name"] == "instruction"
    assert manifest["lora"]["rank"] == 4 and json.loads(proc.stdout)["steps"] == 2
    assert (out / "adapter_model.safetensors").exists()
