"""The Kubeflow Trainer runner: TrainJobs valid against the released CRD, and their conditions in the job record."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from adapters.errors import JobForbidden, JobRefused
from adapters.registry import Registry
from adapters.schema import JobStatus
from adapters.store import FileStore
from service.app import build_runner
from service.runners.cluster import job_name
from service.runners.kubeflow import KubeflowRunner, build_trainjob
from service.settings import Settings
from tests import crd_schema
from tests.test_runner_kubernetes import GPU_TEMPLATE, queued_job

TRAINJOB_CRD = "trainer.kubeflow.org_trainjobs.yaml"
PLACE = {"group": "trainer.kubeflow.org", "version": "v1alpha1", "namespace": "ml", "plural": "trainjobs"}


class FakeCustomObjectsApi:
    """TEST DOUBLE standing in for the API server's TrainJob endpoints (no Kubeflow Trainer controller runs here).

    It keeps created objects as the dicts the client sends and receives, records each call, checks the calls are
    addressed to trainjobs in the runner's namespace, and lets a test play the controller by setting conditions."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []

    def _check(self, where: dict[str, Any]) -> None:
        assert {k: where[k] for k in PLACE} == PLACE, where

    def create_namespaced_custom_object(self, body: dict[str, Any], **where: Any) -> dict[str, Any]:
        self._check(where)
        self.calls.append("create")
        name = body["metadata"]["name"]
        if name in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[name] = copy.deepcopy(body)
        return body

    def list_namespaced_custom_object(self, label_selector: str = "", **where: Any) -> dict[str, Any]:
        self._check(where)
        self.calls.append("list")
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        items = [o for o in self.objects.values() if wanted.items() <= o["metadata"]["labels"].items()]
        return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJobList", "items": items}

    def get_namespaced_custom_object(self, name: str, **where: Any) -> dict[str, Any]:
        self._check(where)
        self.calls.append("get")
        if name not in self.objects:
            raise ApiException(status=404, reason="NotFound")
        return self.objects[name]

    def delete_namespaced_custom_object(self, name: str, propagation_policy: str | None = None, **where: Any) -> None:
        self._check(where)
        self.calls.append(f"delete {propagation_policy}")
        if self.objects.pop(name, None) is None:
            raise ApiException(status=404, reason="NotFound")

    # What the Kubeflow Trainer controller would write.
    def condition(self, name: str, type_: str, reason: str, message: str) -> None:
        condition = {"type": type_, "status": "True", "reason": reason, "message": message,
                     "lastTransitionTime": "2026-01-01T00:00:00Z"}
        self.objects[name]["status"] = {"conditions": [condition]}


def gpu_template(gpus: int) -> dict[str, Any]:
    return {**GPU_TEMPLATE, "resources": {"requests": {"nvidia.com/gpu": gpus}, "limits": {"nvidia.com/gpu": gpus}},
            "serviceAccountName": "skillserve-trainer"}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(FileStore(tmp_path / "store"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    template = tmp_path / "job-template.yaml"
    template.write_text(yaml.safe_dump(gpu_template(4)))
    return Settings(
        store_uri="s3://skillserve-test/registry", runner="kubernetes", k8s_namespace="ml",
        k8s_job_template=str(template), k8s_job_kind="trainjob", k8s_trainjob_nodes=2,
    )


@pytest.fixture
def api() -> FakeCustomObjectsApi:
    return FakeCustomObjectsApi()


@pytest.fixture
def runner(settings: Settings, registry: Registry, api: FakeCustomObjectsApi) -> KubeflowRunner:
    return KubeflowRunner(settings, registry, custom_api=api, poll_seconds=0.05)


def test_trainjob_validates_against_the_released_crd_and_runs_torchrun_on_every_node(
    settings: Settings, registry: Registry
) -> None:
    record = queued_job(registry)
    body = build_trainjob(record, settings, gpu_template(4), "ml")
    crd_schema.validate(body, TRAINJOB_CRD)
    spec = body["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed"}
    trainer = spec["trainer"]
    uri = f"s3://skillserve-test/registry/jobs/{record.id}.json"
    # Counts and rendezvous come from the runtime's PET_* variables, so the command carries none.
    assert trainer["command"] == ["python", "-m", "torch.distributed.run", "-m", "trainer", "run", uri]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    env = {e["name"]: e for e in trainer["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "skillserve-s3"
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"]["skillserve.io/job-id"] == record.id
    assert pod["spec"]["serviceAccountName"] == "skillserve-trainer"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {v["name"] for v in pod["spec"]["volumes"]} == {"cache", "tmp", "dshm"}
    (container,) = pod["spec"]["containers"]
    assert container["name"] == "node" and container["securityContext"]["readOnlyRootFilesystem"] is True
    assert body["metadata"]["name"] == job_name(record.id)


def test_crd_check_refuses_what_the_server_would(settings: Settings, registry: Registry) -> None:
    body = build_trainjob(queued_job(registry), settings, gpu_template(1), "ml")
    crd_schema.validate(body, TRAINJOB_CRD)
    pod = body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod["template"]["spec"]["template"]["spec"]["runtimeClassName"] = "nvidia"  # not patchable in a TrainJob
    with pytest.raises(jsonschema.ValidationError, match="runtimeClassName"):
        crd_schema.validate(body, TRAINJOB_CRD)
    del body["spec"]["runtimeRef"]
    with pytest.raises(jsonschema.ValidationError, match="runtimeRef"):
        crd_schema.validate(body, TRAINJOB_CRD)


def test_the_setting_picks_the_trainjob_runner(settings: Settings, registry: Registry, monkeypatch: Any) -> None:
    monkeypatch.setattr("service.runners.kubeflow.connect_custom_objects", FakeCustomObjectsApi)
    assert isinstance(build_runner(settings, registry), KubeflowRunner)


def test_submit_creates_the_trainjob_and_records_it(
    runner: KubeflowRunner, registry: Registry, api: FakeCustomObjectsApi
) -> None:
    record = queued_job(registry)
    runner.submit(record)
    stored = registry.get_job(record.id)
    assert (stored.runner, stored.runner_ref) == ("kubeflow", job_name(record.id))
    assert list(api.objects) == [job_name(record.id)]


def test_a_failed_trainjob_fails_the_record_with_the_controllers_reason(
    runner: KubeflowRunner, registry: Registry, api: FakeCustomObjectsApi
) -> None:
    record = queued_job(registry)
    runner.submit(record)
    runner.reconcile()
    assert registry.get_job(record.id).status == JobStatus.queued  # no condition yet: nothing to say
    api.condition(job_name(record.id), "Failed", "BackoffLimitExceeded", "jobset node failed")
    runner.reconcile()
    stored = registry.get_job(record.id)
    assert stored.status == JobStatus.failed
    assert stored.error == f"TrainJob {job_name(record.id)} failed: BackoffLimitExceeded: jobset node failed"


def test_complete_without_a_result_fails_and_the_trainers_verdict_stands(
    runner: KubeflowRunner, registry: Registry, api: FakeCustomObjectsApi
) -> None:
    silent, done = queued_job(registry, "silent"), queued_job(registry, "done")
    runner.submit(silent)
    runner.submit(done)
    stored = registry.get_job(done.id)
    registry.put_job(stored.model_copy(update={"status": JobStatus.succeeded}))  # as the trainer's rank 0 does
    for job in (silent, done):
        api.condition(job_name(job.id), "Complete", "JobsCompleted", "")
    runner.reconcile()
    assert registry.get_job(silent.id).status == JobStatus.failed
    assert "completed but the trainer recorded no result" in (registry.get_job(silent.id).error or "")
    assert registry.get_job(done.id).status == JobStatus.succeeded


def test_a_vanished_trainjob_fails_and_cancel_deletes(
    runner: KubeflowRunner, registry: Registry, api: FakeCustomObjectsApi
) -> None:
    gone, cancelled = queued_job(registry, "gone"), queued_job(registry, "cancelled")
    runner.submit(gone)
    runner.submit(cancelled)
    del api.objects[job_name(gone.id)]
    runner.reconcile()
    assert registry.get_job(gone.id).error == f"TrainJob {job_name(gone.id)} no longer exists"
    runner.cancel(cancelled.id)
    assert "delete Background" in api.calls and job_name(cancelled.id) not in api.objects
    assert registry.get_job(cancelled.id).status == JobStatus.cancelled


def test_refused_trainjob_fails_the_record_saying_why(
    runner: KubeflowRunner, registry: Registry, api: FakeCustomObjectsApi
) -> None:
    record = queued_job(registry, runner="kubeflow")
    body = '{"kind":"Status","message":"the server could not find the requested resource"}'
    api.create_namespaced_custom_object = _refuse(ApiException(status=404, reason="Not Found"), body)  # type: ignore
    with pytest.raises(JobRefused, match="could not find the requested resource"):
        runner.submit(record)
    stored = registry.get_job(record.id)
    assert stored.status is JobStatus.failed
    assert stored.error == "Kubernetes refused the training TrainJob: 404 Not Found: the server could not find the " \
        "requested resource"


def test_a_trainjob_the_gateway_may_not_create_names_the_permission(
    runner: KubeflowRunner, registry: Registry, api: FakeCustomObjectsApi
) -> None:
    record = queued_job(registry, runner="kubeflow")
    api.create_namespaced_custom_object = _refuse(ApiException(status=403, reason="Forbidden"), "")  # type: ignore
    with pytest.raises(JobForbidden, match="may not create trainjobs.trainer.kubeflow.org in namespace ml"):
        runner.submit(record)
    assert registry.get_job(record.id).status is JobStatus.failed


def test_a_record_never_submitted_or_never_named_is_put_right_by_the_next_pass(
    runner: KubeflowRunner, registry: Registry, api: FakeCustomObjectsApi
) -> None:
    unsubmitted, unnamed = queued_job(registry, "unsubmitted", "kubeflow"), queued_job(registry, "unnamed", "kubeflow")
    runner.submit(unnamed)
    registry.put_job(registry.get_job(unnamed.id).model_copy(update={"runner_ref": None}))  # the name's write lost
    runner.reconcile()
    assert set(api.objects) == {job_name(unsubmitted.id), job_name(unnamed.id)}
    assert [registry.get_job(j.id).runner_ref for j in (unsubmitted, unnamed)] == [
        job_name(unsubmitted.id), job_name(unnamed.id)
    ]
    assert api.calls.count("create") == 2
    api.condition(job_name(unnamed.id), "Failed", "BackoffLimitExceeded", "jobset node failed")
    runner.reconcile()
    assert "BackoffLimitExceeded" in (registry.get_job(unnamed.id).error or "")


def _refuse(exc: ApiException, body: str) -> Any:
    exc.body = body

    def create(**_: Any) -> None:
        raise exc

    return create
