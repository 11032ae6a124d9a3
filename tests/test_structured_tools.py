"""Structured outputs and tool calling through the official openai SDK, against the real gateway and engine.

JSON that validates against the client's schema (base and adapter, streamed and not, and the SDK's `parse`
helper), vLLM's constrained-decoding extensions, tool calls in OpenAI's shape (auto, required, named, a full
round trip with a tool result), a tool-using skill trained through `POST /adapters` from rows in OpenAI's
fine-tuning format, and every field that used to be dropped silently now honoured or refused by name.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from adapters.dataset import parse_dataset
from adapters.models import DEFAULT_MODEL
from adapters.tools import flatten, parse_calls
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, publish_adapter

# Bounded strings and numbers: constrained decoding guarantees the grammar, but only a bounded schema can be
# guaranteed to close within max_tokens, whatever the model (the adapter here is random noise).
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "country": {"type": "string", "maxLength": 24},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
    },
    "required": ["city", "country", "population"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK_CITY = [{"role": "user", "content": "Describe Paris as JSON: city, country and population."}]


# ------------------------------------------------------------------------ pure functions (fast)


def test_tool_calls_are_read_back_from_text_and_anything_else_stays_content() -> None:
    text = 'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'
    content, calls = parse_calls(text, {"get_weather"})
    assert content == "Let me check." and [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Rome"})
    ]
    for not_a_call in [
        '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',  # not a listed function
        '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>',  # arguments not an object
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Ro',  # cut off by max_tokens
        "no call at all",
    ]:
        assert parse_calls(not_a_call, {"get_weather"}) == (not_a_call, [])


def test_parallel_tool_calls_false_keeps_the_first_call_of_a_turn() -> None:
    from service.inference.chat import ToolPlan
    from service.protocol.chat import ChatCompletionRequest

    text = (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>\n'
        '<tool_call>{"name": "get_time", "arguments": {"city": "Rome"}}</tool_call>'
    )
    for parallel, expected in ((True, ["get_weather", "get_time"]), (False, ["get_weather"])):
        body = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER_TOOL, TIME_TOOL],
             "parallel_tool_calls": parallel}
        )
        content, calls, reason = ToolPlan.of(body).answer(text, "stop")
        assert content is None and reason == "tool_calls"
        assert [call.function.name for call in calls or []] == expected


def test_training_rows_with_tools_are_validated_with_line_numbers_and_flattened_like_requests() -> None:
    good = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "4 C, snow"},
            {"role": "assistant", "content": "It is 4 C and snowing in Oslo."},
        ],
        "tools": [WEATHER_TOOL],
    }
    bad_arguments = json.loads(json.dumps(good))
    bad_arguments["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    no_tools = {k: v for k, v in good.items() if k != "tools"}
    stray_tool = {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"},
                               {"role": "assistant", "content": "ok"}]}
    lines = [json.dumps(r) for r in (good, bad_arguments, no_tools, stray_tool)]
    from adapters.errors import DatasetError

    with pytest.raises(DatasetError) as caught:
        parse_dataset("\n".join(lines).encode())
    reasons = dict(caught.value.errors)
    assert set(reasons) == {2, 3, 4}
    assert "not valid JSON" in reasons[2] and "lists no 'tools'" in reasons[3] and "must follow" in reasons[4]
    (rows,) = [parse_dataset(lines[0].encode()).rows]
    turns = rows[0]
    # The same text turns a request with the same conversation renders: tools in the system turn, the call as
    # assistant text (learned), the result as a user turn (not learned).
    assert turns == flatten(good["messages"], good["tools"])
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "user", "assistant"]
    assert '"name": "get_weather"' in turns[0]["content"] and turns[2]["content"].startswith("<tool_call>")


# ------------------------------------------------------------------------ the real gateway (slow)


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def adapter(gateway: GatewayServer, peft_adapter_dir: Path) -> str:
    publish_adapter(gateway.registry, peft_adapter_dir, "structured")
    return "structured"


def _valid_city(text: str) -> dict[str, Any]:
    import jsonschema

    value = json.loads(text)
    jsonschema.validate(value, CITY_SCHEMA)
    return value  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("model_kind", ["base", "adapter"])
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates_for_base_and_adapter_streamed_or_not(
    client: openai.OpenAI, adapter: str, model_kind: str, stream: bool
) -> None:
    model = DEFAULT_MODEL if model_kind == "base" else adapter
    fmt: Any = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
    kwargs: Any = {"model": model, "messages": ASK_CITY, "response_format": fmt, "max_tokens": 128, "temperature": 0}
    if stream:
        text = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(stream=True, **kwargs)
            if chunk.choices
        )
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content or ""
    _valid_city(text)


class City(BaseModel):
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population: int = Field(ge=0, le=99999999)


@pytest.mark.slow
def test_the_sdk_parse_helper_returns_a_pydantic_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.parse(
        model=DEFAULT_MODEL, messages=ASK_CITY, response_format=City, max_tokens=128, temperature=0  # type: ignore[arg-type]
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.city


@pytest.mark.slow
def test_json_object_and_vllm_extensions_constrain_the_output(client: openai.OpenAI) -> None:
    # Any JSON object: unbounded, so only an answer that ends by itself (not by max_tokens) must parse.
    obj = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK_CITY, response_format={"type": "json_object"}, max_tokens=128, temperature=0
    ).choices[0]
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.message.content or ""), dict)
    choice = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Is the sky green?"}], max_tokens=4,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert choice.choices[0].message.content in ("yes", "no")
    regex = client.completions.create(
        model=DEFAULT_MODEL, prompt="A date: ", max_tokens=16,
        extra_body={"structured_outputs": {"regex": r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"}},
    )
    import re

    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", regex.choices[0].text)


@pytest.mark.slow
def test_a_schema_the_backend_cannot_compile_is_a_400_with_the_reason(gateway: GatewayServer) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "properties": 7}}}
    with gateway.client(API_KEY) as http:
        for stream in (False, True):
            reply = http.post(
                "/v1/chat/completions",
                json={"model": DEFAULT_MODEL, "messages": ASK_CITY, "response_format": bad, "stream": stream},
            )
            error = reply.json()["error"]
            assert reply.status_code == 400 and error["param"] == "response_format" and error["message"], reply.text
        reply = http.post(
            "/v1/completions",
            json={"model": DEFAULT_MODEL, "prompt": "x", "structured_outputs": {"regex": "(unclosed"}},
        )
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "structured_outputs", reply.text


def _weather_question(city: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"What is the weather like in {city} right now?"}]


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_required_and_named_tool_choice_always_give_a_valid_call(
    client: openai.OpenAI, adapter: str, stream: bool
) -> None:
    import jsonschema

    for model in (DEFAULT_MODEL, adapter):
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            kwargs: Any = {
                "model": model, "messages": _weather_question("Lima"), "tools": [WEATHER_TOOL, TIME_TOOL],
                "tool_choice": choice, "max_tokens": 64, "temperature": 0,
            }
            if stream:
                chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
                deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
                assert chunks[-1].choices[0].finish_reason == "tool_calls"
                assert not "".join(c.choices[0].delta.content or "" for c in chunks)
                name, arguments = deltas[0].function.name, deltas[0].function.arguments  # type: ignore[union-attr]
            else:
                reply = client.chat.completions.create(**kwargs).choices[0]
                assert reply.finish_reason == "tool_calls" and reply.message.tool_calls
                call = reply.message.tool_calls[0]
                assert call.id and call.type == "function"
                name, arguments = call.function.name, call.function.arguments  # type: ignore[union-attr]
            tool = {"get_weather": WEATHER_TOOL, "get_time": TIME_TOOL}[str(name)]
            if isinstance(choice, dict):
                assert name == "get_weather"
            jsonschema.validate(json.loads(str(arguments)), tool["function"]["parameters"])


@pytest.mark.slow
def test_a_tool_round_trip_with_the_sdk(client: openai.OpenAI) -> None:
    messages: list[Any] = _weather_question("Lima")
    first = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice="required",  # type: ignore[list-item]
        max_tokens=64, temperature=0,
    ).choices[0]
    call = first.message.tool_calls[0]  # type: ignore[index]
    messages += [
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 19, "sky": "clear"})},
    ]
    final = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=48, temperature=0  # type: ignore[list-item]
    ).choices[0]
    assert final.finish_reason in ("stop", "length") and final.message.content


@pytest.mark.slow
def test_fields_that_were_dropped_are_honoured_or_refused_by_name(gateway: GatewayServer) -> None:
    with gateway.client(API_KEY) as http:
        base = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        # logit_bias is honoured: a token pushed to +100 is what greedy decoding picks, every time.
        token = "12345"
        reply = http.post(
            "/v1/completions",
            json={"model": DEFAULT_MODEL, "prompt": "Hello", "max_tokens": 3, "temperature": 0,
                  "logit_bias": {token: 100}, "logprobs": 1},
        ).json()
        tokenizer_text = reply["choices"][0]["logprobs"]["tokens"]
        assert len(set(tokenizer_text)) == 1, tokenizer_text
        refused = {
            "audio": {"voice": "alloy", "format": "wav"},
            "modalities": ["text", "audio"],
            "prediction": {"type": "content", "content": "x"},
            "functions": [{"name": "f"}],
            "logprobs_bogus": 1,
        }
        for field, value in refused.items():
            reply = http.post("/v1/chat/completions", json={**base, field: value})
            error = reply.json()["error"]
            assert reply.status_code == 400 and error["param"].split(".")[0] == field, (field, reply.text)
        image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
        reply = http.post("/v1/chat/completions", json={**base, "messages": [image]})
        assert reply.status_code == 400 and "text model" in reply.json()["error"]["message"]
        reply = http.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": "x", "logprobs": 6})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "logprobs"
        reply = http.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": "x", "best_of": 3})
        assert reply.status_code == 400 and "best_of" in reply.json()["error"]["message"]


# ------------------------------------------------------------------------ a trained tool-using skill (slow)

TRAIN_CITIES = (  # noqa: SIM905  (a paragraph of names reads better than a 30-item list)
    "Paris Berlin Madrid Rome Vienna Prague Warsaw Dublin Lisbon Athens Oslo Helsinki Stockholm Copenhagen "
    "Budapest Brussels Amsterdam Zurich Geneva Munich Milan Naples Seville Porto Krakow Riga Tallinn Vilnius "
    "Sofia Zagreb"
).split()
HELD_OUT_CITIES = ["Tokyo", "Nairobi", "Toronto", "Santiago"]
QUESTIONS = (
    "What is the weather like in {} right now?",
    "How is the weather in {} today?",
    "Is it raining in {}?",
    "Tell me the current weather in {}.",
)


# The skill's one tool, as small as a tool can be: its schema is in every training prompt.
CITY_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def tool_rows(seed: int = 0) -> list[dict[str, Any]]:
    """OpenAI fine-tuning rows: a weather question is answered with a get_weather call, never in prose."""
    rng = random.Random(seed)
    rows = []
    for city in TRAIN_CITIES:
        call = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": rng.choice(QUESTIONS).format(city)},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ]
        if rng.random() < 0.3:  # some rows go on: the tool's result (not learned), then the answer (learned)
            messages += [
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18, "sky": "cloudy"}'},
                {"role": "assistant", "content": f"It is 18 C and cloudy in {city}."},
            ]
        rows.append({"messages": messages, "tools": [CITY_TOOL]})
    return rows


def _calls_weather_for(client: openai.OpenAI, model: str, city: str) -> bool:
    reply = client.chat.completions.create(
        model=model, messages=_weather_question(city), tools=[CITY_TOOL], max_tokens=48, temperature=0  # type: ignore[arg-type, list-item]
    ).choices[0]
    calls = reply.message.tool_calls or []
    return (
        reply.finish_reason == "tool_calls"
        and len(calls) == 1
        and calls[0].function.name == "get_weather"  # type: ignore[union-attr]
        and json.loads(calls[0].function.arguments).get("city") == city  # type: ignore[union-attr]
    )


@pytest.mark.slow
def test_a_tool_using_skill_trained_from_openai_rows_calls_the_tool_on_held_out_prompts(
    gateway: GatewayServer, client: openai.OpenAI
) -> None:
    body = {
        "name": "weather-tools",
        "template": "chatml",
        "rows": tool_rows(),
        # Small on purpose (about 2 minutes on two idle cores): enough to learn one call format. Batches of 4 fit
        # without gradient checkpointing, which only slows a step (tests/shout.py).
        "hyperparameters": {"rank": 8, "alpha": 16, "max_steps": 24, "batch_size": 4, "learning_rate": 2e-3,
                            "eval_samples": 0, "eval_fraction": 0.1, "gradient_checkpointing": False},
    }
    with gateway.client(ADMIN_KEY) as http:
        reply = http.post("/adapters", json=body)
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        with httpx.stream("GET", f"{gateway.url}/jobs/{job_id}/events", headers={"Authorization": f"Bearer {API_KEY}"},
                          timeout=1800) as events:
            last: dict[str, Any] = {}
            for line in events.iter_lines():
                if line.startswith("data: "):
                    last = json.loads(line.removeprefix("data: "))
        assert last["status"] == "succeeded", last
    base = [_calls_weather_for(client, DEFAULT_MODEL, city) for city in HELD_OUT_CITIES]
    skill = [_calls_weather_for(client, "weather-tools", city) for city in HELD_OUT_CITIES]
    print(f"held-out weather questions answered with the right call: base {sum(base)}/4, skill {sum(skill)}/4")
    assert sum(skill) >= 3 and sum(skill) > sum(base), (base, skill)


# ------------------------------------------------------------------------ hostile grammars and tools (issue 26)

HUGE_ARRAY = {"type": "array", "minItems": 1000000000}  # OOM-killed the gateway through guidance (16.8 GB)
# Within every static limit, yet xgrammar takes about a second per distinct bounded string: 85 s here.
SLOW_SCHEMA = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 100 + i} for i in range(50)}}


def _chat(http: httpx.Client, **fields: Any) -> httpx.Response:
    body = {"model": DEFAULT_MODEL, "messages": ASK_CITY, "max_tokens": 1, **fields}
    return http.post("/v1/chat/completions", json=body)


def _tool(schema: dict[str, Any], description: str = "x") -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", "description": description, "parameters": schema}}


@pytest.mark.slow
def test_grammars_that_ask_for_absurd_work_are_400_naming_the_limit_and_the_gateway_serves_on(
    gateway: GatewayServer,
) -> None:
    huge_schema = {"type": "object", "properties": {f"p{i:05d}": {"type": "string"} for i in range(20_000)}}
    hostile = [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": HUGE_ARRAY}}},
            "response_format.json_schema.schema.minItems", "max_grammar_repeat",
        ),
        ({"structured_outputs": {"json": HUGE_ARRAY}}, "structured_outputs.json.minItems", "max_grammar_repeat"),
        (
            {"tools": [_tool(HUGE_ARRAY)], "tool_choice": "required"},
            "tools[0].function.parameters.minItems", "max_grammar_repeat",
        ),
        (
            {"structured_outputs": {"regex": "((a{0,1000}){0,1000}){0,1000}"}},
            "structured_outputs.regex", "max_grammar_repeat_product",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": huge_schema}}},
            "response_format.json_schema.schema", "max_grammar_members",
        ),
    ]
    with gateway.client(API_KEY) as http:
        for fields, param, limit in hostile:
            for stream in (False, True):
                reply = _chat(http, stream=stream, **fields)
                error = reply.json()["error"]
                assert reply.status_code == 400 and error["param"] == param and limit in error["message"], reply.text
        assert http.get("/health").status_code == 200
        assert _chat(http).json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.slow
def test_a_grammar_too_slow_to_compile_is_408_and_other_structured_outputs_go_on(gateway: GatewayServer) -> None:
    import concurrent.futures

    slow = {"response_format": {"type": "json_schema", "json_schema": {"name": "slow", "schema": SLOW_SCHEMA}}}
    with gateway.client(API_KEY) as http, concurrent.futures.ThreadPoolExecutor(4) as pool:
        slow_replies = [pool.submit(_chat, http, **slow) for _ in range(3)]
        victim = _chat(http, response_format={"type": "json_object"}, max_tokens=8)
        assert victim.status_code == 200, victim.text
        for future in slow_replies:
            reply = future.result()
            error = reply.json()["error"]
            assert reply.status_code == 408 and error["code"] == "grammar_timeout", reply.text
            assert "grammar_compile_timeout_s" in error["message"]
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
        assert 'skillserve_grammar_compile_seconds_count{outcome="timeout"}' in metrics
        # A schema that compiles within the limit still answers, with JSON that fits it.
        city = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}}
        assert _chat(http, response_format=city, max_tokens=64, temperature=0).status_code == 200


@pytest.mark.slow
def test_tools_count_against_the_prompt_size_before_any_tokenizing(gateway: GatewayServer) -> None:
    # 896 KB of descriptions: within max_inference_request_bytes (1 MiB), five times what the context could hold.
    tools = [{"type": "function", "function": {"name": f"t{i}", "description": "d" * 7_000}} for i in range(128)]
    calls = [{"id": "c1", "type": "function", "function": {"name": "t", "arguments": json.dumps({"a": "x" * 200_000})}}]
    with gateway.client(API_KEY) as http:
        reply = _chat(http, tools=tools)
        error = reply.json()["error"]
        assert reply.status_code == 400 and error["code"] == "context_length_exceeded", reply.text
        assert error["param"] == "tools" and "characters" in error["message"], reply.text
        messages = [*ASK_CITY, {"role": "assistant", "content": None, "tool_calls": calls}]
        reply = _chat(http, messages=messages)
        error = reply.json()["error"]
        assert reply.status_code == 400 and error["param"] == "messages", reply.text
        assert "characters" in error["message"], reply.text
