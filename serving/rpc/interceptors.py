"""Every gRPC method: a request that is not valid protobuf gets INVALID_ARGUMENT, and the
answer carries ``x-request-id`` trailing metadata (the client's, else a new one).

grpc answers a request its deserializer cannot parse with UNKNOWN and a Python class name.
This interceptor wraps each method's deserializer so that a parse failure becomes a marker,
and the method itself then ends the call with INVALID_ARGUMENT and a clear message (for
streaming requests, at the first malformed message).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from serving.engine.metrics import Metrics
from serving.protocol.request_id import choose

MESSAGE = "The request is not a valid protobuf message for this method."
PROTOCOLS = {"/modserve.v1.": "grpc-moderation", "/inference.": "grpc-kserve"}
# The model a call resolved (set by the servicers; read when the call is timed).
served_model: ContextVar[str] = ContextVar("served_model", default="-")
RID = "x-request-id"


class _Malformed:
    """What the wrapped deserializer returns for bytes it cannot parse."""


_MALFORMED = _Malformed()


def _safe(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:
            return _MALFORMED

    return parse


async def _checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
    async for r in requests:
        if r is _MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MESSAGE)
        yield r


def tag_request_id(context: Any) -> str:
    """Choose this call's request id and set it as trailing metadata; returns it."""
    sent = dict(context.invocation_metadata() or ()).get(RID)
    rid = choose(sent.encode() if isinstance(sent, str) else sent)
    context.set_trailing_metadata(((RID, rid),))
    return rid


Record = Callable[[float, str], None]  # (seconds, status code name) of a finished call


def _unary_request(
    behavior: Callable[..., Any], record: Record | None = None
) -> Callable[..., Any]:
    async def run(request: Any, context: Any) -> Any:
        t0 = time.perf_counter()
        status = "OK"
        try:
            tag_request_id(context)
            if request is _MALFORMED:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MESSAGE)
            return await behavior(request, context)
        except BaseException:
            code = context.code() if hasattr(context, "code") else None
            status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        finally:
            if record is not None:
                record(time.perf_counter() - t0, status)

    return run


def _unary_request_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(behavior):  # writes with context.write (health Watch)
        return _unary_request(behavior)

    async def run(request: Any, context: Any) -> AsyncIterator[Any]:
        tag_request_id(context)
        if request is _MALFORMED:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MESSAGE)
        async for r in behavior(request, context):
            yield r

    return run


def _stream_request(behavior: Callable[..., Any]) -> Callable[..., Any]:
    # grpc tells generator handlers from coroutine ones by the function: keep its kind
    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            tag_request_id(context)
            async for r in behavior(_checked(requests, context), context):
                yield r

        return stream

    async def run(requests: AsyncIterator[Any], context: Any) -> Any:
        tag_request_id(context)
        return await behavior(_checked(requests, context), context)

    return run


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """See the module doc; with ``metrics``, unary calls of the moderation and KServe
    services are timed into ``modserve_request_duration_seconds`` (model from
    ``served_model``, protocol ``grpc-moderation`` / ``grpc-kserve``, status code name)."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics

    def _recorder(self, method: str) -> Record | None:
        protocol = next((p for prefix, p in PROTOCOLS.items() if method.startswith(prefix)), None)
        if self.metrics is None or protocol is None:
            return None
        histogram = self.metrics.request_duration

        def record(seconds: float, status: str) -> None:
            histogram.labels(served_model.get(), protocol, status).observe(seconds)

        return record

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not hasattr(handler, "_replace"):
            return handler
        h: Any = handler
        changes: dict[str, Any] = {"request_deserializer": _safe(h.request_deserializer)}
        if h.unary_unary is not None:
            record = self._recorder(handler_call_details.method)
            changes["unary_unary"] = _unary_request(h.unary_unary, record)
        elif h.unary_stream is not None:
            changes["unary_stream"] = _unary_request_stream(h.unary_stream)
        elif h.stream_unary is not None:
            changes["stream_unary"] = _stream_request(h.stream_unary)
        elif h.stream_stream is not None:
            changes["stream_stream"] = _stream_request(h.stream_stream)
        return h._replace(**changes)
