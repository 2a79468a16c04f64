"""HTTP connection limits, below the app: header size and count, header and body read
timeouts, and a cap on open connections.

uvicorn's httptools protocol has none of these (a 100 MB header is parsed while the event
loop waits; a client trickling headers or a body holds its connection forever). We run it
with this subclass instead of putting a proxy in front: one process, same speed, and the
limits hold wherever ``modserve serve`` runs. (On Ray Serve, Ray's own proxy serves HTTP:
put these limits on the ingress in front of it: see README "Limits and overload".)

What a client sees: 431 when the request line + headers exceed ``MODSERVE_HTTP_MAX_HEADER_BYTES``
or ``MODSERVE_HTTP_MAX_HEADERS``; 408 when they do not arrive within
``MODSERVE_HTTP_HEADER_TIMEOUT_S`` of the first byte (or of the connection), or the body not
within ``MODSERVE_HTTP_BODY_TIMEOUT_S`` of the headers; 503 when
``MODSERVE_HTTP_MAX_CONNECTIONS`` connections are already open. Each ends the connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.config import Settings

log = logging.getLogger(__name__)


def guarded_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """uvicorn's ``http=`` protocol class with ``settings``' connection limits."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        max_header_bytes = settings.http_max_header_bytes
        max_headers = settings.http_max_headers
        header_timeout_s = settings.http_header_timeout_s
        body_timeout_s = settings.http_body_timeout_s
        max_connections = settings.http_max_connections

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True  # reading a request line + headers
            self._head_bytes = 0
            self._head_count = 0
            self._timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > self.max_connections:
                self._refuse(503, "Too many open connections (MODSERVE_HTTP_MAX_CONNECTIONS).")
                return
            self._arm(self.header_timeout_s, "headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > self.max_header_bytes:
                    self._refuse(431, "Request headers too large (MODSERVE_HTTP_MAX_HEADER_BYTES).")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes, self._head_count = True, 0, 0
            if self._timer is None:  # pipelined or after keep-alive: time this request's head
                self._arm(self.header_timeout_s, "headers")

        def on_header(self, name: bytes, value: bytes) -> None:
            if self.transport.is_closing():
                return
            self._head_count += 1
            if self._head_count > self.max_headers:
                self._refuse(431, "Too many request headers (MODSERVE_HTTP_MAX_HEADERS).")
                return
            super().on_header(name, value)

        # the parser may go on with a buffer after a refusal: nothing more reaches the app
        def on_headers_complete(self) -> None:
            self._in_head = False
            self._disarm()
            if self.transport.is_closing():
                return
            super().on_headers_complete()
            self._arm(self.body_timeout_s, "body")

        def on_body(self, body: bytes) -> None:
            if not self.transport.is_closing():
                super().on_body(body)

        def on_message_complete(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                super().on_message_complete()

        # -- timers and refusals --------------------------------------------------------------
        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expired, what)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self, what: str) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if what == "headers" and self._head_bytes == 0 and self.cycle is not None:
                self.transport.close()  # idle between requests: nothing to answer
                return
            setting = "HEADER" if what == "headers" else "BODY"
            responding = what == "body" and self.cycle is not None and self.cycle.response_started
            if responding:
                self.transport.close()
            else:
                self._refuse(408, f"Request {what} not received in time "
                                  f"(MODSERVE_HTTP_{setting}_TIMEOUT_S).")  # fmt: skip

        def _refuse(self, status: int, message: str) -> None:
            log.info("HTTP %d from %s: %s", status, self.client, message)
            body = message.encode()
            self.transport.write(
                STATUS_LINE[status]
                + b"content-type: text/plain; charset=utf-8\r\n"
                + b"content-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            self.transport.close()

    return GuardedHttpToolsProtocol
