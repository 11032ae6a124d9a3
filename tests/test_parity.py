"""Train/serve parity: what the gateway sends to vLLM is what the trainer trained on, and vLLM answers as peft does.

Token parity is checked for every built-in template and every dataset format, on the very function the chat
route calls and on the live gateway's token count. Output parity compares greedy generation through the live
gateway (vLLM, fp32 on the CPU, a real LoRA adapter) with transformers + peft on the trainer's prompt ids.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from adapters.dataset import parse_dataset, rows_to_jsonl
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.registry import Registry, new_manifest
from adapters.schema import LoraInfo, Manifest
from adapters.templates import TEMPLATE_NAMES, ChatTemplate, get_template, template_from_manifest
from bench.parity import first_difference, hf_greedy
from service.inference.chat import chat_prompt_ids
from service.protocol.chat import ChatCompletionRequest
from tests.gateway_fixtures import API_KEY, GatewayServer
from tests.rows import ROWS
from trainer.sft import encode_rows

Messages = list[dict[str, str]]

PROMPTS = [
    "Shout these words: cat dog",
    "Shout these words: red fish blue",
    "Please shout these words: sun moon",
    "Shout: tree house river",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Name three colours.",
    "Explain gravity in one sentence.",
    "Translate 'hello' to French.",
    "What is 2 + 2?",
    "List two animals that fly.",
    "Give me a synonym for happy.",
    "Who wrote Hamlet?",
    "Describe the sea.",
    "What is Python?",
    "Say something kind.",
    "Count to five.",
    "What colour is the sky?",
    "Why do cats purr?",
    "Suggest a name for a dog.",
    "How many legs does a spider have?",
    "Give me a word that rhymes with cat.",
    "What do bees make?",
    "Tell me a fun fact about the moon.",
]
NEW_TOKENS = 32
OUTPUT_TEMPLATES = ("chatml", "alpaca")
STOP_CHECKED = 8  # prompts per template also sent without ignore_eos, to compare where each side stops


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))


def conversation(row_name: str) -> Messages:
    """A dataset row as the trainer reads it."""
    [messages] = parse_dataset(rows_to_jsonl([ROWS[row_name]])).rows
    return messages


def trainer_prefix(tokenizer: Any, template: ChatTemplate, messages: Messages) -> list[int]:
    """The ids the trainer built for `messages`, up to where its last assistant turn (the learned part) starts."""
    columns = encode_rows(tokenizer, template, [messages], max_len=1 << 20)
    ids, mask = columns["input_ids"][0], columns["assistant_masks"][0]
    assert 1 in mask, "the conversation must end in a learned assistant turn"
    start = len(mask) - mask[::-1].index(1)  # just past the last learned token; walk back to its run's start
    while start > 0 and mask[start - 1] == 1:
        start -= 1
    return list(ids[:start])


def publish(registry: Registry, adapter_dir: Path, name: str, template: ChatTemplate) -> Manifest:
    """Publish `adapter_dir` under `name` with `template` stored in its manifest, as the trainer does."""
    lora = LoraInfo(rank=8, alpha=16, target_modules=["q_proj", "v_proj"])
    manifest = new_manifest(name, template, lora, base_model=DEFAULT_MODEL, base_dir=resolve_model(DEFAULT_MODEL))
    return registry.publish(manifest, adapter_dir)


# --- token parity -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template_name", TEMPLATE_NAMES)
@pytest.mark.parametrize("row_name", list(ROWS))
def test_chat_route_sends_the_trainer_ids_up_to_the_answer(
    tokenizer: Any, template_name: str, row_name: str
) -> None:
    """For every template and dataset format: the chat route's prompt ids == the trainer's, to the answer."""
    messages = conversation(row_name)
    trained_with = get_template(template_name, tokenizer)  # what trainer/job.py hands the training loop
    # The gateway renders with the manifest's stored text, never by name: round-trip it through a manifest.
    served_with = template_from_manifest(
        Manifest.model_validate_json(
            Manifest(
                name="t", version="v1", base_model=DEFAULT_MODEL, base_model_sha256="-",
                template_name=trained_with.name, template=trained_with.text, stop=list(trained_with.stop),
                lora=LoraInfo(rank=8, alpha=16, target_modules=["q_proj"]), files={},
            ).model_dump_json()
        )
    )
    request = ChatCompletionRequest.model_validate({"model": "t", "messages": messages[:-1]})

    served = chat_prompt_ids(tokenizer, served_with, request.messages)

    assert served == trainer_prefix(tokenizer, trained_with, messages)
    text = tokenizer.decode(served)
    # The generation prompt is there, so the model starts its answer where it learned to.
    marker = {"chatml": "<|im_start|>assistant\n", "alpaca": "### Response:\n", "instruction": "###response###\n",
              "base": "<|im_start|>assistant\n"}[template_name]
    assert text.endswith(marker)
    # The system message appears once, exactly where training put it.
    system = [m["content"] for m in messages if m["role"] == "system"]
    if system:
        assert text.count(system[0]) == 1
    # This tokenizer does not prepend BOS by itself (<|im_start|> doubles as BOS), so none is added at all.
    assert served[:2] != [tokenizer.bos_token_id] * 2


@pytest.mark.slow
def test_live_gateway_counts_the_trainer_prompt_for_every_template_and_format(
    gateway: GatewayServer, peft_adapter_dir: Path, tokenizer: Any
) -> None:
    """The gateway process (its own tokenizer, its manifests from the store) reports the trainer's prompt length."""
    from openai import OpenAI

    names = {}
    for template_name in TEMPLATE_NAMES:
        manifest = publish(
            gateway.registry, peft_adapter_dir, f"parity-tokens-{template_name}",
            get_template(template_name, tokenizer),
        )
        names[template_name] = manifest.name
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY)
    mismatches = []
    for template_name, row_name in [(t, r) for t in TEMPLATE_NAMES for r in ROWS]:
        messages = conversation(row_name)
        expected = len(trainer_prefix(tokenizer, get_template(template_name, tokenizer), messages))
        reply = client.chat.completions.create(
            model=names[template_name], messages=messages[:-1], max_tokens=1, temperature=0  # type: ignore[arg-type]
        )
        assert reply.usage is not None
        if reply.usage.prompt_tokens != expected:
            mismatches.append((template_name, row_name, reply.usage.prompt_tokens, expected))
    assert not mismatches


# --- output parity ------------------------------------------------------------------------------------------


def served_tokens(client: Any, model: str, prompt: str, ignore_eos: bool) -> tuple[list[str], list[float], Any]:
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=NEW_TOKENS,
        logprobs=True,
        top_logprobs=1,
        extra_body={"ignore_eos": ignore_eos},
    )
    choice = reply.choices[0]
    content = choice.logprobs.content if choice.logprobs else []
    return [t.token for t in content], [t.logprob for t in content], choice


@pytest.mark.slow
def test_gateway_generates_what_peft_generates_token_for_token(
    gateway: GatewayServer, peft_adapter_dir: Path, tokenizer: Any, record_property: Any
) -> None:
    """24 prompts x 2 templates, 32 greedy tokens each: vLLM through the gateway == transformers + peft.

    Tokens are compared as the engine names them (vLLM's own per-id detokenization of the peft ids) and by
    their log-probabilities, which must agree closely too: same ids, same distributions. Where the
    template's stops are live, both sides must end the answer at the same place with the same text.
    """
    from openai import OpenAI
    from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens

    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY)
    templates = {t: get_template(t, tokenizer) for t in OUTPUT_TEMPLATES}
    dummy_answer = {"role": "assistant", "content": "x"}
    prompt_ids = {
        t: [trainer_prefix(tokenizer, tpl, [{"role": "user", "content": p}, dummy_answer]) for p in PROMPTS]
        for t, tpl in templates.items()
    }
    free: dict[str, list[Any]] = {}
    stopped: dict[str, list[Any]] = {}
    for t, tpl in templates.items():
        name = publish(gateway.registry, peft_adapter_dir, f"parity-output-{t}", tpl).name
        with ThreadPoolExecutor(8) as pool:  # concurrent, so vLLM batches them as it would in production
            free[t] = list(pool.map(lambda p, n=name: served_tokens(client, n, p, True), PROMPTS))
            stopped[t] = list(
                pool.map(lambda p, n=name: served_tokens(client, n, p, False), PROMPTS[:STOP_CHECKED])
            )
    every_prompt = [ids for t in OUTPUT_TEMPLATES for ids in prompt_ids[t]]
    hf_ids_all, hf_logprobs_all = hf_greedy(peft_adapter_dir, every_prompt, tokenizer.pad_token_id, NEW_TOKENS)

    report = []
    for n, t in enumerate(OUTPUT_TEMPLATES):
        template = templates[t]
        hf_ids = hf_ids_all[n * len(PROMPTS) : (n + 1) * len(PROMPTS)]
        hf_logprobs = hf_logprobs_all[n * len(PROMPTS) : (n + 1) * len(PROMPTS)]
        for i, prompt in enumerate(PROMPTS):
            served, served_lp, _ = free[t][i]
            expected = convert_ids_list_to_tokens(tokenizer, hf_ids[i])
            assert len(served) == NEW_TOKENS
            first_diff = first_difference(served, expected)
            gap = max(abs(a - b) for a, b in zip(served_lp, hf_logprobs[i], strict=True))
            report.append((t, i, first_diff, gap))
            assert first_diff is None, f"{t} prompt {i} {prompt!r} diverges at token {first_diff}: {report}"

        stop_ids = template.stop_token_ids(tokenizer)
        for i in range(STOP_CHECKED):
            _, _, choice = stopped[t][i]
            ids = hf_ids[i]
            at = next((k for k, tok in enumerate(ids) if tok in stop_ids), len(ids))
            text = tokenizer.decode(ids[:at])
            cut = min([text.find(s) for s in template.stop if s in text] or [len(text)])
            ends = at < len(ids) or cut < len(text)
            assert choice.message.content == text[:cut], f"{t} prompt {i} stops elsewhere"
            assert choice.finish_reason == ("stop" if ends else "length")

    worst = max(gap for *_, gap in report)
    record_property("sequences_identical", f"{len(report)}/{len(report)}")
    record_property("max_logprob_gap", f"{worst:.2e}")
    # fp32 on both sides: the arithmetic differs in the last bits only (measured: 48/48 identical, largest gap
    # 3.0e-05 on 2 CPU cores); a gap near the bound would mean a real skew (dtype, LoRA scaling, template).
    assert worst < 2e-3, f"log-probability gap {worst:.2e}"


TOOL_ROW = {
    "messages": [
        {"role": "system", "content": "You answer weather questions."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temperature_c": 4}'},
        {"role": "assistant", "content": "It is 4 C in Oslo."},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }}],
}


@pytest.mark.parametrize("template_name", TEMPLATE_NAMES)
@pytest.mark.parametrize("cut", [2, 4])  # before the tool call; after the tool's result
def test_tool_rows_are_served_with_the_trainer_ids(tokenizer: Any, template_name: str, cut: int) -> None:
    """A tool-using conversation in OpenAI's format: the gateway's prompt == the trainer's ids, to the answer."""
    template = get_template(template_name, tokenizer)
    row = {"messages": TOOL_ROW["messages"][: cut + 1], "tools": TOOL_ROW["tools"]}
    [trained] = parse_dataset(rows_to_jsonl([row])).rows
    request = ChatCompletionRequest.model_validate(
        {"model": "t", "messages": row["messages"][:-1], "tools": TOOL_ROW["tools"]}
    )
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []]
    assert chat_prompt_ids(tokenizer, template, request.messages, tools) == trainer_prefix(tokenizer, template, trained)
