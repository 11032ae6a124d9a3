"""Training datasets: JSONL in three formats, validated up front with a reason and line number for each bad line.

- alpaca: {"instruction": str, "input": str (optional), "output": str, "system": str (optional)}
- chat: {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...], "tools": [...]}
  (multi-turn; OpenAI's fine-tuning format, assistant `tool_calls` and `tool` results included)
- prompt/completion: {"prompt": str, "completion": str}

Every row becomes a list of chat messages; the template turns messages into text.

Preference training (method `dpo`) takes OpenAI's preference rows instead:
{"input": {"messages": [...], "tools": [...]}, "preferred_output": [{"role": "assistant", ...}],
"non_preferred_output": [{"role": "assistant", ...}]}: one prompt and two answers to it.

Reinforcement fine-tuning (method `reinforcement`) takes OpenAI's RFT rows: {"messages": [...], "tools": [...],
...}, the messages ending in the user's turn (the model samples the answer), and any other fields the grader reads
as `{{item.<field>}}` (the whole row is the grader's item).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.errors import DatasetError, TemplateError
from adapters.tools import check_calls, check_tools, flatten

ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED = 100
# A non-blank line, found by a regex scan: blank lines cost no Python work and no object each.
_ROW = re.compile(rb"^[ \t\r\x0b\x0c]*[^ \t\n\r\x0b\x0c][^\n]*", re.M)
# Scanned this many bytes at a time: one C call holds the GIL, and the gateway's event loop must win it back often.
_SCAN_BYTES = 256 * 1024
Messages = list[dict[str, str]]
MethodType = Literal["supervised", "dpo", "reinforcement"]


@dataclass(frozen=True)
class Preference:
    """One preference pair: the conversation up to the answer, the preferred answer and the other one."""

    prompt: Messages
    chosen: dict[str, str]
    rejected: dict[str, str]


@dataclass
class Dataset:
    """A validated dataset: one message list per row, with the line each came from."""

    rows: list[list[dict[str, str]]]
    lines: list[int]
    tokens: list[int] = field(default_factory=list)  # per row, after templating, when measured
    formats: set[str] = field(default_factory=set)
    sha256: str = ""
    # Preference datasets: one pair per row; `rows` then holds each prompt with its preferred answer, and `tokens`
    # both conversations of a pair, as DPO trains on both.
    pairs: list[Preference] = field(default_factory=list)
    # Reinforcement datasets: each row as sent (the grader's item); `rows` then holds each prompt, and `tokens` the
    # prompt's length with the generation prompt.
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def format(self) -> str:
        return next(iter(self.formats)) if len(self.formats) == 1 else "mixed"


def _text(value: Any, what: str) -> str:
    """Content as a string: a plain string, or OpenAI-style text parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise ValueError(f"{what} must be a string")


def _required(row: dict[str, Any], key: str) -> str:
    if key not in row:
        raise ValueError(f"missing field '{key}'")
    return _text(row[key], f"'{key}'")


def _alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    instruction = _required(row, "instruction")
    output = _required(row, "output")
    extra = _text(row.get("input") or "", "'input'")
    if not instruction.strip():
        raise ValueError("empty 'instruction'")
    if not output.strip():
        raise ValueError("empty 'output'")
    messages = [{"role": "system", "content": _text(row["system"], "'system'")}] if row.get("system") else []
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _prompt_completion(row: dict[str, Any]) -> list[dict[str, str]]:
    prompt = _required(row, "prompt")
    completion = _required(row, "completion")
    if not prompt.strip():
        raise ValueError("empty 'prompt'")
    if not completion.strip():
        raise ValueError("empty 'completion'")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def chat_messages(messages: Any, tools: Any = None, answered: bool = True) -> list[dict[str, str]]:
    """Check an OpenAI-style message list for training, tool calls and results included; returns plain
    text turns (tools, calls and results written as text by `adapters.tools.flatten`). `answered=False`: a prompt,
    which needs no assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    checked: list[dict[str, Any]] = []
    for index, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise ValueError(f"message {index} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} in message {index} (use one of {', '.join(ROLES)})")
        calls = message.get("tool_calls")
        if calls is not None:
            if role != "assistant":
                raise ValueError(f"message {index}: only assistant messages have 'tool_calls'")
            check_calls(calls, f"message {index}")
            if tools is None:
                raise ValueError(f"message {index} calls a tool, but the row lists no 'tools'")
        elif "content" not in message:
            raise ValueError(f"missing field 'content' in message {index}")
        elif message["content"] is None:
            raise ValueError(f"content of message {index} is null: only an assistant's tool calls go without text")
        content = _text(message.get("content") or "", f"content of message {index}")
        if role == "system" and index != 1:
            raise ValueError(f"system message {index} must come first")
        if role == "assistant" and not calls and not content.strip():
            raise ValueError(f"empty assistant content in message {index}")
        if role == "tool":
            _check_answer(message, index, checked)
        checked.append({"role": role, "content": content, **({"tool_calls": calls} if calls else {})})
    turns = [m["role"] for m in checked if m["role"] != "system"]
    if not turns or turns[0] != "user":
        raise ValueError("the first message after the system message must be from the user")
    if answered and "assistant" not in turns:
        raise ValueError("no assistant message: nothing to learn (a prompt to sample from is a row of method "
                         "'reinforcement')")
    return flatten(checked, check_tools(tools) if tools is not None else None)


def _check_answer(message: dict[str, Any], index: int, checked: list[dict[str, Any]]) -> None:
    """A tool message answers the next unanswered call of the assistant message before it, by its id: results are
    written into the prompt by position (adapters/tools.py `flatten`), so one out of order would teach the wrong
    result for a call."""
    answered = 0
    while answered < len(checked) and checked[len(checked) - 1 - answered]["role"] == "tool":
        answered += 1
    calling = checked[len(checked) - 1 - answered] if answered < len(checked) else None
    if calling is None or not calling.get("tool_calls"):
        raise ValueError(f"tool message {index} must follow an assistant message with 'tool_calls'")
    calls = calling["tool_calls"]
    asked = index - answered - 1
    if answered >= len(calls):
        raise ValueError(f"tool message {index} answers no call: message {asked} made {len(calls)}")
    wanted = calls[answered].get("id") if isinstance(calls[answered], dict) else None
    given = message.get("tool_call_id")
    if given != wanted:
        ids = [call.get("id") for call in calls if isinstance(call, dict)]
        if given not in ids:
            raise ValueError(f"tool message {index}: tool_call_id {given!r} is not a call of message {asked}")
        raise ValueError(
            f"tool message {index} answers {given!r} out of order: the calls of message {asked} are answered in "
            f"their order, {wanted!r} first"
        )


def row_messages(row: Any) -> tuple[str, list[dict[str, str]]]:
    """(format, messages) of one parsed JSON row; ValueError with the reason if it is not a valid row."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if "functions" in row:
        raise ValueError("'functions' is OpenAI's deprecated form: list them as 'tools'")
    if "messages" in row:
        return "chat", chat_messages(row["messages"], row.get("tools"))
    if "tools" in row:
        raise ValueError("'tools' goes with 'messages' (the chat format)")
    if "preferred_output" in row or "non_preferred_output" in row:
        raise ValueError("a preference row (OpenAI's DPO format): train it with method 'dpo'")
    if "instruction" in row or "output" in row:
        return "alpaca", _alpaca(row)
    if "prompt" in row or "completion" in row:
        return "prompt_completion", _prompt_completion(row)
    raise ValueError("unknown row format: expected 'messages', 'instruction'/'output' or 'prompt'/'completion'")


def _answer(row: dict[str, Any], key: str) -> dict[str, Any]:
    """The one assistant message of `preferred_output` or `non_preferred_output`."""
    if key not in row:
        raise ValueError(f"missing field '{key}'")
    output = row[key]
    if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
        raise ValueError(f"'{key}' must be a list of one assistant message")
    if output[0].get("role") != "assistant":
        raise ValueError(f"'{key}' must be an assistant message, not {output[0].get('role')!r}")
    return output[0]


def preference_pair(row: Any) -> Preference:
    """The pair of one parsed JSON preference row; ValueError with the reason if it is not a valid one."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if "input" not in row:
        if "messages" in row or "instruction" in row or "prompt" in row:
            raise ValueError("not a preference row: method 'dpo' needs 'input', 'preferred_output' and "
                             "'non_preferred_output'")
        raise ValueError("missing field 'input'")
    source = row["input"]
    if not isinstance(source, dict) or "messages" not in source:
        raise ValueError("'input' must be an object with 'messages'")
    messages = source["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'input.messages' must be a non-empty list")
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        raise ValueError("'input.messages' must end before the answer, not with an assistant message")
    preferred, other = _answer(row, "preferred_output"), _answer(row, "non_preferred_output")
    # Checked as two whole conversations, so the prompt and each answer meet the SFT rows' rules.
    chosen = chat_messages([*messages, preferred], source.get("tools"))
    rejected = chat_messages([*messages, other], source.get("tools"))
    if chosen[-1] == rejected[-1]:
        raise ValueError("'preferred_output' and 'non_preferred_output' are the same: nothing to prefer")
    return Preference(chosen[:-1], chosen[-1], rejected[-1])


def prompt_row(row: Any, grader: Any = None) -> list[dict[str, str]]:
    """The prompt of one parsed reinforcement row (messages ending in the user's turn); ValueError with the reason if
    it is not one, or if a `{{item.*}}` the grader reads is not in it."""
    if not isinstance(row, dict):
        raise ValueError("row is not a JSON object")
    if "messages" not in row:
        raise ValueError("missing field 'messages': a reinforcement row is a prompt, its messages ending in the "
                         "user's turn")
    messages = row["messages"]
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
            and messages[-1].get("role") != "user":
        raise ValueError(f"'messages' must end with the user's turn (the model samples the answer), not with a "
                         f"{messages[-1].get('role')!r} message")
    prompt = chat_messages(messages, row.get("tools"), answered=False)
    if grader is not None:
        from adapters.graders import TemplateReferenceError, check_item

        try:
            check_item(grader, row)
        except TemplateReferenceError as exc:
            raise ValueError(f"the grader's {exc}") from None
    return prompt


def rows_to_jsonl(rows: list[Any]) -> bytes:
    """Inline rows (from an API request) as the JSONL bytes that are validated and stored."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of each non-blank line of JSONL bytes, one at a time: a file of millions of lines is
    never held as a list of them, and no call scans more than `_SCAN_BYTES` of blank lines at once."""
    number, start = 1, 0
    while start < len(data):
        end = data.find(b"\n", start + _SCAN_BYTES)
        end = len(data) if end < 0 else end + 1
        for match in _ROW.finditer(data, start, end):
            number += data.count(b"\n", start, match.start())
            start = match.start()
            yield number, match.group()
        number += data.count(b"\n", start, end)
        start = end


def newlines(data: bytes) -> int:
    """The newlines in `data`, counted `_SCAN_BYTES` at a time: one count over a 40 MB file holds the interpreter for
    about 70 ms whatever thread runs it, and with it the gateway's event loop."""
    return sum(data.count(b"\n", start, start + _SCAN_BYTES) for start in range(0, len(data), _SCAN_BYTES))


def parse_dataset(
    data: bytes,
    *,
    max_bytes: int = 50 * 2**20,
    max_rows: int = 100_000,
    max_line_bytes: int | None = None,
    min_rows: int = 1,
    tokenizer: Any | None = None,
    template: Any | None = None,
    max_row_tokens: int | None = None,
    method: MethodType = "supervised",
    grader: Any = None,
) -> Dataset:
    """Validate JSONL bytes; raise DatasetError listing every bad line, or return the rows as messages.

    With a tokenizer and template, each row is also rendered and measured in tokens. `method="dpo"` reads
    preference rows (`input`, `preferred_output`, `non_preferred_output`) into `pairs`; `"reinforcement"` reads
    prompts into `rows` and each row as sent into `items`, checked against `grader`'s `{{item.*}}`. A line longer than
    `max_line_bytes` is refused unread (parsing one JSON text is one uninterruptible call). Checking stops after
    `MAX_REPORTED` bad lines.
    """
    if len(data) > max_bytes:
        raise DatasetError([(0, f"file too big: {len(data)} bytes, the limit is {max_bytes}")])
    # Rows are counted before any is parsed or tokenized, so an oversized dataset is refused at once.
    if newlines(data) >= max_rows:
        for count, (number, _) in enumerate(lines(data), start=1):
            if count > max_rows:
                raise DatasetError([(number, f"too many rows: more than {max_rows}, the limit is {max_rows}")])
    errors: list[tuple[int, str]] = []
    dataset = Dataset(rows=[], lines=[], sha256=hashlib.sha256(data).hexdigest())
    for number, raw in lines(data):
        if len(errors) >= MAX_REPORTED:
            errors.append((0, f"checking stopped at line {number} after {MAX_REPORTED} bad lines"))
            break
        if max_line_bytes is not None and len(raw) > max_line_bytes:
            errors.append((number, f"line too long: {len(raw)} bytes, the limit is {max_line_bytes}"))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append((number, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append((number, f"invalid JSON: {exc.msg} at column {exc.colno}"))
            continue
        except RecursionError:
            errors.append((number, "invalid JSON: nested too deeply"))
            continue
        pair = None
        try:
            if method == "reinforcement":
                fmt, messages = "prompt", prompt_row(row, grader)
                conversations = {"": messages}
            elif method == "dpo":
                pair = preference_pair(row)
                fmt, messages = "preference", [*pair.prompt, pair.chosen]
                conversations = {"preferred_output": messages, "non_preferred_output": [*pair.prompt, pair.rejected]}
            else:
                fmt, messages = row_messages(row)
                conversations = {"": messages}
        except ValueError as exc:
            errors.append((number, str(exc)))
            continue
        if tokenizer is not None and template is not None and max_row_tokens:
            answered = method != "reinforcement"
            measured = [(what, *_token_problem(tokenizer, template, turns, max_row_tokens, answered))
                        for what, turns in conversations.items()]
            problems = [f"{what}: {reason}" if what else reason for what, reason, _ in measured if reason]
            if problems:
                errors.append((number, "; ".join(problems)))
                continue
            dataset.tokens.append(sum(tokens for _, _, tokens in measured))
        if pair is not None:
            dataset.pairs.append(pair)
        if method == "reinforcement":
            dataset.items.append(row)
        dataset.rows.append(messages)
        dataset.lines.append(number)
        dataset.formats.add(fmt)
    if not errors and len(dataset.rows) < min_rows:
        errors.append((0, f"dataset has {len(dataset.rows)} row(s); at least {min_rows} needed"))
    if errors:
        raise DatasetError(errors)
    return dataset


def _token_problem(
    tokenizer: Any, template: Any, messages: list[dict[str, str]], limit: int, answered: bool = True
) -> tuple[str | None, int]:
    """(what is wrong with the row, or None; its length in tokens after templating). A prompt (`answered=False`) is
    measured as the gateway sends it, with the generation prompt."""
    from adapters.masking import encode

    try:
        encoded = encode(tokenizer, template, messages, add_generation_prompt=not answered)
    except TemplateError as exc:
        return str(exc), 0
    length = len(encoded.input_ids)
    if length > limit:
        return f"too long: {length} tokens after templating, the limit is {limit}", length
    if answered and not any(encoded.assistant_mask):
        return "nothing to learn: the template leaves no assistant tokens", length
    return None, length
