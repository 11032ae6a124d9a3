"""Stored chat completions (OpenAI's shapes: list, retrieve, update, delete, messages) and what this gateway adds
to them (feedback, export as a training or eval file)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from service.protocol.chat import ChatCompletion, TextPart, ToolCallOut
from service.protocol.common import check_metadata


class Feedback(BaseModel):
    """Ours: a reviewer's word on a stored completion."""

    rating: Literal["good", "bad"] | None = None
    corrected: str | None = Field(None, description="the answer it should have given (the assistant's content)")
    note: str | None = None
    at: int = Field(description="when it was given (unix seconds)")


class StoredChatCompletion(ChatCompletion):
    """A stored chat completion: the chat.completion answered, with its metadata. `answered_by` and `feedback` are
    this gateway's own fields."""

    metadata: dict[str, str] = Field(default_factory=dict)
    answered_by: str = Field("", description="ours: the base id or `adapter@version` that answered")
    feedback: Feedback | None = Field(None, description="ours: the rating and correction given, if any")


class StoredCompletionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoredChatCompletion]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class StoredCompletionDeleted(BaseModel):
    id: str
    object: Literal["chat.completion.deleted"] = "chat.completion.deleted"
    deleted: bool = True


class UpdateStoredCompletion(BaseModel):
    """POST /v1/chat/completions/{id}: the metadata replaced (null clears it)."""

    metadata: dict[str, str] | None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)


class StoreMessage(BaseModel):
    """A message of a stored completion's request, as OpenAI's messages list shows it."""

    id: str = Field(description="<completion id>-<place in the request, from 0>")
    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCallOut] | None = None
    tool_call_id: str | None = None
    content_parts: list[TextPart] | None = Field(None, description="the text parts, when it was sent as parts")


class StoreMessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[StoreMessage]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class GiveFeedback(BaseModel):
    """Ours, POST /v1/chat/completions/{id}/feedback: a rating, a corrected answer, or both."""

    rating: Literal["good", "bad"] | None = Field(None, description="good: the answer is one to learn from")
    corrected: str | None = Field(
        None, min_length=1, max_length=100_000, description="the answer it should have given"
    )
    note: str | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _something(self) -> GiveFeedback:
        if self.rating is None and self.corrected is None:
            raise ValueError("give a rating, a corrected answer, or both")
        return self


class ExportStoredCompletions(BaseModel):
    """Ours, POST /v1/chat/completions/exports: stored completions matching the filter, written as one /v1/files
    file checked as an upload is."""

    kind: Literal["sft", "dpo", "evals"] = Field(
        description="sft: a conversation per accepted (rated good) or corrected completion, ending in the corrected "
        "answer where there is one (purpose fine-tune); dpo: the corrected answer preferred to the original "
        "(purpose fine-tune, method dpo); evals: an item per accepted or corrected completion with its `input`, "
        "`messages` and `ideal` answer (purpose evals)"
    )
    model: str | None = Field(None, description="only completions asked of this model (as sent, or as answered)")
    metadata: dict[str, str] | None = Field(None, description="only completions carrying every one of these pairs")
    rating: Literal["good", "bad"] | None = Field(None, description="only completions given this rating")
    created_after: int | None = Field(None, description="only completions created at or after (unix seconds)")
    created_before: int | None = Field(None, description="only completions created before (unix seconds)")
    filename: str | None = Field(None, description="the file's name (default: stored-<kind>.jsonl)")
