"""Serving past one machine: two gateway processes on one store, as two replicas of the chart's Deployment are.

One is the session's serving gateway (real vLLM engine); the other is a management-only gateway
(`SKILLSERVE_LOAD_ENGINE=false`), started here, because a second engine does not fit beside the first on this
project's two-core machines. Both read the registry from the store with the same code, so what one replica does
(publish, delete) the other sees within the manifest TTL. The adapter is published the way the trainer
publishes it, not trained (training is covered in tests/test_gateway_training.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.engine.adapter_cache import MANIFEST_TTL_S
from tests.gateway_fixtures import ADMIN_KEY, GatewayServer, free_port, gateway_process, publish_adapter

pytestmark = pytest.mark.slow

SLACK_S = 2.0  # polling and request time on a busy two-core machine


@pytest.fixture
def management_replica(gateway: GatewayServer, tmp_path: Path) -> Iterator[str]:
    """A second gateway on the serving gateway's store, without an engine; its URL."""
    extra = {"SKILLSERVE_LOAD_ENGINE": "false", "SKILLSERVE_METRICS_PORT": str(free_port())}
    with gateway_process(tmp_path, gateway.store_uri, extra, ready="/health", timeout=120) as (replica, _):
        yield replica.url


def chat(client: httpx.Client, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    return client.post("/v1/chat/completions", json=body)


def until(check: object, timeout: float) -> float:
    """Seconds until `check()` is true; fails after `timeout`."""
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:.1f} s")
        time.sleep(0.2)
    return time.monotonic() - start


def test_published_adapter_is_seen_by_both_replicas_and_a_delete_by_either_within_the_manifest_ttl(
    gateway: GatewayServer, management_replica: str, peft_adapter_dir: Path
) -> None:
    serving = gateway.client()
    other = httpx.Client(base_url=management_replica, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    name = f"replica-skill-{int(time.time())}"

    publish_adapter(gateway.registry, peft_adapter_dir, name)
    listed = lambda: name in {a["name"] for a in other.get("/adapters").json()["data"]}  # noqa: E731
    until(listed, MANIFEST_TTL_S + SLACK_S)
    assert chat(serving, name).status_code == 200  # served by the replica with the engine

    deleted = other.delete(f"/adapters/{name}")
    assert deleted.status_code == 200, deleted.text
    waited = until(lambda: chat(serving, name).status_code == 404, MANIFEST_TTL_S + SLACK_S)
    assert waited <= MANIFEST_TTL_S + SLACK_S
    assert not listed()
