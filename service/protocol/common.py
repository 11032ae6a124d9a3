"""What every resource's wire types share: the sampling fields of chat and text completions, usage, errors and the
OpenAPI error tables, deletion receipts and OpenAI's cursor pagination."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from adapters.errors import InvalidRequest


def lone_surrogate(value: Any) -> str | None:
    """The path (`messages.0.content`) of the first string in a parsed JSON request that holds a lone surrogate
    (`"\\ud800"` decodes to one): it is no Unicode text, and the tokenizer and vLLM would fail on it with a 500."""
    if not _holds_lone_surrogate(value):  # the usual answer, found without a path string per node (3x faster)
        return None
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # iterative: a request may be nested as deep as the JSON parser allows
        path, item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return path or "request"
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                stack.append((f"{path}.{key}" if path else str(key), child))
                stack.append((path or "request", str(key)))  # a key is text too
        elif isinstance(item, list):
            stack.extend((f"{path}.{index}", child) for index, child in reversed(list(enumerate(item))))
    return None


def _holds_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item)  # a key is text too
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class StreamOptions(BaseModel):
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: free text, any JSON object, or JSON that validates against a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs `json_schema` with `name` and `schema`")
        return self


class StructuredOutputs(BaseModel):
    """vLLM's extension for constrained decoding (its `structured_outputs`): exactly one of these."""

    choice: list[str] | None = Field(None, min_length=1, description="the output is one of these strings")
    regex: str | None = Field(None, description="the output matches this regular expression")
    json_schema: dict[str, Any] | None = Field(None, alias="json", description="the output is JSON for this schema")
    grammar: str | None = Field(None, description="the output follows this EBNF (or Lark) grammar")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        given = [k for k in ("choice", "regex", "json_schema", "grammar") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, regex, json or grammar")
        return self


# Fields of OpenAI's API this gateway refuses, each with the reason: a 400 naming the field, never a silent drop.
REFUSED_FIELDS = {
    "audio": "audio output is not supported: this gateway serves a text model",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "functions": "the deprecated `functions` are not supported: send `tools`",
    "function_call": "the deprecated `function_call` is not supported: send `tool_choice`",
    "reasoning_effort": "the models served here do not reason in separate tokens",
    "suffix": "suffix (insertion) is not supported",
}


class SamplingFields(BaseModel):
    """The sampling parameters /v1/chat/completions and /v1/completions share. An unknown field is a 400 that
    names it: nothing a client asks for is silently dropped."""

    model_config = ConfigDict(extra="forbid")


    model: str = Field(description="base model id, `adapter` (newest version) or `adapter@version`")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=16)
    # vLLM seeds a torch generator per request: a 64-bit signed integer, as vLLM's own server takes.
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = Field(
        False,
        description="vLLM extension: generate max_tokens tokens, ignoring end-of-sequence and the template's "
        "stop sequences (the client's own `stop` still applies); for benchmarks of equal work",
    )
    logit_bias: dict[str, float] | None = Field(
        None, description="token id (as a string) -> bias added to its logit, -100 to 100"
    )
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0, description="vLLM extension: >1 discourages repeats")
    top_k: int | None = Field(None, ge=-1, description="vLLM extension: sample from the k likeliest tokens; -1 = all")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="vLLM extension: drop tokens below min_p x the top")
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: the output is JSON (for the schema), by constrained decoding"
    )
    structured_outputs: StructuredOutputs | None = Field(
        None,
        description="vLLM extension: constrain the output to one of `choice`, a `regex`, a `json` schema or a "
        "`grammar`",
    )
    store: bool | None = Field(None, description="chat completions: true stores the answer (docs/data-loop.md)")
    modalities: list[Literal["text"]] | None = Field(None, description='["text"] or absent')
    service_tier: Literal["auto", "default"] | None = Field(None, description="auto or default: one tier here")
    best_of: int | None = Field(None, description="completions: equal to n or absent")
    # OpenAI fields this gateway refuses (400 naming the field and why), listed so the schema shows them too.
    audio: Any = Field(None, description=f"refused: {REFUSED_FIELDS['audio']}")
    prediction: Any = Field(None, description=f"refused: {REFUSED_FIELDS['prediction']}")
    web_search_options: Any = Field(None, description=f"refused: {REFUSED_FIELDS['web_search_options']}")
    functions: Any = Field(None, description=f"refused: {REFUSED_FIELDS['functions']}")
    function_call: Any = Field(None, description=f"refused: {REFUSED_FIELDS['function_call']}")
    metadata: dict[str, str] | None = Field(
        None, description="chat completions: up to 16 pairs kept with a stored completion (keys 64, values 512 chars)"
    )
    reasoning_effort: Any = Field(None, description=f"refused: {REFUSED_FIELDS['reasoning_effort']}")
    suffix: Any = Field(None, description=f"refused: {REFUSED_FIELDS['suffix']}")

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        path = lone_surrogate(data)
        if path is not None:
            raise PydanticCustomError(
                "invalid_unicode",
                "a lone surrogate (an unpaired \\ud800-\\udfff escape) is not Unicode text",
                {"param": path},
            )
        return data

    @field_validator(*REFUSED_FIELDS)
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            raise ValueError(REFUSED_FIELDS[str(info.field_name)])
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: bool | None) -> bool | None:
        # Chat completions override this: only they are stored.
        if value:
            raise ValueError("only chat completions are stored: leave store false")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # Chat completions override this: metadata belongs to a stored chat completion.
        if value is not None:
            raise ValueError("metadata belongs to stored chat completions: send it to /v1/chat/completions")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for token, bias in (value or {}).items():
            if not token.isdigit():
                raise ValueError(f"logit_bias keys are token ids, not {token!r}")
            if not -100 <= bias <= 100:
                raise ValueError("logit_bias values lie between -100 and 100")
        return value

    @model_validator(mode="after")
    def _one_constraint(self) -> SamplingFields:
        if self.best_of is not None and self.best_of != self.n:
            raise PydanticCustomError("unsupported", "best_of: only best_of equal to n is supported")
        json_format = self.response_format is not None and self.response_format.type != "text"
        if json_format and self.structured_outputs is not None:
            raise ValueError("give response_format or structured_outputs, not both")
        return self

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # OpenAI's limits


def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's metadata limits (ValueError naming the one broken): at most 16 pairs, keys of 64 characters, values
    of 512."""
    if value is None:
        return None
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"metadata has {len(value)} pairs; at most {MAX_METADATA_PAIRS}")
    for key, text in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise ValueError(f"metadata keys are at most {MAX_METADATA_KEY} characters")
        if len(text) > MAX_METADATA_VALUE:
            raise ValueError(f"metadata.{key}: values are at most {MAX_METADATA_VALUE} characters")
    return value


def response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length", "tool_calls"]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entry of errors in OpenAI's body, for these statuses."""
    return {code: {"model": ErrorResponse} for code in codes}


INFERENCE_ERRORS = error_responses(400, 401, 404, 413, 429, 503)


MANAGEMENT_ERRORS = error_responses(400, 401, 403, 404, 413, 503)  # 413: every body has a limit (BodyLimit)


# With `stream: true` the 200 is Server-Sent Events: chunks as `data: {json}` lines, then `data: [DONE]`.
STREAMING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "text/event-stream": {
                "schema": {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
            }
        }
    },
    **INFERENCE_ERRORS,
}


T = TypeVar("T")


def page(items: Sequence[T], after: str | None, limit: int, key: Callable[[T], str]) -> tuple[list[T], bool]:
    """OpenAI's cursor pagination: the `limit` items after the one whose id is `after`, and whether more follow."""
    start = 0
    if after is not None:
        ids = [key(item) for item in items]
        if after not in ids:
            raise InvalidRequest(
                f"after: no item with id {after!r} in this list", param="after", code="invalid_parameter"
            )
        start = ids.index(after) + 1
    chosen = list(items[start : start + limit])
    return chosen, start + limit < len(items)
