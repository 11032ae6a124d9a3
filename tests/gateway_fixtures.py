"""Gateway fixtures: one real gateway (real vLLM engine, real model) per test session, on loopback.

The gateway runs as `python -m service` in a subprocess on a tmp file store, exactly as `make run`
starts it, with small engine limits so it starts fast and fits beside other work on two cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.registry import Registry, new_manifest
from adapters.schema import LoraInfo, Manifest
from adapters.store import open_store
from adapters.templates import get_template
from service.api.auth import key_id
from service.settings import Settings

API_KEY = "test-inference-key"
ADMIN_KEY = "test-admin-key"
LIMITED_KEY = "test-limited-key"  # an inference key with per-minute limits of its own (tests/test_limits.py)
LIMITED_KEY_LIMITS = {"requests_per_minute": 3, "tokens_per_minute": 100_000}
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GatewayServer:
    """A running gateway: its URL, its store, and keys for each role."""

    url: str
    store_uri: str
    registry: Registry
    log_path: Path

    def client(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=300)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def gateway_env(store_uri: str, cache_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SKILLSERVE_STORE_URI": store_uri,
            "SKILLSERVE_CACHE_DIR": str(cache_dir),
            "SKILLSERVE_PORT": str(port),
            "SKILLSERVE_MAX_MODEL_LEN": "1024",
            "SKILLSERVE_MAX_NUM_SEQS": "8",
            "SKILLSERVE_MAX_LORAS": "2",
            "SKILLSERVE_MAX_CPU_LORAS": "4",
            "SKILLSERVE_MAX_LORA_RANK": "16",
            "SKILLSERVE_KV_CACHE_SPACE_GB": "1",
            "SKILLSERVE_API_KEYS": json.dumps([API_KEY, LIMITED_KEY]),
            "SKILLSERVE_KEY_LIMITS": json.dumps({key_id(LIMITED_KEY): LIMITED_KEY_LIMITS}),
            "SKILLSERVE_ADMIN_KEYS": json.dumps([ADMIN_KEY]),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def management_settings(root: Path, **overrides: Any) -> Settings:
    """A management-only gateway (no engine) on a file store under `root`, with inference and admin keys."""
    return Settings(
        store_uri=f"file://{root / 'store'}",
        cache_dir=root / "cache",
        load_engine=False,
        api_keys=[API_KEY],
        admin_keys=[ADMIN_KEY],
        **overrides,
    )  # type: ignore[arg-type]


def in_process_sdk(app: Any, key: str) -> Any:
    """The official openai SDK on an in-process gateway (`app` a FastAPI TestClient, used as its HTTP client)."""
    import openai

    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=app, max_retries=0)


@contextmanager
def gateway_process(
    root: Path, store_uri: str, extra_env: dict[str, str] | None = None, ready: str = "/ready", timeout: float = 600
) -> Iterator[tuple[GatewayServer, subprocess.Popen[bytes]]]:
    """`python -m service` on `store_uri`, as `make run` starts it, until `ready` answers 200; stopped on exit.

    The timeout only guards against a hang: on a loaded two-core machine an engine start takes minutes."""
    port = free_port()
    env = {**gateway_env(store_uri, root / "cache", port), **(extra_env or {})}
    log_path = root / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = GatewayServer(f"http://127.0.0.1:{port}", store_uri, Registry(open_store(store_uri)), log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the gateway exited with {proc.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(f"{server.url}{ready}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the gateway did not answer {ready} within {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(1)
        yield server, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """The session's one gateway; started on first use, stopped at the end."""
    root = tmp_path_factory.mktemp("gateway")
    with gateway_process(root, f"file://{root / 'store'}") as (server, _):
        yield server


@pytest.fixture(scope="session")
def peft_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEFT LoRA adapter on the served base, randomly initialised so it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("peft-adapter")
    get_peft_model(model, config).save_pretrained(out)
    return out


PublishAdapter = Callable[..., Manifest]


def publish_adapter(
    registry: Registry,
    directory: Path,
    name: str,
    template: str = "chatml",
    base_model: str = DEFAULT_MODEL,
    rank: int = 8,
) -> Manifest:
    """Publish `directory` (a PEFT adapter) as a new version of `name`, as the trainer would."""
    lora = LoraInfo(rank=rank, alpha=16, target_modules=["q_proj", "v_proj"])
    manifest = new_manifest(
        name, get_template(template, None), lora, base_model=base_model, base_dir=resolve_model(DEFAULT_MODEL)
    )
    return registry.publish(manifest, directory)


def temp_store_uri() -> str:
    return f"file://{tempfile.mkdtemp(prefix='skillserve-store-')}"
