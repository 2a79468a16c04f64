"""Render the Helm chart with the real Helm engine (no cluster) and validate every manifest.

Built-in kinds: Kubernetes schemas (kubernetes-validate, strict). RayService: the KubeRay
CRD's openAPIV3Schema from ../shared/k8s (skipped when ../shared is absent). The embedded
Serve config must parse with Ray's own ServeDeploySchema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "modserve"
CRD = ROOT.parent / "shared" / "k8s" / "ray.io_rayservices.yaml"
VALUE_SETS = {
    "default": None,
    "gpu": CHART / "ci" / "gpu-values.yaml",
    "cpu": CHART / "ci" / "cpu-values.yaml",
}


def render(values_file: Path | None) -> list[dict[str, Any]]:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    out = helm.Chart.load(str(CHART)).render(values, name="modserve", namespace="moderation")
    docs = []
    for text in out.values():
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def manifests(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VALUE_SETS[request.param])


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_builtin_kinds_validate_against_kubernetes_schemas(manifests):
    _, docs = manifests
    builtin = [d for d in docs if d["apiVersion"] in ("v1", "policy/v1", "apps/v1")]
    assert {d["kind"] for d in builtin} >= {"Service", "PodDisruptionBudget"}
    for d in builtin:
        kubernetes_validate.validate(d, "1.30", strict=True)
    typo = yaml.safe_load(yaml.safe_dump(by_kind(docs, "Service")[0]))
    typo["spec"]["portz"] = typo["spec"].pop("ports")  # strict mode rejects unknown fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, "1.30", strict=True)


def test_rayservice_validates_against_kuberay_crd(manifests):
    if not CRD.exists():
        pytest.skip("../shared/k8s is absent")
    jsonschema = pytest.importorskip("jsonschema")
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = version["schema"]["openAPIV3Schema"]
    (rs,) = by_kind(manifests[1], "RayService")
    jsonschema.validate(rs, schema)
    broken = yaml.safe_load(yaml.safe_dump(rs))  # the check can fail: a wrong type is caught
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"] = [{"groupName": 3}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_serve_config_parses_with_ray_schema(manifests):
    from ray.serve.schema import ServeDeploySchema

    (rs,) = by_kind(manifests[1], "RayService")
    cfg = ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
    app = cfg.applications[0]
    assert app.import_path == "serving.deployments:build_app"
    from serving.config import RayServeSettings, Settings

    args = dict(app.args)
    RayServeSettings(**args.pop("ray"))  # every knob the chart writes is a real setting
    Settings(**args)


def test_gpu_values_request_gpus_and_autoscale():
    docs = render(VALUE_SETS["gpu"])
    (rs,) = by_kind(docs, "RayService")
    (worker,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    container = worker["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["maxReplicas"] == 8
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["ray"]["num_gpus_per_replica"] == 0.5
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert by_kind(docs, "ServiceMonitor")


def test_cpu_values_request_no_gpus():
    (rs,) = by_kind(render(VALUE_SETS["cpu"]), "RayService")
    (worker,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    resources = worker["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources["limits"]


def test_pods_serve_every_interface(manifests):
    """The server binds 127.0.0.1 by default; in a pod the ingress (HTTP and gRPC) must be
    reachable from the Service, so the chart sets MODSERVE_HOST=0.0.0.0 on every container."""
    _, docs = manifests
    (rs,) = by_kind(docs, "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        for c in pod["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("MODSERVE_HOST") == "0.0.0.0", c["name"]
