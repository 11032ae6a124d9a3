"""Tool calling as text: how tool definitions, an assistant's tool calls and tool results are written into a
conversation for any template, and how tool calls are read back out of generated text.

The format is the widely used Hermes one: the tools are listed in the system message inside `<tools>`,
the assistant writes each call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, and a tool's
result comes back as a user turn inside `<tool_response>`. The trainer and the gateway both go through
`flatten`, so a tool-using skill is served exactly as it was trained, whatever its template: the calls are
assistant text (learned), the results user text (never learned).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.S)
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Short on purpose: it is in every prompt of a tool-using skill, at training and at serving.
SYSTEM_PREAMBLE = (
    "You can call these functions:\n<tools>\n{tools}\n</tools>\n"
    'To call one, reply <tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call>'
)


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: an id, the function's name and its arguments as a JSON text."""

    id: str
    name: str
    arguments: str


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI `tools` (function tools only), checked; ValueError says what is wrong."""
    if not isinstance(tools, list) or not tools:
        raise ValueError("'tools' must be a non-empty list")
    names = set()
    for index, tool in enumerate(tools, start=1):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ValueError(f"tool {index} must be {{'type': 'function', 'function': {{...}}}}")
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ValueError(f"tool {index} needs a name of 1-64 letters, digits, '_' or '-'")
        if name in names:
            raise ValueError(f"tool {index}: the name {name!r} is used twice")
        names.add(name)
        parameters = function.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict):
            raise ValueError(f"tool {index}: 'parameters' must be a JSON schema object")
    return tools


def check_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's OpenAI `tool_calls`, checked (arguments must be a JSON object as text)."""
    if not isinstance(calls, list) or not calls:
        raise ValueError(f"'tool_calls' of {where} must be a non-empty list")
    for index, call in enumerate(calls, start=1):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError(f"tool call {index} of {where} needs function.name")
        arguments = function.get("arguments", "{}")
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError:
            raise ValueError(f"tool call {index} of {where}: arguments are not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"tool call {index} of {where}: arguments must be a JSON object")
    return calls


def _call_text(call: dict[str, Any]) -> str:
    function = call["function"]
    arguments = function.get("arguments", "{}")
    parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    return CALL_OPEN + json.dumps({"name": function["name"], "arguments": parsed}, ensure_ascii=False) + CALL_CLOSE


def tools_text(tools: list[dict[str, Any]]) -> str:
    return SYSTEM_PREAMBLE.format(tools="\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools))


def flatten(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """Messages with tools, tool calls and tool results as plain system/user/assistant text turns.

    `messages` hold `role`, `content` (a string or None) and, for assistants, OpenAI `tool_calls`.
    """
    out: list[dict[str, str]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        elif role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(_call_text(call) for call in message["tool_calls"])
            out.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        else:
            out.append({"role": role, "content": content})
    if tools:
        listing = tools_text(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listing}"}
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out


def parse_calls(text: str, known: set[str] | None = None) -> tuple[str | None, list[ToolCall]]:
    """(content before the first call, or None if there is none; the calls) from generated text.

    A block that is not a JSON object with a known function name is left in the content: the client sees
    what the model wrote rather than a call it cannot run.
    """
    calls: list[ToolCall] = []
    for match in _CALL_RE.finditer(text):
        call = _call_from_json(match.group(1), known)
        if call is None:
            return text, []
        calls.append(call)
    if not calls:
        # A call cut off by max_tokens has no closing tag: it is content, not a call.
        return text, []
    content = text[: text.index(CALL_OPEN)].rstrip()  # a prefix of the text: streamed content stays valid
    return (content if content.strip() else None), calls


def _call_from_json(raw: str, known: set[str] | None) -> ToolCall | None:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    if known is not None and value["name"] not in known:
        return None
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), value["name"], json.dumps(arguments, ensure_ascii=False))


def call_schema(tools: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """The JSON schema that structured decoding enforces after a `<tool_call>` prefilled into the prompt, for
    `tool_choice` required (any listed function) or a named one: the very object a trained skill writes."""
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t["function"]["name"]]},
                "arguments": t["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in chosen
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def forced_call(text: str) -> ToolCall | None:
    """The call in output that structured decoding forced (see `call_schema`)."""
    return _call_from_json(text, None)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
