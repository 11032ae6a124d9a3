"""Every wire model of the gateway: the OpenAI-compatible API and the adapter/job management API."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapters.schema import Hyperparameters, JobRecord, Manifest

# ---------------------------------------------------------------- requests


class TextPart(BaseModel):
    """One text part of a message's content (the only part type a text model takes)."""

    type: Literal["text"] = "text"
    text: str


class ChatMessage(BaseModel):
    """A message of the conversation; content is a string or a list of text parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string: text parts are joined, as the trainer saw plain strings."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The sampling parameters /v1/chat/completions and /v1/completions share."""

    model_config = ConfigDict(extra="ignore")

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

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        for index, message in enumerate(messages):
            if message.content is None:
                raise ValueError(f"message {index} has no content (null): every message needs text")
        if not any(message.role == "user" for message in messages):
            raise ValueError("no user message: a chat completion answers the user's turn")
        return messages

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


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


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


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


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


class JobView(BaseModel):
    """A job as the API shows it."""

    id: str
    status: str
    name: str
    version: str
    template: str
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


class AdapterDetail(BaseModel):
    name: str
    status: str
    latest: str | None
    versions: list[AdapterVersion]
    manifest: Manifest | None = Field(None, description="the newest version's manifest")
    jobs: list[JobView] = Field(default_factory=list, description="training jobs for this name, newest first")


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView]


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True
