"""``POST /v1/classify``: any served model's own labels and scores.

For models whose labels are not (or not all) OpenAI categories (``modserve import-hf``);
modserve's own models answer with their categories. The request is the moderation request
(``input``: a string or a list, optional ``model``); errors use the same envelope.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from serving.api.auth import require_access
from serving.api.openai import classify_request
from serving.api.request_id import note_access
from serving.engine.types import Registry
from serving.protocol.openai import ERROR_RESPONSES, ModerationRequest, new_id


class LabelScores(BaseModel):
    labels: dict[str, float] = Field(description="every label of the model: its score")
    flagged_labels: list[str] = Field(description="labels at or above their threshold")
    flagged: bool


class ClassifyResponse(BaseModel):
    id: str
    model: str
    results: list[LabelScores]


def classify_router(registry: Registry) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_access(registry, "moderate"))])

    @router.post(
        "/v1/classify",
        summary="A model's own labels and scores (imported models included)",
        response_model=ClassifyResponse,
        responses=ERROR_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ModerationRequest.model_json_schema()}},
            }
        },
    )
    async def classify(request: Request) -> ClassifyResponse:
        engine, _, texts, result = await classify_request(request, registry)
        note_access(request.scope, engine.name, len(texts), result.timings.tokens)
        cats = result.categories
        return ClassifyResponse(
            id=new_id(),
            model=engine.name,
            results=[
                LabelScores(
                    labels=dict(zip(cats, map(float, s), strict=True)),
                    flagged_labels=[w for w, f in zip(cats, row, strict=True) if f],
                    flagged=bool(row.any()),
                )
                for s, row in zip(result.scores, result.flags, strict=True)
            ],
        )

    return router
