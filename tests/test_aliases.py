"""Versions users manage, through the openai SDK: aliases moved and rolled back, a sticky canary split, and a
header that says which version answered."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import openai
import pytest

from tests.gateway_fixtures import API_KEY, GatewayServer, publish_adapter

pytestmark = pytest.mark.slow
VERSION_HEADER = "x-skillserve-model-version"


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def versions(gateway: GatewayServer, peft_adapter_dir: Path) -> tuple[str, str]:
    first = publish_adapter(gateway.registry, peft_adapter_dir, "aliased")
    second = publish_adapter(gateway.registry, peft_adapter_dir, "aliased")
    return first.version, second.version


def _answered_by(client: openai.OpenAI, model: str, user: str | None = None) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=model, max_tokens=1, temperature=0, messages=[{"role": "user", "content": "Hi"}],
        **({"user": user} if user else {}),
    )
    raw.parse()
    return raw.headers[VERSION_HEADER]


def _point(gateway: GatewayServer, alias: str, version: str, **extra: object) -> dict[str, object]:
    with gateway.client() as http:
        reply = http.post("/adapters/aliased/aliases", json={"alias": alias, "version": version, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def test_an_alias_moves_and_rolls_back_and_the_header_says_which_version_answered(
    gateway: GatewayServer, client: openai.OpenAI, versions: tuple[str, str]
) -> None:
    v1, v2 = versions
    assert _answered_by(client, "aliased") == f"aliased@{v2}"  # publishing moved `latest`
    moved = _point(gateway, "prod", v2)
    assert _answered_by(client, "aliased@prod") == f"aliased@{v2}"
    assert "aliased@prod" in [m.id for m in client.models.list()]
    _point(gateway, "prod", v1, expected_revision=moved["revision"])  # rollback, conditional on what was read
    assert _answered_by(client, "aliased@prod") == f"aliased@{v1}"
    with gateway.client() as http:  # a writer holding a stale revision is refused
        stale = http.post(
            "/adapters/aliased/aliases",
            json={"alias": "prod", "version": v2, "expected_revision": moved["revision"]},
        )
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "already_exists", stale.text
    assert _answered_by(client, "aliased@prod") == f"aliased@{v1}"
    assert _answered_by(client, f"aliased@{v2}") == f"aliased@{v2}"  # pinned versions still work


def test_a_canary_split_serves_its_share_sticky_per_user(
    gateway: GatewayServer, client: openai.OpenAI, versions: tuple[str, str]
) -> None:
    v1, v2 = versions
    _point(gateway, "canary", v1, canary=v2, canary_weight=0.2)
    answers = {n: _answered_by(client, "aliased@canary", user=f"user-{n}") for n in range(250)}
    share = Counter(answers.values())[f"aliased@{v2}"] / len(answers)
    assert 0.12 < share < 0.28, share
    for n in range(0, 250, 25):  # the same user lands on the same version every time
        assert _answered_by(client, "aliased@canary", user=f"user-{n}") == answers[n]
