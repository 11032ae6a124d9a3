"""Start from a skill: a training job's `model` may be a published adapter; training continues from its LoRA weights
(same rank, targets and template) and publishes a new version whose manifest names its parent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from adapters.dataset import parse_dataset, rows_to_jsonl
from adapters.masking import encode
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.registry import Registry
from adapters.schema import AliasTarget, FineTunedModel, Hyperparameters, JobRecord
from adapters.store import FileStore
from adapters.templates import get_template
from service.app import create_app
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, management_settings, publish_adapter
from tests.preferences import preference_rows
from tests.shout import shout_rows
from trainer.loop import train
from trainer.sft import Supervised

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FT_MODEL = f"ft:{DEFAULT_MODEL}:skillserve:parent:0123abcd"


def batch_loss(model: Any, tokenizer: Any, rows: list[list[dict[str, str]]], template: str) -> float:
    """The masked SFT loss of one batch of all `rows`, as the trainer's first step reads it (right-padded, the
    mean over every assistant token of the batch)."""
    import torch

    encoded = [encode(tokenizer, get_template(template, tokenizer), messages) for messages in rows]
    width = max(len(e.input_ids) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in encoded])
    attention = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded])
    labels = torch.tensor([
        [t if m else -100 for t, m in zip(e.input_ids, e.assistant_mask, strict=True)]
        + [-100] * (width - len(e.input_ids))
        for e in encoded
    ])
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=attention, labels=labels).loss)


@pytest.mark.slow
def test_continuing_from_an_adapter_starts_from_its_weights(peft_adapter_dir: Path, tmp_path: Path) -> None:
    """One step from the parent (a random LoRA that changes the answers): its first-step loss is the parent's loss
    on that batch, and a fresh LoRA's is the base's, far from it. Dropout and NEFTune off, so the step is exact."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = resolve_model(DEFAULT_MODEL)
    rows = parse_dataset(rows_to_jsonl(shout_rows(8))).rows
    hp = Hyperparameters(
        rank=8, alpha=16, target_modules=["q_proj", "v_proj"], dropout=0.0, neftune_noise_alpha=0.0, batch_size=8,
        max_steps=1, learning_rate=1e-3, eval_fraction=0.0, dtype="float32", eval_samples=0,
    )
    template = get_template("chatml", None)
    continued = train(Supervised(), base_dir, template, rows, hp, tmp_path / "continued", start_from=peft_adapter_dir)
    fresh = train(Supervised(), base_dir, template, rows, hp, tmp_path / "fresh")

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    base_loss = batch_loss(model, tokenizer, rows, "chatml")
    parent = PeftModel.from_pretrained(model, peft_adapter_dir).eval()
    parent_loss = batch_loss(parent, tokenizer, rows, "chatml")
    assert abs(parent_loss - base_loss) > 0.1, (parent_loss, base_loss)  # the parent is not the base
    assert continued.metrics["train_loss_first"] == pytest.approx(parent_loss, rel=2e-3)
    assert fresh.metrics["train_loss_first"] == pytest.approx(base_loss, rel=2e-3)


GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
          "operation": "eq"}


def method_rows(method_type: str) -> list[dict[str, Any]]:
    if method_type == "dpo":
        return preference_rows(8)
    if method_type == "reinforcement":
        return [{"messages": [{"role": "user", "content": r["instruction"]}], "answer": r["output"]}
                for r in shout_rows(8)]
    return shout_rows(8)


@pytest.mark.parametrize("method_type", ["supervised", "dpo", "reinforcement"])
def test_every_methods_trainer_starts_from_the_parents_lora_weights(
    method_type: str, peft_adapter_dir: Path, tmp_path: Path
) -> None:
    """The loop is shared: SFT's, DPO's and GRPO's trainers each hold the parent's LoRA tensors before step one. DPO and
    GRPO, whose losses hold the adapter near a reference, take the parent as it: a frozen copy under the adapter name
    trl reads the reference from, giving the parent's logits where the base's differ; it is never saved."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from adapters import auto
    from adapters.graders import validate
    from adapters.schema import Method
    from trainer.loop import REFERENCE_ADAPTER, Hooks, build_run, encode_split, load_tokenizer, save_adapter
    from trainer.methods import method_for

    base_dir = resolve_model(DEFAULT_MODEL)
    rl = method_type == "reinforcement"
    dataset = parse_dataset(rows_to_jsonl(method_rows(method_type)), method=method_type,
                            grader=validate(GRADER, "method.grader") if rl else None)
    method = method_for(Method(type=method_type, grader=GRADER if rl else None, samples_per_prompt=2 if rl else None))
    hp = auto.choose(Hyperparameters(rank=8, alpha=16, target_modules=["q_proj", "v_proj"], max_steps=1,
                                     eval_fraction=0.0, dtype="float32", batch_size=2), 8, method_type)
    tokenizer = load_tokenizer(base_dir)
    data = encode_split(method, tokenizer, get_template("chatml", tokenizer), method.examples(dataset), None, hp)
    run = build_run(method, base_dir, tokenizer, data, hp, [], Hooks(), str(tmp_path), peft_adapter_dir)
    saved = load_file(str(peft_adapter_dir / "adapter_model.safetensors"))
    held = get_peft_model_state_dict(run.trainer.model)
    assert set(held) == set(saved)
    for key, tensor in saved.items():
        torch.testing.assert_close(held[key].float(), tensor.float(), msg=key)
    model = run.trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    if method_type == "supervised":
        assert REFERENCE_ADAPTER not in model.peft_config
    else:
        from trl.trainer.utils import use_adapter

        assert REFERENCE_ADAPTER in model.peft_config
        ids = torch.tensor([tokenizer.encode("Shout these words: cat house tree")])
        model.eval()  # no LoRA dropout
        with torch.no_grad():
            policy = model(input_ids=ids).logits
            with use_adapter(model, adapter_name=REFERENCE_ADAPTER):
                reference = model(input_ids=ids).logits
            with model.disable_adapter():
                base = model(input_ids=ids).logits
        torch.testing.assert_close(reference, policy)
        assert (reference - base).abs().max() > 1e-3  # the parent moves the logits: the reference is not the base
        assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # the active one is back
        # trl reads the reference in training mode, in the step: it must give the same logits each time.
        model.train()
        with torch.no_grad(), use_adapter(model, adapter_name=REFERENCE_ADAPTER):
            assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    save_adapter(model, tmp_path / "out", {})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "adapter_config.json",
                                                                     "adapter_model.safetensors"]  # fmt: skip


def test_a_lora_of_another_shape_is_refused_before_training(peft_adapter_dir: Path, tmp_path: Path) -> None:
    """The trainer checks the parent's files fit the run's LoRA, rather than train from a half-loaded start."""
    rows = parse_dataset(rows_to_jsonl(shout_rows(8))).rows
    hp = Hyperparameters(rank=4, alpha=16, target_modules=["q_proj", "v_proj"], max_steps=1, eval_fraction=0.0)
    with pytest.raises(ValueError, match="rank 8"):
        train(Supervised(), resolve_model(DEFAULT_MODEL), get_template("chatml", None), rows, hp, tmp_path / "out",
              start_from=peft_adapter_dir)


# --- at submit time --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(management_settings(tmp_path_factory.mktemp("continue")))) as client:
        # The jobs accepted here are looked at, not trained: the runner's trainer exits at once.
        client.app.state.gateway.runner.command = ["true"]  # type: ignore[attr-defined]
        yield client


def registry_of(app: TestClient) -> Registry:
    return Registry(FileStore(Path(app.app.state.gateway.settings.store_uri.removeprefix("file://"))))  # type: ignore[attr-defined]


def test_a_job_on_an_adapter_is_pinned_to_its_version_with_its_template_and_lora(
    app: TestClient, peft_adapter_dir: Path
) -> None:
    registry = registry_of(app)
    first = publish_adapter(registry, peft_adapter_dir, "parent", template="alpaca")
    registry.put_fine_tuned_model(FineTunedModel(id=FT_MODEL, name="parent", version=first.version, job_id="0" * 32))
    latest = publish_adapter(registry, peft_adapter_dir, "parent", template="alpaca")
    body = {"name": "child", "rows": shout_rows(6), "hyperparameters": {"max_steps": 2}}
    for model, version in (("parent", latest.version), (f"parent@{first.version}", first.version),
                           ("parent@latest", latest.version), (FT_MODEL, first.version)):
        reply = app.post("/adapters", json={**body, "model": model}, headers=ADMIN)
        assert reply.status_code == 202, reply.text
        spec = registry.get_job(reply.json()["id"]).spec
        assert spec.parent == reply.json()["parent"] == f"parent@{version}", model
        assert spec.template == "alpaca"
        assert (spec.hyperparameters.rank, spec.hyperparameters.alpha) == (8, 16)
        assert spec.hyperparameters.target_modules == ["q_proj", "v_proj"]
    # An alias with a canary: its own version, whatever share the canary takes.
    registry.set_alias("parent", "prod", AliasTarget(version=first.version, canary=latest.version, canary_weight=0.99))
    for _ in range(3):
        reply = app.post("/adapters", json={**body, "model": "parent@prod"}, headers=ADMIN)
        assert reply.status_code == 202 and reply.json()["parent"] == first.ref, reply.text
    # The base model's id is the base, as before.
    reply = app.post("/adapters", json={**body, "model": DEFAULT_MODEL}, headers=ADMIN)
    assert reply.status_code == 202 and registry.get_job(reply.json()["id"]).spec.parent is None
    # Through OpenAI's API, with the SDK: the ft: id it was given is the job's model.
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN_KEY, http_client=app, max_retries=0)
    rows = [{"messages": [{"role": "user", "content": "Shout: sun"}, {"role": "assistant", "content": "SUN!"}]}] * 6
    training = client.files.create(file=("t.jsonl", rows_to_jsonl(rows)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=FT_MODEL, training_file=training.id, suffix="child")
    assert job.model == FT_MODEL
    record: JobRecord = registry.get_job((job.model_extra or {})["job_id"])
    assert (record.spec.parent, record.spec.template) == (f"parent@{first.version}", "alpaca")


def test_a_model_that_is_no_adapter_or_a_lora_setting_it_cannot_take_is_refused_naming_the_field(
    app: TestClient, peft_adapter_dir: Path
) -> None:
    registry = registry_of(app)
    publish_adapter(registry, peft_adapter_dir, "shaped", template="alpaca")
    body = {"name": "child", "rows": shout_rows(6)}

    def refused(status: int, **fields: Any) -> dict[str, Any]:
        reply = app.post("/adapters", json={**body, **fields}, headers=ADMIN)
        assert reply.status_code == status, reply.text
        return reply.json()["error"]  # type: ignore[no-any-return]

    assert refused(404, model="nothing-here")["param"] == "model"
    assert refused(404, model="shaped@v00000000000000-0000")["param"] == "model"
    assert refused(404, model="ft:nothing:here")["param"] == "model"
    rank = refused(400, model="shaped", hyperparameters={"rank": 16})
    assert rank["param"] == "hyperparameters.rank" and "rank 8" in rank["message"]
    assert refused(400, model="shaped", hyperparameters={"alpha": 8})["param"] == "hyperparameters.alpha"
    targets = refused(400, model="shaped", hyperparameters={"target_modules": ["q_proj"]})
    assert targets["param"] == "hyperparameters.target_modules"
    template = refused(400, model="shaped", template="chatml")
    assert template["param"] == "template" and "'alpaca'" in template["message"]
    # The same rank, or the parent's own template, said again is fine.
    ok = app.post("/adapters", json={**body, "model": "shaped", "template": "alpaca",
                                     "hyperparameters": {"rank": 8}}, headers=ADMIN)
    assert ok.status_code == 202, ok.text
    # OpenAI's API: an unknown model is its 400 model_not_available, naming `model`.
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN_KEY, http_client=app, max_retries=0)
    rows = [{"messages": [{"role": "user", "content": "Shout: sun"}, {"role": "assistant", "content": "SUN!"}]}] * 6
    training = client.files.create(file=("t.jsonl", rows_to_jsonl(rows)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as unknown:
        client.fine_tuning.jobs.create(model="ft:nothing:here", training_file=training.id)
    assert (unknown.value.body["param"], unknown.value.code) == ("model", "model_not_available")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as other_template:
        client.fine_tuning.jobs.create(model="shaped", training_file=training.id,
                                       extra_body={"template": "instruction"})
    assert other_template.value.body["param"] == "template"  # type: ignore[index]


def test_the_cli_trains_toward_a_grader_from_a_skill_and_shows_a_refusal_naming_the_field(
    app: TestClient, peft_adapter_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`skillserve train --method reinforcement --grader grader.json --from MODEL`, against the in-process gateway."""
    import contextlib
    import json

    from client import cli

    monkeypatch.setattr(cli, "connect", lambda args: contextlib.nullcontext(app))
    registry = registry_of(app)
    parent = publish_adapter(registry, peft_adapter_dir, "cli-parent", template="alpaca")
    rows = tmp_path / "prompts.jsonl"
    rows.write_bytes(rows_to_jsonl([{"messages": [{"role": "user", "content": f"Shout: {w}"}], "answer": w.upper()}
                                    for w in ("sun", "dog", "cat", "sea", "sky", "red")]))
    grader = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "eq"}
    (tmp_path / "grader.json").write_text(json.dumps(grader))
    (tmp_path / "bad.json").write_text(json.dumps({**grader, "operation": "equals"}))
    app.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
    base = ["train", str(rows), "--name", "cli-rft", "--method", "reinforcement"]
    assert cli.main([*base, "--grader", str(tmp_path / "grader.json"), "--from", "cli-parent",
                     "--method-set", "samples_per_prompt=2", "--set", "batch_size=2"]) == 0
    queued = capsys.readouterr().out.split()[1]
    spec = registry.get_job(queued).spec
    assert (spec.method.type, spec.method.grader, spec.method.samples_per_prompt) == ("reinforcement", grader, 2)
    assert (spec.parent, spec.template) == (parent.ref, "alpaca")
    # Refusals name the field: the grader's, and a template the parent was not trained with.
    assert cli.main([*base, "--grader", str(tmp_path / "bad.json")]) == 1
    assert "400: method.grader.operation: " in capsys.readouterr().err
    assert cli.main([*base, "--grader", str(tmp_path / "grader.json"), "--from", "cli-parent",
                     "--template", "chatml"]) == 1
    assert "400: template 'chatml' does not fit cli-parent@" in capsys.readouterr().err
    assert cli.main([*base]) == 1 and "needs --grader" in capsys.readouterr().err


# --- end to end ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_then_a_job_on_its_ft_model_publishes_a_version_naming_its_parent(gateway: GatewayServer) -> None:
    """Two tiny jobs through the openai SDK: the second's `model` is the first's fine_tuned_model; its adapter's
    manifest names the first's version as its parent, and it serves."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)
    rows = [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in shout_rows(8)]
    training = client.files.create(file=("t.jsonl", rows_to_jsonl(rows)), purpose="fine-tune")
    hyper = {"n_epochs": 1, "batch_size": 4}

    def finished(job_id: str) -> Any:
        deadline = time.monotonic() + 1800
        while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
            time.sleep(0.5)
        assert job.status == "succeeded", f"{job.error}\n{gateway.log_tail()}"
        return job

    first = finished(client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL, training_file=training.id, suffix="parent", seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},  # type: ignore[typeddict-item]
        extra_body={"template": "alpaca"},
    ).id)
    second = finished(client.fine_tuning.jobs.create(
        model=first.fine_tuned_model, training_file=training.id, suffix="child", seed=2,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},  # type: ignore[typeddict-item]
    ).id)
    assert second.model == first.fine_tuned_model
    parent_ref, child_ref = (first.model_extra or {})["adapter"], (second.model_extra or {})["adapter"]
    name, version = child_ref.split("@")
    manifest = gateway.registry.manifest(name, version)
    assert manifest.parent == parent_ref and manifest.template_name == "alpaca"
    events = [e.message for e in client.fine_tuning.jobs.list_events(second.id, limit=100)]
    assert any(m.startswith(f"continuing from {parent_ref}") for m in events)
    reader = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    answer = reader.chat.completions.create(model=second.fine_tuned_model, temperature=0, max_tokens=12,
                                            messages=[{"role": "user", "content": "Shout these words: sun dog"}])
    assert answer.choices[0].message.content
