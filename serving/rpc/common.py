"""What every gRPC servicer shares: error -> status mapping, auth, deadlines.

Status codes follow the HTTP status of each ``ModerationError`` (serving/errors.py),
so both transports answer the same failure the same way:
400 -> INVALID_ARGUMENT, 401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 404 -> NOT_FOUND,
413/429 -> RESOURCE_EXHAUSTED, 503 -> UNAVAILABLE, 504 -> DEADLINE_EXCEEDED,
anything else -> INTERNAL. Retryable errors (429, 503) carry ``retry-after`` trailing
metadata; a quota's 429 also its ``x-ratelimit-*`` values. Access (key, scope, quota) is
``serving.gateway.access``, the same check as HTTP's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any, NoReturn, TypeAlias

import grpc

from serving.engine.types import Classifier, ClassifyResult, Registry
from serving.errors import ModerationError
from serving.gateway import decisions
from serving.gateway.access import Gatekeeper, Principal

log = logging.getLogger(__name__)
_call: ContextVar[tuple[Principal | None, float]] = ContextVar("_call", default=(None, 0.0))

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]  # what every servicer method receives

STATUS_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
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
        self.gate = Gatekeeper.shared(registry.settings, registry.metrics)

    def check_auth(self, context: Context, scope: str | None = None) -> Principal:
        """The caller (401), allowed ``scope`` (403; None: any valid key)."""
        _call.set((None, time.perf_counter()))
        meta = dict((m.key, m.value) for m in context.invocation_metadata() or ())
        principal = self.gate.authenticate(meta.get("authorization"))
        _call.set((principal, _call.get()[1]))
        if scope is not None:
            self.gate.authorize(principal, scope)
        return principal

    @asynccontextmanager
    async def admitted(
        self, principal: Principal, texts: list[str], model: str
    ) -> AsyncIterator[None]:
        """One request of ``principal`` within its quotas (429) and on a model its project
        may use (403), its concurrency slot held until the block ends."""
        self.gate.admit(principal)
        try:
            self.gate.charge(principal, texts, model)
            yield
        finally:
            self.gate.release(principal)

    def decided(
        self,
        context: Context,
        route: str,
        principal: Principal,
        engine: Classifier,
        result: ClassifyResult,
        texts: list[str],
    ) -> ClassifyResult:
        """``result`` with the caller's project thresholds applied to its flags, audited."""
        result = decisions.project_view(principal.project, result)
        self._audit(context, route, principal, engine, result, texts)
        return result

    def _audit(
        self,
        context: Context,
        route: str,
        principal: Principal | None,
        engine: Classifier | None = None,
        result: ClassifyResult | None = None,
        texts: list[str] | None = None,
        error: ModerationError | None = None,
    ) -> None:
        decisions.record(
            self.gate,
            request_id=dict(context.trailing_metadata() or ()).get("x-request-id", "-"),
            route=route,
            principal=principal,
            started_s=_call.get()[1],
            status=200 if error is None else error.status,
            model=None if engine is None else engine.name,
            model_version=None if engine is None else engine.version,
            result=result,
            texts=texts,
            error=error,
        )

    @staticmethod
    def time_left_s(context: Context) -> float | None:
        """The client's deadline, passed to the engine so expired work never runs."""
        left = context.time_remaining()
        return None if left is None else max(left, 0.001)

    async def fail(self, context: Context, exc: Exception, route: str = "") -> NoReturn:
        """End the call with the status matching ``exc`` (never UNKNOWN); a decision
        ``route`` (a method that moderates) audits the failure."""
        if route and isinstance(exc, ModerationError):
            self._audit(context, route, _call.get()[0], error=exc)
        if isinstance(exc, ModerationError):
            code = STATUS_BY_HTTP.get(exc.status, grpc.StatusCode.INTERNAL)
            message, kind = exc.message, type(exc).__name__
            trailer = [("modserve-error-code", exc.code)] if exc.code else []
            if (retry := exc.retry_after(self.settings.retry_after_s)) is not None:
                trailer.append(("retry-after", str(retry)))
            trailer += list(exc.headers.items())
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
