"""``x-request-id`` on every answer: the client's own (if it is a sane token), else a new
one. HTTP: a response header (the OpenAI SDK exposes it as ``response._request_id``); gRPC:
trailing metadata (``serving/rpc/interceptors.py``). Error log lines carry it.

A pure ASGI middleware (no per-request task or body copy): it only reads the request's
headers and adds one header to the response's start message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.protocol.request_id import choose

HEADER = b"x-request-id"


def request_id(scope: Mapping[str, Any]) -> str:
    """The id of the request ``scope`` belongs to (set by the middleware)."""
    return str(scope.get("state", {}).get("request_id", "-"))


class RequestIdMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope["headers"] if k == HEADER), None)
        rid = choose(sent)
        scope.setdefault("state", {})["request_id"] = rid
        raw = rid.encode()

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER, raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)
