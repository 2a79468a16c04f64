"""``x-request-id`` on every answer, and the access log line of every HTTP request.

Request id: the client's own (if it is a sane token), else a new one. HTTP: a response
header (the OpenAI SDK exposes it as ``response._request_id``); gRPC: trailing metadata
(``serving/rpc/interceptors.py``). Error log lines end with it.

Access log (``MODSERVE_ACCESS_LOG``, on by default): one INFO line per request on the
``modserve.access`` logger: method, path, status, latency, request id, and what the route
put in ``scope["state"]["access"]`` (model, inputs, tokens); never any text. In JSON format
(``MODSERVE_LOG_FORMAT=json``) these are fields of the line's object.

A pure ASGI middleware (no per-request task or body copy): it reads the request's headers,
adds one header to the response's start message and times the response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from serving import tracing
from serving.engine.metrics import Metrics
from serving.errors import clip
from serving.protocol.request_id import choose

HEADER = b"x-request-id"
access_log = logging.getLogger("modserve.access")


def request_id(scope: Mapping[str, Any]) -> str:
    """The id of the request ``scope`` belongs to (set by the middleware)."""
    return str(scope.get("state", {}).get("request_id", "-"))


def note_access(scope: Mapping[str, Any], model: str, inputs: int, tokens: int) -> None:
    """What a route adds to its request's access log line."""
    scope["state"]["access"] = {"model": model, "inputs": inputs, "tokens": tokens}


def _protocol(path: str) -> str | None:
    """The request-duration ``protocol`` label of a path (None: probes, metrics, docs)."""
    if path.startswith(("/v1/", "/api/llm/")):
        return "openai"
    if path.startswith("/v2/models/"):
        return "kserve"
    return None


def _text_headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


class RequestIdMiddleware:
    def __init__(self, app: Any, log_access: bool = True, metrics: Metrics | None = None) -> None:
        self.app = app
        self.log_access = log_access
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        sent = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = choose(sent)
        state = scope.setdefault("state", {})
        state["request_id"], state["started_s"] = rid, t0
        raw = rid.encode()
        status = [0]

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [(HEADER, raw)]
                if (quota := state.get("ratelimit_headers")) and message["status"] < 400:
                    extra += [(k.encode(), v.encode()) for k, v in quota.items()]
                message["headers"] = [*message.get("headers", []), *extra]
                status[0] = message["status"]
            await send(message)

        token = tracing.attach_caller(_text_headers(scope)) if tracing.enabled() else None
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if token is not None:
                tracing.detach(token)
            took_s = time.perf_counter() - t0
            code = status[0] or 499  # no answer started: the client went away
            access = state.get("access", {})
            if self.log_access and access_log.isEnabledFor(logging.INFO):
                self._log(scope["method"], scope["path"], code, took_s, rid, access)
            protocol = _protocol(scope["path"])
            if self.metrics is not None and protocol:
                model = str(access.get("model", "-"))
                self.metrics.request_duration.labels(model, protocol, str(code)).observe(took_s)

    @staticmethod
    def _log(
        method: str, path: str, status: int, s: float, rid: str, access: dict[str, Any]
    ) -> None:
        shown = clip(path, 200).strip("'\"")
        fields = {"request_id": rid, "method": method, "path": shown, "status": status,
                  "latency_ms": round(s * 1000, 2), **access}  # fmt: skip
        noted = " ".join(f"{k}={v}" for k, v in access.items())
        access_log.info("%s %s %d %.1fms %s %s", method, shown, status, s * 1000, rid, noted,
                        extra=fields)  # fmt: skip
