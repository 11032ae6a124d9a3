"""The adapter management API: training requests, imports, aliases, adapters and their jobs (/adapters, /jobs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adapters.schema import EvalGate, Hyperparameters, JobRecord, Manifest, Method, TrainingEvalGate


class CreateAdapterJSON(BaseModel):
    """POST /adapters as JSON: the dataset inline (`rows`) or as a store key/URI (`dataset_uri`).

    The same endpoint takes multipart/form-data: a `dataset` JSONL file plus the other fields as form
    fields (`hyperparameters` as a JSON string).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    model: str | None = Field(
        None, description="train on the base model (null, or its id) or continue from an adapter: name (its latest), "
        "name@version, an alias or an ft: id; the new version starts from its LoRA weights, with its rank, targets "
        "and template, and its manifest names it as `parent`"
    )
    template: str = Field("chatml", description="built-in template: chatml, alpaca, instruction or base")
    rows: list[dict[str, Any]] | None = Field(None, description="the dataset inline: one JSON object per row")
    dataset_uri: str | None = Field(
        None, description="a dataset already in the store: a key or a URI inside it"
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    method: Method = Field(
        default_factory=Method,
        description="supervised (SFT rows), dpo (preference rows) or reinforcement (prompt rows and a grader)",
    )
    metadata: dict[str, str] = Field(default_factory=dict, description="your own labels, kept with the job")
    eval_gate: TrainingEvalGate | None = Field(
        None,
        description="publish only if the new version passes this eval: the trainer answers these rows greedily, "
        "records a completed run of the eval on name@<version> and fails the job naming the criterion otherwise",
    )

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
    gate: EvalGate | None = Field(
        None,
        description="a promotion gate: from now on the alias moves to a version (or gives a canary more weight) "
        "only if a completed run of this eval on exactly `name@<version>` passes it (409 eval_required or "
        "eval_gate_failed otherwise); kept across moves; null removes it, leaving it out keeps it",
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
    method: Method = Field(
        default_factory=Method, description="how the adapter learns: supervised, dpo or reinforcement"
    )
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
    parent: str | None = Field(None, description="name@version of the adapter the job continues from; null = the base")

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
            parent=job.spec.parent,
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
