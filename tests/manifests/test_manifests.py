"""Render the kustomize base and overlays with ``kubectl kustomize`` and validate every object: built-in kinds with
kubernetes-validate (strict, Kubernetes 1.30), the Spark Operator's SparkApplication with the
CRD schema shipped in manifests/schemas; then check what the Triton service must guarantee.
(The nightly recurring run is made through the KFP API: tests/pipelines/test_submit.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components._image import TRITON_IMAGE

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
BUILDS = {
    "base": MANIFESTS / "base",
    "dev": MANIFESTS / "overlays" / "dev",
    "prod": MANIFESTS / "overlays" / "prod",
}
CRD_SCHEMAS = {
    ("sparkoperator.k8s.io/v1beta2", "SparkApplication"): MANIFESTS / "schemas" / "sparkapplication_v1beta2.json",
}
SPARK_APPLICATION = MANIFESTS / "spark" / "extract-logs.yaml"
KINDS = {
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}


KUBECTL = shutil.which("kubectl")


def render(folder: Path) -> list[dict]:
    """The objects ``kubectl kustomize folder`` builds."""
    if not KUBECTL:
        pytest.skip("needs kubectl: its built-in kustomize renders the manifests")
    built = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def validate(doc: dict) -> None:
    schema_path = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema_path:
        jsonschema.validate(doc, json.loads(schema_path.read_text()))
    else:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module", params=sorted(BUILDS))
def build(request) -> tuple[str, list[dict]]:
    return request.param, render(BUILDS[request.param])


def test_every_object_is_valid(build):
    name, objects = build
    assert {o["kind"] for o in objects} == KINDS
    for doc in objects:
        validate(doc)


def test_validation_rejects_unknown_fields():
    deployment = by_kind(render(BUILDS["base"]), "Deployment")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


def test_triton_deployment(build):
    _, objects = build
    deployment = by_kind(objects, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == TRITON_IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]) and pod["nodeSelector"]
    shm_volumes = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
    assert any(m["mountPath"] == "/dev/shm" and m["name"] in shm_volumes for m in container["volumeMounts"])
    repository = [a for a in container["args"] if a.startswith("--model-repository=")]
    assert len(repository) == 1 and repository[0].startswith("--model-repository=gs://")
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["python3", "/opt/unisup/models_ready.py"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert len(env["UNISUP_READY_MODELS"].split(",")) >= 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    account = pod["serviceAccountName"]
    annotations = {
        a["metadata"]["name"]: a["metadata"].get("annotations", {}) for a in by_kind(objects, "ServiceAccount")
    }
    assert annotations[account]["iam.gke.io/gcp-service-account"].endswith(".iam.gserviceaccount.com")


def test_service_hpa_and_pdb_point_at_the_triton_pods(build):
    _, objects = build
    deployment = by_kind(objects, "Deployment")[0]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = by_kind(objects, "Service")[0]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["port"]: p["name"] for p in service["spec"]["ports"]} == {
        8000: "http",
        8001: "grpc",
        8002: "metrics",
    }
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = by_kind(objects, "PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_runner_rbac_binds_the_runner_account_in_its_namespace(build):
    name, objects = build
    binding = by_kind(objects, "RoleBinding")[0]
    role = by_kind(objects, "Role")[0]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    subject = binding["subjects"][0]
    assert subject["name"] in {a["metadata"]["name"] for a in by_kind(objects, "ServiceAccount")}
    if name != "base":
        assert subject["namespace"] == binding["metadata"]["namespace"]
        assert {o["metadata"]["namespace"] for o in objects} == {binding["metadata"]["namespace"]}


def test_the_runner_reads_only_the_secret_and_config_map_it_needs(build):
    _, objects = build
    rules = by_kind(objects, "Role")[0]["rules"]
    for resource in ("secrets", "configmaps"):
        grants = [r for r in rules if resource in r["resources"] or "*" in r["resources"]]
        assert len(grants) == 1 and grants[0]["verbs"] == ["get"], grants
        assert grants[0]["resourceNames"] in (["mlpipeline-minio-artifact"], ["kfp-launcher"])
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)


def test_overlays_differ_where_they_should():
    dev, prod = render(BUILDS["dev"]), render(BUILDS["prod"])
    assert by_kind(prod, "HorizontalPodAutoscaler")[0]["spec"]["minReplicas"] == 2
    assert by_kind(prod, "PodDisruptionBudget")[0]["spec"] == {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "triton"}},
        "minAvailable": 1,
    }
    repos = {
        name: [
            a
            for a in by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
            if a.startswith("--model-repository")
        ]
        for name, objs in (("dev", dev), ("prod", prod))
    }
    assert repos["dev"] != repos["prod"]


def test_the_spark_driver_may_run_its_executors_and_nothing_cluster_wide(build):
    _, objects = build
    roles = {r["metadata"]["name"]: r for r in by_kind(objects, "Role")}
    driver = {resource for rule in roles["spark-driver"]["rules"] for resource in rule["resources"]}
    assert driver == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    runner = roles["pipeline-runner"]["rules"]
    assert {"apiGroups": ["sparkoperator.k8s.io"], "resources": ["sparkapplications"],
            "verbs": ["create", "get", "list", "watch", "delete"]} in runner  # fmt: skip
    binding = next(b for b in by_kind(objects, "RoleBinding") if b["roleRef"]["name"] == "spark-driver")
    assert binding["subjects"][0]["name"] == "spark"
    assert not [o for o in objects if o["kind"].startswith("Cluster")]


def test_the_spark_application_template_is_valid():
    validate(yaml.safe_load(SPARK_APPLICATION.read_text()))
