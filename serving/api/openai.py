"""FastAPI transport: decode -> engine -> encode, nothing else.

Routes: ``POST /v1/moderations`` (+ alias ``/api/llm/moderations``),
``GET /v1/models``, ``/health`` (live), ``/ready`` (loaded and warmed),
``/metrics`` (Prometheus), ``/docs`` (OpenAPI). Every error leaves in the
OpenAI envelope ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.api.body import read_body
from serving.api.kserve import add_kserve_routes
from serving.auth import check_bearer
from serving.config import OPENAI_MODEL_ALIASES, Settings
from serving.engine.metrics import Metrics
from serving.engine.registry import ModelRegistry
from serving.errors import (
    InvalidRequest,
    ModerationError,
    NotReady,
)
from serving.protocol.openai import (
    ModerationRequest,
    ModerationResponse,
    build_response,
    parse_request,
)
from serving.rpc.server import grpc_serving

log = logging.getLogger(__name__)

MODERATION_PATHS = ("/v1/moderations", "/api/llm/moderations")


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.split("/")[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def error_response(err: ModerationError, retry_after_s: int) -> JSONResponse:
    headers = {}
    if err.status in (429, 503):
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(err.envelope(), status_code=err.status, headers=headers)


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> FastAPI:
    metrics = registry.metrics if registry is not None else Metrics()
    reg = registry or ModelRegistry(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            try:
                await reg.start()
            except Exception as e:
                reg.load_error = reg.load_error or f"{type(e).__name__}: {e}"
                log.exception("model loading failed")

        task = asyncio.create_task(load())
        async with grpc_serving(settings, reg):  # gRPC on settings.grpc_port; 0 = off
            yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reg.stop()

    app = FastAPI(
        title="modserve",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible moderation classifier server.",
    )
    app.state.registry = reg
    add_kserve_routes(app, reg)  # KServe v2 / Triton HTTP routes under /v2
    retry = settings.retry_after_s

    @app.exception_handler(ModerationError)
    async def _moderation_error(_: Request, exc: ModerationError) -> JSONResponse:
        metrics.request_failures.labels(type(exc).__name__).inc()
        return error_response(exc, retry)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = ModerationError(str(exc.detail))
        err.status, err.type = exc.status_code, "invalid_request_error"
        return error_response(err, retry)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        metrics.request_failures.labels("internal").inc()
        return error_response(ModerationError(f"Internal error: {type(exc).__name__}."), retry)

    def check_auth(request: Request) -> None:
        check_bearer(request.headers.get("authorization"), settings.api_keys)

    async def read_json(request: Request) -> Any:
        body = await read_body(request, settings.max_request_body_bytes)
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequest(
                "We could not parse the JSON body of your request. Send a JSON "
                'object such as {"input": "text"}.'
            ) from None

    request_schema = _inline_refs(ModerationRequest.model_json_schema())

    async def moderations(request: Request) -> Response:
        t0 = time.perf_counter()
        check_auth(request)
        body = await read_json(request)
        texts, requested = parse_request(
            body, settings.max_inputs_per_request, settings.max_input_chars
        )
        engine = reg.resolve(requested)
        metrics.requests.labels(engine.name).inc()
        result = await _until_disconnect(request, engine.classify(texts))
        if result is None:  # nobody is listening: no body, and no error in the server log
            log.info("client hung up before its answer; its sequences were dropped")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        payload = build_response(
            engine.name, result.categories, result.scores, result.flags, result.extras
        )
        t = result.timings
        metrics.request_duration.labels(engine.name).observe(time.perf_counter() - t0)
        headers = {
            "x-compute-time": f"{t.total_s * 1000:.3f}",
            "x-tokenization-time": f"{t.tokenization_s * 1000:.3f}",
            "x-queue-time": f"{t.queue_s * 1000:.3f}",
            "x-inference-time": f"{t.inference_s * 1000:.3f}",
            "x-compute-tokens": str(t.tokens),
            "x-compute-characters": str(t.characters),
            "x-model": engine.name,
        }
        return JSONResponse(payload, headers=headers)

    for path in MODERATION_PATHS:
        app.add_api_route(
            path,
            moderations,
            methods=["POST"],
            summary="Classify text for moderation",
            response_model=None,
            responses={200: {"model": ModerationResponse}},
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": request_schema}},
                }
            },
            include_in_schema=path == MODERATION_PATHS[0],
        )

    @app.get("/v1/models", summary="List served models (OpenAI list format)")
    async def list_models(request: Request) -> dict[str, Any]:
        check_auth(request)
        ids = [*reg.engines, *OPENAI_MODEL_ALIASES] if reg.engines else []
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": reg.created, "owned_by": "modserve"}
                for m in ids
            ],
        }

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: every model loaded and warmed")
    async def ready() -> Response:
        if reg.ready:
            return JSONResponse({"status": "ready", "models": list(reg.engines)})
        msg = reg.load_error or "Models are loading and warming up."
        raise NotReady(msg)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


CLIENT_CLOSED_REQUEST = 499  # nginx's code for "the client went away first"


async def _until_disconnect(request: Request, work: Any) -> Any:
    """Run ``work``; if the client hangs up first, cancel it (its sequences are dropped
    before the model) and return None."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()
