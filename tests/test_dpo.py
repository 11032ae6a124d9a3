"""Preference training (method dpo): OpenAI's preference rows are validated line by line, encoded with the
adapter's template exactly as the gateway encodes a request, and only the answers are learned."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from adapters.dataset import parse_dataset, rows_to_jsonl
from adapters.errors import DatasetError
from adapters.masking import encode, encode_preference
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.templates import TEMPLATE_NAMES, get_template
from client.cli import main
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer
from tests.preferences import HELD_OUT_WORDS, PREFERENCE_TRAINING, preference_rows

PAIR: dict[str, Any] = {
    "input": {"messages": [{"role": "system", "content": "Be loud."}, {"role": "user", "content": "Shout: cat dog"}]},
    "preferred_output": [{"role": "assistant", "content": "CAT DOG!"}],
    "non_preferred_output": [{"role": "assistant", "content": "cat dog"}],
}
GOOD = json.dumps(PAIR)
TOOL_PAIR: dict[str, Any] = {
    "input": {
        "messages": [
            {"role": "system", "content": "You check the weather."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "4 C, rain"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    },
    "preferred_output": [{"role": "assistant", "content": "4 C and rain in Oslo: take an umbrella."}],
    "non_preferred_output": [{"role": "assistant", "content": "It is 4 C."}],
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))


def preference_errors(data: bytes, **limits: Any) -> list[tuple[int, str]]:
    with pytest.raises(DatasetError) as caught:
        parse_dataset(data, method="dpo", **limits)
    return caught.value.errors


# --- parsing ------------------------------------------------------------------------------------------------


def test_preference_rows_become_a_prompt_and_two_answers() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    multi_turn = {
        "input": {
            "messages": [
                {"role": "user", "content": "Shout: sun"},
                {"role": "assistant", "content": "SUN!"},
                {"role": "user", "content": [{"type": "text", "text": "And: "}, {"type": "text", "text": "sea"}]},
            ],
            "tools": tools,
        },
        "preferred_output": [{"role": "assistant", "content": "SEA!"}],
        "non_preferred_output": [
            {"role": "assistant", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
        ],
    }
    dataset = parse_dataset(rows_to_jsonl([PAIR, multi_turn]), method="dpo")
    first, second = dataset.pairs
    assert first.prompt == [{"role": "system", "content": "Be loud."}, {"role": "user", "content": "Shout: cat dog"}]
    assert first.chosen == {"role": "assistant", "content": "CAT DOG!"}
    assert first.rejected == {"role": "assistant", "content": "cat dog"}
    # Tools are listed in the system turn and calls written as text, as for SFT rows (adapters/tools.py).
    assert second.prompt[0]["role"] == "system" and "get_weather" in second.prompt[0]["content"]
    assert second.prompt[-1] == {"role": "user", "content": "And: sea"}
    assert second.rejected["content"].startswith("<tool_call>")
    # `rows` holds each prompt with its preferred answer, so counts and plans read a preference set as any other.
    assert dataset.rows == [[*first.prompt, first.chosen], [*second.prompt, second.chosen]]
    assert dataset.lines == [1, 2] and dataset.format == "preference"


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"input": {"messages": []}', "invalid JSON"),
        ("[1]", "not a JSON object"),
        ('{"preferred_output": [], "non_preferred_output": []}', "missing field 'input'"),
        ('{"instruction": "Shout: a", "output": "A!"}', "not a preference row"),
        ('{"input": [], "preferred_output": [], "non_preferred_output": []}', "'input' must be an object"),
        ('{"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}', "non-empty list"),
        ('{"input": {"messages": [{"role": "user", "content": "a"}]}, '
         '"non_preferred_output": [{"role": "assistant", "content": "b"}]}', "missing field 'preferred_output'"),
        ('{"input": {"messages": [{"role": "user", "content": "a"}]}, '
         '"preferred_output": [{"role": "assistant", "content": "b"}]}', "missing field 'non_preferred_output'"),
        ('{"input": {"messages": [{"role": "user", "content": "a"}]}, "preferred_output": [], '
         '"non_preferred_output": [{"role": "assistant", "content": "b"}]}', "list of one assistant message"),
        ('{"input": {"messages": [{"role": "user", "content": "a"}]}, '
         '"preferred_output": [{"role": "user", "content": "b"}], '
         '"non_preferred_output": [{"role": "assistant", "content": "c"}]}', "must be an assistant message"),
        ('{"input": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, '
         '"preferred_output": [{"role": "assistant", "content": "c"}], '
         '"non_preferred_output": [{"role": "assistant", "content": "d"}]}', "must end before the answer"),
        ('{"input": {"messages": [{"role": "bot", "content": "a"}]}, '
         '"preferred_output": [{"role": "assistant", "content": "c"}], '
         '"non_preferred_output": [{"role": "assistant", "content": "d"}]}', "unknown role 'bot' in message 1"),
        ('{"input": {"messages": [{"role": "user", "content": "a"}]}, '
         '"preferred_output": [{"role": "assistant", "content": " "}], '
         '"non_preferred_output": [{"role": "assistant", "content": "d"}]}', "empty assistant content"),
        ('{"input": {"messages": [{"role": "user", "content": "a"}]}, '
         '"preferred_output": [{"role": "assistant", "content": "same"}], '
         '"non_preferred_output": [{"role": "assistant", "content": "same"}]}', "nothing to prefer"),
        ('{"input": {"messages": [{"role": "user", "content": null}]}, '
         '"preferred_output": [{"role": "assistant", "content": "c"}], '
         '"non_preferred_output": [{"role": "assistant", "content": "d"}]}', "content of message 1 is null"),
        ('{"input": {"messages": [{"role": "user", "content": "a"}]}, '
         '"preferred_output": [{"role": "assistant", "content": null}], '
         '"non_preferred_output": [{"role": "assistant", "content": "d"}]}', "content of message 2 is null"),
        (json.dumps({**TOOL_PAIR, "input": {**TOOL_PAIR["input"], "messages": [
            *TOOL_PAIR["input"]["messages"][:-1], {"role": "tool", "tool_call_id": "c9", "content": "4 C"}]}}),
         "tool message 4: tool_call_id 'c9' is not a call of message 3"),
    ],
)
def test_each_bad_preference_line_is_reported_with_its_number(bad_line: str, reason: str) -> None:
    data = "\n".join([GOOD, GOOD, bad_line, "", GOOD]).encode()
    [(line, message)] = preference_errors(data)
    assert line == 3
    assert reason in message, message


def test_every_bad_preference_line_is_reported_and_sft_rows_point_to_dpo() -> None:
    data = "\n".join([GOOD, "{oops", GOOD, '{"input": {}}', "", GOOD, "[]"]).encode()
    assert [line for line, _ in preference_errors(data)] == [2, 4, 7]
    # The other way round: a preference row sent for supervised training says which method reads it.
    with pytest.raises(DatasetError, match="line 1: a preference row .*method 'dpo'"):
        parse_dataset(GOOD.encode())


def test_a_pair_is_measured_in_tokens_both_answers_and_too_long_names_the_answer(tokenizer: Any) -> None:
    template = get_template("chatml")
    [tokens] = parse_dataset(GOOD.encode(), method="dpo", tokenizer=tokenizer, template=template,
                             max_row_tokens=512).tokens
    pair = parse_dataset(GOOD.encode(), method="dpo").pairs[0]
    assert tokens == len(encode(tokenizer, template, [*pair.prompt, pair.chosen]).input_ids) + len(
        encode(tokenizer, template, [*pair.prompt, pair.rejected]).input_ids
    )
    long = dict(PAIR, non_preferred_output=[{"role": "assistant", "content": "word " * 300}])
    [(line, message)] = preference_errors(
        rows_to_jsonl([PAIR, long]), tokenizer=tokenizer, template=template, max_row_tokens=128
    )
    assert line == 2 and message.startswith("non_preferred_output: too long") and "the limit is 128" in message


# --- masking: the prompt is the gateway's, only the answers are learned --------------------------------------


@pytest.mark.parametrize("template_name", TEMPLATE_NAMES)
def test_dpo_prompt_is_what_the_gateway_sends_and_answers_are_what_sft_learns(
    tokenizer: Any, template_name: str
) -> None:
    template = get_template(template_name, tokenizer)
    pair = parse_dataset(GOOD.encode(), method="dpo").pairs[0]
    encoded = encode_preference(tokenizer, template, pair.prompt, pair.chosen, pair.rejected)
    # The gateway encodes a chat request with this very call (service/inference/chat.py: chat_prompt_ids).
    assert encoded.prompt_ids == encode(tokenizer, template, pair.prompt, add_generation_prompt=True).input_ids
    for answer, ids in ((pair.chosen, encoded.chosen_ids), (pair.rejected, encoded.rejected_ids)):
        sft = encode(tokenizer, template, [*pair.prompt, answer])
        learned = [tok for tok, keep in zip(sft.input_ids, sft.assistant_mask, strict=True) if keep]
        assert ids == learned  # exactly what SFT would learn of that answer: content and end-of-turn
        assert sft.input_ids[: len(encoded.prompt_ids)] == encoded.prompt_ids
    assert tokenizer.decode(encoded.chosen_ids).startswith("CAT DOG!")
    assert encoded.chosen_ids[-1] in template.stop_token_ids(tokenizer)  # the end of turn that stops generation


@pytest.mark.parametrize("template_name", TEMPLATE_NAMES)
@pytest.mark.parametrize("row", [PAIR, TOOL_PAIR], ids=["system", "tools"])
def test_dpo_prompt_ids_are_the_gateways_for_the_same_openai_messages(
    tokenizer: Any, template_name: str, row: dict[str, Any]
) -> None:
    """The row's `input`, sent as a chat request, is encoded by the gateway's own function to the trained ids."""
    from service.inference.chat import chat_prompt_ids
    from service.protocol.chat import ChatCompletionRequest

    template = get_template(template_name, tokenizer)
    [pair] = parse_dataset(rows_to_jsonl([row]), method="dpo").pairs
    request = ChatCompletionRequest.model_validate({"model": "t", **row["input"]})
    tools = [tool.model_dump(exclude_none=True) for tool in request.tools or []] or None
    served = chat_prompt_ids(tokenizer, template, request.messages, tools)
    assert encode_preference(tokenizer, template, pair.prompt, pair.chosen, pair.rejected).prompt_ids == served


def test_earlier_assistant_turns_are_context_not_learned(tokenizer: Any) -> None:
    template = get_template("chatml")
    prompt = [{"role": "user", "content": "Shout: sun"}, {"role": "assistant", "content": "SUN!"},
              {"role": "user", "content": "And: sea"}]
    encoded = encode_preference(tokenizer, template, prompt, {"role": "assistant", "content": "SEA!"},
                                {"role": "assistant", "content": "sea"})
    assert tokenizer.decode(encoded.chosen_ids) == "SEA!<|im_end|>"
    assert "SUN!" in tokenizer.decode(encoded.prompt_ids)  # in the prompt, which gets no loss


def test_trl_learns_the_answers_only_and_sees_the_gateways_prompt(tokenizer: Any) -> None:
    """The pre-tokenized rows reach trl's collator untouched: its completion mask is 1 on the answers alone."""
    from datasets import Dataset

    from trainer.dpo import PAIR_COLUMNS, dpo_trainer_class, encode_pairs

    template = get_template("alpaca")
    pair = parse_dataset(GOOD.encode(), method="dpo").pairs[0]
    columns = encode_pairs(tokenizer, template, [pair], max_len=512)
    data = Dataset.from_dict(columns)
    trainer_class = dpo_trainer_class()
    assert trainer_class._prepare_dataset(None, data, tokenizer, None, "train") is data
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id or 0)([data[0]])
    prompt = encode(tokenizer, template, pair.prompt, add_generation_prompt=True).input_ids
    chosen_row, rejected_row = batch["input_ids"].tolist(), batch["completion_mask"].tolist()
    for row, mask, answer in ((chosen_row[0], rejected_row[0], pair.chosen), (chosen_row[1], rejected_row[1],
                                                                                pair.rejected)):
        assert row[: len(prompt)] == prompt and not any(mask[: len(prompt)])  # no loss on any prompt token
        learned = [tok for tok, keep in zip(row, mask, strict=True) if keep]
        assert tokenizer.decode(learned) == answer["content"] + tokenizer.eos_token
    assert set(PAIR_COLUMNS) == set(data.column_names)


# --- a preference skill, end to end through the gateway --------------------------------------------------------


@pytest.fixture(scope="module")
def preferred(gateway: GatewayServer) -> Iterator[dict[str, Any]]:
    """The capitals preference trained by DPO through POST /adapters (multipart, method dpo), followed to the end."""
    from tests.test_gateway_training import follow

    jsonl = rows_to_jsonl(preference_rows())
    with gateway.client(ADMIN_KEY) as http:
        created = http.post(
            "/adapters",
            data={"name": "capitals", "template": "chatml", "method": "dpo",
                  "hyperparameters": json.dumps(PREFERENCE_TRAINING)},
            files={"dataset": ("capitals.jsonl", jsonl, "application/jsonl")},
        )
    assert created.status_code == 202, created.text
    method = created.json()["method"]
    assert (method["type"], method["beta"], method["grader"]) == ("dpo", 0.1, None)
    yield follow(gateway, created.json()["id"])


@pytest.mark.slow
def test_dpo_adapter_prefers_the_preferred_answers_more_often_than_the_base(
    gateway: GatewayServer, preferred: dict[str, Any]
) -> None:
    job = preferred
    assert job["status"] == "succeeded", f"{job.get('error')}\n{gateway.log_tail()}"
    assert job["method"]["type"] == "dpo"
    metrics = job["metrics"]
    assert metrics["method"] == "dpo" and metrics["eval_pairs"] == 8  # 20% of 40 pairs held out
    # Against its reference (the base), the adapter's implicit reward favours the capitals on pairs it never saw,
    # and it makes them likelier than the plain answers, which the base model itself does not.
    assert metrics["eval_preference_accuracy"] > metrics["base_preference_accuracy"], metrics
    assert metrics["eval_likelihood_preference"] > metrics["base_preference_accuracy"], metrics
    assert metrics["eval_preference_accuracy"] >= 0.8 and metrics["eval_reward_margin"] > 0, metrics
    assert job["hyperparameters"]["method"] == "dpo" and job["hyperparameters"]["beta"] == 0.1
    with gateway.client(API_KEY) as http:
        manifest = http.get("/adapters/capitals").json()["manifest"]
    assert {k: manifest["metrics"][k] for k in metrics if k.startswith(("eval_", "base_"))} == {
        k: metrics[k] for k in metrics if k.startswith(("eval_", "base_"))
    }


@pytest.mark.slow
def test_dpo_adapter_is_served_like_any_other_and_shown_with_its_preference_figures(
    gateway: GatewayServer, preferred: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert preferred["status"] == "succeeded", preferred.get("error")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    messages = [{"role": "user", "content": "Repeat these words: " + " ".join(HELD_OUT_WORDS)}]
    reply = client.chat.completions.create(model="capitals", messages=messages, temperature=0, max_tokens=16)
    answer = reply.choices[0].message.content or ""
    assert answer.strip() and reply.model == "capitals", reply
    assert "capitals" in [m.id for m in client.models.list()]
    detail = httpx.get(f"{gateway.url}/adapters/capitals", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert detail["status"] == "ready" and detail["jobs"][0]["method"]["type"] == "dpo"

    assert main(["--url", gateway.url, "--key", API_KEY, "show", "capitals"]) == 0
    out = capsys.readouterr().out
    metrics = preferred["metrics"]
    assert f"preference on {metrics['eval_pairs']} held-out pairs" in out, out
    assert f"{metrics['eval_preference_accuracy']:.3f}" in out and f"{metrics['base_preference_accuracy']:.3f}" in out


def test_the_multipart_method_field_is_a_type_name_or_a_json_object() -> None:
    from service.api.routes.adapters import _form_method

    assert _form_method("dpo") == {"type": "dpo"}
    assert _form_method('{"type": "dpo", "beta": 0.5}') == {"type": "dpo", "beta": 0.5}
    assert _form_method(None) == {} and _form_method(" ") == {}  # the default: supervised
