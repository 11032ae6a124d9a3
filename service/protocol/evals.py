"""OpenAI's Evals API and standalone grader endpoints on the wire: every request and response field in one place.

Shapes follow the openai SDK's types (openai/types/eval_*.py, openai/types/evals/, openai/types/fine_tuning/alpha/).
Graders travel as plain JSON objects here: adapters/graders.py checks them, naming the bad field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# OpenAI's metadata: up to 16 pairs, keys up to 64 characters, values up to 512.
Metadata = dict[str, str]


def _metadata_field() -> Any:
    return Field(None, description="up to 16 string pairs (keys up to 64 characters, values up to 512)")


# ---------------------------------------------------------------- evals


class DataSourceConfig(BaseModel):
    """`custom`: the JSON schema of each row's `item`; `logs` and `stored_completions` are refused (no logs here)."""

    type: Literal["custom", "logs", "stored_completions"]
    item_schema: dict[str, Any] | None = Field(None, description="custom: JSON schema of each row's item")
    include_sample_schema: bool = Field(False, description="custom: whether runs generate a `sample` per row")
    metadata: dict[str, Any] | None = None


class CreateEval(BaseModel):
    """POST /v1/evals."""

    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = _metadata_field()
    data_source_config: DataSourceConfig
    testing_criteria: list[dict[str, Any]] = Field(
        min_length=1, description="graders (adapters/graders.py: string_check, text_similarity, score_model, ...)"
    )


class UpdateEval(BaseModel):
    """POST /v1/evals/{eval_id}: rename, or replace the metadata."""

    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = _metadata_field()


class CustomDataSourceSchema(BaseModel):
    type: Literal["custom"] = "custom"
    schema_: dict[str, Any] = Field(alias="schema", description="{item: <item_schema>, sample: ...} as JSON schema")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class EvalObject(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    created_at: int
    metadata: Metadata | None = None
    data_source_config: CustomDataSourceSchema
    testing_criteria: list[dict[str, Any]]


class EvalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class EvalDeleted(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


# ---------------------------------------------------------------- runs


class SourceRow(BaseModel):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class RunSource(BaseModel):
    """Where a run's rows come from: given inline (`file_content`) or a file uploaded with purpose `evals`."""

    type: Literal["file_content", "file_id", "stored_completions", "responses"]
    content: list[SourceRow] | None = None
    id: str | None = None


class TemplateMessage(BaseModel):
    """One message of a run's prompt; its text may hold `{{item.<field>}}`."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | dict[str, Any] | list[str | dict[str, Any]]
    type: Literal["message"] | None = None


class InputMessages(BaseModel):
    """`template`: messages rendered per row; `item_reference`: the row's own messages (`item.<field>`)."""

    type: Literal["template", "item_reference"]
    template: list[TemplateMessage] | None = None
    item_reference: str | None = None


class EvalSamplingParams(BaseModel):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    reasoning_effort: str | None = Field(None, description="accepted, unused: the models here do not reason apart")


class RunDataSource(BaseModel):
    """`completions`: each row's prompt sent to `model` (any name this gateway serves) through the serving path."""

    model_config = ConfigDict(extra="allow")

    type: Literal["completions", "jsonl", "responses"]
    source: RunSource
    model: str | None = None
    input_messages: InputMessages | None = None
    sampling_params: EvalSamplingParams | None = None


class CreateRun(BaseModel):
    """POST /v1/evals/{eval_id}/runs."""

    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = _metadata_field()
    data_source: RunDataSource


class RunError(BaseModel):
    code: str
    message: str


class ResultCounts(BaseModel):
    total: int
    passed: int
    failed: int
    errored: int


class CriterionResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int


class ModelUsage(BaseModel):
    model_name: str
    invocation_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int


class RunObject(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    name: str
    model: str
    status: Literal["queued", "in_progress", "completed", "failed", "canceled"]
    created_at: int
    data_source: dict[str, Any]
    error: RunError | None = None
    metadata: Metadata | None = None
    result_counts: ResultCounts
    per_testing_criteria_results: list[CriterionResult] | None = None
    per_model_usage: list[ModelUsage] | None = None
    report_url: str = Field(description="where this gateway serves the run (there is no report page)")
    served_by: str | None = Field(
        None, description="skillserve: the exact model (base id or name@version) that answered every row, when one "
        "did (an alias that moved during the run leaves it null; each output item's sample names its own)",
    )


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class RunDeleted(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


# ---------------------------------------------------------------- output items


class SampleMessage(BaseModel):
    role: str
    content: str | None = None


class SampleUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class OutputSample(BaseModel):
    input: list[SampleMessage]
    output: list[SampleMessage]
    model: str
    finish_reason: str | None = None
    usage: SampleUsage
    error: RunError | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    max_completion_tokens: int | None = None
    served_by: str | None = Field(
        None, description="skillserve: the exact model (base id or name@version) that answered, whatever `model` named"
    )


class GraderResult(BaseModel):
    """One testing criterion's verdict on one row: OpenAI's fields, plus the grader's errors and details."""

    model_config = ConfigDict(extra="allow")

    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None


class OutputItemObject(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: Literal["pass", "fail", "error"]
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[GraderResult]
    sample: OutputSample


class OutputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OutputItemObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# ---------------------------------------------------------------- /v1/fine_tuning/alpha/graders


class ValidateGrader(BaseModel):
    grader: dict[str, Any]


class ValidatedGrader(BaseModel):
    grader: dict[str, Any]


class RunGrader(BaseModel):
    grader: dict[str, Any]
    model_sample: str = Field(description="fills the `sample` namespace; output_json too when it is JSON")
    item: Any = Field(None, description="fills the `item` namespace")


class GraderRunErrors(BaseModel):
    """OpenAI's error flags of a grader run; the ones this gateway can raise are set, the rest stay false."""

    formula_parse_error: bool = False
    invalid_variable_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_server_error: bool = False
    model_grader_server_error_details: str | None = None
    other_error: bool = False
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False


class GraderRunMetadata(BaseModel):
    name: str
    type: str
    errors: GraderRunErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None = None
    sampled_model_name: str | None = None


class GraderRunResult(BaseModel):
    reward: float
    metadata: GraderRunMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]
