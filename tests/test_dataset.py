"""Dataset validation: every bad line is reported with its number and reason; good rows become messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.dataset import parse_dataset, rows_to_jsonl
from adapters.errors import DatasetError
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.templates import get_template

GOOD = json.dumps({"instruction": "Shout: a", "output": "A!"})


def errors_of(data: bytes, **limits: Any) -> list[tuple[int, str]]:
    with pytest.raises(DatasetError) as caught:
        parse_dataset(data, **limits)
    return caught.value.errors


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"instruction": "Shout: a", "output": "A!"', "invalid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"instruction": "Shout: a"}', "missing field 'output'"),
        ('{"output": "A!"}', "missing field 'instruction'"),
        ('{"instruction": "Shout: a", "output": "   "}', "empty 'output'"),
        ('{"prompt": "x", "completion": ""}', "empty 'completion'"),
        ('{"prompt": "x"}', "missing field 'completion'"),
        ('{"text": "free text"}', "unknown row format"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "unknown role 'bot' in message 1"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}',
         "empty assistant content in message 2"),
        ('{"messages": [{"role": "assistant", "content": "hi"}]}', "first message after the system message"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}',
         "content of message 1 must be a string"),
    ],
)
def test_each_bad_line_is_reported_with_its_number(bad_line: str, reason: str) -> None:
    data = "\n".join([GOOD, GOOD, bad_line, GOOD]).encode()
    [(line, message)] = errors_of(data)
    assert line == 3
    assert reason in message


def test_every_bad_line_is_reported_not_just_the_first() -> None:
    data = "\n".join([GOOD, "{oops", GOOD, '{"instruction": "x"}', "", GOOD, "[]"]).encode()
    assert [line for line, _ in errors_of(data)] == [2, 4, 7]


def test_not_utf8_is_reported_with_its_line() -> None:
    [(line, message)] = errors_of(GOOD.encode() + b"\n" + b'{"instruction": "\xff"}')
    assert line == 2 and "not UTF-8" in message


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
TOOLS = [{"type": "function", "function": {"name": "f"}}]


def _tool_row(*answers: dict[str, Any], calls: int = 2) -> str:
    """A row whose assistant makes `calls` calls (ids c1, c2, ...), answered by `answers`, then a final answer."""
    made = [{**CALL, "id": f"c{n}"} for n in range(1, calls + 1)]
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": made},
                *answers, {"role": "assistant", "content": "done"}]
    return json.dumps({"messages": messages, "tools": TOOLS})


def _result(call_id: str | None) -> dict[str, Any]:
    return {"role": "tool", "content": "r", **({"tool_call_id": call_id} if call_id else {})}


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ('{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "x"}]}',
         "content of message 1 is null"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null}]}',
         "content of message 2 is null"),
        (_tool_row(_result("c2"), _result("c1")), "tool message 3 answers 'c2' out of order"),
        (_tool_row(_result("c1"), _result("c7")), "tool message 4: tool_call_id 'c7' is not a call of message 2"),
        (_tool_row(_result(None)), "tool message 3: tool_call_id None is not a call of message 2"),
        (_tool_row(_result("c1"), _result("c1")), "tool message 4 answers 'c1' out of order"),
        (_tool_row(_result("c1"), _result("c2"), _result("c2")), "tool message 5 answers no call: message 2 made 2"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "c1", "content": "r"}, '
         '{"role": "assistant", "content": "x"}]}', "must follow an assistant message with 'tool_calls'"),
    ],
)
def test_null_content_and_tool_results_that_answer_no_call_in_order_are_line_errors(
    bad_line: str, reason: str
) -> None:
    data = "\n".join([GOOD, bad_line, GOOD]).encode()
    [(line, message)] = errors_of(data)
    assert line == 2 and reason in message, message


def test_tool_results_in_the_order_of_their_calls_are_accepted() -> None:
    dataset = parse_dataset(_tool_row(_result("c1"), _result("c2")).encode())
    assert [m["role"] for m in dataset.rows[0]] == ["system", "user", "assistant", "user", "user", "assistant"]


def test_checking_stops_after_a_hundred_bad_lines() -> None:
    data = b"x\n" * 50_000
    errors = errors_of(data)
    assert [line for line, _ in errors[:-1]] == list(range(1, 101))
    assert errors[-1] == (0, "checking stopped at line 101 after 100 bad lines")


def test_a_line_over_the_line_limit_is_refused_unread() -> None:
    long_row = json.dumps({"prompt": "a" * 5000, "completion": "b"})
    [(line, message)] = errors_of(f"{GOOD}\n{long_row}\n".encode(), max_line_bytes=4096)
    assert line == 2 and message == f"line too long: {len(long_row)} bytes, the limit is 4096"


def test_lines_are_numbered_past_blank_lines_and_scan_chunks() -> None:
    blank = b" \r\n\t\n" * 200_000  # 1.2 MB of blank lines: several scan chunks
    data = GOOD.encode() + b"\r\n" + blank + b"{oops\n" + blank + GOOD.encode()
    [(line, message)] = errors_of(data)
    assert line == 2 + 400_000 and "invalid JSON" in message
    assert parse_dataset(data.replace(b"{oops", GOOD.encode())).lines == [1, 400_002, 800_003]


def test_file_too_big_and_too_many_rows() -> None:
    data = "\n".join([GOOD] * 5).encode()
    [(line, message)] = errors_of(data, max_bytes=len(data) - 1)
    assert line == 0 and "file too big" in message
    [(line, message)] = errors_of(data, max_rows=3)
    assert line == 4 and "too many rows" in message


def test_empty_dataset_is_refused() -> None:
    [(_, message)] = errors_of(b"\n\n")
    assert "0 row(s)" in message


def test_too_long_in_tokens_is_measured_after_templating() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    long_row = json.dumps({"instruction": "word " * 300, "output": "ok"})
    [(line, message)] = errors_of(
        "\n".join([GOOD, long_row]).encode(), tokenizer=tokenizer, template=get_template("alpaca"), max_row_tokens=128
    )
    assert line == 2 and "too long" in message and "the limit is 128" in message


def test_formats_become_messages() -> None:
    rows = [
        {"instruction": "Add", "input": "1 and 2", "output": "3", "system": "Be brief."},
        {"prompt": "Hi", "completion": "Hello"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                      {"role": "assistant", "content": "ab"}]},
    ]
    dataset = parse_dataset(rows_to_jsonl(rows))
    assert dataset.rows == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add\n\n1 and 2"},
         {"role": "assistant", "content": "3"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "ab"}],
    ]
    assert dataset.lines == [1, 2, 3]
    assert dataset.format == "mixed" and len(dataset.sha256) == 64


def test_error_message_names_line_numbers() -> None:
    with pytest.raises(DatasetError, match=r"line 2: invalid JSON"):
        parse_dataset(f"{GOOD}\n{{".encode())
