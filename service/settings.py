"""Every knob of the gateway, as one typed object read from the environment (prefix SKILLSERVE_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from adapters.limits import Limits
from adapters.models import DEFAULT_MODEL, home


class Settings(BaseSettings):
    """Gateway settings; each field is also the environment variable SKILLSERVE_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="SKILLSERVE_", env_file=None, extra="ignore")

    # Serving
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, description="port to listen on")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="inference keys (JSON list); with no admin or operator keys either = auth off"
    )
    admin_keys: list[SecretStr] = Field(
        default_factory=list, description="admin keys (JSON list): may also train, import and delete"
    )
    operator_keys: list[SecretStr] = Field(
        default_factory=list,
        description="operator keys (JSON list): manage projects and their API keys; admins of the default project",
    )
    key_cache_ttl_s: float = Field(
        5.0, ge=0, description="seconds a replica keeps a stored API key's lookup: a revoked key stops within it"
    )
    log_level: str = Field("info", description="log level")
    shutdown_grace_s: int = Field(10, description="seconds open requests (SSE job streams) get at shutdown")
    max_request_bytes: int = Field(
        64 * 2**20, description="largest request body (413 beyond); keep above max_dataset_bytes"
    )
    max_messages: int = Field(
        512, description="most messages in a chat request, or prompts in a completion request"
    )
    max_inference_request_bytes: int = Field(
        2**20,
        description="largest body of an inference request (/v1/...; 413 beyond): decoded on a worker thread, but the "
        "decode holds the interpreter for its length, so this bounds how long one request holds every other (a full "
        "context is under 200 KB of text)",
    )
    header_timeout_s: float = Field(
        10.0, description="seconds a connection may take to send a request's headers before it is closed"
    )
    keep_alive_timeout_s: float = Field(5.0, description="seconds an idle keep-alive connection stays open")
    metrics_port: int | None = Field(
        None, description="serve /metrics on this port instead (no key; keep it off the Service); null = main port"
    )
    metrics_max_models: int = Field(
        20, description="adapters with a `model` label of their own in per-model metrics; the rest count as other"
    )
    metrics_project_label: bool = Field(
        False, description="add a `project` label (the project's id) to per-model metrics; off: adapters are labelled "
        "by name only, and two projects' adapters of one name share a series"
    )
    public_metrics: bool = Field(
        False, description="with auth on: /metrics on the main port needs no key (it names adapters and jobs)"
    )
    public_docs: bool = Field(
        False, description="with auth on: /docs, /redoc and /openapi.json need no key"
    )

    # Limits (docs/gateway.md#limits): a project's are default_limits overlaid with its entry in project_limits; a
    # key's own (key_limits, by key id) apply on top of its project's.
    default_limits: Limits = Field(
        default_factory=Limits, description="every project's limits unless project_limits says otherwise (JSON; "
        "requests_per_minute, tokens_per_minute, concurrent_jobs, training_tokens_per_day, stored_bytes; null = none)"
    )
    project_limits: dict[str, Limits] = Field(
        default_factory=dict, description="limits of named projects, over default_limits (JSON object by project)"
    )
    key_limits: dict[str, Limits] = Field(
        default_factory=dict, description="per-minute limits of single keys, by key id (`key_...`), on top of their "
        "project's (JSON object)"
    )
    limits_backend: Literal["store", "local"] = Field(
        "store", description="where replicas share per-minute limits: the object store (every replica holds one "
        "limit), or local (this replica alone)"
    )
    limits_claim_share: float = Field(
        0.1, gt=0, le=1, description="part of a per-minute limit a replica claims from the store at a time: smaller "
        "wastes less across replicas, larger writes the store less"
    )
    max_project_queue: int = Field(
        128, ge=1, description="requests one project may have in flight (of max_queue); 429 beyond, for it alone"
    )

    # Storage
    store_uri: str = Field(
        default_factory=lambda: f"file://{home() / 'store'}", description="object store: file://<dir> or s3://bucket/prefix"
    )
    cache_dir: Path = Field(default_factory=lambda: home() / "cache", description="local disk cache for adapters")
    cache_max_bytes: int = Field(10 * 2**30, description="disk cache size before least-recently-used eviction")
    name_cache_entries: int = Field(
        4096, ge=16,
        description="model names (unknown ones too) whose aliases and manifests a replica keeps read; LRU beyond",
    )

    # Engine
    model: str = Field(DEFAULT_MODEL, description="base model: the embedded default, a local directory or a hub id")
    served_model_name: str | None = Field(None, description="id of the base model in the API (default: model's name)")
    dtype: str = Field(
        "auto", description="weights dtype: auto (bfloat16 on GPU; float32 on CPU, see docs/performance.md), float32, "
        "bfloat16, float16"
    )
    max_model_len: int = Field(2048, description="longest prompt + completion, in tokens")
    max_num_seqs: int = Field(64, description="most sequences the engine batches at once")
    max_loras: int = Field(4, description="adapters resident in one batch (vLLM's GPU LoRA slots)")
    max_cpu_loras: int = Field(16, description="adapters kept loaded in host memory (vLLM's CPU LoRA cache)")
    max_lora_rank: int = Field(64, description="largest LoRA rank the engine accepts")
    gpu_memory_utilization: float = Field(
        0.2, description="share of accelerator memory (on CPU: of one NUMA node's memory) vLLM reserves"
    )
    kv_cache_space_gb: int | None = Field(None, description="CPU only: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)")
    tensor_parallel_size: int = Field(1, description="GPUs to shard the model over")
    enforce_eager: bool = Field(True, description="skip CUDA graph capture (faster start, slower decode on GPU)")
    priority_scheduling: bool = Field(
        True, description="vLLM's priority policy: queued eval rows and batch lines start after queued live requests"
    )
    max_queue: int = Field(256, description="requests waiting or running before new ones get 429")
    engine_stall_seconds: float = Field(
        120.0,
        ge=0,
        description="liveness (/health) fails when the engine has not answered a ping between its steps for this "
        "long: a hung engine core or worker never recovers by itself (0: never)",
    )
    # Structured outputs: what one request's grammar may ask for (400 beyond, naming the limit), and the
    # worker processes that validate and compile grammars away from the gateway's memory (see
    # service/engine/grammar_worker.py for why).
    max_grammar_bytes: int = Field(
        64 * 1024, description="largest constraint (JSON schema, regex, grammar, choices) as text, in bytes"
    )
    max_grammar_depth: int = Field(32, description="deepest JSON nesting of a structured-output schema")
    max_grammar_members: int = Field(
        1000, description="most properties, definitions, required names and enum values in one schema (or choices)"
    )
    max_grammar_repeat: int = Field(
        10_000, description="largest repetition bound: minItems/maxItems/minLength/maxLength/..., regex {m,n}"
    )
    max_grammar_repeat_product: int = Field(
        100_000, description="largest product of repetition bounds nested in each other (arrays, regex groups)"
    )
    grammar_workers: int = Field(2, ge=1, description="processes that validate and compile grammars")
    grammar_compile_timeout_s: float = Field(
        5.0, gt=0, description="seconds a grammar may take to compile in a worker (408 beyond)"
    )
    grammar_worker_memory_mb: int = Field(
        1024, ge=0, description="memory a grammar worker may add to its baseline before it dies (0: no cap)"
    )
    load_engine: bool = Field(True, description="start the engine (false: a management-only gateway)")

    # Training
    runner: Literal["local", "kubernetes"] = Field("local", description="where training runs")
    training_enabled: bool = Field(True, description="accept training jobs and run the job runner here")
    train_concurrency: int = Field(1, description="local runner: training processes at once")
    eval_concurrency: int = Field(
        1, ge=1, le=16, description="eval runs: rows in the engine at once, all runs together (live traffic first)"
    )
    batch_concurrency: int = Field(
        1, ge=1, le=16, description="batches: lines in the engine at once, all batches together (live traffic first)"
    )
    store_completions: Literal["request", "always", "never"] = Field(
        "request",
        description="chat completions stored: as each request's `store` asks, every one, or none (`store` ignored)",
    )
    stored_completion_queue: int = Field(
        1000, ge=1, description="stored completions waiting for the store; beyond, new ones are dropped and counted"
    )
    stored_completion_max_age_s: int = Field(
        30 * 86400, ge=0, description="stored completions older than this are deleted (0: no age limit)"
    )
    stored_completion_max_count: int = Field(
        100_000, ge=0, description="most stored completions kept; the oldest beyond are deleted (0: no limit)"
    )
    audit_queue: int = Field(
        1000, ge=1, description="audit entries waiting for the store; beyond, new ones are dropped, counted and logged"
    )
    audit_max_age_s: int = Field(
        365 * 86400, ge=0, description="audit entries older than this are deleted (0: kept forever)"
    )
    train_processes_per_job: int = Field(
        1, ge=1, description="local runner: data-parallel trainer processes per job under torchrun (one per GPU)"
    )
    max_pending_jobs: int = Field(
        32, description="training jobs queued or running (store-wide) before new ones get 429"
    )
    max_dataset_bytes: int = Field(50 * 2**20, description="largest dataset upload")
    max_inline_json_bytes: int = Field(
        2**20,
        description="largest JSON body of POST /adapters (rows inline; 413 beyond): one JSON parse holds the "
        "interpreter for its length, so larger datasets go as a multipart file or through /v1/files",
    )
    max_dataset_rows: int = Field(100_000, description="most rows in one dataset")
    max_dataset_line_bytes: int = Field(
        2**20, description="longest line (one row) of a dataset, refused unread beyond; raise with max_row_tokens"
    )
    max_row_tokens: int = Field(2048, description="longest dataset row, in tokens, after templating")
    max_job_steps: int = Field(10_000, description="most optimizer steps one training job may plan (400 beyond)")
    max_job_tokens: int = Field(
        50_000_000, description="most tokens one training job may plan to train on, all epochs (400 beyond)"
    )
    max_job_seconds: int = Field(
        6 * 3600, description="wall-clock limit of one training job; it is failed, with the reason, when exceeded"
    )
    fine_tune_owner: str = Field(
        "skillserve", description="owner in fine-tuned model ids (ft:<base>:<owner>:<suffix>:<id>) and organization_id"
    )

    # Kubernetes runner
    k8s_namespace: str | None = Field(None, description="namespace for training Jobs (default: the gateway's own)")
    k8s_trainer_image: str = Field("skillserve:cpu", description="image the training Jobs run")
    k8s_job_template: str | None = Field(
        None, description="path to a YAML/JSON file with Job overrides (resources, nodeSelector, tolerations, ...)"
    )
    k8s_poll_seconds: float = Field(
        10.0, description="how often the Kubernetes runner reflects Job status into records"
    )
    k8s_job_kind: Literal["job", "trainjob"] = Field(
        "job",
        description="what the Kubernetes runner submits: a batch/v1 Job, or a Kubeflow Trainer TrainJob (multi-node)",
    )
    k8s_trainjob_runtime: str = Field(
        "torch-distributed", description="trainjob: the ClusterTrainingRuntime the TrainJobs run on"
    )
    k8s_trainjob_nodes: int = Field(
        1, ge=1, description="trainjob: nodes per training job, each with the job template's GPUs"
    )

    @property
    def base_model_id(self) -> str:
        return self.served_model_name or Path(self.model.rstrip("/")).name

    def limits_of(self, project: str) -> Limits:
        """A project's limits: default_limits overlaid with its entry in project_limits."""
        return self.project_limits.get(project, Limits()).over(self.default_limits)
