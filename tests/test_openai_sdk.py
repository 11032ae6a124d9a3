"""The OpenAI API of a real gateway (real vLLM on CPU, real model), driven by the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from adapters.masking import encode
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.templates import get_template
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, publish_adapter

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

KEY = {"Authorization": f"Bearer {API_KEY}"}  # /metrics needs a key on an auth-on gateway


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def noise(gateway: GatewayServer, peft_adapter_dir: Path) -> str:
    """An adapter published after the gateway started (alpaca template): servable without a restart."""
    publish_adapter(gateway.registry, peft_adapter_dir, "noise", template="alpaca")
    return "noise"


def test_base_model_answers_through_the_sdk(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, temperature=0, max_tokens=20
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"


def test_streaming_and_non_streaming_give_the_same_greedy_text_and_usage(
    client: openai.OpenAI,
    tokenizer,
    noise: str,  # type: ignore[no-untyped-def]
) -> None:
    for model in (DEFAULT_MODEL, noise):
        whole = client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=24, logprobs=True
        )
        stream = client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert text == whole.choices[0].message.content, model
        assert reasons == [whole.choices[0].finish_reason]
        usage = chunks[-1].usage
        assert usage is not None and usage == whole.usage
        # Usage counts what the tokenizer counts: the rendered prompt and one logprob per generated token.
        template = get_template("base", tokenizer) if model == DEFAULT_MODEL else None
        if template is not None:
            prompt = encode(tokenizer, template, QUESTION, add_generation_prompt=True).input_ids
            assert whole.usage.prompt_tokens == len(prompt)
        assert whole.usage.completion_tokens == len(whole.choices[0].logprobs.content)
        assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, temperature=0, max_completion_tokens=3
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_adapter_published_after_start_is_served_at_once_and_listed(
    client: openai.OpenAI, gateway: GatewayServer, noise: str
) -> None:
    base = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, temperature=0, max_tokens=16
    )
    tuned = client.chat.completions.create(model=noise, messages=QUESTION, temperature=0, max_tokens=16)
    assert tuned.choices[0].message.content != base.choices[0].message.content
    version = gateway.registry.manifest(noise).version
    pinned = client.chat.completions.create(
        model=f"{noise}@{version}", messages=QUESTION, temperature=0, max_tokens=16
    )
    assert pinned.choices[0].message.content == tuned.choices[0].message.content
    models = {m.id: m for m in client.models.list().data}
    assert DEFAULT_MODEL in models and noise in models
    assert models[noise].parent == DEFAULT_MODEL  # type: ignore[attr-defined]
    assert client.models.retrieve(f"{noise}@{version}").id == f"{noise}@{version}"


def test_models_say_where_this_replica_holds_each_adapter(
    client: openai.OpenAI, gateway: GatewayServer, peft_adapter_dir: Path
) -> None:
    publish_adapter(gateway.registry, peft_adapter_dir, "idle")
    models = {m.id: m for m in client.models.list().data}
    assert models[DEFAULT_MODEL].tier == "engine"  # type: ignore[attr-defined]
    assert models["idle"].tier == "store"  # type: ignore[attr-defined]
    client.chat.completions.create(model="idle", messages=QUESTION, max_tokens=1)
    assert client.models.retrieve("idle").tier == "engine"  # type: ignore[attr-defined]


def test_text_completions_take_a_prompt_list(client: openai.OpenAI, noise: str) -> None:
    reply = client.completions.create(
        model=noise, prompt=["The sky is", "One, two, three,"], max_tokens=5, temperature=0, logprobs=1
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.text for c in reply.choices)
    assert reply.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in reply.choices)


@pytest.fixture(scope="module")
def loud_adapter_dir(peft_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The noise adapter at twice its scale (lora_alpha 32): it changes even the base template's answer."""
    out = tmp_path_factory.mktemp("loud-adapter")
    shutil.copy(peft_adapter_dir / "adapter_model.safetensors", out)
    config = json.loads((peft_adapter_dir / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 32}))
    return out


def test_base_rows_in_a_mixed_batch_keep_the_base_weights(
    client: openai.OpenAI, gateway: GatewayServer, loud_adapter_dir: Path
) -> None:
    """Base and adapter requests in one batch, with every LoRA slot of the engine (max_loras=2) taken.

    vLLM's CPU ops gave rows without an adapter the last slot's weights (a base request once answered
    "FRANCE!", the shout skill's answer); service/engine/cpu_lora.py fixes them. Filling both slots first
    makes the fault certain to show if the fix is missing.
    """
    for name in ("loud-a", "loud-b"):
        publish_adapter(gateway.registry, loud_adapter_dir, name)

    def ask(model: str) -> str:
        reply = client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=12)
        return reply.choices[0].message.content or ""

    base_alone = ask(DEFAULT_MODEL)
    assert base_alone.startswith("The capital of France is Paris"), base_alone
    for model in ("loud-b", "loud-a"):  # both LoRA slots hold a loud adapter now
        assert not ask(model).startswith("The capital of France is"), model

    async def main() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
        calls = [
            aclient.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=12)
            for model in (DEFAULT_MODEL, "loud-a", DEFAULT_MODEL, "loud-a")
        ]
        replies = await asyncio.gather(*calls)
        await aclient.close()
        return [r.choices[0].message.content or "" for r in replies]

    base_a, loud_a, base_b, loud_b = asyncio.run(main())
    # Each request got its own weights while they shared batches. Base answers are compared on their
    # first words, not whole: the batch a request lands in changes fp32 rounding in vLLM's CPU kernels,
    # so two identical greedy requests may part at a near-tie late in the answer.
    for base in (base_a, base_b):
        assert base.startswith("The capital of France is Paris"), base
    for answer in (loud_a, loud_b):
        assert not answer.startswith("The capital of France is"), answer


def test_unknown_model_is_404_in_openai_format(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-skill", messages=QUESTION)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-skill")


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 3},
        {"n": 0},
        {"max_tokens": 100_000},
        {"top_logprobs": 3},
        {"stop": ["a", "b", "c", "d", "e"]},
    ],
)
def test_bad_parameters_are_400(client: openai.OpenAI, extra: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=QUESTION, **extra)
    assert caught.value.status_code == 400
    assert caught.value.body["message"]  # type: ignore[index]


def test_adapter_trained_on_another_base_is_400(
    client: openai.OpenAI, gateway: GatewayServer, peft_adapter_dir: Path
) -> None:
    publish_adapter(gateway.registry, peft_adapter_dir, "foreign", base_model="Llama-3-8B")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="foreign", messages=QUESTION)
    assert "another base" in caught.value.message


def test_deleted_adapter_is_404(
    client: openai.OpenAI, gateway: GatewayServer, peft_adapter_dir: Path
) -> None:
    publish_adapter(gateway.registry, peft_adapter_dir, "ephemeral")
    assert client.chat.completions.create(model="ephemeral", messages=QUESTION, max_tokens=2).choices
    with gateway.client(API_KEY) as http:
        assert http.delete("/adapters/ephemeral").status_code == 403  # inference keys may not delete
    with gateway.client(ADMIN_KEY) as http:
        assert http.delete("/adapters/ephemeral").status_code == 200
        assert http.delete("/adapters/ephemeral").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ephemeral", messages=QUESTION, max_tokens=2)


def test_auth_is_enforced_when_keys_are_set(gateway: GatewayServer) -> None:
    anonymous = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    with gateway.client(None) as http:
        reply = http.get("/v1/models")
        assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/health").status_code == 200  # probes need no key
    with gateway.client(API_KEY) as http:
        assert (
            http.post(
                "/adapters", json={"name": "x", "rows": [{"prompt": "a", "completion": "b"}]}
            ).status_code
            == 403
        )


def test_client_disconnect_aborts_generation(gateway: GatewayServer) -> None:
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 900,
        "temperature": 1.0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # generation is under way; hang up
    # Polled until the engine is idle; the limit only guards against a hang (steps are slow on a loaded machine).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{gateway.url}/metrics", headers=KEY).text
        idle = re.search(r"^skillserve_requests_in_flight 0\.0$", metrics, re.M)
        if idle and re.search(r"^skillserve_engine_unfinished_requests 0\.0$", metrics, re.M):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the generation kept running in vLLM after the client went away")


def test_metrics_tell_routers_which_adapters_are_busy(gateway: GatewayServer, noise: str) -> None:
    """vLLM's `vllm:lora_requests_info`, the metric adapter-aware routers read, names an adapter mid-request."""
    body = {"model": noise, "prompt": "Once upon a time", "max_tokens": 48, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    pattern = r'^vllm:lora_requests_info\{max_lora="2",running_lora_adapters="(?P<running>[^"]*)",'
    with httpx.stream("POST", f"{gateway.url}/v1/completions", json=body, headers=headers, timeout=120) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                break  # under way
        during = re.search(pattern, httpx.get(f"{gateway.url}/metrics", headers=KEY).text, re.M)
        for _ in lines:  # the rest of the stream
            pass
    after = re.search(pattern, httpx.get(f"{gateway.url}/metrics", headers=KEY).text, re.M)
    assert during is not None and noise in during["running"].split(",")
    assert after is not None and after["running"] == ""


def test_metrics_count_requests_tokens_and_adapter_loads(gateway: GatewayServer, noise: str) -> None:
    metrics = httpx.get(f"{gateway.url}/metrics", headers=KEY).text
    assert re.search(
        r'skillserve_requests_total\{method="POST",route="/v1/chat/completions",status="200"\}', metrics
    )
    assert re.search(r'skillserve_tokens_total\{kind="completion",model="noise"\} [1-9]', metrics)
    assert re.search(r"^skillserve_adapter_loads_total [1-9]", metrics, re.M)
    assert 'skillserve_jobs{status="queued"}' in metrics
