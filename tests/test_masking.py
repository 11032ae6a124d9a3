"""Masked SFT: exactly the assistant content (plus the end-of-turn token) is learned, for every template and format."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.dataset import parse_dataset, rows_to_jsonl
from adapters.masking import encode
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.templates import TEMPLATE_NAMES, ChatTemplate, get_template, render
from tests.rows import ROWS

# Where each template's response starts: nothing up to and including it may be learned.
RESPONSE_MARKERS = {
    "chatml": "<|im_start|>assistant\n",
    "alpaca": "### Response:\n",
    "instruction": "###response###\n",
    "base": "<|im_start|>assistant\n",
}

@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))


def learned_runs(input_ids: list[int], mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each contiguous learned run."""
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("template_name", TEMPLATE_NAMES)
@pytest.mark.parametrize("row_name", list(ROWS))
def test_only_assistant_content_and_end_of_turn_are_learned(tokenizer: Any, template_name: str, row_name: str) -> None:
    template = get_template(template_name, tokenizer)
    [messages] = parse_dataset(rows_to_jsonl([ROWS[row_name]])).rows
    encoded = encode(tokenizer, template, messages)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    runs = learned_runs(encoded.input_ids, encoded.assistant_mask)

    assert len(runs) == len(answers)
    for (start, end), answer in zip(runs, answers, strict=True):
        learned = encoded.input_ids[start:end]
        # The run is the answer's tokens followed by the end-of-turn token, and nothing else.
        assert learned[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(learned[:-1]) == answer
        assert learned[:-1] == tokenizer(answer, add_special_tokens=False)["input_ids"]
        # Everything before the run is prompt, and it ends with the template's response marker.
        assert tokenizer.decode(encoded.input_ids[:start]).endswith(RESPONSE_MARKERS[template_name])
    assert encoded.labels == [t if m else -100 for t, m in zip(encoded.input_ids, encoded.assistant_mask, strict=True)]


@pytest.mark.parametrize("template_name", TEMPLATE_NAMES)
def test_serving_prompt_is_the_training_prefix(tokenizer: Any, template_name: str) -> None:
    """The ids a request sends for a conversation are the trained ids up to the assistant's answer."""
    template = get_template(template_name, tokenizer)
    messages = ROWS["chat_multi_turn"]["messages"]
    trained = encode(tokenizer, template, messages)
    prompt = encode(tokenizer, template, messages[:-1], add_generation_prompt=True)
    last_answer_start = learned_runs(trained.input_ids, trained.assistant_mask)[-1][0]
    assert prompt.input_ids == trained.input_ids[:last_answer_start]
    assert prompt.input_ids[:2] != [tokenizer.bos_token_id] * 2, "doubled BOS"


def test_trl_builds_labels_from_our_mask(tokenizer: Any) -> None:
    """trl's own dataset preparation turns our mask into -100 labels, position for position."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from trainer.sft import encode_rows

    template = get_template("alpaca")
    rows = parse_dataset(rows_to_jsonl(list(ROWS.values()))).rows
    columns = encode_rows(tokenizer, template, rows, max_len=1024)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL))
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir="/tmp/skillserve-test-trl", report_to=[], use_cpu=True, max_length=1024),
        train_dataset=Dataset.from_dict(columns),
        processing_class=tokenizer,
    )
    for example, ids, mask in zip(trainer.train_dataset, columns["input_ids"], columns["assistant_masks"], strict=True):
        assert example["input_ids"] == ids
        assert example["labels"] == [t if m else -100 for t, m in zip(ids, mask, strict=True)]
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_template_without_generation_marks_is_masked_by_prefix() -> None:
    """A base model's own template (no generation marks) still yields exact assistant spans."""
    template = ChatTemplate(
        "plain",
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}"
        "{% endif %}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HELLO"}]
    rendered = render(template, messages, eos_token="</s>")
    assert [rendered.text[a:b] for a, b in rendered.spans] == ["HELLO</s>"]
