"""Async load generator: closed loop (N clients) and open loop (constant or Poisson arrivals).

One shared client per run (HTTP/1.1 keep-alive connections on asyncio streams; one gRPC
channel through ``tritonclient.grpc.aio``). Open-loop latency is measured from each
request's INTENDED send time, so a slow server cannot slow the arrivals down and hide its
own queueing (no coordinated omission). Every run is bounded in requests and seconds.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from benchmarks.workload import Request

DRAIN_TIMEOUT_S = 15.0  # after the arrival window, how long unfinished requests may still run
INTERACTIVE_KINDS = ("chat", "comment", "single")  # one input: what a latency SLO is about
MAX_INFLIGHT_OPEN = 2048  # open loop: arrivals beyond this many in flight count as "backlog"


class Target(Protocol):
    """Something that sends one request and answers a status ("200", "429", "timeout"...)."""

    name: str

    async def send(self, req: Request) -> str: ...

    async def aclose(self) -> None: ...


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# what a request raises when no (parsable) answer came; TimeoutError is told apart
NO_ANSWER = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ValueError,
    IndexError,
)


class HttpClient:
    """A lean HTTP/1.1 client for load generation: keep-alive connections from a pool
    (at most ``max_connections`` in use), requests written as ready-made bytes on asyncio
    streams, an answer read by its status line, headers and ``Content-Length`` (or chunks).

    The client shares this machine's cores with the server it measures, so it must cost
    little: ``httpx`` spent ~1 CPU-second per second at 300 requests/s on 2 cores (twice
    the server it measured) and queued requests itself at ~100 open ones, capping and
    blaming the servers it compared; this one spends ~0.02 cores at the same rate.
    """

    def __init__(self, base_url: str, timeout_s: float, max_connections: int = 512) -> None:
        url = urlsplit(base_url.rstrip("/"))
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"HttpClient speaks plain http://host:port only, not {base_url!r}")
        self.host, self.port = url.hostname, url.port or 80
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[Connection] = []
        self._open: set[asyncio.StreamWriter] = set()

    def encode(self, path: str, body: object) -> bytes:
        """A JSON POST to ``path`` as bytes on the wire (make it once, send it many times)."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode() + payload

    async def request(self, data: bytes) -> tuple[int, dict[str, str]]:
        """Send one encoded request; (status, lower-cased headers) of its answer. Raises
        ``TimeoutError`` after ``timeout_s`` and ``NO_ANSWER`` errors when no answer came; a
        kept-alive connection the server closed meanwhile is retried once on a new one, as
        every HTTP client does."""
        async with self._slots:
            for attempt in range(2):
                reused = attempt == 0 and bool(self._idle)  # the retry opens a new one
                conn = self._idle.pop() if reused else None
                try:
                    if conn is None:
                        conn = await asyncio.wait_for(
                            asyncio.open_connection(self.host, self.port), self.timeout_s
                        )
                        self._open.add(conn[1])
                    status, headers = await asyncio.wait_for(
                        self._exchange(conn, data), self.timeout_s
                    )
                except (TimeoutError, *NO_ANSWER) as e:
                    self._drop(conn)
                    if reused and isinstance(e, (ConnectionError, asyncio.IncompleteReadError)):
                        continue
                    raise
                if headers.get("connection") == "close":
                    self._drop(conn)
                else:
                    self._idle.append(conn)
                return status, headers
            raise AssertionError("unreachable: the second attempt returns or raises")

    async def post(self, path: str, body: object) -> tuple[int, dict[str, str]]:
        """One JSON POST; (0, {}) when no answer came (refused, reset, timed out)."""
        try:
            return await self.request(self.encode(path, body))
        except (TimeoutError, *NO_ANSWER):
            return 0, {}

    @staticmethod
    async def _exchange(conn: Connection, data: bytes) -> tuple[int, dict[str, str]]:
        reader, writer = conn
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")  # no trailers from the servers measured here
        else:
            await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers

    def _drop(self, conn: Connection | None) -> None:
        if conn is not None:
            self._open.discard(conn[1])
            conn[1].close()

    async def aclose(self) -> None:
        for writer in list(self._open):
            writer.close()
        self._open.clear()
        self._idle.clear()


class HttpTarget:
    """POST /v1/moderations (or infinity's /classify) through one :class:`HttpClient`;
    each distinct request is encoded once."""

    def __init__(
        self,
        base_url: str,
        path: str = "/v1/moderations",
        timeout_s: float = DRAIN_TIMEOUT_S,
        max_connections: int = 512,
        infinity_model: str | None = None,
    ) -> None:
        self.name = "http"
        self.http = HttpClient(base_url, timeout_s, max_connections)
        self.path = path
        self.infinity_model = infinity_model  # set: POST infinity's {"input": [...], "model"}
        self._wire: dict[int, tuple[Request, bytes]] = {}  # id(request) -> (request, bytes)

    def wire(self, req: Request) -> bytes:
        hit = self._wire.get(id(req))
        if hit is not None and hit[0] is req:
            return hit[1]
        body = (
            req.body
            if self.infinity_model is None
            else {"input": req.inputs, "model": self.infinity_model}
        )
        data = self.http.encode(self.path, body)
        self._wire[id(req)] = (req, data)
        return data

    async def send(self, req: Request) -> str:
        try:
            status, _ = await self.http.request(self.wire(req))
        except TimeoutError:
            return "timeout"
        except NO_ANSWER as e:
            return type(e).__name__
        return str(status)

    async def aclose(self) -> None:
        await self.http.aclose()


class GrpcTarget:
    """KServe v2 ``ModelInfer`` (TEXT BYTES [n]) over one ``tritonclient.grpc.aio`` channel."""

    def __init__(self, url: str, model: str, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        import tritonclient.grpc.aio as tg

        self.name = "grpc"
        self._tg = tg
        self.model = model
        self.timeout_s = timeout_s
        self.client = tg.InferenceServerClient(url=url)

    async def send(self, req: Request) -> str:
        tg = self._tg
        inp = tg.InferInput("TEXT", [len(req.inputs)], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in req.inputs], dtype=np.object_))
        try:
            await self.client.infer(self.model, [inp], client_timeout=self.timeout_s)
        except Exception as e:  # InferenceServerException carries the gRPC status
            status = getattr(e, "status", lambda: None)()
            return f"grpc:{status or type(e).__name__}"
        return "200"

    async def aclose(self) -> None:
        await self.client.close()


@dataclass
class RunResult:
    """Raw outcome of one run; ``summary()`` turns it into the reported numbers."""

    mode: str  # "closed" | "open"
    load: float  # concurrency (closed) or offered requests/s (open)
    window_s: float = 0.0  # wall time of the measurement window
    latencies_s: list[float] = field(default_factory=list)  # successful requests only
    interactive_s: list[float] = field(default_factory=list)  # ... of kind chat / comment
    statuses: Counter[str] = field(default_factory=Counter)
    inputs_ok: int = 0
    tokens_ok: int = 0

    def record(self, status: str, latency_s: float, req: Request, tokens: int) -> None:
        self.statuses[status] += 1
        if status == "200":
            self.latencies_s.append(latency_s)
            if req.kind in INTERACTIVE_KINDS:
                self.interactive_s.append(latency_s)
            self.inputs_ok += len(req.inputs)
            self.tokens_ok += tokens

    def summary(self) -> dict[str, Any]:
        lat_ms = np.asarray(self.latencies_s) * 1000.0
        ok = len(self.latencies_s)
        sent = sum(self.statuses.values())
        w = max(self.window_s, 1e-9)

        def pct(q: float, values: np.ndarray = lat_ms) -> float | None:
            return round(float(np.percentile(values, q)), 2) if len(values) else None

        inter_ms = np.asarray(self.interactive_s) * 1000.0

        return {
            "mode": self.mode,
            ("concurrency" if self.mode == "closed" else "offered_rps"): self.load,
            "window_s": round(self.window_s, 3),
            "requests_sent": sent,
            "requests_ok": ok,
            "errors_by_status": {k: v for k, v in self.statuses.items() if k != "200"},
            "error_rate": round((sent - ok) / sent, 4) if sent else 0.0,
            "achieved_rps": round(ok / w, 2),
            "inputs_per_s": round(self.inputs_ok / w, 2),
            "tokens_per_s": round(self.tokens_ok / w, 1),
            "latency_ms": {
                "p50": pct(50),
                "p90": pct(90),
                "p99": pct(99),
                "max": round(float(lat_ms.max()), 2) if ok else None,
            },
            "interactive_latency_ms": {"p50": pct(50, inter_ms), "p99": pct(99, inter_ms)},
        }


class _Cycle:
    """The workload in order, wrapping around; each run starts at request 0."""

    def __init__(self, requests: list[Request], tokens: list[int]) -> None:
        self.requests, self.tokens, self.i = requests, tokens, 0

    def next(self) -> tuple[Request, int]:
        j = self.i % len(self.requests)
        self.i += 1
        return self.requests[j], self.tokens[j]


async def run_closed(
    target: Target,
    requests: list[Request],
    tokens: list[int],
    concurrency: int,
    duration_s: float,
    max_requests: int = 1_000_000,
) -> RunResult:
    """``concurrency`` clients, each sending its next request as soon as the last returns."""
    res = RunResult("closed", concurrency)
    cyc = _Cycle(requests, tokens)
    t_start = time.perf_counter()
    t_end = t_start + duration_s

    async def client() -> None:
        while time.perf_counter() < t_end and cyc.i < max_requests:
            req, tok = cyc.next()
            t0 = time.perf_counter()
            status = await target.send(req)
            res.record(status, time.perf_counter() - t0, req, tok)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    res.window_s = time.perf_counter() - t_start
    return res


def arrival_offsets_s(rate_rps: float, duration_s: float, arrival: str, seed: int) -> list[float]:
    """Intended send times (seconds from start): evenly spaced, or Poisson (exp. gaps)."""
    n = max(1, int(rate_rps * duration_s))
    if arrival == "constant":
        return [i / rate_rps for i in range(n)]
    rng = random.Random(seed)
    t, out = 0.0, list[float]()
    while len(out) < n:
        out.append(t)
        t += rng.expovariate(rate_rps)
    return out


async def run_open(
    target: Target,
    requests: list[Request],
    tokens: list[int],
    rate_rps: float,
    duration_s: float,
    arrival: str = "poisson",
    seed: int = 0,
) -> RunResult:
    """Send at the intended times whatever the server does; latency from the intended time.

    The window ends when the last arrival's answer is in (or ``DRAIN_TIMEOUT_S`` after the
    last arrival); achieved rates are over that window, so a server that falls behind shows
    achieved < offered.
    """
    res = RunResult("open", rate_rps)
    cyc = _Cycle(requests, tokens)
    offsets = arrival_offsets_s(rate_rps, duration_s, arrival, seed)
    tasks: set[asyncio.Task[None]] = set()
    t_start = time.perf_counter()

    async def one(req: Request, tok: int, intended: float) -> None:
        status = await target.send(req)
        res.record(status, time.perf_counter() - intended, req, tok)

    for off in offsets:
        intended = t_start + off
        delay = intended - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        req, tok = cyc.next()
        if len(tasks) >= MAX_INFLIGHT_OPEN:
            res.statuses["backlog"] += 1
            continue
        task = asyncio.create_task(one(req, tok, intended))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=DRAIN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        if pending:
            res.statuses["timeout"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    res.window_s = time.perf_counter() - t_start
    return res
