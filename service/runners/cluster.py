"""What the cluster runners (kubernetes.py: batch Jobs, kubeflow.py: Kubeflow Trainer TrainJobs) share: the
ReconcilingRunner that submits a record's object and reconciles records with the cluster, the JobRegistry it reads
records through, the names and labels a record's object carries, and the job template file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, Protocol

import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from adapters.errors import JobForbidden, JobRefused, SkillserveError
from adapters.lifecycle import advance
from adapters.schema import JobRecord, JobStatus
from service.settings import Settings

log = logging.getLogger("skillserve.runner.kubernetes")  # both cluster runners log as the Kubernetes runner

# A Job that has had no pod this long while the Job controller reports FailedCreate (a missing service
# account, a quota, an admission webhook) is failed with that reason instead of staying queued forever.
# Not at once: a quota may free up, or the missing account may be on its way.
FAILED_CREATE_GRACE_SECONDS = 120.0

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MANAGED_BY = "skillserve"
COMPONENT = "trainer"
JOB_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component={COMPONENT}"
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


def default_namespace(settings: Settings) -> str:
    """The configured namespace, else the pod's own (in-cluster), else 'default'."""
    if settings.k8s_namespace:
        return settings.k8s_namespace
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class ReconcilingRunner:
    """What the cluster runners share: submit a record's object (a Job, a TrainJob) under the name `job_name`
    derives from its id, reconcile records with the cluster once at start and then every `poll_seconds` on a
    thread of their own, and write every verdict through the transition table. Subclasses say how to create,
    read and list their objects and what an object says about its job (`_verdict`)."""

    name: str
    kind: str  # what the cluster calls the object: "Job", "TrainJob"
    title: str  # how messages name one: "Kubernetes Job", "TrainJob"
    resource: str  # the RBAC resource the gateway's account must be allowed to create: "jobs.batch", ...
    thread_name: str
    registry: JobRegistry
    namespace: str
    poll_seconds: float
    # How long a record may go unsubmitted because the API server cannot be reached (or answers 5xx/429)
    # before it is failed with the last error.
    unreachable_grace: float = FAILED_CREATE_GRACE_SECONDS
    _stop: threading.Event | None = None
    _thread: threading.Thread | None = None
    _unreachable: dict[str, float]  # job id -> when its create first failed for want of the API server

    def _create(self, record: JobRecord) -> None:
        raise NotImplementedError

    def _read(self, name: str) -> Any:
        raise NotImplementedError

    def _list(self) -> dict[str, Any]:
        """This runner's objects in its namespace, by name (ApiException when they cannot be listed)."""
        raise NotImplementedError

    def _verdict(self, obj: Any, name: str) -> str | None:
        """Why the job of a record whose object is `obj` has failed, or None while it has not."""
        raise NotImplementedError

    def submit(self, job: JobRecord) -> None:
        """Create the object, then record its name: the record is the source of truth for any replica.

        A refusal (the server's validation, RBAC, a missing namespace) fails the record with the server's reason
        and raises JobRefused (JobForbidden for 401/403). An API server that cannot be reached, or answers 5xx or
        429, leaves the record queued: the next reconcile pass submits it (and fails it after
        `unreachable_grace`)."""
        if self._created(job):
            self._record_ref(job.id)

    def _created(self, record: JobRecord) -> bool:
        """Create the record's object: True once it exists, False when the server could not be reached."""
        try:
            self._create(record)
        except ApiException as exc:
            if exc.status == 409:  # already there: an earlier submit, or another replica's reconcile, made it
                return True
            if exc.status in (408, 429) or exc.status >= 500:
                return self._unreachable_for(record, api_refusal(exc))
            self._refused(record, exc)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return self._unreachable_for(record, f"{type(exc).__name__}: {exc}")
        self._unreachable.pop(record.id, None)
        return True

    def _refused(self, record: JobRecord, exc: ApiException) -> NoReturn:
        """Fail the record with the server's refusal and raise it for the API to answer 4xx."""
        if exc.status in (401, 403):
            reason = (
                f"the gateway's Kubernetes account may not create {self.resource} in namespace {self.namespace} "
                f"({api_refusal(exc)}): grant it the verb create on {self.resource} there, as the chart's Role does"
            )
            self._fail(record.id, reason)
            raise JobForbidden(reason, record.id) from exc
        reason = f"Kubernetes refused the training {self.kind}: {api_refusal(exc)}"
        self._fail(record.id, reason)
        raise JobRefused(reason, record.id) from exc

    def _unreachable_for(self, record: JobRecord, error: str) -> bool:
        """Leave the record queued for the next pass, or fail it once the API has failed it for the grace period."""
        since = self._unreachable.setdefault(record.id, time.monotonic())
        waited = time.monotonic() - since
        if waited < self.unreachable_grace:
            log.warning(
                "cannot create the %s of job %s yet (%s); the watch tries again", self.kind, record.id, error
            )
            return False
        self._unreachable.pop(record.id, None)
        self._fail(record.id, f"Kubernetes did not take the training {self.kind} for {waited:.0f} s: {error}")
        return False

    def _record_ref(self, job_id: str) -> None:
        """After submit, the record names its runner and cluster object: through `update_job`, since the
        trainer may already be writing to it."""
        ref = job_name(job_id)

        def name_it(record: JobRecord) -> JobRecord | None:
            if (record.runner, record.runner_ref) == (self.name, ref):
                return None
            return record.model_copy(update={"runner": self.name, "runner_ref": ref})

        self.registry.update_job(job_id, name_it)

    def reconcile(self) -> None:
        """One pass over this runner's unfinished records, each looked up by `runner_ref or job_name(id)`: fail
        those whose object has a verdict or vanished, record the name of an object the record does not name
        yet, and submit a queued record that has no object (stored, but the gateway died before submitting,
        or the API server could not be reached)."""
        try:
            objects = self._list()
        except ApiException as exc:
            log.warning("cannot list %ss in %s: %s", self.kind, self.namespace, api_refusal(exc))
            return
        for record in self.registry.list_jobs():
            if record.runner != self.name or record.status.finished:
                continue
            name = record.runner_ref or job_name(record.id)
            obj = objects.get(name)
            if obj is None:
                obj = self._get(name)  # it may have been created after the list
            if obj is None:
                self._missing(record, name)
                continue
            if record.runner_ref is None:  # the object exists; the write of its name did not happen
                self._record_ref(record.id)
            if reason := self._verdict(obj, name):
                self._fail(record.id, reason)

    def _missing(self, record: JobRecord, name: str) -> None:
        if record.runner_ref or record.status is not JobStatus.queued:
            self._fail(record.id, f"{self.title} {name} no longer exists")
            return
        log.info("job %s is queued with no %s; submitting it", record.id, self.kind)
        with contextlib.suppress(JobRefused):  # the record is failed with the reason, and _fail logged it
            self.submit(record)

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

    def _get(self, name: str) -> Any:
        """The object called `name`, or None if there is none."""
        try:
            return self._read(name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

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


def load_cluster_config(who: str) -> None:
    """The cluster's credentials: in-cluster config (the gateway's service account) first, kubeconfig for local use;
    KubernetesRunnerError naming `who` (the setting that asked for a cluster) when there is neither."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise KubernetesRunnerError(
                f"{who} needs in-cluster credentials or a kubeconfig ($KUBECONFIG, ~/.kube/config)"
            ) from exc
