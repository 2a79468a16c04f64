"""``POST /v1/evaluate/toxicity``: an LLM response judged in its prompt's context by the
evaluation ensemble of the request's policy.

Read and validate the body (``protocol/evaluate.py``), run every model of the ensemble
concurrently on the same inputs (each through its own batcher), hand what they answered to
``gateway/evaluation.py`` (every scoring rule lives there), encode. A model that fails is
reported and left out of the consensus; when all fail the request fails with their cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter

from serving.api.auth import audit, charge_and_check_model, principal_of, require_access
from serving.api.body import read_json, until_disconnect
from serving.api.openai import inline_refs
from serving.api.request_id import note_access, request_id
from serving.config import Settings
from serving.engine.types import Registry
from serving.errors import ModerationError, clip
from serving.gateway.evaluation import (
    EnsembleMember,
    EvaluationPolicy,
    MemberRun,
    ensemble_failure,
    evaluate_item,
    metadata,
    model_inputs,
    project_policy,
)
from serving.protocol.evaluate import (
    INPUTS_PER_ITEM,
    BatchEvaluationResponse,
    EvaluateBatchRequest,
    EvaluateItem,
    EvaluationResponse,
    parse_evaluate_request,
)
from serving.protocol.openai import ERROR_RESPONSES, openai_view

log = logging.getLogger(__name__)

EVALUATE_PATH = "/v1/evaluate/toxicity"
PolicyForRequest = Callable[[Request], EvaluationPolicy]


def caller_project_policy(settings: Settings) -> PolicyForRequest:
    """Each request gets its caller's project policy (``require_access`` found the caller;
    without a policy file: the implicit project, i.e. the default model alone)."""
    return lambda request: project_policy(principal_of(request).project, settings)


def evaluate_router(registry: Registry, policy_for_request: PolicyForRequest) -> APIRouter:
    """The route over ``registry``; ``policy_for_request`` picks the ensemble, thresholds
    and limits of each request (``caller_project_policy(settings)``)."""
    settings = registry.settings
    router = APIRouter(dependencies=[Depends(require_access(registry, "evaluate"))])
    max_items = max(1, settings.max_inputs_per_request // INPUTS_PER_ITEM)

    async def run(member: EnsembleMember, texts: list[str]) -> MemberRun:
        """One model's call, timed; its failure is an answer (the others may still decide)."""
        t0 = time.perf_counter()
        try:
            engine = registry.resolve(member.model)
            registry.metrics.requests.labels(engine.name).inc()
            result = await engine.classify(texts)
        except Exception as e:
            took_ms = (time.perf_counter() - t0) * 1000
            if isinstance(e, ModerationError):
                log.warning("evaluation model %s failed: %s", clip(member.model), e.message)
            else:
                log.error("evaluation model %s failed", clip(member.model), exc_info=e)
            return MemberRun(member, took_ms, error=e)
        cats, scores, flags = openai_view(
            engine.label_map, result.categories, result.scores, result.flags
        )
        result = replace(result, categories=cats, scores=scores, flags=flags)
        return MemberRun(member, (time.perf_counter() - t0) * 1000, result=result)

    async def evaluate(request: Request) -> Response:
        policy = policy_for_request(request)
        body = await read_json(request, settings.max_request_body_bytes)
        items, batch = parse_evaluate_request(body, max_items, policy.max_chars_per_field)
        texts = model_inputs(items)
        charge_and_check_model(request, texts, None)
        t0 = time.perf_counter()
        runs = await until_disconnect(
            request, asyncio.gather(*(run(m, texts) for m in policy.ensemble))
        )
        total_ms = (time.perf_counter() - t0) * 1000
        answered = [r for r in runs if r.result is not None]
        if not answered:
            raise ensemble_failure(runs)
        models = ",".join(r.member.model for r in answered)
        tokens = sum(r.result.timings.tokens for r in answered if r.result is not None)
        note_access(request.scope, models, len(texts), tokens)
        primary = answered[0].result
        assert primary is not None
        responses = slice(0, None, INPUTS_PER_ITEM)  # rows of the responses read alone
        audit(request, model=models, texts=[i.response for i in items], result=replace(
            primary, scores=primary.scores[responses], flags=primary.flags[responses]))  # fmt: skip
        results = [evaluate_item(i, runs, policy, total_ms) for i in range(len(items))]
        meta = metadata(request_id(request.scope))
        payload = (
            BatchEvaluationResponse(results=results, metadata=meta)
            if batch
            else EvaluationResponse(**dict(results[0]), metadata=meta)
        )
        return JSONResponse(payload.model_dump(mode="json"), headers={"x-model": models})

    request_schema = inline_refs(TypeAdapter(EvaluateItem | EvaluateBatchRequest).json_schema())
    router.add_api_route(
        EVALUATE_PATH,
        evaluate,
        methods=["POST"],
        summary="Evaluate an LLM response (in its prompt's context) with the model ensemble",
        description="Every model of the project's ensemble scores the response alone (its "
        "top category is the model's score) and the prompt + response (when that reads a "
        "risk level higher, the item goes to human review). The verdict comes from the "
        "weighted mean: acceptable / review_needed / reject from 0.3 / 0.6, block from 0.8 "
        '(the project\'s risk_thresholds). Send one {"prompt", "response"} or {"items": '
        "[...]}; 400 names the field and the limit (MODSERVE_EVALUATE_MAX_CHARS per field, "
        "MODSERVE_MAX_INPUTS_PER_REQUEST / 2 items).",
        response_model=None,
        responses={
            200: {
                "description": "One evaluation, or one per item of a batch.",
                "model": EvaluationResponse | BatchEvaluationResponse,
            },
            **ERROR_RESPONSES,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema}},
            }
        },
    )
    return router
