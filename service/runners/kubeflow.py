"""Training as Kubeflow Trainer `TrainJob`s (trainer.kubeflow.org/v1alpha1): multi-node data-parallel training.

With `SKILLSERVE_K8S_JOB_KIND=trainjob` the Kubernetes runner submits a TrainJob instead of a `batch/v1` Job. The
Kubeflow Trainer controller expands it through a training runtime (default: the `torch-distributed`
ClusterTrainingRuntime) into one pod per node, and sets torchrun's `PET_*` variables (nodes, processes per node,
node rank, master address) in each; the trainer runs under `python -m torch.distributed.run`, which reads them, so
every process joins one data-parallel group and rank 0 alone writes the job record and publishes
(trainer/distributed.py). The pod is the one `build_job` describes (image, env, secrets, volumes, security), carried
over as the TrainJob's trainer and a runtime patch. Status comes back as for Jobs: the TrainJob's `Failed` and
`Complete` conditions, or its disappearance, are reflected into the record unless the trainer has finished it.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes.client.exceptions import ApiException

from adapters.lifecycle import advance
from adapters.schema import JobRecord, JobStatus
from service.runners.base import trainer_uri
from service.runners.cluster import (
    JOB_SELECTOR,
    JobRegistry,
    KubernetesRunnerError,
    ReconcilingRunner,
    api_refusal,
    default_namespace,
    job_name,
    load_cluster_config,
    load_job_template,
    trainer_processes,
)
from service.runners.kubernetes import build_job
from service.settings import Settings

log = logging.getLogger("skillserve.runner.kubeflow")

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
# The replicated job and container names of Kubeflow's torch runtimes (manifests/base/runtimes/torch_distributed.yaml).
RUNTIME_NODE = "node"
PATCH_MANAGER = "skillserve.io/gateway"
# Pod fields a TrainJob's runtime patch may set (the CRD's schema); the rest of the pod comes from the runtime.
PATCHABLE_POD_FIELDS = (
    "affinity", "imagePullSecrets", "nodeSelector", "securityContext", "serviceAccountName", "tolerations", "volumes",
)


def build_trainjob(
    record: JobRecord, settings: Settings, template: dict[str, Any], namespace: str, uri: str | None = None
) -> dict[str, Any]:
    """The TrainJob that trains `record` on `settings.k8s_trainjob_nodes` nodes, each with the GPUs the job
    template asks for (one trainer process per GPU), as a plain dict."""
    job = build_job(record, settings, template, namespace, uri)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    uri = container["command"][-1]
    trainer: dict[str, Any] = {
        "image": container["image"],
        # No --standalone and no counts: torchrun takes nodes, ranks and the rendezvous from the runtime's PET_* env.
        "command": ["python", "-m", "torch.distributed.run", "-m", "trainer", "run", uri],
        "env": container["env"],
        "numNodes": settings.k8s_trainjob_nodes,
        "numProcPerNode": trainer_processes(template),
    }
    if container.get("resources"):
        trainer["resourcesPerNode"] = container["resources"]
    node_pod: dict[str, Any] = {key: pod[key] for key in PATCHABLE_POD_FIELDS if pod.get(key)}
    node_pod["containers"] = [
        {"name": RUNTIME_NODE, "securityContext": container["securityContext"],
         "volumeMounts": container["volumeMounts"]},
    ]
    patch = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {"name": RUNTIME_NODE, "template": {"spec": {"template": {
                            "metadata": job["spec"]["template"]["metadata"],
                            "spec": node_pod,
                        }}}}
                    ]
                }
            }
        },
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": job["metadata"],
        "spec": {
            "runtimeRef": {"name": settings.k8s_trainjob_runtime},
            "activeDeadlineSeconds": job["spec"]["activeDeadlineSeconds"],
            "trainer": trainer,
            "runtimePatches": [patch],
        },
    }


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list((obj.get("status") or {}).get("conditions") or [])


def trainjob_failure(obj: dict[str, Any]) -> str | None:
    """'<reason>: <message>' once the TrainJob's Failed condition is true, else None."""
    for condition in _conditions(obj):
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return f"{condition.get('reason') or 'Failed'}: {condition.get('message') or 'no message'}"
    return None


def trainjob_complete(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Complete" and c.get("status") == "True" for c in _conditions(obj))


def connect_custom_objects() -> Any:
    from kubernetes import client

    load_cluster_config("k8s_job_kind=trainjob")
    return client.CustomObjectsApi()


class KubeflowRunner(ReconcilingRunner):
    """Runs each training job as a Kubeflow Trainer TrainJob and keeps job records in step with them."""

    # Its own name in the records: a Job runner would find no Job for a TrainJob's record and fail it.
    name = "kubeflow"
    kind = title = "TrainJob"
    resource = "trainjobs.trainer.kubeflow.org"
    thread_name = "trainjob-watch"

    def __init__(
        self, settings: Settings, registry: JobRegistry, custom_api: Any | None = None,
        poll_seconds: float | None = None,
    ):
        self.settings = settings
        self.registry = registry
        self.template = load_job_template(settings.k8s_job_template)
        self.namespace = default_namespace(settings)
        self.api = custom_api if custom_api is not None else connect_custom_objects()
        self.poll_seconds = poll_seconds if poll_seconds is not None else settings.k8s_poll_seconds
        self._unreachable = {}

    def _where(self) -> dict[str, str]:
        return {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL}

    def _create(self, record: JobRecord) -> None:
        body = build_trainjob(
            record, self.settings, self.template, self.namespace,
            trainer_uri(self.registry, self.settings.store_uri, record.id),
        )
        self.api.create_namespaced_custom_object(body=body, **self._where())

    def cancel(self, job_id: str) -> None:
        """Delete the TrainJob (its JobSet and pods go with it) and mark the record cancelled."""
        record = self.registry.get_job(job_id)
        if record.status.finished:
            return
        try:
            self.api.delete_namespaced_custom_object(
                name=record.runner_ref or job_name(job_id), propagation_policy="Background", **self._where()
            )
        except ApiException as exc:
            if exc.status != 404:
                raise KubernetesRunnerError(f"cannot delete the TrainJob of {job_id}: {api_refusal(exc)}") from exc
        advance(self.registry, job_id, JobStatus.cancelled, error=record.error or "cancelled")

    def _list(self) -> dict[str, Any]:
        listed = self.api.list_namespaced_custom_object(label_selector=JOB_SELECTOR, **self._where())
        return {item["metadata"]["name"]: item for item in listed.get("items") or []}

    def _verdict(self, obj: dict[str, Any], name: str) -> str | None:
        """A TrainJob that failed, or completed without the trainer's result."""
        if reason := trainjob_failure(obj):
            return f"TrainJob {name} failed: {reason}"
        if trainjob_complete(obj):
            return f"TrainJob {name} completed but the trainer recorded no result"
        return None

    def _read(self, name: str) -> Any:
        return self.api.get_namespaced_custom_object(name=name, **self._where())
