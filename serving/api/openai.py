"""OpenAI routes: ``POST /v1/moderations`` (+ alias ``/api/llm/moderations``), ``GET /v1/models``.

Decode -> registry's classifier -> encode, nothing else; errors are raised as
``ModerationError`` and leave through the app's handler (api/http.py).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serving.api.auth import audit, charge_and_check_model, project_view, require_access
from serving.api.body import read_json, until_disconnect
from serving.api.request_id import note_access
from serving.config import OPENAI_MODEL_ALIASES
from serving.engine.types import Classifier, ClassifyResult, Registry
from serving.protocol.openai import (
    ERROR_RESPONSES,
    UNSCORED,
    ModerationRequest,
    ModerationResponse,
    build_response,
    echoed_model,
    openai_categories,
    openai_view,
    parse_request,
    unscored_categories,
)

log = logging.getLogger(__name__)

MODERATION_PATHS = ("/v1/moderations", "/api/llm/moderations")


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
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


async def classify_request(
    request: Request, registry: Registry
) -> tuple[Classifier, str | None, list[str], ClassifyResult]:
    """A moderation request body (``input``, ``model``) -> (classifier, the model name as
    sent, texts, result): read, validated, counted, classified; for /v1/moderations and
    /v1/classify."""
    settings = registry.settings
    body = await read_json(request, settings.max_request_body_bytes)
    texts, requested = parse_request(
        body, settings.max_inputs_per_request, settings.max_input_chars
    )
    engine = registry.resolve(requested)
    charge_and_check_model(request, texts, engine.name)
    registry.metrics.requests.labels(engine.name).inc()
    result = project_view(request, await until_disconnect(request, engine.classify(texts)))
    audit(request, engine, result, texts)
    return engine, requested, texts, result


def openai_router(registry: Registry) -> APIRouter:
    router = APIRouter()
    moderate = [Depends(require_access(registry, "moderate"))]
    request_schema = inline_refs(ModerationRequest.model_json_schema())

    async def moderations(request: Request) -> Response:
        engine, requested, texts, result = await classify_request(request, registry)
        categories, scores, flags = openai_view(
            engine.label_map, result.categories, result.scores, result.flags
        )
        payload = build_response(
            echoed_model(requested, engine.name), categories, scores, flags, result.extras
        )
        t = result.timings
        note_access(request.scope, engine.name, len(texts), t.tokens)
        headers = {
            "x-compute-time": f"{t.total_s * 1000:.3f}",
            "x-tokenization-time": f"{t.tokenization_s * 1000:.3f}",
            "x-queue-time": f"{t.queue_s * 1000:.3f}",
            "x-inference-time": f"{t.inference_s * 1000:.3f}",
            "x-compute-tokens": str(t.tokens),
            "x-compute-characters": str(t.characters),
            "x-cached-inputs": str(t.cached_inputs),
            "x-model": engine.name,
        }
        if unscored := unscored_categories(categories):
            headers["x-unscored-categories"] = ",".join(unscored)
        return JSONResponse(payload, headers=headers)

    for path in MODERATION_PATHS:
        router.add_api_route(
            path,
            moderations,
            methods=["POST"],
            dependencies=moderate,
            summary="Classify text for moderation",
            response_model=None,
            responses={200: {"model": ModerationResponse}, **ERROR_RESPONSES},
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": request_schema}},
                }
            },
            include_in_schema=path == MODERATION_PATHS[0],
        )

    @router.get(
        "/v1/models",
        summary="List served models (OpenAI list format)",
        dependencies=[Depends(require_access(registry, None))],
        responses={401: ERROR_RESPONSES[401]},
    )
    async def list_models() -> dict[str, Any]:
        engines = registry.engines
        default = engines.get(registry.settings.model)
        served = [(m, e) for m, e in engines.items()]
        if default is not None:
            served += [(alias, default) for alias in OPENAI_MODEL_ALIASES]
        return {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": registry.created,
                    "owned_by": "modserve",
                    "categories": openai_categories(e.label_map, e.categories),
                    UNSCORED: unscored_categories(openai_categories(e.label_map, e.categories)),
                    **({"labels": list(e.categories)} if e.label_map else {}),
                    **_runtime(e),
                }
                for m, e in served
            ],
        }

    return router


def _runtime(engine: Classifier) -> dict[str, Any]:
    """``{"runtime": {backend, dtype, reason, probes}}`` of a single model (not an
    ensemble): what serves it on this machine and the start-up timings that chose it."""
    choice = getattr(engine, "choice", None)
    return {"runtime": choice.as_dict()} if choice is not None else {}
