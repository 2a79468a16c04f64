"""``x-request-id`` on every answer, HTTP and gRPC: the client's own if sane, else a new one;
also on errors, and in the error's log line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from serving.rpc.moderation import pb, pb_grpc
from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tiny_repo)
    s.wait_ready()
    yield s
    s.stop()


def test_openai_sdk_sees_the_request_id(server: ServerProcess):
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="x", max_retries=0)
    resp = client.moderations.create(input="hello")
    assert resp._request_id and resp._request_id.startswith("req_")
    mine = client.moderations.create(input="hello", extra_headers={"x-request-id": "abc-123"})
    assert mine._request_id == "abc-123"


def test_errors_carry_it_and_log_it(server: ServerProcess):
    r = httpx.post(
        server.base + "/v1/moderations",
        json={"input": "x", "model": "nope"},
        headers={"x-request-id": "trace-42"},
    )
    assert r.status_code == 404 and r.headers["x-request-id"] == "trace-42"
    assert any("[trace-42]" in line for line in server.output().splitlines())
    assert httpx.get(server.base + "/no/such/route").headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("sent", ["two words", "x" * 129, "newline\\nforged"])
def test_an_unsafe_id_is_replaced(server: ServerProcess, sent: str):
    r = httpx.get(server.base + "/health", headers={"x-request-id": sent})
    assert r.headers["x-request-id"].startswith("req_")


def test_grpc_trailing_metadata(server: ServerProcess):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as ch:
        stub = pb_grpc.ModerationStub(ch)
        _, call = stub.Moderate.with_call(
            pb.ModerateRequest(input=["hi"]), metadata=[("x-request-id", "g-1")], timeout=10
        )
        assert dict(call.trailing_metadata())["x-request-id"] == "g-1"
        _, call = stub.Moderate.with_call(pb.ModerateRequest(input=["hi"]), timeout=10)
        assert dict(call.trailing_metadata())["x-request-id"].startswith("req_")
        with pytest.raises(grpc.RpcError) as e:
            stub.Moderate(
                pb.ModerateRequest(input=["hi"], model="nope"),
                metadata=[("x-request-id", "g-2")],
                timeout=10,
            )
        assert dict(e.value.trailing_metadata())["x-request-id"] == "g-2"


def test_access_log_line_per_request_without_text(server: ServerProcess):
    secret = "a very private sentence"
    r = httpx.post(
        server.base + "/v1/moderations",
        json={"input": [secret, "two"]},
        headers={"x-request-id": "acc-1"},
    )
    assert r.status_code == 200
    lines = [ln for ln in server.output().splitlines() if "modserve.access" in ln and "acc-1" in ln]
    assert len(lines) == 1, lines
    assert "POST /v1/moderations 200" in lines[0] and "model=tiny inputs=2 tokens=" in lines[0]
    assert secret not in server.output()


def test_json_log_format_for_app_and_uvicorn(tiny_repo: Path):
    import json

    s = ServerProcess(tiny_repo, MODSERVE_LOG_FORMAT="json")
    s.wait_ready()
    try:
        httpx.post(s.base + "/v1/moderations", json={"input": "x"}, headers={"x-request-id": "j-1"})
        httpx.post(s.base + "/v1/moderations", json={"input": "x", "model": "nope"})
        records = []
        for line in s.output().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        access = [r for r in records if r.get("request_id") == "j-1"]
        assert access and access[0]["logger"] == "modserve.access"
        assert access[0]["status"] == 200 and access[0]["model"] == "tiny"
        assert access[0]["inputs"] == 1 and access[0]["tokens"] > 0
        assert any(r["logger"].startswith("uvicorn") for r in records)  # one format for all
        assert any(r["logger"] == "serving.api.http" and r["level"] == "INFO" for r in records)
    finally:
        s.stop()
