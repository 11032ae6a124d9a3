"""Per-model Prometheus metrics: requests and outcomes, tokens, time to first token, time per output token,
adapter load time by tier and residency, with the `model` label bounded to the first N adapters and `other`."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from adapters.models import DEFAULT_MODEL
from service.metrics import OTHER, Metrics
from tests.gateway_fixtures import API_KEY, GatewayServer, publish_adapter


def test_the_model_label_is_bounded_and_never_taken_back() -> None:
    metrics = Metrics(max_models=3, base_model="base")
    seen = [metrics.meter(name).model for name in ["a", "b", "base", "c", "d", "e", "a", "d"]]
    assert seen == ["a", "b", "base", "c", OTHER, OTHER, "a", OTHER]
    for name in ["a", "b", "c", "d", "e", "f", "g"]:
        meter = metrics.meter(name)
        meter.tokens("prompt", 3)
        meter.generated(2)
        meter.outcome(failed=name == "g")
    text = metrics.render().decode()
    labels = set(re.findall(r'skillserve_model_requests_total\{model="([^"]+)"', text))
    assert labels == {"a", "b", "c", OTHER}  # 7 adapters, 3 slots + other: the bound holds
    assert 'skillserve_model_requests_total{model="other",outcome="error"} 1.0' in text
    assert 'skillserve_tokens_total{kind="completion",model="other"} 8.0' in text


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            inside = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(inside.split(","))) == wanted:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.slow
def test_per_model_metrics_through_the_real_gateway(gateway: GatewayServer, peft_adapter_dir: Path) -> None:
    publish_adapter(gateway.registry, peft_adapter_dir, "metered")
    with gateway.client(API_KEY) as http:
        before = http.get("/metrics").text
        hello = [{"role": "user", "content": "Say hi."}]
        assert http.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": hello,
                                                       "max_tokens": 4}).status_code == 200
        body = {"model": "metered", "messages": hello, "max_tokens": 6, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300) as reply:
            assert reply.status_code == 200 and reply.headers["x-skillserve-model-version"].startswith("metered@")
            events = [line for line in reply.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        after = http.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert grew("skillserve_model_requests_total", model=DEFAULT_MODEL, outcome="ok") == 1
    assert grew("skillserve_model_requests_total", model="metered", outcome="ok") == 1
    assert grew("skillserve_tokens_total", kind="completion", model="metered") == 6
    assert grew("skillserve_time_to_first_token_seconds_count", model="metered") == 1  # streamed: timed
    assert grew("skillserve_time_to_first_token_seconds_count", model=DEFAULT_MODEL) == 0  # whole: no first token
    assert grew("skillserve_time_per_output_token_seconds_count", model="metered") == 1
    assert grew("skillserve_adapter_load_seconds_count", tier="store") >= 1  # its first request fetched it
    assert _sample(after, "skillserve_adapters_resident", tier="disk") >= 1


def test_two_projects_adapters_of_one_name_share_a_series_unless_the_operator_asks_for_a_project_label() -> None:
    """Off (the default): the labels are as before projects, no project id in them, and another project's namesake
    counts under the same name. On: every per-model series carries the project, the base model's too, and each
    project's adapter takes one of the bounded labels."""
    off = Metrics(max_models=2, base_model="base")
    on = Metrics(max_models=2, base_model="base", project_label=True)
    for metrics in (off, on):
        a, b = "proj_00000000000000aa", "proj_00000000000000bb"
        for project, model in (("default", "tone"), (a, "tone"), (a, "base"), (b, "tone"), (b, "late")):
            meter = metrics.meter(model, project)
            meter.tokens("prompt", 3)
            meter.token()
            meter.generated(2)
            meter.outcome(failed=False)
    text = off.render().decode()
    assert "proj_" not in text and "project=" not in text
    assert _sample(text, "skillserve_model_requests_total", model="tone", outcome="ok") == 3
    assert _sample(text, "skillserve_model_requests_total", model="late", outcome="ok") == 1
    assert _sample(text, "skillserve_tokens_total", kind="prompt", model="tone") == 9

    text = on.render().decode()
    requests = "skillserve_model_requests_total"
    assert _sample(text, requests, model="tone", project="default", outcome="ok") == 1
    assert _sample(text, requests, model="tone", project="proj_00000000000000aa", outcome="ok") == 1
    assert _sample(text, requests, model="base", project="proj_00000000000000aa", outcome="ok") == 1
    assert _sample(text, requests, model=OTHER, project="proj_00000000000000bb", outcome="ok") == 2  # past the bound
    assert _sample(text, "skillserve_tokens_total", kind="completion", model="tone", project="default") == 2
    assert _sample(text, "skillserve_time_per_output_token_seconds_count", model="tone", project="default") == 1
    assert _sample(text, "skillserve_time_to_first_token_seconds_count", model="tone",
                   project="proj_00000000000000aa") == 1


def test_the_project_label_setting_reaches_the_gateways_metrics(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.gateway_fixtures import management_settings

    for asked in (False, True):
        with TestClient(create_app(management_settings(tmp_path / str(asked), metrics_project_label=asked))) as app:
            metrics = app.app.state.gateway.metrics  # type: ignore[attr-defined]
            assert metrics.project_label is asked
            assert ("project" in metrics.model_requests._labelnames) is asked
