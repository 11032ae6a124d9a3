"""OpenAI's Batch API: the create request, the Batch object and its list."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class OutputExpiresAfter(BaseModel):
    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(description="between 3600 (an hour) and 2592000 (30 days)")


class CreateBatch(BaseModel):
    """POST /v1/batches: a /v1/files file (purpose `batch`) of requests to one endpoint, run in the background."""

    input_file_id: str = Field(description="a file uploaded with purpose `batch`: one request a line")
    endpoint: str = Field(description="/v1/chat/completions or /v1/completions: every line's `url`")
    completion_window: str = Field(description="24h: lines not run by then are expired")
    metadata: dict[str, str] | None = None
    output_expires_after: OutputExpiresAfter | None = Field(
        None, description="the output and error files' lifetime; null = kept until deleted"
    )


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = Field(0, description="lines answered with status 200")
    failed: int = Field(0, description="lines answered with an error")


class BatchError(BaseModel):
    code: str | None = None
    line: int | None = Field(None, description="the input file's line, from 1")
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError] = Field(default_factory=list)


class BatchTokenDetails(BaseModel):
    cached_tokens: int = 0


class BatchOutputTokenDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: BatchTokenDetails = Field(default_factory=BatchTokenDetails)
    output_tokens: int = 0
    output_tokens_details: BatchOutputTokenDetails = Field(default_factory=BatchOutputTokenDetails)
    total_tokens: int = 0


class BatchObject(BaseModel):
    """A batch, as OpenAI's Batch API shows it."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = Field(None, description="the one model every line names; null when they name several")
    errors: BatchErrors | None = Field(None, description="why validation failed, naming the lines")
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None = Field(None, description="the lines answered with status 200 (purpose batch_output)")
    error_file_id: str | None = Field(None, description="the other lines: errors, expired, cancelled")
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
