"""Chat templates as artifacts: one jinja text with `{% generation %}` marks around assistant turns, plus stops.

The trainer renders every example with the template and the gateway renders every request with the very
text the manifest stores, so what was trained is what is served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from adapters.errors import TemplateError

CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

ALPACA = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{{- 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\\n\\n' -}}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '### Instruction:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '### Response:\\n' -}}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}{{- '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)

INSTRUCTION = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{- message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '###instruction###\\n' + message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '###response###\\n' -}}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}{{- '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '###response###\\n' -}}{%- endif -%}"
)

BUILTIN_TEXTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (CHATML, ("<|im_end|>",)),
    "alpaca": (ALPACA, ("### Instruction:",)),
    "instruction": (INSTRUCTION, ("###instruction###",)),
}
TEMPLATE_NAMES = ("chatml", "alpaca", "instruction", "base")


@dataclass(frozen=True)
class ChatTemplate:
    """A template as it is stored in a manifest: its name, full jinja text and stop sequences."""

    name: str
    text: str
    stop: tuple[str, ...] = field(default_factory=tuple)

    @property
    def marks_generation(self) -> bool:
        return "generation" in self.text and "endgeneration" in self.text

    def stop_token_ids(self, tokenizer: Any) -> list[int]:
        """Ids that end a turn: the eos token, plus each stop sequence that is a single special token.

        A special token vanishes from detokenized text, so it can only stop generation by id.
        """
        ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        special = set(getattr(tokenizer, "all_special_tokens", [])) | set(tokenizer.get_added_vocab())
        for stop in self.stop:
            if stop in special:
                token_id = tokenizer.convert_tokens_to_ids(stop)
                if isinstance(token_id, int) and token_id not in ids:
                    ids.append(token_id)
        return ids


@dataclass(frozen=True)
class Rendered:
    """Rendered text and the [start, end) character spans of every assistant turn's learned part."""

    text: str
    spans: list[tuple[int, int]]


class _GenerationTracker(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: records where assistant output lies in the rendered text."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller: Any) -> str:
        # A private-use sentinel pair brackets the marked text; `render` strips it and keeps the offsets.
        return f"\ue000{caller()}\ue001"


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=64)
def _compile(text: str) -> jinja2.Template:
    # The same environment settings as transformers' apply_chat_template, so model templates render alike.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template does not compile: {exc}") from exc


def _render_marked(text: str, messages: list[dict[str, Any]], **variables: Any) -> Rendered:
    if any(ch in str(m.get("content", "")) for m in messages for ch in "\ue000\ue001"):
        raise TemplateError("message content holds a reserved character (U+E000 or U+E001)")
    try:
        out = _compile(text).render(messages=messages, **variables)
    except TemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template failed to render: {exc}") from exc
    plain: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    for index, piece in enumerate(out.split("\ue000")):
        if index == 0:
            plain.append(piece)
            length += len(piece)
            continue
        inner, _, rest = piece.partition("\ue001")
        start = length
        plain.append(inner)
        length += len(inner)
        spans.append((start, length))
        plain.append(rest)
        length += len(rest)
    return Rendered("".join(plain), spans)


def _prefix_spans(template: ChatTemplate, messages: list[dict[str, Any]], variables: dict[str, Any]) -> Rendered:
    """Assistant spans for a template without generation marks (a base model's own): by rendering prefixes.

    The span of assistant turn i starts where the prompt for it (messages[:i] plus the generation prompt) ends,
    and covers its content plus an end-of-turn token right after it.
    """
    full = _render_marked(template.text, messages, add_generation_prompt=False, **variables).text
    spans = []
    eos = variables.get("eos_token") or ""
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = _render_marked(template.text, messages[:i], add_generation_prompt=True, **variables).text
        content = str(message.get("content", ""))
        if not full.startswith(prompt) or not full.startswith(content, len(prompt)):
            raise TemplateError(
                f"template {template.name!r} has no generation marks and does not render assistant turn {i} "
                "right after its prompt; add {% generation %} marks around assistant content"
            )
        end = len(prompt) + len(content)
        if eos and full.startswith(eos, end):
            end += len(eos)
        spans.append((len(prompt), end))
    if spans and spans[-1][1] > len(full):
        raise TemplateError("assistant span past the end of the rendered text")
    return Rendered(full, spans)


def render(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = False,
    bos_token: str = "",
    eos_token: str = "",
) -> Rendered:
    """Render a conversation; spans mark the learned (assistant) characters."""
    variables = {"bos_token": bos_token, "eos_token": eos_token}
    if template.marks_generation:
        return _render_marked(template.text, messages, add_generation_prompt=add_generation_prompt, **variables)
    if add_generation_prompt:
        rendered = _render_marked(template.text, messages, add_generation_prompt=True, **variables)
        return Rendered(rendered.text, _prefix_spans(template, messages, variables).spans if messages else [])
    return _prefix_spans(template, messages, variables)


def get_template(name: str, tokenizer: Any | None = None) -> ChatTemplate:
    """A built-in template by name; `base` is the tokenizer's own chat template."""
    if name in BUILTIN_TEXTS:
        text, stop = BUILTIN_TEXTS[name]
        return ChatTemplate(name, text, stop)
    if name == "base":
        own = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if not isinstance(own, str) or not own:
            raise TemplateError("the base model has no chat template of its own; choose chatml, alpaca or instruction")
        eos = getattr(tokenizer, "eos_token", None)
        return ChatTemplate("base", own, (eos,) if eos else ())
    raise TemplateError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")


def template_from_manifest(manifest: Any) -> ChatTemplate:
    """The template an adapter was trained with, exactly as its manifest stores it."""
    return ChatTemplate(manifest.template_name, manifest.template, tuple(manifest.stop))
