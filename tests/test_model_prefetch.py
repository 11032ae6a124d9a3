"""The chart's model pre-fetch (`python -m adapters.models fetch`, its init container's command): a second start
finds the verified copy and touches no network, so a pod restart downloads nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.models import STAMP, default_model_dir, sha256_file

# Any download attempt fails fast: no package index, no hub.
OFFLINE = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "", "HF_HUB_OFFLINE": "1"}


def fetch(model: str, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapters.models", "fetch", model, "--dir", str(target)],
        env={**os.environ, **OFFLINE},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_fetched_default_model_is_found_again_without_the_network(tmp_path: Path) -> None:
    source = default_model_dir()
    if not (source / STAMP).exists():
        pytest.skip("the default model is not prepared (make model)")
    target = tmp_path / "models" / "SmolLM2-135M-Instruct"
    target.mkdir(parents=True)
    for item in source.iterdir():  # links: the volume as the first start left it, without copying 500 MB
        try:
            os.link(item, target / item.name)
        except OSError:  # another filesystem
            (target / item.name).symlink_to(item)
    proc = fetch("SmolLM2-135M-Instruct", target)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(target)


def test_a_fetched_hub_model_is_found_again_without_the_network(tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    stamp = {"source": "org/tiny", "files": {"config.json": sha256_file(target / "config.json")}}
    (target / STAMP).write_text(json.dumps(stamp))
    proc = fetch("org/tiny", target)
    assert proc.returncode == 0, proc.stderr


def test_a_damaged_copy_is_fetched_again_and_says_why_it_cannot_be(tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / STAMP).write_text(json.dumps({"source": "org/tiny", "files": {"config.json": "0" * 64}}))
    proc = fetch("org/tiny", target)
    assert proc.returncode == 1 and "cannot download model 'org/tiny'" in proc.stderr
