"""The policy gateway against a running `modserve serve` (tiny model): keys made with the
`modserve keys` CLI, real HTTP (the `openai` client included) and gRPC calls, 401 / 403 /
429 with their headers and metadata, quota isolation between projects, project
thresholds, and the audit log with its summary command."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from serving.rpc.moderation import pb, pb_grpc
from tests.helpers import ServerProcess

POLICY = """\
policy_id: gateway-test
projects:
  - id: prod
    models: [tiny]
    thresholds: {violence: 0.0001}   # every input is flagged violence for this project
    quotas: {requests_per_minute: 10000}
  - id: limited
    models: [tiny]
    key_quotas: {requests_per_minute: 3}
  - id: evals
    models: [tiny]
    retain_text: true
  - id: elsewhere
    models: [some-other-model]
"""
STATIC = "static-key"


def _keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Gateway:
    def __init__(self, tmp: Path, tiny_repo: Path) -> None:
        self.policy = tmp / "policy.yaml"
        self.policy.write_text(POLICY)
        self.audit = tmp / "audit.jsonl"
        self.env = {
            **__import__("os").environ,
            "MODSERVE_POLICY_FILE": str(self.policy),
            "MODSERVE_KEY_STORE": str(tmp / "keys.db"),
        }
        self.keys = {
            name: self.create("--project", project, *(a for s in scopes for a in ("--scope", s)))
            for name, project, scopes in [
                ("prod", "prod", ["moderate"]),
                ("prod_kserve", "prod", ["kserve"]),
                ("limited", "limited", ["moderate"]),
                ("limited_grpc", "limited", ["moderate"]),
                ("evals", "evals", ["moderate", "evaluate"]),
                ("elsewhere", "elsewhere", ["moderate"]),
                ("revoked", "prod", ["moderate"]),
                ("admin", "prod", ["admin"]),
            ]
        }
        self.keys["expiring"] = self.create("--project", "prod", "--scope", "moderate",
                                            "--expires", "2s")  # fmt: skip
        self.expiring_made = time.monotonic()
        self.server = ServerProcess(
            tiny_repo,
            MODSERVE_POLICY_FILE=str(self.policy),
            MODSERVE_KEY_STORE=self.env["MODSERVE_KEY_STORE"],
            MODSERVE_KEY_CACHE_S="0",
            MODSERVE_API_KEYS=STATIC,
            MODSERVE_AUDIT_LOG=f"jsonl:{self.audit}",
        )

    def create(self, *args: str) -> str:
        done = _keys(self.env, "create", *args)
        assert done.returncode == 0, done.stderr
        assert "it is not shown again" in done.stderr
        return done.stdout.strip()

    def post(
        self, key: str | None, path: str = "/v1/moderations", **body: object
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.server.base + path, json=body or {"input": "hello there"},
                          headers=headers, timeout=30)  # fmt: skip


@pytest.fixture(scope="module")
def gw(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(tmp_path_factory.mktemp("gateway"), tiny_repo)
    g.server.wait_ready()
    yield g
    g.server.stop()


def _error(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == kind, err
    return err


def test_no_key_or_a_wrong_key_is_401(gw: Gateway) -> None:
    for key in (None, "nope", gw.keys["prod"][:-3] + "abc"):
        _error(gw.post(key), 401, "invalid_request_error")
    assert httpx.get(gw.server.base + "/v1/models").status_code == 401
    assert httpx.get(gw.server.base + "/health").status_code == 200  # open by design


def test_a_scoped_key_works_where_its_scope_allows(gw: Gateway) -> None:
    r = gw.post(gw.keys["prod"], input=["a calm sentence", "another"])
    assert r.status_code == 200, r.text
    assert all(x["categories"]["violence"] for x in r.json()["results"])  # project threshold
    assert r.headers["x-ratelimit-limit-requests"] == "10000"
    assert int(r.headers["x-ratelimit-remaining-requests"]) < 10000
    listed = httpx.get(gw.server.base + "/v1/models",
                       headers={"authorization": f"Bearer {gw.keys['prod']}"})  # fmt: skip
    assert listed.status_code == 200
    infer = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    refused = gw.post(gw.keys["prod"], "/v2/models/tiny/infer", **infer)
    assert refused.status_code == 403 and "'kserve' scope" in refused.json()["error"]  # KServe
    assert gw.post(gw.keys["prod_kserve"], "/v2/models/tiny/infer", **infer).status_code == 200
    assert gw.post(gw.keys["admin"], "/v2/models/tiny/infer", **infer).status_code == 200
    _error(gw.post(gw.keys["prod_kserve"]), 403, "permission_error")
    # the other project's thresholds are the model's: nothing forces violence there
    other = gw.post(gw.keys["evals"], input=["a calm sentence"]).json()["results"][0]
    assert other["categories"]["violence"] == (other["category_scores"]["violence"] >= 0.3)


def test_a_model_the_project_may_not_use_is_403(gw: Gateway) -> None:
    err = _error(gw.post(gw.keys["elsewhere"]), 403, "permission_error")
    assert err["param"] == "model" and "'elsewhere' may not use model 'tiny'" in err["message"]
    client = openai.OpenAI(base_url=gw.server.base + "/v1", api_key=gw.keys["elsewhere"],
                           max_retries=0)  # fmt: skip
    with pytest.raises(openai.PermissionDeniedError):
        client.moderations.create(input="hi")


def test_static_keys_still_work_as_the_default_project(gw: Gateway) -> None:
    r = gw.post(STATIC)
    assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers


def test_a_key_over_quota_gets_429_while_another_project_keeps_going(gw: Gateway) -> None:
    key = gw.keys["limited"]
    for left in ("2", "1", "0"):
        r = gw.post(key)
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == left
    t0 = time.perf_counter()
    r = gw.post(key)
    assert time.perf_counter() - t0 < 1.0
    err = _error(r, 429, "rate_limit_error")
    assert err["code"] == "rate_limit_exceeded" and "requests_per_minute of key:" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 20  # 3 per minute: one more in <= 20 s
    assert r.headers["x-ratelimit-limit-requests"] == "3"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    client = openai.OpenAI(base_url=gw.server.base + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.moderations.create(input="hi")
    for _ in range(5):  # isolation: the other project's key is untouched
        assert gw.post(gw.keys["prod"]).status_code == 200


def test_revoked_and_expired_keys_stop_working(gw: Gateway) -> None:
    key = gw.keys["revoked"]
    assert gw.post(key).status_code == 200
    key_id = key.split("_")[1]
    done = _keys(gw.env, "revoke", key_id)
    assert done.returncode == 0 and "revoked" in done.stdout
    _error(gw.post(key), 401, "invalid_request_error")
    assert _keys(gw.env, "revoke", key_id).returncode == 1
    time.sleep(max(0.0, 2.2 - (time.monotonic() - gw.expiring_made)))
    _error(gw.post(gw.keys["expiring"]), 401, "invalid_request_error")
    listing = _keys(gw.env, "list").stdout
    assert key_id in listing and "revoked" in listing and "expired" in listing
    assert gw.keys["prod"].rsplit("_", 1)[1] not in listing  # never the secret


def test_grpc_goes_through_the_same_checks(gw: Gateway) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{gw.server.grpc_port}") as channel:
        stub = pb_grpc.ModerationStub(channel)

        def moderate(key: str | None) -> pb.ModerateResponse:
            meta = (("authorization", f"Bearer {key}"),) if key else ()
            return stub.Moderate(pb.ModerateRequest(input=["calm words"]), metadata=meta)

        assert moderate(gw.keys["prod"]).results[0].categories["violence"]
        for key, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                          (gw.keys["revoked"], grpc.StatusCode.UNAUTHENTICATED),
                          (gw.keys["expiring"], grpc.StatusCode.UNAUTHENTICATED),
                          (gw.keys["elsewhere"], grpc.StatusCode.PERMISSION_DENIED),
                          (gw.keys["prod_kserve"], grpc.StatusCode.PERMISSION_DENIED)):  # fmt: skip
            with pytest.raises(grpc.RpcError) as e:
                moderate(key)
            assert e.value.code() == code, e.value.details()
        text = kpb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1])
        text.contents.bytes_contents.append(b"x")
        infer = kpb.ModelInferRequest(model_name="tiny", inputs=[text])
        kstub = kpb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            kstub.ModelInfer(infer, metadata=(("authorization", f"Bearer {gw.keys['prod']}"),))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        kserve_key = (("authorization", f"Bearer {gw.keys['prod_kserve']}"),)
        assert kstub.ModelInfer(infer, metadata=kserve_key).outputs
        for _ in range(3):
            moderate(gw.keys["limited_grpc"])
        with pytest.raises(grpc.RpcError) as e:
            moderate(gw.keys["limited_grpc"])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailer = dict(e.value.trailing_metadata())
        assert 1 <= int(trailer["retry-after"]) <= 20
        assert trailer["x-ratelimit-limit-requests"] == "3"
        assert trailer["x-ratelimit-remaining-requests"] == "0"


def test_every_decision_is_audited_without_text_unless_opted_in(gw: Gateway) -> None:
    assert gw.post(gw.keys["evals"], input=["keep this text"]).status_code == 200
    assert gw.post(gw.keys["prod"], input=["never keep this"]).status_code == 200
    _error(gw.post(gw.keys["elsewhere"]), 403, "permission_error")
    _error(gw.post("nope"), 401, "invalid_request_error")
    deadline = time.monotonic() + 10
    while True:  # the writer thread drains asynchronously
        lines = gw.audit.read_text().splitlines() if gw.audit.exists() else []
        records = [json.loads(x) for x in lines]
        reasons = {r["reason"] for r in records}
        if {"forbidden", "unauthorized"} <= reasons or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    text = gw.audit.read_text()
    assert "keep this text" in text and "never keep this" not in text
    assert {"forbidden", "unauthorized", "quota_exceeded"} <= reasons
    served = [r for r in records if r["status"] == 200 and r["inputs"]]
    kept = [r for r in served if r["project_id"] == "evals"]
    assert kept and all("text" in i for r in kept for i in r["inputs"])
    assert "keep this text" in [r["inputs"][0]["text"] for r in kept]
    assert not any("text" in i for r in served if r["project_id"] != "evals" for i in r["inputs"])
    first = kept[0]
    assert first["policy_id"] == "gateway-test" and len(first["policy_version"]) == 12
    assert first["model"] == "tiny" and first["key_id"] == gw.keys["evals"].split("_")[1]
    assert any(r["route"].endswith("/Moderate") for r in records)  # gRPC decisions too
    assert not any(gw.keys["prod"].rsplit("_", 1)[1] in line for line in text.splitlines())
    summary = subprocess.run(
        [sys.executable, "-m", "modserve", "audit", "summary", "--since", "1h",
         "--log", f"jsonl:{gw.audit}", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "prod" in summary.stdout and "quota_exceeded" in summary.stdout


def test_a_bad_policy_file_stops_the_server_naming_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(POLICY.replace("requests_per_minute: 3", "requests_per_minute: -3"))
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", "serve", "--policy-file", str(bad),
         "--key-store", str(tmp_path / "k.db")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{bad}:9: projects.1.key_quotas.requests_per_minute" in done.stderr, done.stderr
