"""The Kubernetes runner: the Jobs it builds and the calls it makes, against a stand-in for the API server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from adapters.errors import JobForbidden, JobRefused
from adapters.registry import Registry
from adapters.schema import JobRecord, JobSpec, JobStatus
from adapters.store import FileStore
from service.runners.cluster import KubernetesRunnerError, job_name, load_job_template
from service.runners.kubernetes import KubernetesRunner, build_job
from service.settings import Settings

K8S_VERSION = "1.30.0"


class FakeBatchV1Api:
    """TEST DOUBLE standing in for the Kubernetes API server (batch/v1 Jobs), which cannot exist here.

    It keeps created Jobs in memory, records every call, answers the four calls the runner makes with the
    client library's own V1Job/V1JobList objects, and lets a test play the Job controller (fail, complete).
    """

    def __init__(self) -> None:
        self.jobs: dict[str, k8s.V1Job] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse_create: ApiException | None = None

    def create_namespaced_job(self, namespace: str, body: k8s.V1Job) -> k8s.V1Job:
        self.calls.append(("create_namespaced_job", {"namespace": namespace, "body": body}))
        if self.refuse_create:
            raise self.refuse_create
        if body.metadata.name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        body.status = k8s.V1JobStatus(active=1)
        self.jobs[body.metadata.name] = body
        return body

    def list_namespaced_job(self, namespace: str, label_selector: str = "") -> k8s.V1JobList:
        self.calls.append(("list_namespaced_job", {"namespace": namespace, "label_selector": label_selector}))
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        items = [
            job
            for job in self.jobs.values()
            if job.metadata.namespace == namespace
            and all((job.metadata.labels or {}).get(k) == v for k, v in wanted.items())
        ]
        return k8s.V1JobList(items=items)

    def read_namespaced_job(self, name: str, namespace: str) -> k8s.V1Job:
        self.calls.append(("read_namespaced_job", {"name": name, "namespace": namespace}))
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        return self.jobs[name]

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str | None = None) -> None:
        self.calls.append(
            (
                "delete_namespaced_job",
                {"name": name, "namespace": namespace, "propagation_policy": propagation_policy},
            )
        )
        if self.jobs.pop(name, None) is None:
            raise ApiException(status=404, reason="NotFound")

    # What the Job controller would do.
    def fail(self, name: str, reason: str, message: str) -> None:
        condition = k8s.V1JobCondition(type="Failed", status="True", reason=reason, message=message)
        self.jobs[name].status = k8s.V1JobStatus(failed=3, conditions=[condition])

    def complete(self, name: str) -> None:
        condition = k8s.V1JobCondition(type="Complete", status="True")
        self.jobs[name].status = k8s.V1JobStatus(succeeded=1, conditions=[condition])


GPU_TEMPLATE = {
    "image": "registry.example.com/skillserve:0.1.0-gpu",
    "resources": {
        "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": 1},
        "limits": {"nvidia.com/gpu": 1},
    },
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "backoffLimit": 1,
    "activeDeadlineSeconds": 7200,
    "ttlSecondsAfterFinished": 600,
    "s3Secret": {"name": "skillserve-s3", "accessKeyIdKey": "key-id", "secretAccessKeyKey": "secret-key"},
}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(FileStore(tmp_path / "store"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    template = tmp_path / "job-template.yaml"
    template.write_text(yaml.safe_dump(GPU_TEMPLATE))
    return Settings(store_uri="s3://skillserve-test/registry", k8s_namespace="ml", k8s_job_template=str(template))


@pytest.fixture
def api() -> FakeBatchV1Api:
    return FakeBatchV1Api()


@pytest.fixture
def runner(settings: Settings, registry: Registry, api: FakeBatchV1Api) -> KubernetesRunner:
    return KubernetesRunner(settings, registry, batch_api=api, poll_seconds=0.05)


def queued_job(registry: Registry, name: str = "shout", runner: str = "kubernetes") -> JobRecord:
    """A job record as POST /adapters stores it before calling the runner's submit."""
    spec = JobSpec(
        name=name,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        base_model_id="SmolLM2-135M-Instruct",
        dataset_uri="datasets/" + "0" * 64 + ".jsonl",
        dataset_sha256="0" * 64,
        dataset_rows=80,
    )
    record = JobRecord(spec=spec, runner=runner)
    registry.put_job(record)
    return record


def test_submitted_job_is_a_schema_valid_batch_job_with_labels_resources_env_and_security(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.storage:9000")
    record = queued_job(registry)
    runner.submit(record)

    ((call, args),) = api.calls
    assert call == "create_namespaced_job" and args["namespace"] == "ml"
    body = k8s.ApiClient().sanitize_for_serialization(args["body"])
    kubernetes_validate.validate(body, K8S_VERSION, strict=True)

    meta = body["metadata"]
    assert meta["name"] == job_name(record.id)
    assert meta["labels"]["skillserve.io/job-id"] == record.id
    assert meta["labels"]["skillserve.io/adapter"] == "shout"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "skillserve"
    spec = body["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (
        1,
        7200,
        600,
    )
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/skillserve:0.1.0-gpu"
    assert container["command"] == [
        "python",
        "-m",
        "trainer",
        "run",
        f"s3://skillserve-test/registry/jobs/{record.id}.json",
    ]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    env = {item["name"]: item for item in container["env"]}
    assert env["SKILLSERVE_STORE_URI"]["value"] == "s3://skillserve-test/registry"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "skillserve-s3", "key": "key-id"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "skillserve-s3",
        "key": "secret-key",
    }
    assert all("value" not in env[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))

    stored = registry.get_job(record.id)
    assert (stored.runner, stored.runner_ref, stored.status) == (
        "kubernetes",
        job_name(record.id),
        JobStatus.queued,
    )


def test_job_failed_by_kubernetes_is_recorded_failed_with_its_reason(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    record = queued_job(registry)
    runner.submit(record)
    api.fail(job_name(record.id), "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    runner.reconcile()
    stored = registry.get_job(record.id)
    assert stored.status is JobStatus.failed
    assert "BackoffLimitExceeded" in (stored.error or "") and stored.finished_at is not None


def test_trainer_verdict_wins_over_a_later_job_failure(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    record = queued_job(registry)
    runner.submit(record)
    done = registry.get_job(record.id)
    done.status, done.finished_at = JobStatus.succeeded, time.time()
    registry.put_job(done)
    api.fail(job_name(record.id), "DeadlineExceeded", "Job was active longer than specified deadline")
    runner.reconcile()
    assert registry.get_job(record.id).status is JobStatus.succeeded


def test_job_completed_without_a_result_and_vanished_jobs_are_failed(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    silent, vanished = queued_job(registry, "silent"), queued_job(registry, "vanished")
    runner.submit(silent)
    runner.submit(vanished)
    api.complete(job_name(silent.id))
    del api.jobs[job_name(vanished.id)]  # e.g. deleted by hand with kubectl
    runner.reconcile()
    assert "recorded no result" in (registry.get_job(silent.id).error or "")
    assert "no longer exists" in (registry.get_job(vanished.id).error or "")
    assert registry.get_job(vanished.id).status is JobStatus.failed


def test_running_job_is_left_to_the_trainer(runner: KubernetesRunner, registry: Registry) -> None:
    record = queued_job(registry)
    runner.submit(record)
    running = registry.get_job(record.id)
    running.status = JobStatus.running
    registry.put_job(running)
    runner.reconcile()
    assert registry.get_job(record.id).status is JobStatus.running


def test_cancel_deletes_the_job_in_the_background_and_records_cancelled(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    record = queued_job(registry)
    runner.submit(record)
    runner.cancel(record.id)
    assert (
        "delete_namespaced_job",
        {"name": job_name(record.id), "namespace": "ml", "propagation_policy": "Background"},
    ) in api.calls
    assert api.jobs == {}
    assert registry.get_job(record.id).status is JobStatus.cancelled
    runner.cancel(record.id)  # cancelling twice is harmless
    assert registry.get_job(record.id).status is JobStatus.cancelled


def test_watch_thread_reflects_a_failure_without_being_asked(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    record = queued_job(registry)
    runner.start()
    try:
        runner.submit(record)
        api.fail(job_name(record.id), "DeadlineExceeded", "Job was active longer than specified deadline")
        deadline = time.monotonic() + 120  # only a guard against a hang: a loaded machine polls late
        while registry.get_job(record.id).status is not JobStatus.failed and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        runner.stop()
    assert "DeadlineExceeded" in (registry.get_job(record.id).error or "")


def test_a_create_the_gateways_account_may_not_make_fails_the_record_naming_the_permission(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    record = queued_job(registry)
    api.refuse_create = ApiException(status=403, reason="Forbidden")
    with pytest.raises(JobForbidden, match="403 Forbidden") as refused:
        runner.submit(record)
    stored = registry.get_job(record.id)
    assert stored.status is JobStatus.failed and stored.error == refused.value.reason
    assert "may not create jobs.batch in namespace ml" in stored.error and stored.runner_ref is None
    runner.reconcile()  # nothing to resubmit: the record is finished
    assert [name for name, _ in api.calls].count("create_namespaced_job") == 1


def test_an_api_server_that_cannot_be_reached_leaves_the_job_queued_for_the_watch_to_submit(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    first, second = queued_job(registry, "first"), queued_job(registry, "second")
    api.refuse_create = ApiException(status=503, reason="Service Unavailable")
    runner.submit(first)  # no error: the job is queued, as the caller is told
    api.refuse_create = urllib3.exceptions.MaxRetryError(None, "/apis/batch/v1", "Connection refused")  # type: ignore
    runner.submit(second)
    assert [registry.get_job(j.id).status for j in (first, second)] == [JobStatus.queued] * 2
    api.refuse_create = None
    runner.reconcile()
    for job in (first, second):
        stored = registry.get_job(job.id)
        assert (stored.status, stored.runner_ref) == (JobStatus.queued, job_name(job.id))
    assert set(api.jobs) == {job_name(first.id), job_name(second.id)}


def test_a_job_the_api_server_never_takes_is_failed_after_the_grace_period(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    record = queued_job(registry)
    api.refuse_create = ApiException(status=500, reason="Internal Server Error")
    runner.submit(record)
    runner.unreachable_grace = 0.0
    runner.reconcile()
    stored = registry.get_job(record.id)
    assert stored.status is JobStatus.failed
    assert stored.error == "Kubernetes did not take the training Job for 0 s: 500 Internal Server Error"


def test_a_record_stored_but_never_submitted_is_submitted_by_the_next_pass(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    record = queued_job(registry)  # the gateway died between storing the record and submitting it
    runner.reconcile()
    assert list(api.jobs) == [job_name(record.id)]
    assert registry.get_job(record.id).runner_ref == job_name(record.id)
    runner.reconcile()  # found by its name from now on: never created twice
    assert [name for name, _ in api.calls].count("create_namespaced_job") == 1


def test_a_job_whose_name_was_never_recorded_is_found_by_the_name_its_id_gives(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    record = queued_job(registry)
    runner.submit(record)
    # The Job exists, but the write of its name was lost (the store failed, or the gateway died).
    registry.put_job(registry.get_job(record.id).model_copy(update={"runner_ref": None}))
    runner.reconcile()
    assert registry.get_job(record.id).runner_ref == job_name(record.id)
    api.fail(job_name(record.id), "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    runner.reconcile()
    assert "BackoffLimitExceeded" in (registry.get_job(record.id).error or "")
    assert [name for name, _ in api.calls].count("create_namespaced_job") == 1


def test_submitting_a_job_that_already_exists_records_it(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    """Another replica's pass may have created it first: the name is the job's, so it is this job's Job."""
    record = queued_job(registry)
    runner.submit(record)
    runner.submit(record)
    assert registry.get_job(record.id).runner_ref == job_name(record.id) and len(api.jobs) == 1


def test_unknown_template_key_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "template.yaml"
    path.write_text("backofLimit: 3\n")
    with pytest.raises(KubernetesRunnerError, match="backofLimit"):
        load_job_template(str(path))


def test_minimal_job_without_template_is_valid_and_labels_odd_adapter_names(registry: Registry) -> None:
    record = queued_job(registry, "my_skill.v2-")
    body = build_job(record, Settings(store_uri="s3://b-1/p"), {}, "default")
    assert body["metadata"]["labels"]["skillserve.io/adapter"] == "my_skill.v2"
    assert body["metadata"]["annotations"]["skillserve.io/adapter"] == "my_skill.v2-"
    kubernetes_validate.validate(
        k8s.ApiClient().sanitize_for_serialization(k8s.V1Job.from_dict(body)), K8S_VERSION, strict=True
    )


def test_refusal_fails_the_record_with_the_servers_reason(
    runner: KubernetesRunner, registry: Registry, api: FakeBatchV1Api
) -> None:
    refusal = ApiException(status=422, reason="Unprocessable Entity")
    refusal.body = '{"kind":"Status","message":"Job.batch \\"x\\" is invalid: limits: Required value"}'
    api.refuse_create = refusal
    record = queued_job(registry)
    with pytest.raises(JobRefused, match=r'422 Unprocessable Entity: Job.batch "x" is invalid: limits') as refused:
        runner.submit(record)
    assert not isinstance(refused.value, JobForbidden)
    stored = registry.get_job(record.id)
    assert stored.status is JobStatus.failed
    assert stored.error == 'Kubernetes refused the training Job: 422 Unprocessable Entity: Job.batch "x" is ' \
        "invalid: limits: Required value"


def test_job_names_fit_a_label_and_never_collide() -> None:
    short = "0123456789abcdef" * 2
    assert job_name(short) == f"skillserve-train-{short}"
    long_a, long_b = "a" * 63 + "1", "a" * 63 + "2"
    assert len(job_name(long_a)) <= 63 and job_name(long_a) != job_name(long_b)
