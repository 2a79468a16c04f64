"""Hostile gRPC (issue #15): garbage bytes, a client deadline longer than the server's, more
calls than allowed at once, a second server on a busy port."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import grpc
import pytest

from serving.rpc.moderation import pb, pb_grpc
from tests.helpers import ServerProcess
from tests.reliability.conftest import still_serving

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


def raw_call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.RpcError:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as e:
        call(payload, timeout=10)
    return e.value


@pytest.mark.parametrize(
    "method",
    [
        "/modserve.v1.Moderation/Moderate",
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
    ],
)
def test_garbage_bytes_are_invalid_argument(hostile: ServerProcess, method: str):
    with grpc.insecure_channel(f"127.0.0.1:{hostile.grpc_port}") as ch:
        err = raw_call(ch, method, b"\xff\xff\xff\xff garbage")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf" in (err.details() or "")
    still_serving(hostile)


def test_garbage_in_a_request_stream_is_invalid_argument(hostile: ServerProcess):
    with grpc.insecure_channel(f"127.0.0.1:{hostile.grpc_port}") as ch:
        stream = ch.stream_stream(
            "/modserve.v1.Moderation/ModerateStream",
            request_serializer=None,
            response_deserializer=pb.ModerateResponse.FromString,
        )
        good = pb.ModerateRequest(input=["fine"]).SerializeToString()
        with pytest.raises(grpc.RpcError) as e:
            list(stream(iter([good, b"\xff\xff\xff\xff"]), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_server_deadline_caps_a_long_client_deadline(tiny_repo: Path):
    """A client's 100 s deadline does not buy more than MODSERVE_REQUEST_TIMEOUT_S: work that
    cannot fit in it is refused at once, not run for 100 s while others wait."""
    s = ServerProcess(tiny_repo, MODSERVE_REQUEST_TIMEOUT_S="0.5")
    s.wait_ready()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
            stub = pb_grpc.ModerationStub(ch)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                texts = [f"word{i} " + "word " * 2000 for i in range(256)]  # distinct: no cache
                stub.Moderate(pb.ModerateRequest(input=texts), timeout=100)
            assert time.monotonic() - t0 < 5.0
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "MODSERVE_REQUEST_TIMEOUT_S" in (e.value.details() or "")
            assert stub.Moderate(pb.ModerateRequest(input=["fine"]), timeout=10).results
    finally:
        s.stop()


def test_calls_beyond_the_concurrency_cap_are_refused_at_once(tiny_repo: Path):
    s = ServerProcess(
        tiny_repo, MODSERVE_GRPC_MAX_CONCURRENT_RPCS="1", MODSERVE_MAX_BATCH_WAIT_MS="2000"
    )
    s.wait_ready()
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            stub = pb_grpc.ModerationStub(ch)
            first = pool.submit(stub.Moderate, pb.ModerateRequest(input=["waits 2 s"]), timeout=30)
            s.wait_for_metric('modserve_queue_sequences{model="tiny"} 1.0')
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                stub.Moderate(pb.ModerateRequest(input=["second"]), timeout=30)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - t0 < 1.0
            assert first.result().results  # the admitted call is not lost
    finally:
        s.stop()


def test_a_second_server_on_a_busy_grpc_port_fails(hostile: ServerProcess, tiny_repo: Path):
    second = ServerProcess(tiny_repo, MODSERVE_GRPC_PORT=str(hostile.grpc_port))
    try:
        assert second.proc.wait(timeout=60) != 0
    finally:
        second.stop()
    still_serving(hostile)
