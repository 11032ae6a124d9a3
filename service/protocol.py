"""Every wire model of the gateway: the OpenAI-compatible API and the adapter/job management API."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from adapters.schema import Hyperparameters, JobRecord, Manifest, Method

# ---------------------------------------------------------------- requests


class TextPart(BaseModel):
    """One text part of a message's content (the only part type a text model takes)."""

    type: Literal["text"] = "text"
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as a JSON object, in text")


class ToolCallOut(BaseModel):
    """A tool call the assistant made (in a response, and in the conversation a client sends back)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


def lone_surrogate(value: Any) -> str | None:
    """The path (`messages.0.content`) of the first string in a parsed JSON request that holds a lone surrogate
    (`"\\ud800"` decodes to one): it is no Unicode text, and the tokenizer and vLLM would fail on it with a 500."""
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


class ChatMessage(BaseModel):
    """A message of the conversation: content is a string or a list of text parts; assistant messages may
    carry `tool_calls`, and `tool` messages answer one of them."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"content parts of type {kind!r} are not supported: this is a text model")
        return value

    @field_validator("tool_calls")
    @classmethod
    def _arguments(cls, calls: list[ToolCallOut] | None) -> list[ToolCallOut] | None:
        # Written into the prompt as JSON (adapters/tools.py `flatten`): text that is no JSON object is the
        # client's error, not the template's.
        for index, call in enumerate(calls or []):
            try:
                parsed = json.loads(call.function.arguments)
            except ValueError:
                raise ValueError(f"tool call {index}: arguments are not JSON") from None
            except RecursionError:
                raise ValueError(f"tool call {index}: arguments are nested too deeply") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"tool call {index}: arguments must be a JSON object")
        return calls

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.content is None and not self.tool_calls:
            raise ValueError("content is null: every message but an assistant's tool calls needs text")
        return self

    def text(self) -> str:
        """The content as one string: text parts are joined, as the trainer saw plain strings."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def turn(self) -> dict[str, Any]:
        """The message as the templates take it (OpenAI's "developer" plays the part of "system")."""
        role = "system" if self.role == "developer" else self.role
        turn: dict[str, Any] = {"role": role, "content": self.text()}
        if self.tool_calls:
            turn["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return turn


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


class FunctionDefinition(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: dict[str, str] = Field(description='{"name": <function name>}')


# Fields of OpenAI's API this gateway refuses, each with the reason: a 400 naming the field, never a silent drop.
REFUSED_FIELDS = {
    "audio": "audio output is not supported: this gateway serves a text model",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "functions": "the deprecated `functions` are not supported: send `tools`",
    "function_call": "the deprecated `function_call` is not supported: send `tool_choice`",
    "metadata": "metadata belongs to stored completions, which this gateway does not keep",
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
    store: bool | None = Field(None, description="false or absent: nothing is stored")
    modalities: list[Literal["text"]] | None = Field(None, description='["text"] or absent')
    service_tier: Literal["auto", "default"] | None = Field(None, description="auto or default: one tier here")
    best_of: int | None = Field(None, description="completions: equal to n or absent")
    # OpenAI fields this gateway refuses (400 naming the field and why), listed so the schema shows them too.
    audio: Any = Field(None, description=f"refused: {REFUSED_FIELDS['audio']}")
    prediction: Any = Field(None, description=f"refused: {REFUSED_FIELDS['prediction']}")
    web_search_options: Any = Field(None, description=f"refused: {REFUSED_FIELDS['web_search_options']}")
    functions: Any = Field(None, description=f"refused: {REFUSED_FIELDS['functions']}")
    function_call: Any = Field(None, description=f"refused: {REFUSED_FIELDS['function_call']}")
    metadata: Any = Field(None, description=f"refused: {REFUSED_FIELDS['metadata']}")
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
        if value:
            raise ValueError("stored completions are not kept here: leave store false")
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


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(
        None, ge=1, description="preferred over max_tokens when both are set"
    )
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        return self

    tools: list[Tool] | None = Field(None, min_length=1, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="auto (the default with tools), none, required, or a named function"
    )
    parallel_tool_calls: bool = Field(True, description="auto: the model may call several tools in one turn")

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(message.role == "user" for message in messages):
            raise ValueError("no user message: a chat completion answers the user's turn")
        return messages

    @model_validator(mode="after")
    def _tools(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        if choice is not None and choice != "none" and not self.tools:
            raise ValueError("tool_choice needs `tools`")
        if isinstance(choice, NamedToolChoice):
            names = {tool.function.name for tool in self.tools or []}
            if choice.function.get("name") not in names:
                raise ValueError(f"tool_choice names {choice.function.get('name')!r}, which is not in `tools`")
        forced = isinstance(choice, NamedToolChoice) or choice == "required"
        if forced and (self.response_format is not None or self.structured_outputs is not None):
            raise ValueError("a forced tool call is already constrained: drop response_format/structured_outputs")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    """POST /v1/completions: the prompt is used as given (no chat template)."""

    prompt: str | list[str] = Field(description="a prompt or a list of prompts")
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt list must not be empty")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ---------------------------------------------------------------- responses


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """One servable model: the base, or an adapter (parent = the base)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "skillserve"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    template: str | None = Field(None, description="adapters: the template the adapter was trained with")
    tier: Literal["engine", "disk", "store"] | None = Field(
        None,
        description="where this replica holds the model: in the engine's LoRA cache (engine), on local disk "
        "(disk) or only in the object store (store); adapter-aware routers prefer replicas at engine",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


# ---------------------------------------------------------------- adapter management


class CreateAdapterJSON(BaseModel):
    """POST /adapters as JSON: the dataset inline (`rows`) or as a store key/URI (`dataset_uri`).

    The same endpoint takes multipart/form-data: a `dataset` JSONL file plus the other fields as form
    fields (`hyperparameters` as a JSON string).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    template: str = Field("chatml", description="built-in template: chatml, alpaca, instruction or base")
    rows: list[dict[str, Any]] | None = Field(None, description="the dataset inline: one JSON object per row")
    dataset_uri: str | None = Field(
        None, description="a dataset already in the store: a key or a URI inside it"
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    method: Method = Field(default_factory=Method, description="supervised (SFT rows) or dpo (preference rows)")
    metadata: dict[str, str] = Field(default_factory=dict, description="your own labels, kept with the job")

    @model_validator(mode="after")
    def _one_dataset(self) -> CreateAdapterJSON:
        if (self.rows is None) == (self.dataset_uri is None):
            raise ValueError("give exactly one of `rows` or `dataset_uri` (or upload a file as multipart)")
        return self


class ImportAdapterRequest(BaseModel):
    """POST /adapters/import: publish an existing PEFT adapter directory from the store."""

    model_config = ConfigDict(extra="forbid")

    name: str
    uri: str = Field(description="store key prefix (or URI inside the store) of a PEFT adapter directory")
    template: str = Field("chatml", description="the template the adapter was trained with")


class SetAliasRequest(BaseModel):
    """POST /adapters/{name}/aliases: point an alias at a version (or split it with a canary); rollback is pointing
    it back. `latest` is the alias a bare `name` means, and publishing moves it."""

    model_config = ConfigDict(extra="forbid")

    alias: str = Field(
        strict=True, description="e.g. latest, prod, canary; the model is then `name@alias` (not a version's name)"
    )
    version: str | None = Field(strict=True, description="the version it serves; null removes the alias")
    canary: str | None = Field(
        None, strict=True, description="a second version for a weighted split (not `version`; needs `canary_weight`)"
    )
    canary_weight: float = Field(
        0.0, ge=0.0, le=1.0, strict=True,
        description="share of users the canary answers (sticky by `user`): a number in [0, 1], only with `canary`",
    )
    expected_revision: int | None = Field(
        None, strict=True,
        description="write only if the aliases are still at this revision (from GET); 409 otherwise",
    )

    @field_validator("canary")
    @classmethod
    def _canary_is_another_version(cls, canary: str | None, info: ValidationInfo) -> str | None:
        if canary is not None:
            if info.data.get("version") is None:
                raise ValueError("a canary needs a `version` to split with")
            if canary == info.data["version"]:
                raise ValueError("the canary must be another version than `version`")
        return canary

    @field_validator("canary_weight")
    @classmethod
    def _weight_needs_a_canary(cls, weight: float, info: ValidationInfo) -> float:
        if weight and info.data.get("canary") is None:
            raise ValueError("a canary_weight above 0 needs a `canary` version to send that share to")
        return weight


class JobView(BaseModel):
    """A job as the API shows it."""

    id: str
    status: str
    name: str
    version: str
    template: str
    method: Method = Field(default_factory=Method, description="how the adapter learns: supervised or dpo")
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: dict[str, Any]
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any] = Field(
        description="every hyperparameter of the job, defaults filled in; once training starts also the values "
        "the trainer chose itself (total_steps, warmup_steps, lora_target_modules, optimizer, ...)"
    )
    error: str | None
    runner: str

    @classmethod
    def of(cls, job: JobRecord) -> JobView:
        return cls(
            id=job.id,
            status=job.status.value,
            name=job.spec.name,
            version=job.spec.version,
            template=job.spec.template,
            method=job.spec.method,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            progress=job.progress.model_dump(mode="json"),
            metrics=job.metrics,
            hyperparameters={**job.spec.hyperparameters.model_dump(mode="json"), **job.hyperparameters},
            error=job.error,
            runner=job.runner,
        )


class AdapterVersion(BaseModel):
    version: str
    created_at: float
    base_model: str
    template: str
    rank: int
    metrics: dict[str, Any]


class AdapterSummary(BaseModel):
    name: str
    latest: str | None
    versions: int
    status: str = Field(description="ready when a version is published, else the newest job's status")


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterSummary]


class Forgetting(BaseModel):
    """How far a skill moved the model from its base outside the skill (docs/evaluation.md)."""

    kl: float = Field(description="mean per-token KL(base || adapter) on general prompts, in nats; 0 = unchanged")
    agreement: float = Field(description="share of answer tokens where the adapter's top token is the base's")
    prompts: int = Field(description="how many general prompts were measured")

    @classmethod
    def of(cls, metrics: dict[str, Any]) -> Forgetting | None:
        if "forgetting_kl" not in metrics:
            return None
        return cls(
            kl=metrics["forgetting_kl"], agreement=metrics["forgetting_agreement"],
            prompts=metrics.get("forgetting_prompts", 0),
        )


class AdapterDetail(BaseModel):
    name: str
    status: str
    latest: str | None
    versions: list[AdapterVersion]
    forgetting: Forgetting | None = Field(
        None, description="the newest version's forgetting figure; null for imported adapters and older versions"
    )
    kept: str | None = Field(None, description="the newest version: which training step was published, and why")
    manifest: Manifest | None = Field(None, description="the newest version's manifest")
    jobs: list[JobView] = Field(default_factory=list, description="training jobs for this name, newest first")


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


# ---------------------------------------------------------------- OpenAI's fine-tuning API: files, jobs, checkpoints


class FileObject(BaseModel):
    """An uploaded file, as OpenAI's Files API shows it."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


AutoLiteral = Literal["auto"]


class SupervisedHyperparameters(BaseModel):
    """A number, or "auto": chosen from the data (adapters/auto.py)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[int, Field(ge=1, le=50)] | AutoLiteral = "auto"
    batch_size: Annotated[int, Field(ge=1, le=256)] | AutoLiteral = "auto"
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10)] | AutoLiteral = Field(
        "auto", description="x the learning rate the data would choose"
    )


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Annotated[float, Field(gt=0, le=10)] | AutoLiteral = Field(
        "auto", description="how far the adapter may move from the base (auto: 0.1)"
    )


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class FineTuningMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None


class CreateFineTuningJob(BaseModel):
    """POST /v1/fine_tuning/jobs, as the openai SDK sends it; `template` is skillserve's own (extra_body)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the base model's id (GET /v1/models)")
    training_file: str = Field(description="a file uploaded with purpose fine-tune")
    validation_file: str | None = Field(
        None, description="evaluated on instead of a held-out share of the training rows"
    )
    suffix: str | None = Field(
        None, max_length=40, description="in the model's name: lowercase letters, digits, '-', '_' and '.'"
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16
    )
    method: FineTuningMethod | None = None
    hyperparameters: SupervisedHyperparameters | None = Field(None, description="deprecated: use method")
    integrations: list[dict[str, Any]] | None = Field(None, description="none are supported: null or []")
    template: str = Field(
        "chatml", description="skillserve: the chat template the model is trained and served with"
    )


class FineTuningJobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    """A fine-tuning job as OpenAI's API shows it; `job_id` and `adapter` say where skillserve's own API has it."""

    id: str = Field(description="ftjob-<job id>")
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: FineTuningJobError | None = None
    fine_tuned_model: str | None = Field(None, description="null until the job succeeds")
    finished_at: int | None = None
    hyperparameters: dict[str, Any] = Field(description="n_epochs, batch_size, learning_rate_multiplier (, beta)")
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    user_provided_suffix: str | None = None
    job_id: str = Field(description="skillserve: the job's id in GET /jobs/{id}")
    adapter: str = Field(description="skillserve: the adapter version it publishes, name@version")


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool = False


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] | None = None


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool = False


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    """A checkpoint: the model as it was at one evaluation. The best one is the job's model; others kept can be
    published (POST /jobs/{id}/checkpoints/{step}/publish), and then their `fine_tuned_model_checkpoint` serves."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int
    best: bool = Field(False, description="skillserve: the lowest held-out loss, the one the job published")
    version: str | None = Field(None, description="skillserve: the adapter version serving it, once published")
    publishable: bool = Field(False, description="skillserve: its files were kept, so it can be published")


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# ---------------------------------------------------------------- OpenAPI response tables


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` entry of errors in OpenAI's body, for these statuses."""
    return {code: {"model": ErrorResponse} for code in codes}


INFERENCE_ERRORS = error_responses(400, 401, 404, 413, 429, 503)
MANAGEMENT_ERRORS = error_responses(400, 401, 403, 404, 503)
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
