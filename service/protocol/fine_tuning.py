"""OpenAI's fine-tuning API: jobs, their hyperparameters and methods, events and checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from adapters.schema import TrainingEvalGate

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


class ReinforcementHyperparameters(SupervisedHyperparameters):
    """OpenAI's reinforcement hyperparameters; what this trainer has no use for is accepted and said so in the job's
    events."""

    eval_interval: Annotated[int, Field(ge=1, le=100_000)] | AutoLiteral = Field(
        "auto", description="optimizer steps between held-out evaluations (auto: twice an epoch)"
    )
    eval_samples: Annotated[int, Field(ge=1, le=1000)] | AutoLiteral = Field(
        "auto", description="accepted, not used: the held-out reward is one greedy answer per held-out prompt"
    )
    compute_multiplier: Annotated[float, Field(gt=0, le=16)] | AutoLiteral = Field(
        "auto", description="x the completions sampled per prompt that the data would choose (auto: 1)"
    )
    reasoning_effort: Literal["default", "low", "medium", "high"] | AutoLiteral = Field(
        "auto", description="accepted, not used: the models served here do not reason apart from their answer"
    )


class ReinforcementMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grader: dict[str, Any] = Field(description="the reward: string_check, text_similarity or multi over them")
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)
    response_format: dict[str, Any] | None = Field(None, description="not supported: null")


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
    reinforcement: ReinforcementMethod | None = None


class CreateFineTuningJob(BaseModel):
    """POST /v1/fine_tuning/jobs, as the openai SDK sends it; `template` is skillserve's own (extra_body)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="the base model's id (GET /v1/models), or an adapter to continue from: an ft: id, name@version, "
        "an alias or a name"
    )
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
    eval_gate: TrainingEvalGate | None = Field(
        None,
        description="skillserve (extra_body), not OpenAI's: the job publishes its model only if it passes this eval "
        "(see docs/evals.md, Promotion gates)",
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
