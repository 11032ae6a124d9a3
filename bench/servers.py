"""The two servers under test, started the same way a deployer would: our gateway and `vllm serve`.

Both get the same engine settings from one `EngineShape`, so any difference is what sits in front
of the engine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from adapters.models import DEFAULT_MODEL, resolve_model

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-key"
BASE_MODEL_ID = DEFAULT_MODEL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class EngineShape:
    """The engine settings both servers share (vLLM's names; the gateway's settings carry the same)."""

    max_model_len: int = 1024
    max_num_seqs: int = 16
    max_loras: int = 8
    max_cpu_loras: int = 8
    max_lora_rank: int = 16
    kv_cache_space_gb: int = 1
    gpu_memory_utilization: float = 0.2
    dtype: str = "float32"

    def gateway_env(self) -> dict[str, str]:
        return {
            "SKILLSERVE_DTYPE": self.dtype,
            "SKILLSERVE_MAX_MODEL_LEN": str(self.max_model_len),
            "SKILLSERVE_MAX_NUM_SEQS": str(self.max_num_seqs),
            "SKILLSERVE_MAX_LORAS": str(self.max_loras),
            "SKILLSERVE_MAX_CPU_LORAS": str(self.max_cpu_loras),
            "SKILLSERVE_MAX_LORA_RANK": str(self.max_lora_rank),
            "SKILLSERVE_KV_CACHE_SPACE_GB": str(self.kv_cache_space_gb),
            "SKILLSERVE_GPU_MEMORY_UTILIZATION": str(self.gpu_memory_utilization),
            "SKILLSERVE_ENFORCE_EAGER": "true",
        }

    def vllm_args(self) -> list[str]:
        return [
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--enable-lora",
            "--max-loras", str(self.max_loras),
            "--max-cpu-loras", str(self.max_cpu_loras),
            "--max-lora-rank", str(self.max_lora_rank),
            "--gpu-memory-utilization", str(self.gpu_memory_utilization),
            "--enforce-eager",
            "--disable-log-stats",  # the gateway's engine runs with log stats off too
        ]  # fmt: skip


@dataclass
class Server:
    """A server process on loopback: where it listens and where its log goes."""

    label: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_s: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, path: str, timeout_s: float = 300) -> None:
        started = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    self.started_s = round(time.monotonic() - started, 1)
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() - started > timeout_s:
                self.stop()
                raise RuntimeError(f"{self.label} was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _spawn(label: str, cmd: list[str], env: dict[str, str], log_path: Path, port: int) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Server(label, f"http://127.0.0.1:{port}", proc, log_path)


def start_gateway(
    shape: EngineShape,
    store_uri: str,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    ready_timeout_s: float = 300,
    label: str = "gateway",
) -> Server:
    """`python -m service` as `make run` starts it, with the shape's engine settings; returns when ready.

    Long runs (the soak, deep fuzzing) pass a longer `ready_timeout_s`: on a loaded shared machine the
    engine has taken more than 300 s to start."""
    port = free_port()
    env = dict(os.environ)
    env.update(shape.gateway_env())
    env.update(
        {
            "SKILLSERVE_STORE_URI": store_uri,
            "SKILLSERVE_CACHE_DIR": str(workdir / "cache"),
            "SKILLSERVE_PORT": str(port),
            "SKILLSERVE_API_KEYS": json.dumps([API_KEY]),
            "SKILLSERVE_TRAINING_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
    )
    server = _spawn(label, [sys.executable, "-m", "service"], env, workdir / f"{label.replace(' ', '-')}.log", port)
    server.wait_ready("/ready", ready_timeout_s)
    return server


# Our grouped CPU LoRA ops (service/engine/cpu_lora.py) are a vLLM plugin, which `vllm serve` would load
# too; the comparison is against vLLM as it ships, so its server runs every plugin but that one.
OUR_LORA_OPS_PLUGIN = "skillserve-cpu-lora"


def vllm_serve_plugins() -> list[str]:
    """The vLLM general plugins `vllm serve` loads in the benchmarks: all installed but our LoRA ops."""
    from importlib.metadata import entry_points

    return sorted(ep.name for ep in entry_points(group="vllm.general_plugins") if ep.name != OUR_LORA_OPS_PLUGIN)


def start_vllm_serve(
    shape: EngineShape, lora_modules: dict[str, Path], workdir: Path, label: str = "vllm serve"
) -> Server:
    """vLLM's own OpenAI server (`vllm serve --enable-lora --lora-modules ...`), with its own LoRA ops."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "VLLM_CPU_KVCACHE_SPACE": str(shape.kv_cache_space_gb),
            "VLLM_PLUGINS": ",".join(vllm_serve_plugins()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    cmd = [
        sys.executable, "-m", "bench.vllm_cli", "serve", str(resolve_model(DEFAULT_MODEL)),
        "--served-model-name", BASE_MODEL_ID,
        "--host", "127.0.0.1", "--port", str(port),
        "--api-key", API_KEY,
        *shape.vllm_args(),
    ]  # fmt: skip
    if lora_modules:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in lora_modules.items())]
    server = _spawn(label, cmd, env, workdir / f"{label.replace(' ', '-')}.log", port)
    server.wait_ready("/health")
    return server
