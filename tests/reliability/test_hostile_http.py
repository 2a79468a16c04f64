"""Hand-made hostile HTTP input (issue #15): each gets its status within a time bound, in
the right envelope, with bounded echoes, and a normal request succeeds right after."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

from tests.helpers import ServerProcess
from tests.reliability.conftest import still_serving

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

MOD = "/v1/moderations"


def raw_post(
    server: ServerProcess, path: str, body: bytes, timeout_s: float = 10
) -> httpx.Response:
    return httpx.post(
        server.base + path,
        content=body,
        headers={"content-type": "application/json"},
        timeout=timeout_s,
    )


def assert_openai_400(r: httpx.Response, needle: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and needle in err["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"input": "\\ud800"}', "surrogate"),
        (b'{"input": ["ok", "\\udfff tail"]}', "surrogate"),
        (b'{"input": "x", "model": "\\ud800"}', "surrogate"),
        (b'{"input": "x", "\\ud800": 1}', "surrogate"),
        (b'{"input": "\xed\xa0\x80"}', "UTF-8"),  # an encoded lone surrogate
        (b'{"input": "\xff\xfe"}', "UTF-8"),
        (b"[" * 5_000 + b"]" * 5_000, "nested too deeply"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    ],
    ids=[
        "escape",
        "escape-in-list",
        "model",
        "key",
        "raw-bytes",
        "bad-utf8",
        "nest-5k",
        "nest-100k",
        "nest-in-input",
    ],
)
def test_bad_text_and_nesting_are_400(hostile: ServerProcess, body: bytes, needle: str):
    t0 = time.monotonic()
    assert_openai_400(raw_post(hostile, MOD, body), needle)
    assert time.monotonic() - t0 < 2.0
    still_serving(hostile)


def test_kserve_json_with_a_lone_surrogate_is_400_in_its_envelope(hostile: ServerProcess):
    body = b'{"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}'
    r = raw_post(hostile, "/v2/models/tiny/infer", body)
    assert r.status_code == 400 and "surrogate" in r.json()["error"]
    still_serving(hostile)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"input": "x", "model": "m" * 3_000_000}, MOD),
        ({"input": "x", **{f"k{i}" + "y" * 200: 1 for i in range(5_000)}}, MOD),
        ({"input": [{"type": "t" * 1_000_000, "text": "x"}]}, MOD),
        (
            {
                "inputs": [
                    {"name": "TEXT", "datatype": "B" * 1_000_000, "shape": [1], "data": ["x"]}
                ]
            },
            "/v2/models/tiny/infer",
        ),
        (
            {
                "inputs": [
                    {"name": "T" * 1_000_000, "datatype": "BYTES", "shape": [1], "data": ["x"]}
                ]
            },
            "/v2/models/tiny/infer",
        ),
        (
            {
                "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["x"]}],
                "outputs": [{"name": "O" * 1_000_000}],
            },
            "/v2/models/tiny/infer",
        ),
    ],
    ids=[
        "model-3MB",
        "5k-unknown-keys",
        "part-type",
        "kserve-datatype",
        "kserve-input-name",
        "kserve-output-name",
    ],
)
def test_echoed_values_are_clipped(hostile: ServerProcess, body: dict, path: str):
    r = raw_post(hostile, path, json.dumps(body).encode())
    assert 400 <= r.status_code < 500
    assert len(r.content) < 2_000, len(r.content)
    still_serving(hostile)


def test_a_newline_in_model_cannot_forge_a_log_line(hostile: ServerProcess):
    forged = "2026-01-01 00:00:00,000 CRITICAL serving.app: forged"
    r = httpx.post(hostile.base + MOD, json={"input": "x", "model": "m\n" + forged})
    assert r.status_code == 404
    assert not any(line.startswith(forged) for line in hostile.output().splitlines())


def test_a_bad_request_writes_one_short_log_line(hostile: ServerProcess):
    before = len(hostile.output())
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=5) as s:
        s.sendall(b"GARBAGE / HTTP/9\r\n")  # 18 bytes
        s.sendall(b"\r\n")
        s.recv(1024)
    time.sleep(0.3)
    new = hostile.output()[before:]
    assert "Traceback" not in new and len(new) < 1_000, new


def _send_until_closed(server: ServerProcess, chunks: bytes, chunk: bytes, limit: int) -> bytes:
    """Send ``chunks`` then ``chunk`` repeatedly (up to ``limit`` bytes) until the server
    answers or closes; return what it answered."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(chunks)
        sent = 0
        try:
            while sent < limit:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the server closed the connection: what did it say?
            pass
        try:
            return s.recv(4096)
        except OSError:
            return b""


def test_a_100MB_header_is_refused_early_and_health_stays_fast(hostile: ServerProcess):
    stalls: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            httpx.get(hostile.base + "/health", timeout=10)
            stalls.append(time.monotonic() - t0)
            time.sleep(0.02)

    t = threading.Thread(target=probe)
    t.start()
    t0 = time.monotonic()
    try:
        answer = _send_until_closed(
            hostile, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, 100_000_000
        )
    finally:
        done.set()
        t.join()
    assert time.monotonic() - t0 < 5.0
    assert answer.startswith(b"HTTP/1.1 431") or answer == b""
    assert max(stalls) < 0.5, max(stalls)
    still_serving(hostile)


def test_too_many_headers_is_431(hostile: ServerProcess):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    answer = _send_until_closed(hostile, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers, b"", 0)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    still_serving(hostile)


def test_slowloris_connections_are_cut_at_the_header_timeout(hostile: ServerProcess):
    socks = [socket.create_connection(("127.0.0.1", hostile.port)) for _ in range(40)]
    try:
        t0 = time.monotonic()
        for s in socks:
            s.sendall(b"GET /health HTTP/1.1\r\n")
        closed = 0
        while closed < len(socks) and time.monotonic() - t0 < 6:
            for s in socks:  # trickle a header byte; a closed socket errors or reads EOF
                with contextlib.suppress(OSError):
                    s.sendall(b"X")
            time.sleep(0.25)
            health = time.monotonic()
            assert httpx.get(hostile.base + "/health", timeout=5).status_code == 200
            assert time.monotonic() - health < 0.5
            closed = 0
            for s in socks:
                s.setblocking(False)
                try:
                    closed += s.recv(4096).startswith(b"HTTP/1.1 408") or True
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
                s.setblocking(True)
        assert closed == len(socks), f"{closed} of {len(socks)} cut"
        assert time.monotonic() - t0 < 1.5 + 2.0  # MODSERVE_HTTP_HEADER_TIMEOUT_S + slack
    finally:
        for s in socks:
            s.close()
    still_serving(hostile)


def test_a_body_that_never_completes_gets_408(hostile: ServerProcess):
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"input": '
        )
        t0 = time.monotonic()
        answer = s.recv(4096)
        waited = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert 1.5 < waited < 4.0  # MODSERVE_HTTP_BODY_TIMEOUT_S = 2
    still_serving(hostile)


def test_connections_beyond_the_cap_get_503(hostile: ServerProcess):
    held = []
    try:
        for _ in range(64):
            held.append(socket.create_connection(("127.0.0.1", hostile.port)))
        extra = socket.create_connection(("127.0.0.1", hostile.port), timeout=5)
        with extra:
            assert extra.recv(4096).startswith(b"HTTP/1.1 503")
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    still_serving(hostile)


def test_a_client_that_leaves_mid_body_is_no_error(hostile: ServerProcess):
    before = len(hostile.output())
    with socket.create_connection(("127.0.0.1", hostile.port)) as s:
        s.sendall(
            b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"input": "x'
        )
        time.sleep(0.2)
    time.sleep(0.3)
    new = hostile.output()[before:]
    assert "ERROR" not in new and "Traceback" not in new, new
    still_serving(hostile)


def test_405_says_what_is_allowed(hostile: ServerProcess):
    r = httpx.get(hostile.base + MOD)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_large_requests_tokenizing_do_not_hold_up_a_small_one(hostile: ServerProcess):
    big = {"input": ["word " * 8000] * 100}  # 4 MB, 800,000 tokens: each ~1 s to tokenize
    with httpx.Client(timeout=60) as c:
        threads = [
            threading.Thread(target=c.post, args=(hostile.base + MOD,), kwargs={"json": big})
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the big ones are being read and tokenized
        t0 = time.monotonic()
        r = c.post(hostile.base + MOD, json={"input": "small"})
        small_s = time.monotonic() - t0
        for t in threads:
            t.join()
    # Tokenizing one big request alone takes ~1 s; queued behind all six the small one
    # waited 14.9 s (the defect). Unqueued it takes 0.1-0.4 s on an idle 2-core machine and
    # once took 1.05 s in CI, where the same two cores also encode and send the 24 MB.
    assert r.status_code in (200, 429) and small_s < 2.5, (r.status_code, small_s)


def test_kserve_infer_is_dropped_when_the_client_hangs_up(tiny_repo):
    s = ServerProcess(tiny_repo, MODSERVE_MAX_BATCH_WAIT_MS="3000")
    s.wait_ready()
    try:
        body = json.dumps(
            {"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1], "data": ["bye"]}]}
        ).encode()
        with socket.create_connection(("127.0.0.1", s.port)) as sock:
            sock.sendall(
                b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            s.wait_for_metric('modserve_queue_sequences{model="tiny"} 1.0')
        s.wait_for_metric('modserve_dropped_sequences_total{model="tiny",reason="cancelled"} 1.0')
        assert "modserve_batch_size_count{" not in httpx.get(s.base + "/metrics").text
    finally:
        s.stop()


def test_model_names_need_the_key(tiny_repo):
    s = ServerProcess(tiny_repo, MODSERVE_API_KEYS="k1")
    s.wait_ready()
    try:
        ready = httpx.get(s.base + "/ready")
        assert ready.status_code == 200 and "tiny" not in ready.text
        for path in ("/v2/models/tiny/ready", "/v2/models/nope/ready", "/v1/models"):
            r = httpx.get(s.base + path)
            assert r.status_code == 401 and "tiny" not in r.text, path
        assert httpx.get(s.base + "/health").status_code == 200
        assert httpx.get(s.base + "/v2/health/ready").status_code == 200
    finally:
        s.stop()
