"""What every gRPC servicer shares: error -> status mapping, auth, deadlines.

Status codes follow the HTTP status of each ``ModerationError`` (serving/errors.py),
so both transports answer the same failure the same way:
400 -> INVALID_ARGUMENT, 401 -> UNAUTHENTICATED, 404 -> NOT_FOUND,
413/429 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, 504 -> DEADLINE_EXCEEDED,
anything else -> INTERNAL. Retryable errors (429, 503) carry ``retry-after`` trailing
metadata.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn, TypeAlias

import grpc

from serving.auth import check_bearer
from serving.engine.types import Registry
from serving.errors import ModerationError

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]  # what every servicer method receives

STATUS_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class ServicerBase:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.metrics = registry.metrics

    def check_auth(self, context: Context) -> None:
        if not self.settings.api_keys:
            return
        meta = dict((m.key, m.value) for m in context.invocation_metadata() or ())
        check_bearer(meta.get("authorization"), self.settings.api_keys)

    @staticmethod
    def time_left_s(context: Context) -> float | None:
        """The client's deadline, passed to the engine so expired work never runs."""
        left = context.time_remaining()
        return None if left is None else max(left, 0.001)

    async def fail(self, context: Context, exc: Exception) -> NoReturn:
        """End the call with the status matching ``exc`` (never UNKNOWN)."""
        if isinstance(exc, ModerationError):
            code = STATUS_BY_HTTP.get(exc.status, grpc.StatusCode.INTERNAL)
            message, kind = exc.message, type(exc).__name__
            trailer = [("modserve-error-code", exc.code)] if exc.code else []
            if (retry := exc.retry_after(self.settings.retry_after_s)) is not None:
                trailer.append(("retry-after", str(retry)))
        else:
            log.error("unexpected error in a gRPC call", exc_info=exc)
            code, message, kind = (
                grpc.StatusCode.INTERNAL,
                f"Internal error: {type(exc).__name__}.",
                "internal",
            )
            trailer = []
        self.metrics.request_failures.labels(kind).inc()
        rid = dict(context.trailing_metadata() or ()).get("x-request-id")
        if rid:  # abort replaces the trailing metadata: keep the request id in it
            trailer.append(("x-request-id", rid))
        await context.abort(code, message, trailing_metadata=tuple(trailer))
        raise AssertionError("unreachable: context.abort raises")
