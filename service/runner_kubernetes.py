"""Training as Kubernetes Jobs: one `batch/v1` Job per training request, created by the gateway's account.

The trainer in the Job reads its spec from the object store and writes its progress, result and adapter back
there, so any gateway replica can report on any job. This runner only creates Jobs, reflects what Kubernetes
knows (a Job that failed for good, a Job whose pods cannot even be created, a Job that vanished) into the job
record, and deletes Jobs on cancel. Retries are Kubernetes' business (the Job's backoffLimit), not ours.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from adapters.errors import SkillserveError
from adapters.lifecycle import advance
from adapters.registry import job_uri
from adapters.schema import JobRecord, JobStatus
from service.runner import trainer_command
from service.settings import Settings

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MANAGED_BY = "skillserve"
COMPONENT = "trainer"
JOB_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component={COMPONENT}"
JOB_ID_LABEL = "skillserve.io/job-id"
ADAPTER_LABEL = "skillserve.io/adapter"
TRAINER_UID = 10001  # the image's non-root user (Dockerfile)
CACHE_DIR = "/var/lib/skillserve"
# Not secret, and the trainer needs the same store endpoint the gateway uses (MinIO, Ceph, R2, ...).
PASSTHROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")

# A Job that has had no pod this long while the Job controller reports FailedCreate (a missing service
# account, a quota, an admission webhook) is failed with that reason instead of staying queued forever.
# Not at once: a quota may free up, or the missing account may be on its way.
FAILED_CREATE_GRACE_SECONDS = 120.0
JOB_NAME_PREFIX = "skillserve-train-"
DNS_LABEL_MAX = 63  # Job names become the `job-name` label of their pods, so they are label-sized

# Keys a job template file may hold (Helm writes it from `trainer:` values); anything else is a typo.
TEMPLATE_KEYS = {
    "image": "trainer image (default: the k8s_trainer_image setting)",
    "imagePullPolicy": "IfNotPresent, Always or Never",
    "imagePullSecrets": "list of {name: ...}",
    "resources": "container resources: {requests: ..., limits: ...}, e.g. limits nvidia.com/gpu",
    "nodeSelector": "node labels the trainer pod must match",
    "tolerations": "list of pod tolerations",
    "affinity": "pod affinity",
    "priorityClassName": "priority class of trainer pods",
    "runtimeClassName": "runtime class (e.g. nvidia)",
    "serviceAccountName": "service account of trainer pods (they need no API access)",
    "backoffLimit": "pod retries before the Job fails",
    "activeDeadlineSeconds": "wall-clock limit of the whole Job",
    "ttlSecondsAfterFinished": "seconds before Kubernetes deletes a finished Job",
    "env": "extra container env (list of EnvVar)",
    "envFrom": "extra container envFrom (list of EnvFromSource)",
    "s3Secret": "{name, accessKeyIdKey, secretAccessKeyKey}: the Secret with the store's AWS credentials",
    "cacheVolume": "volume source for the model cache (default: {emptyDir: {}})",
    "extraVolumes": "extra pod volumes (list of Volume), e.g. the chart's pre-fetched models claim",
    "extraVolumeMounts": "extra trainer container mounts (list of VolumeMount)",
    "podLabels": "extra labels on trainer pods",
    "podAnnotations": "annotations on trainer pods",
}


class KubernetesRunnerError(SkillserveError):
    """The Kubernetes runner cannot be configured or the API refused a request."""

    code = "kubernetes_error"


class JobRegistry(Protocol):
    """What the runner needs of adapters.registry.Registry."""

    def get_job(self, job_id: str) -> JobRecord: ...

    def update_job(self, job_id: str, change: Callable[[JobRecord], JobRecord | None]) -> JobRecord | None: ...

    def list_jobs(self) -> list[JobRecord]: ...


def load_job_template(path: str | None) -> dict[str, Any]:
    """Read the Job overrides file (YAML or JSON); unknown keys fail loudly instead of being ignored."""
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise KubernetesRunnerError(f"cannot read Kubernetes job template {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise KubernetesRunnerError(
            f"Kubernetes job template {path} must be a mapping, not {type(data).__name__}"
        )
    unknown = sorted(set(data) - set(TEMPLATE_KEYS))
    if unknown:
        raise KubernetesRunnerError(
            f"unknown key(s) {unknown} in Kubernetes job template {path}; allowed: {sorted(TEMPLATE_KEYS)}"
        )
    return data


def job_name(job_id: str) -> str:
    """The Job's name: a DNS label derived from the job id, so a record always finds its Job.

    Job ids may be 64 characters, more than a label holds; those get a hash of the id instead of a truncation,
    which could give two ids one name."""
    name = JOB_NAME_PREFIX + job_id
    if len(name) <= DNS_LABEL_MAX:
        return name
    return JOB_NAME_PREFIX + hashlib.sha256(job_id.encode()).hexdigest()[:40]


def job_id_label(job_id: str) -> str:
    """The job-id label value: the id itself when it fits a label, else the same hash as the Job's name."""
    return job_id if len(job_id) <= DNS_LABEL_MAX else job_name(job_id).removeprefix(JOB_NAME_PREFIX)


def api_refusal(exc: ApiException) -> str:
    """`422 Unprocessable Entity: <the server's reason>`: the Status message says which field and why."""
    message = ""
    try:
        body = json.loads(exc.body or "")
        message = str(body.get("message") or "") if isinstance(body, dict) else ""
    except (TypeError, ValueError):
        message = str(exc.body or "").strip()[:1000]
    head = f"{exc.status} {exc.reason}"
    return f"{head}: {message}" if message else head


def label_value(text: str) -> str:
    """A label value (<= 63 chars, alphanumeric at both ends) carrying as much of `text` as fits."""
    value = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63]
    return value.strip("._-")


# Extended resources that count accelerators: the trainer runs one process per device under torchrun.
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


def trainer_processes(template: dict[str, Any]) -> int:
    """Trainer processes per pod: the GPUs its resources ask for (limits, which extended resources must set),
    else 1."""
    resources = template.get("resources") or {}
    amounts = {**(resources.get("requests") or {}), **(resources.get("limits") or {})}
    return max([int(str(amounts[name])) for name in GPU_RESOURCES if name in amounts] or [1])


def _quantities(resources: dict[str, Any]) -> dict[str, Any]:
    # Quantities are strings in the API (values files often say `nvidia.com/gpu: 1`).
    return {
        section: {name: str(amount) for name, amount in (amounts or {}).items()}
        for section, amounts in resources.items()
    }


def build_job(
    record: JobRecord, settings: Settings, template: dict[str, Any], namespace: str
) -> dict[str, Any]:
    """The `batch/v1` Job manifest that trains `record`, as a plain dict (what the API server receives)."""
    name = job_name(record.id)
    labels = {
        "app.kubernetes.io/name": "skillserve",
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_ID_LABEL: job_id_label(record.id),
        ADAPTER_LABEL: label_value(record.spec.name),
    }
    annotations = {
        "skillserve.io/adapter": record.spec.name,
        "skillserve.io/version": record.spec.version,
        "skillserve.io/job-id": record.id,
    }

    env: list[dict[str, Any]] = [
        {"name": "SKILLSERVE_STORE_URI", "value": settings.store_uri},
        {"name": "SKILLSERVE_HOME", "value": CACHE_DIR},
        {"name": "HOME", "value": CACHE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/hf"},
    ]
    env += [{"name": key, "value": os.environ[key]} for key in PASSTHROUGH_ENV if os.environ.get(key)]
    secret = template.get("s3Secret") or {}
    if secret.get("name"):
        for var, key_field in (
            ("AWS_ACCESS_KEY_ID", "accessKeyIdKey"),
            ("AWS_SECRET_ACCESS_KEY", "secretAccessKeyKey"),
        ):
            ref = {"name": secret["name"], "key": secret.get(key_field) or var}
            env.append({"name": var, "valueFrom": {"secretKeyRef": ref}})
    env += list(template.get("env") or [])
    processes = trainer_processes(template)

    container: dict[str, Any] = {
        "name": "trainer",
        "image": template.get("image") or settings.k8s_trainer_image,
        "imagePullPolicy": template.get("imagePullPolicy", "IfNotPresent"),
        # More than one GPU: torchrun with one data-parallel trainer process per GPU (trainer/distributed.py).
        "command": ["python", *trainer_command(processes), job_uri(settings.store_uri, record.id)],
        "env": env,
        "resources": _quantities(template.get("resources") or {}),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # Everything the trainer writes goes to the cache volume or /tmp; the image stays read-only.
        "volumeMounts": [
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            *(template.get("extraVolumeMounts") or []),
        ],
    }
    shm: list[dict[str, Any]] = []
    if processes > 1:
        # NCCL passes tensors between the ranks through /dev/shm; a container's default 64 MiB is too small.
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
        shm.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    if template.get("envFrom"):
        container["envFrom"] = list(template["envFrom"])

    pod_spec: dict[str, Any] = {
        # A failed pod is replaced by the Job controller, counted against backoffLimit.
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # the trainer talks to the store, never to the API server
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "cache", **(template.get("cacheVolume") or {"emptyDir": {}})},
            {"name": "tmp", "emptyDir": {}},
            *shm,
            *(template.get("extraVolumes") or []),
        ],
    }
    for key in (
        "nodeSelector",
        "tolerations",
        "affinity",
        "imagePullSecrets",
        "priorityClassName",
        "runtimeClassName",
        "serviceAccountName",
    ):
        if template.get(key):
            pod_spec[key] = template[key]

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations},
        "spec": {
            "backoffLimit": int(template.get("backoffLimit", 2)),
            # The operator's per-job limit holds whatever the Job template says.
            "activeDeadlineSeconds": min(
                int(template.get("activeDeadlineSeconds", settings.max_job_seconds)), settings.max_job_seconds
            ),
            "ttlSecondsAfterFinished": int(template.get("ttlSecondsAfterFinished", 3600)),
            "template": {
                "metadata": {
                    "labels": {**labels, **(template.get("podLabels") or {})},
                    "annotations": {**annotations, **(template.get("podAnnotations") or {})},
                },
                "spec": pod_spec,
            },
        },
    }


def job_failure(job: k8s.V1Job) -> str | None:
    """The reason a Job failed for good (e.g. 'BackoffLimitExceeded: ...'), or None while it has not."""
    for condition in (job.status.conditions if job.status else None) or []:
        if condition.type in ("Failed", "FailureTarget") and condition.status == "True":
            return f"{condition.reason or 'Failed'}: {condition.message or 'no message'}"
    return None


def job_complete(job: k8s.V1Job) -> bool:
    return any(
        c.type in ("Complete", "SuccessCriteriaMet") and c.status == "True"
        for c in (job.status.conditions if job.status else None) or []
    )


def job_has_pods(job: k8s.V1Job) -> bool:
    """Whether the Job controller ever got a pod created for this Job."""
    status = job.status
    return bool(status and ((status.active or 0) + (status.succeeded or 0) + (status.failed or 0)))


def default_namespace(settings: Settings) -> str:
    """The configured namespace, else the pod's own (in-cluster), else 'default'."""
    if settings.k8s_namespace:
        return settings.k8s_namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def connect_apis() -> tuple[k8s.BatchV1Api, k8s.CoreV1Api]:
    """Batch (Jobs) and core (Events) APIs: in-cluster config (the gateway's service account) first, kubeconfig
    for local use."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise KubernetesRunnerError(
                "runner=kubernetes needs in-cluster credentials or a kubeconfig ($KUBECONFIG, ~/.kube/config)"
            ) from exc
    return k8s.BatchV1Api(), k8s.CoreV1Api()


class ReconcilingRunner:
    """What the cluster runners share: reconcile job records with the cluster once at start, then every
    `poll_seconds` on a thread of their own; a failure goes through the transition table. Subclasses say
    how to reconcile (`reconcile`) and how to read one of their objects by name (`_read`)."""

    name: str
    thread_name: str
    registry: JobRegistry
    poll_seconds: float
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None

    def reconcile(self) -> None:
        raise NotImplementedError

    def _record_ref(self, record: JobRecord) -> JobRecord:
        """After submit, the record names its runner and cluster object: through `update_job`, since the
        trainer may already be writing to it."""
        return record.model_copy(update={"runner": self.name, "runner_ref": job_name(record.id)})

    def _read(self, name: str) -> Any:
        raise NotImplementedError

    def start(self) -> None:
        """Reconcile once (objects that failed or vanished while no gateway watched), then keep watching."""
        self.reconcile()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(self._stop,), name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _exists(self, name: str) -> bool:
        try:
            self._read(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _fail(self, job_id: str, error: str) -> None:
        # The transition table keeps the trainer's own verdict over ours.
        if advance(self.registry, job_id, JobStatus.failed, error=error) is not None:
            log.info("job %s failed: %s", job_id, error)

    def _watch(self, stop: threading.Event) -> None:
        # Polling a labelled list is enough at training time scales and survives API server restarts.
        while not stop.wait(self.poll_seconds):
            try:
                self.reconcile()
            except Exception:  # keep watching: one bad pass must not end status reporting
                log.exception("the %s runner's reconcile pass failed", self.name)


class KubernetesRunner(ReconcilingRunner):
    """Runs each training job as a Kubernetes Job and keeps job records in step with the Jobs."""

    name = "kubernetes"
    thread_name = "k8s-job-watch"

    def __init__(
        self,
        settings: Settings,
        registry: JobRegistry,
        batch_api: Any | None = None,
        poll_seconds: float | None = None,
        core_api: Any | None = None,
        failed_create_grace: float = FAILED_CREATE_GRACE_SECONDS,
    ):
        self.settings = settings
        self.registry = registry
        self.template = load_job_template(settings.k8s_job_template)
        self.namespace = default_namespace(settings)
        if batch_api is None:
            batch_api, core_api = connect_apis()
        self.api = batch_api
        # Events only explain a Job without pods; a runner without the core API just cannot say why.
        self.core_api = core_api
        self.failed_create_grace = failed_create_grace
        self.poll_seconds = poll_seconds if poll_seconds is not None else settings.k8s_poll_seconds

    def submit(self, job: JobRecord) -> None:
        """Create the Job, then record its name: the record is the source of truth for any replica."""
        body = k8s.V1Job.from_dict(build_job(job, self.settings, self.template, self.namespace))
        assert body is not None
        try:
            self.api.create_namespaced_job(namespace=self.namespace, body=body)
        except ApiException as exc:
            error = f"Kubernetes refused the training Job for {job.id}: {api_refusal(exc)}"
            raise KubernetesRunnerError(error) from exc
        self.registry.update_job(job.id, self._record_ref)

    def cancel(self, job_id: str) -> None:
        """Delete the Job (its pods go with it) and mark the record cancelled, unless it already finished."""
        record = self.registry.get_job(job_id)
        if record.status.finished:
            return
        try:
            self.api.delete_namespaced_job(
                name=record.runner_ref or job_name(job_id),
                namespace=self.namespace,
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise KubernetesRunnerError(f"cannot delete the Job of {job_id}: {api_refusal(exc)}") from exc
        advance(self.registry, job_id, JobStatus.cancelled, error=record.error or "cancelled")

    def reconcile(self) -> None:
        """One pass: fail unfinished records whose Job failed for good, cannot create its pod, completed
        silently, or vanished."""
        try:
            listed = self.api.list_namespaced_job(namespace=self.namespace, label_selector=JOB_SELECTOR)
        except ApiException as exc:
            log.warning("cannot list training Jobs in %s: %s", self.namespace, api_refusal(exc))
            return
        jobs = {item.metadata.name: item for item in listed.items or [] if item.metadata}
        for record in self.registry.list_jobs():
            if record.runner != self.name or record.status.finished or not record.runner_ref:
                continue
            job = jobs.get(record.runner_ref)
            if job is None:
                if not self._exists(record.runner_ref):  # it may have been created after the list
                    self._fail(record.id, f"Kubernetes Job {record.runner_ref} no longer exists")
            elif reason := job_failure(job):
                self._fail(record.id, f"Kubernetes Job {record.runner_ref} failed: {reason}")
            elif job_complete(job):
                error = f"Kubernetes Job {record.runner_ref} completed but the trainer recorded no result"
                self._fail(record.id, error)
            elif not job_has_pods(job) and (reason := self._failed_create(job)):
                self._fail(record.id, f"Kubernetes Job {record.runner_ref} cannot start its pod: {reason}")

    def _failed_create(self, job: k8s.V1Job) -> str | None:
        """'FailedCreate: <message>' once the Job has gone the grace period without a pod, else None."""
        meta = job.metadata
        created = meta.creation_timestamp if meta else None
        if self.core_api is None or meta is None or created is None:
            return None
        if time.time() - created.timestamp() < self.failed_create_grace:
            return None
        try:
            events = self.core_api.list_namespaced_event(
                namespace=self.namespace,
                field_selector=f"involvedObject.kind=Job,involvedObject.name={meta.name}",
            )
        except ApiException as exc:
            log.warning("cannot list events of Job %s: %s", meta.name, api_refusal(exc))
            return None
        failures = [
            event
            for event in events.items or []
            if event.reason == "FailedCreate" and event.involved_object.uid in (None, meta.uid)
        ]
        if not failures:
            return None
        latest = max(failures, key=lambda e: e.last_timestamp or e.event_time or created)
        return f"FailedCreate: {latest.message or 'no message'}"

    def _read(self, name: str) -> Any:
        return self.api.read_namespaced_job(name=name, namespace=self.namespace)
