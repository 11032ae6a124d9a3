"""Training as Kubernetes Jobs: one `batch/v1` Job per training request, created by the gateway's account.

The trainer in the Job reads its spec from the object store and writes its progress, result and adapter back
there, so any gateway replica can report on any job. This runner only creates Jobs, reflects what Kubernetes
knows (a Job that failed for good, a Job whose pods cannot even be created, a Job that vanished) into the job
record, and deletes Jobs on cancel. Retries are Kubernetes' business (the Job's backoffLimit), not ours.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from adapters.lifecycle import advance
from adapters.registry import job_uri
from adapters.schema import JobRecord, JobStatus
from service.runners.base import trainer_command, trainer_uri
from service.runners.cluster import (
    COMPONENT,
    FAILED_CREATE_GRACE_SECONDS,
    JOB_SELECTOR,
    MANAGED_BY,
    JobRegistry,
    KubernetesRunnerError,
    ReconcilingRunner,
    api_refusal,
    default_namespace,
    job_id_label,
    job_name,
    label_value,
    load_cluster_config,
    load_job_template,
    trainer_processes,
)
from service.settings import Settings

log = logging.getLogger("skillserve.runner.kubernetes")


JOB_ID_LABEL = "skillserve.io/job-id"
ADAPTER_LABEL = "skillserve.io/adapter"
TRAINER_UID = 10001  # the image's non-root user (Dockerfile)
CACHE_DIR = "/var/lib/skillserve"

# Not secret, and the trainer needs the same store endpoint the gateway uses (MinIO, Ceph, R2, ...).
PASSTHROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def _quantities(resources: dict[str, Any]) -> dict[str, Any]:
    # Quantities are strings in the API (values files often say `nvidia.com/gpu: 1`).
    return {
        section: {name: str(amount) for name, amount in (amounts or {}).items()}
        for section, amounts in resources.items()
    }


def build_job(
    record: JobRecord, settings: Settings, template: dict[str, Any], namespace: str, uri: str | None = None
) -> dict[str, Any]:
    """The `batch/v1` Job manifest that trains `record`, as a plain dict (what the API server receives)."""
    labels, annotations = _labels(record), _annotations(record)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(record.id), "namespace": namespace, "labels": labels, "annotations": annotations},
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
                "spec": _pod_spec(record, settings, template, uri),
            },
        },
    }


def _labels(record: JobRecord) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "skillserve",
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_ID_LABEL: job_id_label(record.id),
        ADAPTER_LABEL: label_value(record.spec.name),
    }


def _annotations(record: JobRecord) -> dict[str, str]:
    return {
        "skillserve.io/adapter": record.spec.name,
        "skillserve.io/version": record.spec.version,
        "skillserve.io/job-id": record.id,
    }


def _env(settings: Settings, template: dict[str, Any]) -> list[dict[str, Any]]:
    """The trainer's environment: where the store and the caches are, the store's endpoint, its credentials from
    the template's Secret, and the template's own env."""
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
    return env + list(template.get("env") or [])


def _container(
    record: JobRecord, settings: Settings, template: dict[str, Any], processes: int, uri: str | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "trainer",
        "image": template.get("image") or settings.k8s_trainer_image,
        "imagePullPolicy": template.get("imagePullPolicy", "IfNotPresent"),
        # More than one GPU: torchrun with one data-parallel trainer process per GPU (trainer/distributed.py).
        "command": ["python", *trainer_command(processes), uri or job_uri(settings.store_uri, record.id)],
        "env": _env(settings, template),
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
    if processes > 1:
        # NCCL passes tensors between the ranks through /dev/shm; a container's default 64 MiB is too small.
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    if template.get("envFrom"):
        container["envFrom"] = list(template["envFrom"])
    return container


# Pod spec fields a job template may set as they are.
POD_KEYS = (
    "nodeSelector", "tolerations", "affinity", "imagePullSecrets", "priorityClassName", "runtimeClassName",
    "serviceAccountName",
)


def _pod_spec(
    record: JobRecord, settings: Settings, template: dict[str, Any], uri: str | None = None
) -> dict[str, Any]:
    processes = trainer_processes(template)
    shm = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}] if processes > 1 else []
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
        "containers": [_container(record, settings, template, processes, uri)],
        "volumes": [
            {"name": "cache", **(template.get("cacheVolume") or {"emptyDir": {}})},
            {"name": "tmp", "emptyDir": {}},
            *shm,
            *(template.get("extraVolumes") or []),
        ],
    }
    return pod_spec | {key: template[key] for key in POD_KEYS if template.get(key)}


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


def connect_apis() -> tuple[k8s.BatchV1Api, k8s.CoreV1Api]:
    """Batch (Jobs) and core (Events) APIs: in-cluster config (the gateway's service account) first, kubeconfig
    for local use."""
    load_cluster_config("runner=kubernetes")
    return k8s.BatchV1Api(), k8s.CoreV1Api()


class KubernetesRunner(ReconcilingRunner):
    """Runs each training job as a Kubernetes Job and keeps job records in step with the Jobs."""

    name = "kubernetes"
    kind = "Job"
    title = "Kubernetes Job"
    resource = "jobs.batch"
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
        self._unreachable = {}
        self.poll_seconds = poll_seconds if poll_seconds is not None else settings.k8s_poll_seconds

    def _create(self, record: JobRecord) -> None:
        body = k8s.V1Job.from_dict(build_job(
            record, self.settings, self.template, self.namespace,
            trainer_uri(self.registry, self.settings.store_uri, record.id),
        ))
        assert body is not None
        self.api.create_namespaced_job(namespace=self.namespace, body=body)

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

    def _list(self) -> dict[str, Any]:
        listed = self.api.list_namespaced_job(namespace=self.namespace, label_selector=JOB_SELECTOR)
        return {str(item.metadata.name): item for item in listed.items or [] if item.metadata}

    def _verdict(self, job: k8s.V1Job, name: str) -> str | None:
        """A Job that failed for good, completed without the trainer's result, or cannot create its pod."""
        if reason := job_failure(job):
            return f"Kubernetes Job {name} failed: {reason}"
        if job_complete(job):
            return f"Kubernetes Job {name} completed but the trainer recorded no result"
        if not job_has_pods(job) and (reason := self._failed_create(job)):
            return f"Kubernetes Job {name} cannot start its pod: {reason}"
        return None

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
