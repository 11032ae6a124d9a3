"""The Helm chart: lint-clean, renders for the default and a GPU/S3/ingress/HPA values file, and every
manifest validates against the Kubernetes schemas. Helm's own Go engine renders (helm-python-sdk), offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service.runners.cluster import load_job_template
from service.runners.kubernetes import build_job
from service.settings import Settings
from tests import crd_schema

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) bundles Helm; pip install -e '.[dev]'")

CHART = Path(__file__).resolve().parents[1] / "helm" / "skillserve"
GPU_VALUES = yaml.safe_load((CHART / "ci" / "gpu-s3-values.yaml").read_text())
K8S_VERSION = "1.30.0"  # the chart's kubeVersion floor is 1.27; validate against a current-but-conservative one
# Not in the Kubernetes schemas: ServiceMonitor is checked by hand, InferencePool against its vendored CRD (tests/crds).
CRD_KINDS = {"ServiceMonitor", "InferencePool"}
INFERENCE_POOL_CRD = "inference.networking.k8s.io_inferencepools.yaml"
SHARED = {"store": {"uri": "s3://b-1/p"}}  # what more than one replica needs before any claim is looked at


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """What `helm install` would apply: schema-checked values, then every rendered manifest."""
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values or {})
        files = chart.render(values or {}, name="demo", namespace="ml", is_install=True)
    return [
        doc
        for path, text in sorted(files.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.fixture(scope="module")
def default_manifests() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def gpu_manifests() -> list[dict[str, Any]]:
    return render(GPU_VALUES)


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in manifests if doc["kind"] == kind]


@pytest.mark.parametrize("values", [None, GPU_VALUES], ids=["default", "gpu-s3"])
def test_helm_lint_is_clean(values: dict[str, Any] | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace="ml", kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize("fixture", ["default_manifests", "gpu_manifests"])
def test_every_rendered_manifest_validates_against_kubernetes_schemas(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    manifests = request.getfixturevalue(fixture)
    for doc in manifests:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_default_install_is_one_cpu_gateway_with_a_local_store(
    default_manifests: list[dict[str, Any]],
) -> None:
    kinds = sorted(doc["kind"] for doc in default_manifests)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    (deployment,) = by_kind(default_manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # the local runner never calls the API server
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one writer for a file:// store
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    (config,) = by_kind(default_manifests, "ConfigMap")
    assert config["data"]["SKILLSERVE_STORE_URI"] == "file:///var/lib/skillserve/store"


def test_gpu_s3_gateway_deployment(gpu_manifests: list[dict[str, Any]]) -> None:
    (deployment,) = by_kind(gpu_manifests, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns the replica count
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "podAntiAffinity" in pod["affinity"]
    # Slow model loads: the startup probe allows 30 minutes before liveness may restart the pod.
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["terminationGracePeriodSeconds"] >= 60 and container["lifecycle"]["preStop"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "demo-skillserve-cache"
    env = {item["name"]: item for item in container["env"]}
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "SKILLSERVE_API_KEYS",
        "SKILLSERVE_ADMIN_KEYS",
    ):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], name
    assert container["envFrom"] == [{"configMapRef": {"name": "demo-skillserve"}}]


def test_gpu_s3_install_has_ingress_hpa_pdb_and_service_monitor(gpu_manifests: list[dict[str, Any]]) -> None:
    (ingress,) = by_kind(gpu_manifests, "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "demo-skillserve"
    (hpa,) = by_kind(gpu_manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "demo-skillserve",
    }
    assert by_kind(gpu_manifests, "PodDisruptionBudget")
    (monitor,) = by_kind(gpu_manifests, "ServiceMonitor")
    (service,) = by_kind(gpu_manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["endpoints"][0] == {
        "port": "metrics",  # a port of its own, scraped without an API key
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_rbac_grants_only_job_verbs_in_the_release_namespace(gpu_manifests: list[dict[str, Any]]) -> None:
    """What the runner calls, nothing more (tests/test_kubernetes_apiserver.py proves it on a real server)."""
    kinds = {doc["kind"] for doc in gpu_manifests}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    (role,) = by_kind(gpu_manifests, "Role")
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "delete"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    ]
    (binding,) = by_kind(gpu_manifests, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-skillserve", "namespace": "ml"}]
    (deployment,) = by_kind(gpu_manifests, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "demo-skillserve"


def test_rendered_job_template_drives_the_runner_to_a_valid_gpu_job(
    gpu_manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Trainer values travel through the job-template ConfigMap into every Job the gateway creates."""
    (template_map,) = [d for d in by_kind(gpu_manifests, "ConfigMap") if d["metadata"]["name"].endswith("template")]
    path = tmp_path / "job-template.yaml"
    path.write_text(template_map["data"]["job-template.yaml"])
    (config,) = [d for d in by_kind(gpu_manifests, "ConfigMap") if d["metadata"]["name"] == "demo-skillserve"]
    assert config["data"]["SKILLSERVE_K8S_JOB_TEMPLATE"] == f"/etc/skillserve/{path.name}"
    settings = Settings(store_uri=config["data"]["SKILLSERVE_STORE_URI"], k8s_job_template=str(path))

    from adapters.schema import JobRecord, JobSpec

    spec = JobSpec(
        name="shout",
        base_model="m",
        base_model_id="m",
        dataset_uri="datasets/d.jsonl",
        dataset_sha256="0" * 64,
        dataset_rows=8,
    )
    job = build_job(JobRecord(spec=spec), settings, load_job_template(str(path)), "ml")
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    assert (job["spec"]["backoffLimit"], job["spec"]["activeDeadlineSeconds"]) == (1, 14400)
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "skillserve-trainer"
    # ... an account the chart creates (without it the Job controller reports FailedCreate and no pod starts).
    accounts = {d["metadata"]["name"]: d for d in by_kind(gpu_manifests, "ServiceAccount")}
    assert accounts["skillserve-trainer"]["automountServiceAccountToken"] is False
    # The pre-fetched model is mounted read-only in every training pod, at the path the gateway records.
    mounts = {m["name"]: m for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"] == "registry.example.com/skillserve:0.1.0-gpu"
    env = {item["name"]: item for item in container["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "skillserve-s3"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"runner": "docker"}, "runner"),
        ({"gpus": -1}, "gpus"),
        ({"config": {"api_keys": '["sk-plaintext"]'}}, "config"),
        ({"s3": {"accessKey": "AKIA..."}}, "accessKey"),
        ({"store": {"uri": "s3://Bad_Bucket"}}, "uri"),
        ({"trainer": {"backoffLimit": -1}}, "backoffLimit"),
        ({"fullnameOverride": "x" * 51}, "fullnameOverride"),
        ({"trainer": {"serviceAccount": {"name": "Not_A_Name"}}}, "name"),
        ({"runtimeClassName": "NVIDIA Runtime"}, "runtimeClassName"),
        ({"modelCache": {"accessModes": ["ReadManyTimes"]}}, "accessModes"),
    ],
)
def test_bad_values_fail_at_install_time(values: dict[str, Any], complaint: str) -> None:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError, match=complaint):
        chart.validate_schema(values)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"runner": "kubernetes"}, "needs a store the training Jobs can reach"),
        ({"replicaCount": 2}, "needs a shared store"),
        # What the API server would refuse (tests/test_kubernetes_apiserver.py shows it does), refused at render.
        ({"resources": {"requests": {"memory": "32Gi"}}}, r"resources.requests.memory \(32Gi\) is above"),
        ({"resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "2000m"}}}, r"requests.cpu \(4\) is above"),
        ({"trainer": {"resources": {"requests": {"nvidia.com/gpu": 1}}}}, "needs an equal trainer.resources.limits"),
        ({"config": {"tensor_parallel_size": 2}}, "needs at least that many GPUs"),
        (
            {"runner": "kubernetes", "store": {"uri": "s3://b-1/p"}, "modelCache": {"enabled": True}},
            "ReadOnlyMany or ReadWriteMany",
        ),
        # A ReadWriteOnce claim attaches to one node: a second replica elsewhere would never start.
        (
            {**SHARED, "replicaCount": 2, "modelCache": {"enabled": True}},
            r"modelCache with replicaCount=2: .* ReadWriteOnce claim attaches to one node only, so "
            "modelCache.accessModes needs ReadOnlyMany or ReadWriteMany",
        ),
        (
            {**SHARED, "autoscaling": {"enabled": True}, "modelCache": {"enabled": True}},
            r"modelCache with autoscaling.maxReplicas=4: .* needs ReadOnlyMany or ReadWriteMany",
        ),
        (
            {**SHARED, "replicaCount": 3, "cache": {"type": "pvc", "accessModes": ["ReadWriteOncePod"]}},
            r"cache.type=pvc with replicaCount=3: .* a ReadWriteOncePod claim .* cache.accessModes needs ReadWriteMany",
        ),
        (
            {**SHARED, "autoscaling": {"enabled": True}, "cache": {"type": "pvc", "existingClaim": "mine"}},
            r"cache.type=pvc with autoscaling.maxReplicas=4: .* needs ReadWriteMany",
        ),
    ],
)
def test_settings_that_cannot_work_fail_with_a_clear_message(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmError, match=complaint):
        render(values)


def test_claims_shared_by_several_replicas_render_when_they_attach_on_many_nodes() -> None:
    many = {"modelCache": {"enabled": True, "accessModes": ["ReadWriteMany"]},
            "cache": {"type": "pvc", "accessModes": ["ReadWriteMany"]}}
    for replicas in ({"replicaCount": 2}, {"autoscaling": {"enabled": True}}):
        claims = by_kind(render({**SHARED, **replicas, **many}), "PersistentVolumeClaim")
        assert sorted(c["spec"]["accessModes"] for c in claims) == [["ReadWriteMany"], ["ReadWriteMany"]]
    read_only = {"modelCache": {"enabled": True, "accessModes": ["ReadOnlyMany"]}}
    assert by_kind(render({**SHARED, "replicaCount": 2, **read_only}), "PersistentVolumeClaim")
    # One replica may keep the default ReadWriteOnce claims.
    one = render({"modelCache": {"enabled": True}, "cache": {"type": "pvc"}})
    assert [c["spec"]["accessModes"] for c in by_kind(one, "PersistentVolumeClaim")] == [["ReadWriteOnce"]] * 2


def test_quantities_compare_across_units() -> None:
    """A 16384Mi request under a 16Gi limit is fine; 0.5 CPU under 600m too: units are compared, not strings."""
    render({"resources": {"requests": {"memory": "16384Mi", "cpu": 0.5}, "limits": {"memory": "16Gi", "cpu": "600m"}}})


def test_gpus_above_one_shard_the_model_over_them() -> None:
    (config,) = [d for d in render({"gpus": 2}) if d["kind"] == "ConfigMap"]
    assert config["data"]["SKILLSERVE_TENSOR_PARALLEL_SIZE"] == "2"
    (config,) = [d for d in render({"gpus": 4, "config": {"tensor_parallel_size": 2}}) if d["kind"] == "ConfigMap"]
    assert config["data"]["SKILLSERVE_TENSOR_PARALLEL_SIZE"] == "2"  # an explicit setting wins


def test_model_is_prefetched_once_into_a_claim_and_mounted_read_only(gpu_manifests: list[dict[str, Any]]) -> None:
    (deployment,) = by_kind(gpu_manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["command"] == [
        "python",
        "-m",
        "adapters.models",
        "fetch",
        "Qwen/Qwen2.5-7B-Instruct",
        "--dir",
        "/models/Qwen2.5-7B-Instruct",
    ]
    assert {"name": "models", "mountPath": "/models"} in fetch["volumeMounts"]  # only the fetcher writes
    (gateway,) = pod["containers"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in gateway["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "demo-skillserve-models"
    claims = {d["metadata"]["name"]: d for d in by_kind(gpu_manifests, "PersistentVolumeClaim")}
    assert claims["demo-skillserve-models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    (config,) = [d for d in by_kind(gpu_manifests, "ConfigMap") if d["metadata"]["name"] == "demo-skillserve"]
    assert config["data"]["SKILLSERVE_MODEL"] == "/models/Qwen2.5-7B-Instruct"
    assert config["data"]["SKILLSERVE_SERVED_MODEL_NAME"] == "Qwen2.5-7B-Instruct"  # API ids unchanged


def test_pod_extras_reach_the_gateway_pod() -> None:
    values = {
        "nameOverride": "skills",
        "runtimeClassName": "nvidia",
        "extraVolumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
        "extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True}],
        "initContainers": [{"name": "wait", "image": "busybox:1.36", "command": ["true"]}],
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
    }
    manifests = render(values)
    for doc in manifests:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (deployment,) = by_kind(manifests, "Deployment")
    assert deployment["metadata"]["name"] == "demo-skills"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia" and pod["initContainers"][0]["name"] == "wait"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert any(v["name"] == "certs" for v in pod["volumes"])
    assert {"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_long_release_names_still_give_names_the_server_accepts() -> None:
    manifests = render_named("r" * 53)
    for doc in manifests:
        assert len(doc["metadata"]["name"]) <= 63, doc["metadata"]["name"]
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def render_named(release: str) -> list[dict[str, Any]]:
    values = {"runner": "kubernetes", "store": {"uri": "s3://b-1/p"}, "trainer": {"serviceAccount": {"create": True}}}
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name=release, namespace="ml", is_install=True)
    return [
        doc for p, t in sorted(files.items()) if not p.endswith("NOTES.txt") for doc in yaml.safe_load_all(t) if doc
    ]


@pytest.fixture(scope="module")
def pool_manifests() -> list[dict[str, Any]]:
    return render({**GPU_VALUES, "inferencePool": {"enabled": True}})


def test_inference_pool_selects_the_gateway_pods_and_validates_against_its_crd(
    pool_manifests: list[dict[str, Any]],
) -> None:
    (pool,) = by_kind(pool_manifests, "InferencePool")
    crd_schema.validate(pool, INFERENCE_POOL_CRD)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    gateway, picker = sorted(by_kind(pool_manifests, "Deployment"), key=lambda d: d["metadata"]["name"])
    assert picker["metadata"]["name"] == gateway["metadata"]["name"] + "-epp"
    selector = pool["spec"]["selector"]["matchLabels"]
    assert selector == gateway["spec"]["selector"]["matchLabels"]
    assert selector.items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    assert not selector.items() <= picker["spec"]["template"]["metadata"]["labels"].items()  # not the picker itself
    ports = {p["name"]: p["containerPort"] for p in gateway["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert pool["spec"]["targetPorts"] == [{"number": ports["http"]}]
    # The CRD's CEL rules, which a schema validator does not run: a Service reference names its port; ports unique.
    ref = pool["spec"]["endpointPickerRef"]
    assert ref.get("kind", "Service") == "Service" and ref["port"]["number"]
    assert len({p["number"] for p in pool["spec"]["targetPorts"]}) == len(pool["spec"]["targetPorts"])
    (service,) = [s for s in by_kind(pool_manifests, "Service") if s["metadata"]["name"] == ref["name"]]
    assert service["spec"]["ports"][0]["port"] == ref["port"]["number"]
    assert service["spec"]["selector"].items() <= picker["spec"]["template"]["metadata"]["labels"].items()
    assert ref["failureMode"] == "FailOpen"


def test_endpoint_picker_reads_lora_requests_info_from_the_metrics_port(pool_manifests: list[dict[str, Any]]) -> None:
    gateway, picker = sorted(by_kind(pool_manifests, "Deployment"), key=lambda d: d["metadata"]["name"])
    ports = {p["name"]: p["containerPort"] for p in gateway["spec"]["template"]["spec"]["containers"][0]["ports"]}
    (container,) = picker["spec"]["template"]["spec"]["containers"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])
    assert args["lora-info-metric"] == "vllm:lora_requests_info"
    assert int(args["model-server-metrics-port"]) == ports["metrics"] == 9090  # service.metricsPort
    assert args["model-server-metrics-path"] == "/metrics"
    (config,) = [c for c in by_kind(pool_manifests, "ConfigMap") if c["metadata"]["name"].endswith("-epp")]
    (gateway_config,) = [c for c in by_kind(pool_manifests, "ConfigMap") if c["metadata"]["name"] == "demo-skillserve"]
    assert gateway_config["data"]["SKILLSERVE_METRICS_PORT"] == args["model-server-metrics-port"]  # served keyless
    picker_config = yaml.safe_load(config["data"]["epp.yaml"])
    assert picker_config["kind"] == "EndpointPickerConfig"
    assert [p["type"] for p in picker_config["plugins"]] == ["lora-affinity-scorer"]
    assert args["pool-name"] == "demo-skillserve" and args["pool-namespace"] == "ml"
    (role,) = [r for r in by_kind(pool_manifests, "Role") if r["metadata"]["name"].endswith("-epp")]
    assert {(tuple(r["apiGroups"]), tuple(r["resources"])) for r in role["rules"]} == {
        (("",), ("pods",)), (("inference.networking.k8s.io",), ("inferencepools",))
    }
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in role["rules"])
    for doc in pool_manifests:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_inference_pool_crd_check_refuses_what_the_server_would() -> None:
    (pool,) = by_kind(render({"inferencePool": {"enabled": True}}), "InferencePool")
    crd_schema.validate(pool, INFERENCE_POOL_CRD)
    broken = {**pool, "spec": {**pool["spec"], "targetPorts": [{"number": 70000}]}}
    with pytest.raises(jsonschema.ValidationError, match="70000"):
        crd_schema.validate(broken, INFERENCE_POOL_CRD)
    unknown = {**pool, "spec": {**pool["spec"], "targetPortNumber": 8000}}  # the v1alpha2 field
    with pytest.raises(jsonschema.ValidationError, match="targetPortNumber"):
        crd_schema.validate(unknown, INFERENCE_POOL_CRD)
    with pytest.raises(Exception, match="failureMode"):
        render({"inferencePool": {"enabled": True, "endpointPicker": {"failureMode": "Sometimes"}}})


def test_trainjob_kind_lets_the_gateway_manage_trainjobs_and_nothing_more() -> None:
    manifests = render({**GPU_VALUES, "config": {**GPU_VALUES.get("config", {}), "k8s_job_kind": "trainjob"}})
    (role,) = by_kind(manifests, "Role")
    assert role["rules"][-1] == {
        "apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["create", "get", "list", "delete"]
    }
    (config,) = [c for c in by_kind(manifests, "ConfigMap") if c["metadata"]["name"] == "demo-skillserve"]
    assert config["data"]["SKILLSERVE_K8S_JOB_KIND"] == "trainjob"
    (plain_role,) = by_kind(render(GPU_VALUES), "Role")
    assert all("trainer.kubeflow.org" not in rule["apiGroups"] for rule in plain_role["rules"])


def test_limits_values_reach_the_gateway_as_the_settings_it_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"limits": {"default": {"requests_per_minute": 600, "concurrent_jobs": 2},
                         "projects": {"team-b": {"tokens_per_minute": 100000}},
                         "keys": {"key_0123456789abcdef": {"requests_per_minute": 60}}}}  # fmt: skip
    (config,) = by_kind(render(values), "ConfigMap")
    for name, value in config["data"].items():
        if name.endswith("_LIMITS"):
            monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.default_limits.requests_per_minute == 600 and settings.default_limits.concurrent_jobs == 2
    assert settings.project_limits["team-b"].tokens_per_minute == 100000
    assert settings.key_limits["key_0123456789abcdef"].requests_per_minute == 60
    with pytest.raises(Exception, match="requests_per_minut"):
        render({"limits": {"default": {"requests_per_minut": 6}}})  # a misspelt limit fails at install time
