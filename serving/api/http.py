"""The FastAPI app: OpenAI and KServe v2 routes over one registry, and its error envelopes.

Routes: ``/v1/...`` (api/openai.py), ``/v2/...`` (api/kserve.py), ``/health`` (live),
``/ready`` (every model loaded and warmed), ``/metrics`` (Prometheus), ``/docs`` (OpenAPI).
Every error leaves in its protocol's envelope: KServe's ``{"error": "..."}`` under ``/v2``,
OpenAI's ``{"error": {message, type, param, code}}`` everywhere else, with ``Retry-After``
when the error says a retry will help. The app loads nothing itself: the composition root
(``serving/app.py``, or ``serving/deployments.py`` on Ray) owns the registry's lifetime.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import __version__
from serving.api.auth import audit
from serving.api.classify import classify_router
from serving.api.evaluate import caller_project_policy, evaluate_router
from serving.api.kserve import KSERVE_PREFIX, kserve_router
from serving.api.openai import openai_router
from serving.api.request_id import RequestIdMiddleware, request_id
from serving.engine.types import Registry, readiness_error
from serving.errors import (
    ClientClosedRequest,
    ModelLoadFailed,
    ModerationError,
    clip,
)

log = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_http_app(registry: Registry, lifespan: Lifespan | None = None) -> FastAPI:
    """Routes over ``registry``; ``lifespan`` (optional) runs around the app's lifetime."""
    settings, metrics = registry.settings, registry.metrics
    app = FastAPI(
        title="modserve",
        version=__version__,
        lifespan=lifespan,
        description="OpenAI-compatible moderation classifier server.",
        docs_url=None,  # served below from local assets: /docs works offline
        redoc_url=None,
    )
    offline_docs(app)
    app.state.registry = registry
    app.add_middleware(RequestIdMiddleware, log_access=settings.access_log, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
            expose_headers=[
                "x-request-id",
                "retry-after",
                "x-unscored-categories",
                "x-cached-inputs",
            ],
        )
    app.include_router(openai_router(registry))
    app.include_router(classify_router(registry))
    app.include_router(evaluate_router(registry, caller_project_policy(settings)))
    app.include_router(kserve_router(registry))

    def error_response(
        request: Request, err: ModerationError, headers: Mapping[str, str] | None = None
    ) -> JSONResponse:
        kserve = request.url.path.startswith(KSERVE_PREFIX)
        body: dict[str, Any] = {"error": err.message} if kserve else err.envelope()
        out = {**err.headers, **(headers or {})}
        if is_decision_route(request.url.path):
            audit(request, error=err)
        if (retry := err.retry_after(settings.retry_after_s)) is not None:
            out["Retry-After"] = str(retry)
        log_error(request, err)
        return JSONResponse(body, status_code=err.status, headers=out)

    @app.exception_handler(ModerationError)
    async def _moderation_error(request: Request, exc: ModerationError) -> JSONResponse:
        if request.url.path not in OPEN_PATHS:  # a probe's 503 is an answer, not a failure
            metrics.request_failures.labels(type(exc).__name__).inc()
        return error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = ModerationError(str(exc.detail))
        err.status, err.type = exc.status_code, "invalid_request_error"
        return error_response(request, err, exc.headers)  # e.g. Allow on a 405

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, clip(request.url.path),
                  exc_info=exc)  # fmt: skip
        metrics.request_failures.labels("internal").inc()
        return error_response(request, ModerationError(f"Internal error: {type(exc).__name__}."))

    _document_bearer_auth(app)

    @app.get("/health", summary="Liveness: the process answers and its models did not fail")
    async def health() -> dict[str, str]:
        if registry.load_error:  # permanent: restart with a fixed configuration
            raise ModelLoadFailed.because(registry.load_error)
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: every model loaded and warmed")
    async def ready() -> Response:
        if (err := readiness_error(registry)) is not None:
            raise err
        return JSONResponse({"status": "ready"})  # no model names: open route (probes)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


def is_decision_route(path: str) -> bool:
    """Routes whose every answer is a moderation or evaluation decision (audited)."""
    return path in DECISION_PATHS or (path.startswith("/v2/models/") and path.endswith("/infer"))


DECISION_PATHS = (
    "/v1/moderations",
    "/api/llm/moderations",
    "/v1/classify",
    "/v1/evaluate/toxicity",
)
OPEN_PATHS = ("/health", "/ready", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready")


def _document_bearer_auth(app: FastAPI) -> None:
    """The OpenAPI spec says which routes take ``Authorization: Bearer <key>`` (every route
    but the open probes and metrics; enforced only when MODSERVE_API_KEYS is set)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        spec.setdefault("components", {})["securitySchemes"] = {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "One of MODSERVE_API_KEYS (no key needed when it is unset).",
            }
        }
        for path, ops in spec.get("paths", {}).items():
            if path not in OPEN_PATHS:
                for op in ops.values():
                    op["security"] = [{"bearerAuth": []}]
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def log_error(request: Request, err: ModerationError) -> None:
    """One line per error answer, every client-supplied part escaped and clipped; no
    traceback (an unexpected exception gets its own, in ``_unexpected``). A client that
    hung up is DEBUG; client errors and retryable ones (4xx, 429, 503 loading) INFO; a
    passed deadline WARNING; other server errors ERROR."""
    if isinstance(err, ClientClosedRequest):
        level = logging.DEBUG
    elif err.status < 500 or err.retryable:
        level = logging.INFO
    else:
        level = logging.WARNING if err.status == 504 else logging.ERROR
    if log.isEnabledFor(level):
        log.log(level, "%s %s -> %d %s: %s [%s]", request.method, clip(request.url.path),
                err.status, err.code or err.type, clip(err.message, 300),
                request_id(request.scope))  # fmt: skip


DOCS_ASSETS = "/docs-assets"


def offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI 5 (renders OpenAPI 3.1) from the assets the ``fastapi-offline``
    package ships (MIT), served by this process: no CDN, so it works air-gapped."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=static), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="modserve - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )
