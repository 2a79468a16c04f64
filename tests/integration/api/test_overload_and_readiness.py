"""429 with Retry-After when the token queue is full; 503 while the model is not ready."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, unloaded_app_client

pytestmark = pytest.mark.integration


def test_full_queue_answers_429_with_retry_after(tiny_repo: Path):
    # The first request waits (up to 3 s) for company in a batch; while it waits the
    # queue holds 16 of 64 tokens, so a 64-token request does not fit.
    s = ServerProcess(
        tiny_repo,
        MODSERVE_MAX_QUEUE_TOKENS="64",
        MODSERVE_MAX_BATCH_WAIT_MS="3000",
        MODSERVE_RETRY_AFTER_S="2",
    )
    s.wait_ready()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # wait until the first request is queued
            first = s.post_queued(pool, "short", 'modserve_queue_tokens{model="tiny"} 16.0')
            r = httpx.post(s.base + "/v1/moderations", json={"input": "long " * 50})
            assert r.status_code == 429
            assert r.headers["Retry-After"] == "2"
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert first.result().status_code == 200  # the queued request is not lost
    finally:
        s.stop()


async def test_not_ready_is_503(tiny_repo: Path):
    async with unloaded_app_client(tiny_repo) as c:
        assert (await c.get("/health")).status_code == 200
        r = await c.get("/ready")
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        r = await c.post("/v1/moderations", json={"input": "x"})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "not_ready"


def test_a_model_that_cannot_load_stops_the_server_with_its_cause(tmp_path: Path):
    s = ServerProcess(tmp_path, model="absent")
    try:
        assert s.proc.wait(timeout=60) == 1  # a supervisor sees a crash, not a live process
        log = s.output()
        assert "model loading failed" in log and "absent" in log and "not found" in log
    finally:
        s.stop()


async def test_a_failed_load_is_503_with_its_cause_and_no_retry_after(tiny_repo: Path):
    """Where the process stays up (a Ray ingress), every route says why, without inviting
    retries of a permanent failure."""
    async with unloaded_app_client(tiny_repo) as c:
        registry = c._transport.app.state.registry  # type: ignore[attr-defined]
        registry.load_error = "CUDA requested but no GPU"
        for r in (
            await c.get("/health"),
            await c.get("/ready"),
            await c.post("/v1/moderations", json={"input": "x"}),
        ):
            assert r.status_code == 503 and "Retry-After" not in r.headers
            assert r.json()["error"]["code"] == "model_load_failed"
            assert "CUDA requested but no GPU" in r.json()["error"]["message"]


def test_client_that_hangs_up_is_dropped_before_the_model(tiny_repo: Path):
    import json
    import socket

    s = ServerProcess(tiny_repo, MODSERVE_MAX_BATCH_WAIT_MS="3000")
    s.wait_ready()
    try:
        body = json.dumps({"input": "going away"}).encode()
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(
                b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            s.wait_for_metric('modserve_queue_sequences{model="tiny"} 1.0')
        # the client is gone; its sequence must be dropped, never run
        s.wait_for_metric('modserve_dropped_sequences_total{model="tiny",reason="cancelled"} 1.0')
        metrics = httpx.get(s.base + "/metrics").text
        assert "modserve_batch_size_count{" not in metrics  # no batch ever ran
        assert (
            httpx.post(
                s.base + "/v1/moderations", json={"input": "still fine"}, timeout=30
            ).status_code
            == 200
        )
        s.stop()
        log = s.output()
        assert "Traceback" not in log and "ERROR" not in log, log[-2000:]  # a hang-up is no error
    finally:
        s.stop()


def test_sigterm_finishes_in_flight_work_then_stops_both_transports(tiny_repo: Path):
    """The composition root owns the signals: HTTP drains, then gRPC and the engines stop,
    and the process exits 0 (no re-raised SIGTERM, no traceback)."""
    import signal
    import socket

    s = ServerProcess(tiny_repo, MODSERVE_MAX_BATCH_WAIT_MS="1500")
    s.wait_ready()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = s.post_queued(pool, "hi", 'modserve_queue_sequences{model="tiny"} 1.0')
            s.proc.send_signal(signal.SIGTERM)
            assert waiting.result().status_code == 200  # admitted before the signal: answered
        assert s.proc.wait(timeout=30) == 0, s.output()
        assert "Traceback" not in s.output()
        for port in (s.port, s.grpc_port):  # nothing listens any more
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0
    finally:
        s.stop()


def test_sigterm_says_not_ready_first_while_still_serving(tiny_repo: Path):
    import signal

    s = ServerProcess(tiny_repo, MODSERVE_DRAIN_DELAY_S="2")
    s.wait_ready()
    try:
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.0
        while httpx.get(s.base + "/ready", timeout=2).status_code != 503:
            assert time.monotonic() < deadline
        assert "shutting down" in httpx.get(s.base + "/ready").json()["error"]["message"]
        r = httpx.post(s.base + "/v1/moderations", json={"input": "still served"}, timeout=5)
        assert r.status_code == 200  # load balancers may still send during the delay
        assert s.proc.wait(timeout=30) == 0
    finally:
        s.stop()
