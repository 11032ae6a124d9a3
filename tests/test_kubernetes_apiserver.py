"""The Kubernetes runner and the chart's RBAC against a real API server with the real Job, garbage-collector and
TTL controllers (tests/kube_control_plane.py). No kubelet runs: a test writes pod status as one would.

Skipped, saying why, where the control plane binaries (../shared/k8s) or etcd are missing; CI has both."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from fastapi.testclient import TestClient
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from adapters.errors import JobForbidden, JobRefused
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import JobRecord, JobSpec, JobStatus
from adapters.store import FileStore
from service.app import create_app
from service.runners.cluster import job_name
from service.runners.kubernetes import KubernetesRunner, build_job
from service.settings import Settings
from tests.gateway_fixtures import ADMIN_KEY, management_settings
from tests.kube_control_plane import ControlPlane, control_plane, play_kubelet, wait_for

CHART = Path(__file__).resolve().parents[1] / "helm" / "skillserve"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ControlPlane]:
    with control_plane() as plane:
        yield plane


@pytest.fixture
def namespace(cluster: ControlPlane) -> str:
    name = cluster.namespace()
    core = k8s.CoreV1Api(cluster.client())
    # Pods need their namespace's default account, which the service-account controller adds shortly after.
    wait_for(lambda: _exists(lambda: core.read_namespaced_service_account("default", name)), "default account")
    return name


def _exists(read: Any) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def make_runner(
    cluster: ControlPlane,
    namespace: str,
    tmp_path: Path,
    template: dict[str, Any],
    token: str | None = None,
    failed_create_grace: float = 0.0,
) -> tuple[KubernetesRunner, Registry]:
    path = tmp_path / "job-template.yaml"
    path.write_text(yaml.safe_dump(template))
    settings = Settings(
        store_uri="s3://skillserve-test/registry",
        k8s_namespace=namespace,
        k8s_job_template=str(path),
        k8s_trainer_image="skillserve:cpu",
    )
    registry = Registry(FileStore(tmp_path / "store"))
    api = cluster.client(token)
    runner = KubernetesRunner(
        settings,
        registry,
        batch_api=k8s.BatchV1Api(api),
        core_api=k8s.CoreV1Api(api),
        poll_seconds=0.2,
        failed_create_grace=failed_create_grace,
    )
    return runner, registry


def queued(registry: Registry, job_id: str | None = None) -> JobRecord:
    spec = JobSpec(
        name="shout",
        base_model="SmolLM2-135M-Instruct",
        base_model_id="SmolLM2-135M-Instruct",
        dataset_uri="datasets/" + "0" * 64 + ".jsonl",
        dataset_sha256="0" * 64,
        dataset_rows=80,
    )
    # As POST /adapters stores it before calling submit: the runner is named, the Job not yet.
    record = JobRecord(spec=spec, runner="kubernetes", **({"id": job_id} if job_id else {}))
    registry.put_job(record)
    return record


def pods_of(core: k8s.CoreV1Api, namespace: str, name: str) -> list[k8s.V1Pod]:
    return list(core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items)


def settled(registry: Registry, job_id: str, runner: KubernetesRunner | None = None) -> JobRecord | None:
    """The record once it has finished (reconciling first when a runner is given), else None."""
    if runner is not None:
        runner.reconcile()
    record = registry.get_job(job_id)
    return record if record.status.finished else None


def test_job_is_accepted_and_the_job_controller_creates_its_pod(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {"resources": {"limits": {"memory": "1Gi"}}})
    record = queued(registry)
    runner.submit(record)
    core = k8s.CoreV1Api(cluster.client())
    (pod,) = wait_for(lambda: pods_of(core, namespace, job_name(record.id)), "the Job controller's pod")
    (container,) = pod.spec.containers
    assert container.command[-1] == f"s3://skillserve-test/registry/jobs/{record.id}.json"
    assert pod.spec.automount_service_account_token is False and pod.spec.security_context.run_as_user == 10001
    assert pod.status.phase == "Pending"  # nothing runs it here
    runner.reconcile()
    stored = registry.get_job(record.id)
    assert (stored.status, stored.runner_ref) == (JobStatus.queued, job_name(record.id))


def test_longest_job_ids_get_distinct_jobs_the_server_accepts(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {})
    first, second = queued(registry, "a" * 63 + "1"), queued(registry, "a" * 63 + "2")  # 64: the longest id
    runner.submit(first)
    runner.submit(second)
    batch = k8s.BatchV1Api(cluster.client())
    names = {job.metadata.name for job in batch.list_namespaced_job(namespace).items}
    assert names == {job_name(first.id), job_name(second.id)} and all(len(n) <= 63 for n in names)
    assert job_name(first.id) != job_name(second.id)
    assert (
        batch.read_namespaced_job(job_name(first.id), namespace).metadata.annotations["skillserve.io/job-id"]
        == first.id
    )


REFUSED_RESOURCES = [
    ({"requests": {"memory": "32Gi"}, "limits": {"memory": "16Gi"}}, "must be less than or equal to memory limit"),
    ({"requests": {"nvidia.com/gpu": "1"}}, "Limit must be set for non overcommitable resources"),
]


@pytest.mark.parametrize(("resources", "server_says"), REFUSED_RESOURCES, ids=["request-above-limit", "gpu-no-limit"])
def test_a_job_the_server_refuses_fails_its_record_with_the_servers_reason(
    cluster: ControlPlane, namespace: str, tmp_path: Path, resources: dict[str, Any], server_says: str
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {"resources": resources})
    record = queued(registry)
    with pytest.raises(JobRefused, match="422 Unprocessable Entity") as refused:
        runner.submit(record)
    assert server_says in str(refused.value) and record.id in str(refused.value)
    stored = registry.get_job(record.id)
    assert stored.status is JobStatus.failed and stored.runner_ref is None
    assert stored.error == refused.value.reason and server_says in stored.error
    assert stored.events[-1].level == "error" and server_says in stored.events[-1].message
    runner.reconcile()  # a failed record is not submitted again
    assert k8s.BatchV1Api(cluster.client()).list_namespaced_job(namespace).items == []


def test_backoff_limit_exceeded_is_recorded_with_the_servers_message(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {"backoffLimit": 0})
    record = queued(registry)
    runner.submit(record)
    core = k8s.CoreV1Api(cluster.client())
    (pod,) = wait_for(lambda: pods_of(core, namespace, job_name(record.id)), "the pod")
    play_kubelet(core, namespace, pod.metadata.name, "Failed", exit_code=1, message="trainer crashed")
    stored = wait_for(lambda: settled(registry, record.id, runner), "the record to fail")
    assert stored.status is JobStatus.failed
    assert "BackoffLimitExceeded: Job has reached the specified backoff limit" in (stored.error or "")


def test_deadline_exceeded_is_seen_by_the_watch_without_being_asked(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {"activeDeadlineSeconds": 2})
    record = queued(registry)
    runner.start()
    try:
        runner.submit(record)
        stored = wait_for(lambda: settled(registry, record.id), "the watch to fail the record")
    finally:
        runner.stop()
    assert "DeadlineExceeded: Job was active longer than specified deadline" in (stored.error or "")
    core = k8s.CoreV1Api(cluster.client())
    wait_for(lambda: not pods_of(core, namespace, job_name(record.id)), "the Job controller to remove the pod")


def test_missing_trainer_account_fails_the_job_with_failed_create_instead_of_queued_forever(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {"serviceAccountName": "skillserve-trainer"})
    record = queued(registry)
    runner.submit(record)
    stored = wait_for(lambda: settled(registry, record.id, runner), "FailedCreate to fail the record")
    assert stored.status is JobStatus.failed
    assert "FailedCreate" in (stored.error or "")
    assert 'serviceaccount "skillserve-trainer" not found' in (stored.error or "")


def test_failed_create_waits_out_its_grace_period(cluster: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """A quota may free up or the account may be on its way: within the grace period the job stays queued."""
    runner, registry = make_runner(
        cluster, namespace, tmp_path, {"serviceAccountName": "not-yet"}, failed_create_grace=3600
    )
    record = queued(registry)
    runner.submit(record)
    core = k8s.CoreV1Api(cluster.client())
    wait_for(lambda: core.list_namespaced_event(namespace, field_selector="reason=FailedCreate").items, "FailedCreate")
    runner.reconcile()
    assert registry.get_job(record.id).status is JobStatus.queued


def test_cancel_deletes_the_job_and_its_pods(cluster: ControlPlane, namespace: str, tmp_path: Path) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {})
    record = queued(registry)
    runner.submit(record)
    core, batch = k8s.CoreV1Api(cluster.client()), k8s.BatchV1Api(cluster.client())
    name = job_name(record.id)
    wait_for(lambda: pods_of(core, namespace, name), "the pod")
    runner.cancel(record.id)
    assert registry.get_job(record.id).status is JobStatus.cancelled
    wait_for(lambda: not _exists(lambda: batch.read_namespaced_job(name, namespace)), "the Job to go")
    wait_for(lambda: not pods_of(core, namespace, name), "the garbage collector to delete its pod")
    runner.cancel(record.id)  # twice is harmless: the Job is already gone
    runner.reconcile()
    assert registry.get_job(record.id).status is JobStatus.cancelled


def test_finished_job_is_cleaned_up_by_ttl_and_the_trainers_verdict_stands(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {"ttlSecondsAfterFinished": 1})
    record = queued(registry)
    runner.submit(record)
    core, batch = k8s.CoreV1Api(cluster.client()), k8s.BatchV1Api(cluster.client())
    name = job_name(record.id)
    (pod,) = wait_for(lambda: pods_of(core, namespace, name), "the pod")
    # The trainer's part: it writes its verdict to the store before exiting 0.
    done = registry.get_job(record.id)
    done.status, done.finished_at = JobStatus.succeeded, time.time()
    registry.put_job(done)
    play_kubelet(core, namespace, pod.metadata.name, "Succeeded", exit_code=0)
    wait_for(lambda: not _exists(lambda: batch.read_namespaced_job(name, namespace)), "the TTL controller")
    wait_for(lambda: not pods_of(core, namespace, name), "the garbage collector to delete the pod")
    runner.reconcile()
    assert registry.get_job(record.id).status is JobStatus.succeeded


def test_a_record_stored_but_never_submitted_gets_its_job_from_the_next_pass(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {})
    record = queued(registry)  # the gateway died between storing the record and submitting it
    runner.start()  # the first pass, as a restarted gateway makes it
    try:
        core = k8s.CoreV1Api(cluster.client())
        wait_for(lambda: pods_of(core, namespace, job_name(record.id)), "the Job controller's pod")
        assert registry.get_job(record.id).runner_ref == job_name(record.id)
    finally:
        runner.stop()
    runner.reconcile()  # found by name from now on: one Job, however many passes
    batch = k8s.BatchV1Api(cluster.client())
    assert [job.metadata.name for job in batch.list_namespaced_job(namespace).items] == [job_name(record.id)]


def test_a_never_submitted_record_the_server_refuses_is_failed_with_the_reason(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    (resources, server_says), _ = REFUSED_RESOURCES
    runner, registry = make_runner(cluster, namespace, tmp_path, {"resources": resources})
    record = queued(registry)
    runner.reconcile()
    stored = registry.get_job(record.id)
    assert stored.status is JobStatus.failed and server_says in (stored.error or "")


def test_a_job_whose_name_was_never_recorded_is_found_and_watched(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {"backoffLimit": 0})
    record = queued(registry)
    # The Job was created, then the write of its name into the record failed.
    batch = k8s.BatchV1Api(cluster.client())
    batch.create_namespaced_job(namespace, build_job(record, runner.settings, runner.template, namespace))
    runner.reconcile()
    assert registry.get_job(record.id).runner_ref == job_name(record.id)
    core = k8s.CoreV1Api(cluster.client())
    (pod,) = wait_for(lambda: pods_of(core, namespace, job_name(record.id)), "the pod")
    play_kubelet(core, namespace, pod.metadata.name, "Failed", exit_code=1)
    stored = wait_for(lambda: settled(registry, record.id, runner), "the record to fail")
    assert "BackoffLimitExceeded" in (stored.error or "")
    assert len(batch.list_namespaced_job(namespace).items) == 1


def forbidden_account(cluster: ControlPlane, namespace: str) -> str:
    """A token for an account that may read, list and delete Jobs but not create them."""
    rbac, core = k8s.RbacAuthorizationV1Api(cluster.client()), k8s.CoreV1Api(cluster.client())
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rules = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "delete"]},
             {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "reader"}, "rules": rules})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    })
    return account_token(cluster, namespace, "reader")


def test_an_account_that_may_not_create_jobs_fails_the_job_naming_the_permission(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    runner, registry = make_runner(cluster, namespace, tmp_path, {}, token=forbidden_account(cluster, namespace))
    record = queued(registry)
    with pytest.raises(JobForbidden) as refused:
        runner.submit(record)
    stored = registry.get_job(record.id)
    assert stored.status is JobStatus.failed and stored.error == refused.value.reason
    assert f"may not create jobs.batch in namespace {namespace}" in stored.error
    # The server's own words name the account, the verb and the resource.
    assert f'User "system:serviceaccount:{namespace}:reader" cannot create resource "jobs" in API group "batch"' in (
        stored.error
    )


# ---------------------------------------------------------------------------------------------
# The gateway's training APIs on a runner the server refuses: a 4xx saying why, the job failed
# ---------------------------------------------------------------------------------------------

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "HI"}]}


@contextmanager
def gateway_on(
    cluster: ControlPlane, namespace: str, root: Path, template: dict[str, Any], token: str | None = None,
    **settings: Any,
) -> Iterator[TestClient]:
    """A management-only gateway whose runner creates Jobs in `namespace` as the admin, or as `token`'s account."""
    path = root / "job-template.yaml"
    path.write_text(yaml.safe_dump(template))
    api = cluster.client(token)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("service.runners.kubernetes.connect_apis", lambda: (k8s.BatchV1Api(api), k8s.CoreV1Api(api)))
        app = create_app(management_settings(
            root, runner="kubernetes", k8s_namespace=namespace, k8s_job_template=str(path), **settings
        ))
        with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            yield client


def test_training_requests_the_server_refuses_get_422_with_its_reason_and_their_jobs_fail_on_both_apis(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    (resources, server_says), _ = REFUSED_RESOURCES
    with gateway_on(cluster, namespace, tmp_path, {"resources": resources}, max_pending_jobs=2) as client:
        data = (json.dumps(ROW) + "\n").encode()
        # More refusals than max_pending_jobs: a failed job is not pending, so none of them is a 429.
        for attempt in range(3):
            reply = client.post(
                "/adapters", data={"name": f"refused-{attempt}", "template": "chatml"},
                files={"dataset": ("d.jsonl", data, "application/jsonl")},
            )
            assert reply.status_code == 422, reply.text
            error = reply.json()["error"]
            assert error["code"] == "job_refused" and error["type"] == "invalid_request_error"
            assert "Kubernetes refused the training Job: 422 Unprocessable Entity" in error["message"]
            assert server_says in error["message"] and "is recorded as failed" in error["message"]
            (job,) = client.get(f"/adapters/refused-{attempt}").json()["jobs"]
            assert job["status"] == "failed" and server_says in job["error"]
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN_KEY, http_client=client, max_retries=0)
        upload = sdk.files.create(file=("rows.jsonl", data), purpose="fine-tune")
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            sdk.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=upload.id)
        body = refused.value.body
        assert isinstance(body, dict) and body["code"] == "job_refused" and server_says in body["message"]
        ftjob = body["message"].split("fine-tuning job ")[1].split(" ")[0]
        job = sdk.fine_tuning.jobs.retrieve(ftjob)
        assert job.status == "failed" and job.error is not None and server_says in job.error.message
        assert job.training_file == upload.id
        assert k8s.BatchV1Api(cluster.client()).list_namespaced_job(namespace).items == []


def test_a_gateway_whose_account_may_not_create_jobs_answers_403_naming_the_permission(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    token = forbidden_account(cluster, namespace)
    with gateway_on(cluster, namespace, tmp_path, {}, token=token) as client:
        reply = client.post(
            "/adapters", data={"name": "forbidden", "template": "chatml"},
            files={"dataset": ("d.jsonl", (json.dumps(ROW) + "\n").encode(), "application/jsonl")},
        )
        assert reply.status_code == 403, reply.text
        error = reply.json()["error"]
        assert error["code"] == "job_forbidden"
        assert f"may not create jobs.batch in namespace {namespace}" in error["message"]
        assert 'cannot create resource "jobs" in API group "batch"' in error["message"]
        (job,) = client.get("/adapters/forbidden").json()["jobs"]
        assert job["status"] == "failed" and "may not create jobs.batch" in job["error"]


# ---------------------------------------------------------------------------------------------
# The chart on the real API server: what it creates is accepted, and its Role is exactly enough
# ---------------------------------------------------------------------------------------------

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) bundles Helm")

# Kinds this v1.20 server does not serve (policy/v1 PDB, autoscaling/v2 HPA, the ServiceMonitor CRD): the offline
# schema checks in tests/test_helm.py cover them.
NOT_SERVED = {("policy/v1", "PodDisruptionBudget"), ("autoscaling/v2", "HorizontalPodAutoscaler")}


def chart_values() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "ci" / "gpu-s3-values.yaml").read_text())
    values["serviceMonitor"] = {"enabled": False}
    return values


def render_chart(namespace: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        files = chart.render(values, name="demo", namespace=namespace, is_install=True)
    return [
        doc
        for path, text in sorted(files.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def install(cluster: ControlPlane, namespace: str, manifests: list[dict[str, Any]]) -> list[str]:
    """Create every manifest the server serves (what `helm install` does), returning the kinds created."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(cluster.client())
    created = []
    for doc in manifests:
        if (doc["apiVersion"], doc["kind"]) in NOT_SERVED:
            continue
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        resource.create(body=doc, namespace=namespace)
        created.append(doc["kind"])
    return created


def account_token(cluster: ControlPlane, namespace: str, account: str) -> str:
    """The account's token, from the Secret the v1.20 token controller creates for it."""
    import base64

    core = k8s.CoreV1Api(cluster.client())

    def token() -> str | None:
        sa = core.read_namespaced_service_account(account, namespace)
        for ref in sa.secrets or []:
            secret = core.read_namespaced_secret(ref.name, namespace)
            if secret.data and secret.data.get("token"):
                return base64.b64decode(secret.data["token"]).decode()
        return None

    return str(wait_for(token, f"a token for {account}"))


def can_i(api: Any, namespace: str, verb: str, resource: str, group: str = "", ns: str | None = None) -> bool:
    """`kubectl auth can-i VERB RESOURCE` as whoever `api` authenticates as."""
    review = k8s.V1SelfSubjectAccessReview(
        spec=k8s.V1SelfSubjectAccessReviewSpec(
            resource_attributes=k8s.V1ResourceAttributes(
                namespace=ns or namespace, verb=verb, resource=resource, group=group
            )
        )
    )
    return bool(k8s.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed)


@pytest.fixture
def installed(cluster: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    manifests = render_chart(namespace, chart_values())
    kinds = install(cluster, namespace, manifests)
    assert {"Deployment", "Role", "RoleBinding", "ServiceAccount", "ConfigMap", "Service", "Ingress"} <= set(kinds)
    return manifests


def test_chart_installs_on_the_server_and_its_role_is_exactly_what_the_runner_uses(
    cluster: ControlPlane, namespace: str, installed: list[dict[str, Any]], tmp_path: Path
) -> None:
    token = account_token(cluster, namespace, "demo-skillserve")
    gateway = cluster.client(token)

    allowed = [("create", "jobs", "batch"), ("get", "jobs", "batch"), ("list", "jobs", "batch")]
    allowed += [("delete", "jobs", "batch"), ("list", "events", "")]
    for verb, resource, group in allowed:
        assert can_i(gateway, namespace, verb, resource, group), f"cannot {verb} {resource}"
    denied = [("watch", "jobs", "batch"), ("update", "jobs", "batch"), ("patch", "jobs", "batch")]
    denied += [("create", "pods", ""), ("list", "pods", ""), ("get", "secrets", ""), ("list", "secrets", "")]
    denied += [("create", "rolebindings", "rbac.authorization.k8s.io"), ("get", "configmaps", "")]
    for verb, resource, group in denied:
        assert not can_i(gateway, namespace, verb, resource, group), f"may {verb} {resource}"
    assert not can_i(gateway, namespace, "create", "jobs", "batch", ns="default"), "jobs outside its namespace"

    # Sufficient: the runner, as the gateway's account, with the chart's job template and the trainer account
    # the chart created, gets a pod started; reports a failure; cancels.
    (template_map,) = [d for d in installed if d["metadata"]["name"] == "demo-skillserve-job-template"]
    template = yaml.safe_load(template_map["data"]["job-template.yaml"])
    template.pop("nodeSelector")  # no node has a GPU here, and nothing schedules anyway
    runner, registry = make_runner(cluster, namespace, tmp_path, template, token=token)
    record, doomed = queued(registry), queued(registry)
    runner.submit(record)
    runner.submit(doomed)
    core = k8s.CoreV1Api(cluster.client())
    (pod,) = wait_for(lambda: pods_of(core, namespace, job_name(record.id)), "the trainer pod")
    assert pod.spec.service_account_name == "skillserve-trainer"
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    (doomed_pod,) = wait_for(lambda: pods_of(core, namespace, job_name(doomed.id)), "the second pod")
    # backoffLimit 1 in the CI values: two failed pods end the Job.
    play_kubelet(core, namespace, doomed_pod.metadata.name, "Failed", exit_code=1)
    retry = wait_for(
        lambda: [p for p in pods_of(core, namespace, job_name(doomed.id)) if p.status.phase == "Pending"], "retry"
    )
    play_kubelet(core, namespace, retry[0].metadata.name, "Failed", exit_code=1)
    failed = wait_for(lambda: settled(registry, doomed.id, runner), "BackoffLimitExceeded", timeout=60)
    assert "BackoffLimitExceeded" in (failed.error or "")
    runner.cancel(record.id)
    assert registry.get_job(record.id).status is JobStatus.cancelled


def test_chart_values_the_server_would_refuse_fail_at_render(namespace: str) -> None:
    values = chart_values()
    values["resources"]["requests"]["memory"] = "128Gi"  # above the 64Gi limit
    with pytest.raises(helm.HelmError, match=r"resources.requests.memory \(128Gi\) is above"):
        render_chart(namespace, values)
