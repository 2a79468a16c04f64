"""Render the Helm chart with the real Helm engine (no cluster) and validate every manifest.

Built-in kinds: Kubernetes schemas (kubernetes-validate, strict). RayService: the KubeRay
CRD's openAPIV3Schema from ../shared/k8s (skipped when ../shared is absent). The embedded
Serve config must parse with Ray's own ServeDeploySchema.
"""

from __future__ import annotations

import json
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
    "gateway": CHART / "ci" / "gateway-values.yaml",
}


def render(values_file: Path | None) -> list[dict[str, Any]]:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    out = helm.Chart.load(str(CHART)).render(values, name="modserve", namespace="moderation")
    docs = []
    for text in out.values():
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def render_values(values: dict[str, Any]) -> list[dict[str, Any]]:
    out = helm.Chart.load(str(CHART)).render(values, name="modserve", namespace="moderation")
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


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
    validator = jsonschema.validators.validator_for(schema)(schema)
    (rs,) = by_kind(manifests[1], "RayService")
    validator.validate(rs)
    broken = yaml.safe_load(yaml.safe_dump(rs))  # the check can fail: a wrong type is caught
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"] = [{"groupName": 3}]
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)


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


TOGGLES = {  # every on/off value README documents, each combination rendered
    "gpuWorkers.enabled": [True, False],
    "autoscaler.enabled": [True, False],
    "podDisruptionBudget.enabled": [True, False],
    "serviceMonitor.enabled": [True, False],
    "model.volume.enabled": [True, False],
    "serve.apiKeysSecret": ["", "modserve-keys"],
}


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def test_every_documented_values_combination_renders_valid_manifests():
    import itertools

    from ray.serve.schema import ServeDeploySchema

    crd = None  # one validator (checking the CRD's schema itself takes seconds per call)
    if CRD.exists():
        jsonschema = pytest.importorskip("jsonschema")
        raw = yaml.safe_load(CRD.read_text())
        v1 = next(v for v in raw["spec"]["versions"] if v["name"] == "v1")
        schema = v1["schema"]["openAPIV3Schema"]
        crd = jsonschema.validators.validator_for(schema)(schema)
    keys = list(TOGGLES)
    combos = list(itertools.product(*TOGGLES.values()))
    assert len(combos) == 64
    for combo in combos:
        values = nested(dict(zip(keys, combo, strict=True)))
        docs = helm.Chart.load(str(CHART)).render(values, name="m", namespace="n")
        manifests = [d for text in docs.values() for d in yaml.safe_load_all(text) if d]
        for d in manifests:
            if d["apiVersion"] in ("v1", "policy/v1", "apps/v1"):
                kubernetes_validate.validate(d, "1.30", strict=True)
        (rs,) = by_kind(manifests, "RayService")
        if crd is not None:
            crd.validate(rs)
        ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
        pdbs = {d["metadata"]["name"] for d in by_kind(manifests, "PodDisruptionBudget")}
        if values["podDisruptionBudget"]["enabled"]:
            assert "m-head" in pdbs and ("m-workers" in pdbs) == values["gpuWorkers"]["enabled"]
        else:
            assert not pdbs


def test_pods_run_unprivileged_with_a_read_only_root(manifests):
    _, docs = manifests
    (rs,) = by_kind(docs, "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    for pod in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        spec = pod["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"]
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_head_pod_is_probed_and_has_its_own_disruption_budget(manifests):
    _, docs = manifests
    (rs,) = by_kind(docs, "RayService")
    (head,) = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["livenessProbe"]["httpGet"]["path"] == "/-/healthz"
    assert head["readinessProbe"]["httpGet"]["path"] == "/-/healthz"
    budgets = {d["metadata"]["name"]: d["spec"] for d in by_kind(docs, "PodDisruptionBudget")}
    head_pdb = budgets["modserve-head"]
    assert head_pdb["maxUnavailable"] == 0
    assert head_pdb["selector"]["matchLabels"]["ray.io/node-type"] == "head"


@pytest.mark.parametrize(
    ("values", "needle"),
    [({"servee": {}}, "servee"), ({"serve": {"dtype": "fp8"}}, "dtype"),
     ({"scaling": {"maxReplicas": 0}}, "maxReplicas")],
)  # fmt: skip
def test_values_schema_rejects_typos_and_bad_values(values: dict[str, Any], needle: str):
    with pytest.raises(Exception, match=needle):
        helm.Chart.load(str(CHART)).render(values, name="m", namespace="n")


def test_replica_metrics_are_scraped_from_every_pods_ray_agent():
    docs = render(VALUE_SETS["gpu"])
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    (rs,) = by_kind(docs, "RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        ports = group["template"]["spec"]["containers"][0]["ports"]
        assert {"containerPort": 8080, "name": "metrics"} in ports


def test_grpc_service_targets_only_the_pod_where_grpc_listens():
    """gRPC runs beside the ingress replicas; with serve.ingressOnHead (the default) they need
    a resource only the head advertises, and the gRPC Service selects the head pod only."""
    docs = render(None)
    (rs,) = by_kind(docs, "RayService")
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    ray_args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]["ray"]
    resource = ray_args["ingress_resource"]
    # KubeRay's form: a JSON string of a JSON object, as `ray start --resources` takes it
    assert json.loads(json.loads(head["rayStartParams"]["resources"])) == {resource: 1000}
    assert head["template"]["metadata"]["labels"]["modserve.io/grpc"] == "true"
    for group in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
        assert "modserve.io/grpc" not in group["template"]["metadata"]["labels"]
        assert "resources" not in group["rayStartParams"]
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    grpc = services["modserve-grpc"]["spec"]
    assert grpc["selector"]["modserve.io/grpc"] == "true"
    assert [p["name"] for p in grpc["ports"]] == ["grpc"]
    assert [p["name"] for p in services["modserve"]["spec"]["ports"]] == ["http"]

    off = render_values({"serve": {"ingressOnHead": False}})
    (rs,) = by_kind(off, "RayService")
    assert "ingress_resource" not in yaml.safe_load(rs["spec"]["serveConfigV2"])[
        "applications"][0]["args"]["ray"]  # fmt: skip
    assert "resources" not in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert [s["metadata"]["name"] for s in by_kind(off, "Service")] == ["modserve"]


def test_gateway_files_reach_the_head_only(tmp_path: Path) -> None:
    """The policy ConfigMap holds a policy the server accepts; the head (where the ingress
    replicas run) gets it, the key store's volume and the audit log; workers get neither."""
    from serving.gateway.policy import load_policy

    docs = render(VALUE_SETS["gateway"])
    (cm,) = by_kind(docs, "ConfigMap")
    policy = tmp_path / "policy.yaml"
    policy.write_text(cm["data"]["policy.yaml"])
    assert set(load_policy(policy).projects) == {"prod-moderation", "llm-evals"}
    (rs,) = by_kind(docs, "RayService")
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    assert env["MODSERVE_POLICY_FILE"] == "/etc/modserve/policy.yaml"
    assert env["MODSERVE_KEY_STORE"] == "/var/lib/modserve/keys.db"
    assert env["MODSERVE_AUDIT_LOG"] == "jsonl:/var/lib/modserve/audit.jsonl"
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert mounts["policy"] == "/etc/modserve" and mounts["gateway-state"] == "/var/lib/modserve"
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == cm["metadata"]["name"]
    assert volumes["gateway-state"]["persistentVolumeClaim"]["claimName"] == "modserve-gateway"
    for group in rs["spec"]["rayClusterConfig"].get("workerGroupSpecs", []):
        worker = group["template"]["spec"]
        assert not {e["name"] for e in worker["containers"][0]["env"]} & set(env) - {
            "HF_HUB_OFFLINE", "MODSERVE_HOST", "HOME", "MODSERVE_LOG_LEVEL"
        }  # fmt: skip
        assert "policy" not in {v["name"] for v in worker["volumes"]}
    with pytest.raises(Exception, match=r"needs serve\.ingressOnHead"):
        render_values({"gateway": {"policy": "projects: []"}, "serve": {"ingressOnHead": False}})
