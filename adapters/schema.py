"""Every record skillserve stores: the adapter manifest, training hyperparameters, the job spec and job record."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from adapters.errors import InvalidName

# Names and versions become path segments in the store: a strict alphabet keeps them there.
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){0,62}$")
JOB_ID_RE = re.compile(r"^[a-z0-9]{1,64}$")
EVAL_ID_RE = re.compile(r"^eval_[0-9a-f]{32}$")
FILE_ID_RE = re.compile(r"^file-[0-9a-f]{32}$")
T = TypeVar("T")


def check_name(value: str, what: str = "adapter name") -> str:
    """Return `value` if it is a safe store path segment, else raise InvalidName (before any I/O)."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or value.endswith("."):
        raise InvalidName(
            f"invalid {what} {value!r}: use 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return value


def parse_ref(model: str) -> tuple[str, str | None]:
    """`name` -> (name, None); `name@version` -> (name, version). The one parser of adapter references:
    InvalidName for anything else, an empty version (`name@`) included."""
    name, at, version = model.partition("@")
    check_name(name)
    if not at:
        return name, None
    return name, check_name(version, "version")


def check_job_id(value: str) -> str:
    if not isinstance(value, str) or not JOB_ID_RE.fullmatch(value):
        raise InvalidName(f"invalid job id {value!r}")
    return value


# Field types that check themselves: a bad name or id never makes it into a record.
AdapterName = Annotated[str, AfterValidator(check_name)]
Version = Annotated[str, AfterValidator(lambda value: check_name(value, "version"))]
JobId = Annotated[str, AfterValidator(check_job_id)]


def new_job_id() -> str:
    return uuid.uuid4().hex


# What `new_version` makes, and a checkpoint published as a version (`<version>-step<n>`): names no alias may take.
GENERATED_VERSION_RE = re.compile(r"^v[0-9]{14}-[0-9a-f]{4}(?:-step[0-9]+)?$")


def new_version() -> str:
    """Versions sort by creation time: v<utc timestamp>-<4 random hex digits>."""
    return time.strftime("v%Y%m%d%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:4]


def _auto(value: Any) -> Any:
    return None if value == "auto" else value


# A hyperparameter the data decides when left out (or given as null or "auto"): adapters/auto.py holds the rules.
# The schema says so (`x-auto`), so forms can show "auto" rather than an empty field.
Auto = Annotated[T | None, BeforeValidator(_auto), Field(json_schema_extra={"x-auto": True})]


def is_auto(field: Any) -> bool:
    """Whether a model field (pydantic's FieldInfo) is `Auto`: chosen from the data when left out."""
    return bool((field.json_schema_extra or {}).get("x-auto"))


class Hyperparameters(BaseModel):
    """LoRA and optimisation settings of one training run; the fields typed `Auto` are chosen from the data when
    not given (adapters/auto.py `choose`), before a job is planned or trained."""

    model_config = ConfigDict(extra="forbid")

    rank: Auto[int] = Field(None, ge=1, le=256, description="LoRA rank r; null = chosen from the data")
    alpha: Auto[int] = Field(None, ge=1, le=1024, description="LoRA alpha (scale = alpha / rank); null = 2 x rank")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: Annotated[list[str], Field(min_length=1)] | Literal["all-linear"] = Field(
        "all-linear", description="modules that get LoRA weights; 'all-linear' = every linear layer but the head"
    )
    epochs: Auto[float] = Field(
        None, gt=0, le=100, description="passes over the training split (ignored if max_steps > 0); null = chosen "
        "from the data"
    )
    max_steps: int = Field(0, ge=0, le=100_000, description="total optimizer steps; 0 = use epochs")
    learning_rate: Auto[float] = Field(
        None, gt=0, le=1.0, description="peak learning rate; null = chosen from the data"
    )
    batch_size: Auto[int] = Field(
        None, ge=1, le=1024, description="examples per optimizer step; null = chosen from the data"
    )
    warmup_ratio: float = Field(0.0, ge=0, le=0.5, description="share of steps spent warming up the learning rate")
    weight_decay: float = Field(0.0, ge=0, le=1.0, description="AdamW weight decay")
    neftune_noise_alpha: float = Field(
        5.0, ge=0, le=100, description="NEFTune: uniform noise of scale alpha / sqrt(tokens x width) added to the "
        "input embeddings while training (supervised skills; evaluation and serving never see it); 0 = off"
    )
    max_seq_length: int = Field(1024, ge=16, le=131072, description="longest tokenized example, in tokens")
    eval_fraction: float = Field(0.1, ge=0, le=0.5, description="share of rows held out for evaluation")
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="seed for the split, initialisation and data order (as numpy takes it)"
    )
    gradient_checkpointing: Auto[bool] = Field(
        None, description="recompute activations in the backward pass: far less memory for one more forward pass; "
        "null = off where the largest batch's activations fit in half the memory free"
    )
    eval_interval: int = Field(
        0, ge=0, le=100_000, description="optimizer steps between held-out evaluations; 0 = twice an epoch"
    )
    eval_samples: int = Field(
        16, ge=0, le=1000, description="held-out rows answered greedily and scored after training; 0 = none"
    )
    min_score: float | None = Field(
        None, ge=0.0, le=1.0, description="publish only if held-out ROUGE-L reaches this; null = no guard"
    )
    padding_free: Auto[bool] = Field(
        None, description="train each batch as one unpadded row, attention kept per example (faster on mixed "
        "lengths); null = where the rows' lengths make it less work"
    )
    keep: Literal["best", "last"] = Field(
        "best", description="publish the checkpoint with the lowest held-out loss (best) or the last step's (last)"
    )
    early_stopping_patience: int = Field(
        2, ge=0, le=100, description="stop after this many evaluations without a better held-out loss; 0 = never"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the frozen base's dtype (the LoRA weights and optimizer stay float32; on CPU bfloat16 "
        "is the base's products only, the rest float32); auto = adapters/hardware.py's choice for training here"
    )


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class Method(BaseModel):
    """How the adapter learns: supervised fine-tuning on answers, DPO on preference pairs, or reinforcement toward a
    grader's score on its own samples."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"] = Field(
        "supervised", description="supervised (SFT), dpo (preference) or reinforcement (a grader's reward)"
    )
    beta: float = Field(0.1, gt=0, le=10, description="DPO only: how far the adapter may move from the base")
    grader: dict[str, Any] | None = Field(
        None, description="reinforcement only: the reward, one of OpenAI's graders as the Evals API takes them "
        "(string_check, text_similarity, multi); model graders cannot run in the trainer"
    )
    kl_beta: float = Field(
        0.04, ge=0, le=10, description="reinforcement only: weight of the KL term to the base model (trl GRPO's "
        "beta); 0 = none"
    )
    samples_per_prompt: Auto[int] = Field(
        None, ge=2, le=64, description="reinforcement only: completions sampled per prompt at each step, the group "
        "whose rewards are compared; null = chosen from the data"
    )
    max_completion_tokens: int = Field(
        64, ge=1, le=4096, description="reinforcement only: longest sampled completion, in tokens"
    )
    temperature: float = Field(1.0, gt=0, le=2, description="reinforcement only: sampling temperature while training")

    @model_validator(mode="after")
    def _grader_goes_with_reinforcement(self) -> Method:
        if self.type == "reinforcement" and self.grader is None:
            raise ValueError("method reinforcement needs a grader: the reward its samples are scored by")
        if self.type != "reinforcement" and self.grader is not None:
            raise ValueError(f"a grader goes with method reinforcement, not {self.type}")
        return self


class EvalGate(BaseModel):
    """An eval a version must pass: to become what a gated alias serves, or to be published by a training job.

    A criterion passes the gate when its pass rate in a completed run (rows it passed over every row of the run:
    an errored row counts as failed) reaches its minimum: `criteria[name]` when named there, else
    `min_pass_rate`. adapters/gates.py `gate_verdict` decides."""

    model_config = ConfigDict(extra="forbid")

    eval_id: str = Field(pattern=EVAL_ID_RE.pattern, description="the eval (POST /v1/evals) the version must pass")
    min_pass_rate: float = Field(1.0, ge=0.0, le=1.0, description="each criterion's least pass rate, 0 to 1")
    criteria: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=dict, description="per-criterion least pass rates by criterion name, over min_pass_rate"
    )
    file_id: str | None = Field(
        None, pattern=FILE_ID_RE.pattern,
        description="the rows a passing run must have used: data_source.source of type file_id with this id",
    )
    min_rows: int | None = Field(None, ge=1, description="the fewest rows a passing run must have graded")


class TrainingEvalGate(EvalGate):
    """A training job's gate (our extension of OpenAI's job body): the trainer runs the eval on the new version with
    these rows and prompt before publishing, records the run, and publishes only if it passes."""

    input_messages: dict[str, Any] = Field(
        description="as an eval run's data_source.input_messages: a template over {{item.*}}, or an item_reference"
    )
    source: dict[str, Any] = Field(
        description="as an eval run's data_source.source: file_content rows, or the file_id of a file of purpose evals"
    )
    max_completion_tokens: int = Field(64, ge=1, le=4096, description="the longest answer sampled (greedily)")


class JobSpec(BaseModel):
    """What the trainer needs to run one job; stored in the job record, so any process can pick it up."""

    model_config = ConfigDict(extra="forbid")

    name: AdapterName
    version: Version = Field(default_factory=new_version)
    base_model: str = Field(description="model directory or hub id the adapter is trained on")
    base_model_id: str = Field(description="the id the gateway serves the base model under")
    template: str = Field("chatml", description="built-in template name")
    dataset_uri: str = Field(description="store key of the validated JSONL dataset")
    dataset_sha256: str
    dataset_rows: int
    validation_uri: str | None = Field(
        None, description="store key of a validated JSONL dataset evaluated on instead of a split of the training rows"
    )
    validation_rows: int | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    method: Method = Field(default_factory=Method)
    metadata: dict[str, str] = Field(default_factory=dict, description="the submitter's own labels, kept as given")
    eval_gate: TrainingEvalGate | None = Field(
        None, description="publish only if the new version passes this eval (run by the trainer, recorded as a run)"
    )
    parent: str | None = Field(
        None, description="name@version of the adapter training continues from (its LoRA weights, rank, targets "
        "and template), resolved at submit time; null = a fresh LoRA on the base model"
    )
    planned_tokens: int | None = Field(
        None, description="tokens the job planned to train on, all epochs, at submit time (counted against its "
        "project's training_tokens_per_day)"
    )


class Phase(StrEnum):
    """What a running trainer is doing, in the order it does it."""

    validating = "validating"  # reading and checking the stored dataset
    loading_model = "loading_model"  # tokenizing, loading the base model, building the trainer
    training = "training"  # optimizer steps; step/total_steps count them
    evaluating = "evaluating"  # held-out loss and greedy answers, adapter beside base
    publishing = "publishing"  # uploading the adapter files, then its manifest


class Progress(BaseModel):
    phase: Phase | None = Field(None, description="what the trainer is doing; null until it starts")
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    reward: float | None = Field(None, description="reinforcement: the mean grader score of the last step's samples")
    eval_reward: float | None = Field(
        None, description="reinforcement: the mean grader score of greedy answers to the held-out prompts"
    )
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


class JobEvent(BaseModel):
    """One line of a job's history: a status change or message, or the figures of one logged step."""

    at: float = Field(default_factory=time.time)
    level: Literal["info", "warn", "error"] = "info"
    type: Literal["message", "metrics"] = "message"
    message: str
    data: dict[str, Any] = Field(default_factory=dict, description="metrics events: step, train_loss, eval_loss")


class Checkpoint(BaseModel):
    """The adapter as it was at one evaluation during training."""

    step: int
    epoch: float = 0.0
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_reward: float | None = Field(None, description="reinforcement: the held-out mean reward, higher is better")
    at: float = Field(default_factory=time.time)
    best: bool = Field(
        False, description="the checkpoint with the best held-out figure (lowest loss, or highest reward for "
        "reinforcement): the one published"
    )
    stored: str | None = Field(
        None, description="store prefix holding its adapter files when kept (publishable as a version later)"
    )
    version: str | None = Field(None, description="the version it was published as, if it was")


class JobRecord(BaseModel):
    """The state of one training job, stored at jobs/<id>.json and updated by the trainer as it runs."""

    id: JobId = Field(default_factory=new_job_id)
    status: JobStatus = JobStatus.queued
    spec: JobSpec
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="what the trainer used, written when training starts: every hyperparameter with its default "
        "filled in, and the values it chose itself (total_steps, warmup_steps, lora_target_modules, ...)",
    )
    events: list[JobEvent] = Field(default_factory=list, description="the job's history, oldest first")
    checkpoints: list[Checkpoint] = Field(default_factory=list, description="one per evaluation during training")
    error: str | None = None
    runner: str = "local"
    runner_ref: str | None = Field(None, description="the runner's handle: a pid or a Kubernetes Job name")


BLOB_KEY_RE = re.compile(r"blobs/[0-9a-f]{64}")


class FileEntry(BaseModel):
    sha256: str
    size: int
    key: str | None = Field(
        None,
        description="where the bytes lie under the version's prefix: `blobs/<sha256>`, written by this publish "
        "attempt alone; null for manifests published before, whose files lie beside the manifest",
    )

    @model_validator(mode="after")
    def _key_is_the_content_address(self) -> FileEntry:
        # A manifest must not point a file at any key but its own content address: no other object is read.
        if self.key is not None and (not BLOB_KEY_RE.fullmatch(self.key) or self.key != f"blobs/{self.sha256}"):
            raise ValueError(f"file key {self.key!r} is not blobs/<its sha256>")
        return self


class LoraInfo(BaseModel):
    rank: int
    alpha: int
    dropout: float = 0.0
    target_modules: list[str]


class Manifest(BaseModel):
    """What an adapter is: written last when publishing, so its presence means the adapter is complete."""

    name: AdapterName
    version: Version
    base_model: str = Field(description="the id the base model is served under")
    base_model_sha256: str = Field(description="hash of the base model's weights the adapter was trained on")
    template_name: str
    template: str = Field(description="the full jinja text the adapter was trained with")
    stop: list[str] = Field(default_factory=list, description="the template's stop sequences")
    lora: LoraInfo
    dataset_sha256: str | None = None
    dataset_rows: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="what training used, as in the job record (empty for imported adapters)"
    )
    files: dict[str, FileEntry]
    created_at: float = Field(default_factory=time.time)
    job_id: str | None = None
    parent: str | None = Field(None, description="name@version of the adapter its training continued from, if any")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


LATEST = "latest"


class AliasTarget(BaseModel):
    """Where an alias points: one version, or a weighted split with a canary version (sticky per `user`)."""

    model_config = ConfigDict(extra="forbid")

    version: Version
    canary: Version | None = Field(None, description="a second version that takes `canary_weight` of the traffic")
    canary_weight: float = Field(0.0, ge=0.0, le=1.0, description="share of requests (by user) the canary answers")

    def pick(self, key: str) -> str:
        """The version that answers for `key` (the request's `user`, or a random token without one): the same
        user always lands on the same side, so a conversation never switches versions midway."""
        if self.canary is None or self.canary_weight <= 0:
            return self.version
        point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
        return self.canary if point < self.canary_weight else self.version


class Aliases(BaseModel):
    """Every alias of one adapter (`latest`, `prod`, `canary`, ...). Stored append-only as
    aliases/<name>/<revision>.json, each revision written with a conditional put: the newest is in force."""

    name: AdapterName
    revision: int = Field(0, ge=0, description="0 = no alias ever set; a conditional write names the one it read")
    aliases: dict[AdapterName, AliasTarget] = Field(default_factory=dict)
    gates: dict[AdapterName, EvalGate] = Field(
        default_factory=dict,
        description="per alias, the eval a version must pass before the alias (or its canary) serves it; kept "
        "across moves until changed",
    )
    unpublished: list[Version] = Field(
        default_factory=list,
        description="versions being (or just) deleted: no alias may point at them; dropped once their manifest is gone",
    )
    updated_at: float = Field(default_factory=time.time)


# The OpenAI fine-tuning API's own records: what it takes and names beyond the job and the adapter it makes.



def new_file_id() -> str:
    return "file-" + uuid.uuid4().hex


class StoredFile(BaseModel):
    """An uploaded file (OpenAI's Files API): this record at files/<id>.json, the bytes content-addressed at
    datasets/<sha256>.jsonl, where a job's dataset lies too."""

    id: str = Field(default_factory=new_file_id)
    filename: str
    purpose: str
    bytes: int
    sha256: str
    created_at: float = Field(default_factory=time.time)
    expires_at: float | None = Field(None, description="gone (404) from this time on; null = kept until deleted")
    rows: int = 0
    kind: Literal["supervised", "preference", "prompts"] = Field(
        "supervised", description="what its rows look like: answers to learn, preference pairs (DPO), or prompts "
        "ending in the user's turn (reinforcement)"
    )


class FineTune(BaseModel):
    """What a job created through the OpenAI API asked for beyond the job itself, at fine_tunes/<job-id>.json:
    the files it names, the hyperparameters as requested ("auto" or a number) and the model id it publishes as."""

    job_id: JobId
    model: str = Field(description="the fine_tuned_model it publishes as: ft:<base>:<owner>:<suffix>:<short id>")
    suffix: str | None = None
    training_file: str
    validation_file: str | None = None
    requested: dict[str, Any] = Field(default_factory=dict, description="method hyperparameters as sent")
    learning_rate_multiplier: float | None = Field(None, description="null = auto (1)")
    organization_id: str = "skillserve"
    parent_model: str | None = Field(None, description="the model the job was created on when it is an adapter")


class FineTunedModel(BaseModel):
    """An OpenAI-style model id (`ft:...`, or a checkpoint's `ft:...:ckpt-step-<n>`) and the adapter version it
    serves; stored at ft_models/<sha256 of the id>.json, since the id holds characters no store key may."""

    id: str
    name: AdapterName
    version: Version
    job_id: JobId
    step: int | None = Field(None, description="a checkpoint's step; null = the job's own model")
    created_at: float = Field(default_factory=time.time)


# OpenAI's Evals API: an eval (a dataset's shape and its graders), its runs, and each run's output items.

EVAL_RUN_ID_RE = re.compile(r"^evalrun_[0-9a-f]{32}$")
# An output item's id names its run and its row, so a resumed run writes each row once (outputitem_<run>_<row>).
OUTPUT_ITEM_ID_RE = re.compile(r"^outputitem_([0-9a-f]{32})_([0-9]{1,9})$")


def new_eval_id() -> str:
    return "eval_" + uuid.uuid4().hex


def new_eval_run_id() -> str:
    return "evalrun_" + uuid.uuid4().hex


def output_item_id(run_id: str, index: int) -> str:
    return f"outputitem_{run_id.removeprefix('evalrun_')}_{index}"


class EvalRecord(BaseModel):
    """An eval at evals/<id>.json: the item schema runs are checked against and the graders every run applies."""

    id: str = Field(default_factory=new_eval_id, pattern=EVAL_ID_RE.pattern)
    name: str = ""
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    metadata: dict[str, str] = Field(default_factory=dict)
    item_schema: dict[str, Any] = Field(default_factory=dict, description="JSON schema of each row's `item`")
    include_sample_schema: bool = False
    testing_criteria: list[dict[str, Any]] = Field(
        default_factory=list, description="graders as sent, each valid for adapters.graders.validate"
    )


class EvalRunStatus(StrEnum):
    queued = "queued"
    in_progress = "in_progress"
    completed = "completed"
    failed = "failed"
    canceled = "canceled"

    @property
    def finished(self) -> bool:
        return self in (EvalRunStatus.completed, EvalRunStatus.failed, EvalRunStatus.canceled)


# A run's allowed moves: every writer of a run's status goes through this table (registry's `update_eval_run`).
EVAL_RUN_TRANSITIONS: dict[EvalRunStatus, frozenset[EvalRunStatus]] = {
    EvalRunStatus.queued: frozenset({EvalRunStatus.in_progress, EvalRunStatus.failed, EvalRunStatus.canceled}),
    EvalRunStatus.in_progress: frozenset({EvalRunStatus.completed, EvalRunStatus.failed, EvalRunStatus.canceled}),
    EvalRunStatus.completed: frozenset(),
    EvalRunStatus.failed: frozenset(),
    EvalRunStatus.canceled: frozenset(),
}


class TokenUsage(BaseModel):
    """Tokens one model used over some calls (a run's sampling, or a judge's)."""

    invocation_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0

    def plus(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(**{name: getattr(self, name) + getattr(other, name) for name in TokenUsage.model_fields})


class CriterionCounts(BaseModel):
    passed: int = 0
    failed: int = 0


class ResultCounts(BaseModel):
    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0


class EvalRunRecord(BaseModel):
    """A run at eval_runs/<eval-id>/<run-id>.json, changed only by compare-and-swap. Its counts are a fold of its
    output items, so a resumed run can recount them from the store."""

    id: str = Field(default_factory=new_eval_run_id, pattern=EVAL_RUN_ID_RE.pattern)
    eval_id: str = Field(pattern=EVAL_ID_RE.pattern)
    name: str = ""
    model: str = ""
    status: EvalRunStatus = EvalRunStatus.queued
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    data_source: dict[str, Any] = Field(default_factory=dict, description="as sent (rows included)")
    rows: int = Field(0, description="rows in the data source")
    error: dict[str, str] | None = Field(None, description="code and message of a failed run")
    result_counts: ResultCounts = Field(default_factory=ResultCounts)
    per_criterion: dict[str, CriterionCounts] = Field(default_factory=dict)
    per_model_usage: dict[str, TokenUsage] = Field(default_factory=dict)
    served_by: list[str] = Field(
        default_factory=list,
        description="every exact model (base id or name@version) that answered a row, sorted: one when all agree",
    )


class EvalOutputItem(BaseModel):
    """One row's sample and grades at eval_items/<run-id>/<row>.json, written once (if absent)."""

    id: str = Field(pattern=OUTPUT_ITEM_ID_RE.pattern)
    run_id: str = Field(pattern=EVAL_RUN_ID_RE.pattern)
    eval_id: str = Field(pattern=EVAL_ID_RE.pattern)
    index: int = Field(ge=0, description="the row's place in the data source (OpenAI's datasource_item_id)")
    created_at: float = Field(default_factory=time.time)
    status: Literal["pass", "fail", "error"]
    item: dict[str, Any]
    sample: dict[str, Any] = Field(default_factory=dict, description="input, output, usage, sampling, error")
    results: list[dict[str, Any]] = Field(default_factory=list, description="one per testing criterion")
    usage: dict[str, TokenUsage] = Field(default_factory=dict, description="per model: the sample's and the judges'")
    served_by: str | None = Field(
        None, description="the exact model (base id or name@version) that answered the row; None when not sampled"
    )


# OpenAI's Batch API: a batch (a file of requests run in the background) and each of its lines' results.

BATCH_ID_RE = re.compile(r"^batch_[0-9a-f]{32}$")
BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex


def batch_request_id(batch_id: str, index: int) -> str:
    """A line's id in the output and error files: named by its batch and its line, so a rewrite gives the same."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:32]


def batch_file_id(batch_id: str, kind: Literal["output", "error"]) -> str:
    """The id of a batch's output or error file: named by the batch, so two writers (a resumed executor, a second
    replica) write one file, never two."""
    return "file-" + hashlib.sha256(f"{batch_id}:{kind}".encode()).hexdigest()[:32]


class BatchStatus(StrEnum):
    validating = "validating"
    failed = "failed"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    expired = "expired"
    cancelling = "cancelling"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (BatchStatus.failed, BatchStatus.completed, BatchStatus.expired, BatchStatus.cancelled)


# A batch's allowed moves: every writer of its status goes through this table (registry's `update_batch`).
BATCH_TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    BatchStatus.validating: frozenset({BatchStatus.in_progress, BatchStatus.failed, BatchStatus.cancelling}),
    BatchStatus.in_progress: frozenset(
        {BatchStatus.finalizing, BatchStatus.expired, BatchStatus.cancelling, BatchStatus.failed}
    ),
    BatchStatus.finalizing: frozenset({BatchStatus.completed, BatchStatus.failed}),
    BatchStatus.cancelling: frozenset({BatchStatus.cancelled, BatchStatus.failed}),
    BatchStatus.completed: frozenset(),
    BatchStatus.failed: frozenset(),
    BatchStatus.expired: frozenset(),
    BatchStatus.cancelled: frozenset(),
}


class BatchCounts(BaseModel):
    """Lines run (a fold of the batch's line results) and the tokens they used."""

    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class BatchRecord(BaseModel):
    """A batch at batches/<id>.json, changed only by compare-and-swap; its counts are a fold of its lines' results,
    so a resumed batch can recount them from the store."""

    id: str = Field(default_factory=new_batch_id, pattern=BATCH_ID_RE.pattern)
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    input_file_id: str
    completion_window: str = "24h"
    status: BatchStatus = BatchStatus.validating
    created_at: float = Field(default_factory=time.time)
    expires_at: float = Field(description="the completion window's end: lines not run by then are expired")
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str | None = Field(None, description="the one model every line names; null when they name several")
    total: int = Field(0, description="lines in the input file")
    errors: list[dict[str, Any]] = Field(default_factory=list, description="why the file failed validation")
    counts: BatchCounts = Field(default_factory=BatchCounts)
    output_file_id: str | None = None
    error_file_id: str | None = None
    output_expires_after_s: int | None = Field(None, description="the output and error files' lifetime")


class BatchLineResult(BaseModel):
    """One input line's answer at batch_lines/<batch-id>/<line>.json, written once (if absent): what the output
    file (status 200) or the error file (any other) holds for it."""

    batch_id: str = Field(pattern=BATCH_ID_RE.pattern)
    index: int = Field(ge=0, description="the line's place among the file's requests, from 0")
    custom_id: str
    status_code: int
    request_id: str
    body: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0
    created_at: float = Field(default_factory=time.time)

    @property
    def succeeded(self) -> bool:
        return self.status_code == 200


# Stored chat completions (`store: true`) and the feedback given on them.

STORED_COMPLETION_ID_RE = re.compile(r"^chatcmpl-[0-9a-f]{32}$")


class CompletionFeedback(BaseModel):
    """A reviewer's word on a stored completion: a rating and, optionally, the answer it should have given."""

    rating: Literal["good", "bad"] | None = None
    corrected: str | None = Field(None, description="the answer it should have given (the assistant's content)")
    note: str | None = None
    at: float = Field(default_factory=time.time)


class StoredCompletion(BaseModel):
    """One stored chat completion at completions/<id>.json: the request's messages (and tools), the answer, the
    model as sent and the version that answered, usage, metadata; metadata and feedback changed by
    compare-and-swap."""

    id: str = Field(pattern=STORED_COMPLETION_ID_RE.pattern)
    created: float = Field(default_factory=time.time)
    model: str = Field(description="the model as the request named it")
    answered_by: str = Field("", description="the base id or `adapter@version` that answered")
    messages: list[dict[str, Any]] = Field(description="the request's messages, as sent")
    tools: list[dict[str, Any]] | None = None
    response: dict[str, Any] = Field(description="the chat.completion object answered")
    metadata: dict[str, str] = Field(default_factory=dict)
    feedback: CompletionFeedback | None = None


# Projects and their API keys (issue 31): a project is a namespace of the store; a key is kept as its hash only.

DEFAULT_PROJECT = "default"  # today's store layout, and the project of the static keys
PROJECT_ID_RE = re.compile(r"^(?:default|proj_[0-9a-f]{16})$")
KEY_ID_RE = re.compile(r"^key_[0-9a-f]{16}$")
KEY_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
KeyRole = Literal["admin", "inference"]


def check_project_id(value: str) -> str:
    if not isinstance(value, str) or not PROJECT_ID_RE.fullmatch(value):
        raise InvalidName(f"invalid project id {value!r}", param="project_id")
    return value


def new_project_id() -> str:
    return "proj_" + uuid.uuid4().hex[:16]


class ProjectRecord(BaseModel):
    """One project at org/projects/<id>.json; its objects lie under projects/<id>/ (the default one's at the root)."""

    id: str = Field(pattern=PROJECT_ID_RE.pattern)
    name: str = Field(min_length=1, max_length=200)
    created_at: float = Field(default_factory=time.time)
    archived_at: float | None = None


class ApiKeyRecord(BaseModel):
    """One API key at org/keys/<sha256 of the key>.json: never the key itself, so a leaked store holds no usable key.
    `id` is `key_` + the first 16 hex digits of that hash (service/api/auth.key_id), safe to log and show."""

    id: str = Field(pattern=KEY_ID_RE.pattern)
    sha256: str = Field(pattern=KEY_HASH_RE.pattern)
    project: str = Field(pattern=PROJECT_ID_RE.pattern)
    role: KeyRole
    name: str = Field("", max_length=200)
    created_at: float = Field(default_factory=time.time)
    revoked_at: float | None = None
    redacted: str = Field("", description="the key's first and last characters, as OpenAI shows a key")


class KeyIndexEntry(BaseModel):
    """A key's entry in its project's index, org/projects/<project>/keys/<sha256>.json: where its record lies."""

    id: str = Field(pattern=KEY_ID_RE.pattern)
    sha256: str = Field(pattern=KEY_HASH_RE.pattern)


# The audit log: who did what to a project's objects, and how it ended.

# `audit_<ms since the epoch, 13 digits>_<16 hex>`: sorted as strings, entries sort by time (until the year 2286).
AUDIT_ID_RE = re.compile(r"^audit_[0-9]{13}_[0-9a-f]{16}$")


def new_audit_id(at: float) -> str:
    return f"audit_{int(at * 1000):013d}_{uuid.uuid4().hex[:16]}"


def audit_id_time(audit_id: str) -> float:
    """When an entry was made, read from its id alone (retention needs no read of the entry)."""
    return int(audit_id.split("_")[1]) / 1000


class AuditActor(BaseModel):
    """Who acted: a key's public id (never the key itself), its role and project. `key_id` is None for the gateway's
    own work (role `runner`) and on a gateway without keys."""

    key_id: str | None = None
    role: str
    project: str = DEFAULT_PROJECT


class AuditEntry(BaseModel):
    """One action at audit/<project>/<id>.json, written once and never changed: who, when, what, how it ended."""

    id: str = Field(pattern=AUDIT_ID_RE.pattern)
    at: float
    actor: AuditActor
    action: str = Field(description="what was done, e.g. `adapter.delete`, `alias.set`, `file.upload`")
    method: str | None = Field(None, description="the HTTP method; None for an action outside a request")
    route: str | None = Field(None, description="the route's template, e.g. `/v1/files/{file_id}`")
    object_id: str | None = Field(None, description="the object acted on: its id, or name@version")
    params: dict[str, str] = Field(default_factory=dict, description="the route's path parameters")
    detail: dict[str, str] = Field(default_factory=dict, description="what the action adds (an alias's new target)")
    status_code: int | None = Field(None, description="the HTTP status answered")
    error_code: str | None = Field(None, description="the error body's `code` when the action failed")
    outcome: Literal["succeeded", "failed"]
    project: str | None = Field(
        None, description="the project an operator's action (/v1/organization) was on; null for a project's own"
    )
