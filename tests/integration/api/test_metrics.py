"""Prometheus metrics a production operator needs: latency per transport with protocol and
status labels (errors too), model labels on queue and tokenization time, process metrics,
and a probe's 503 is not a failure."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from serving.rpc.moderation import pb, pb_grpc
from tests.helpers import unloaded_app_client

pytestmark = pytest.mark.integration


def test_latency_per_transport_status_and_model(tiny_repo: Path):
    from tests.helpers import ServerProcess

    s = ServerProcess(tiny_repo)
    s.wait_ready()
    try:
        httpx.post(s.base + "/v1/moderations", json={"input": "x"})
        httpx.post(s.base + "/v1/moderations", json={"input": "x", "model": "nope"})
        body = {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
        httpx.post(s.base + "/v2/models/tiny/infer", json=body)
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
            pb_grpc.ModerationStub(ch).Moderate(pb.ModerateRequest(input=["x"]), timeout=10)
            with pytest.raises(grpc.RpcError):
                pb_grpc.ModerationStub(ch).Moderate(pb.ModerateRequest(input=[]), timeout=10)
        text = httpx.get(s.base + "/metrics").text
        for labels in (
            'model="tiny",protocol="openai",status="200"',
            'model="-",protocol="openai",status="404"',
            'model="tiny",protocol="kserve",status="200"',
            'model="tiny",protocol="grpc-moderation",status="OK"',
            'model="-",protocol="grpc-moderation",status="INVALID_ARGUMENT"',
        ):
            assert f"modserve_request_duration_seconds_count{{{labels}}} 1.0" in text, labels
        assert 'modserve_queue_duration_seconds_count{model="tiny"}' in text
        assert 'modserve_tokenization_duration_seconds_count{model="tiny"}' in text
        assert "process_resident_memory_bytes" in text and "process_open_fds" in text
    finally:
        s.stop()


async def test_a_probe_503_is_not_a_failure(tiny_repo: Path):
    async with unloaded_app_client(tiny_repo) as c:
        assert (await c.get("/ready")).status_code == 503
        metrics = (await c.get("/metrics")).text
        assert "modserve_request_failures_total{" not in metrics
        assert (await c.post("/v1/moderations", json={"input": "x"})).status_code == 503
        assert (
            'modserve_request_failures_total{err="NotReady"} 1.0' in (await c.get("/metrics")).text
        )
