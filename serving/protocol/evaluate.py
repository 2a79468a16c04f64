"""``POST /v1/evaluate/toxicity`` request and response, in wire form.

A request is one ``{"prompt", "response"}`` pair or a batch ``{"items": [pair, ...]}``.
``parse_evaluate_request`` validates a decoded JSON body against the models below and
raises ``InvalidRequest`` (400, OpenAI envelope) naming the offending ``param`` and, for a
size, the limit; FastAPI's own 422 validation is never used. The response models are
what ``serving/gateway/evaluation.py`` builds and what the OpenAPI docs show.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import InvalidRequest, clip

RiskLevel = Literal["acceptable", "review_needed", "reject"]
Action = Literal["allow", "review", "removal_with_review", "block"]
Severity = Literal["low", "medium", "high"]
ScoreDriver = Literal["response", "prompt_context"]

MAX_CHARS_SETTING = "MODSERVE_EVALUATE_MAX_CHARS"
MAX_INPUTS_SETTING = "MODSERVE_MAX_INPUTS_PER_REQUEST"
INPUTS_PER_ITEM = 2  # every item is scored as the response alone and in the prompt's context


class EvaluateItem(BaseModel):
    """One exchange to evaluate: the response is judged, the prompt is its context."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="What the LLM was asked (context for the response).")
    response: str = Field(description="What the LLM answered: the text that is evaluated.")


class EvaluateBatchRequest(BaseModel):
    """Several exchanges in one request; they share every model's batcher."""

    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[EvaluateItem] = Field(
        min_length=1,
        description="1 to MODSERVE_MAX_INPUTS_PER_REQUEST / 2 items (each is two model inputs).",
    )


class Evaluation(BaseModel):
    risk_level: RiskLevel = Field(
        description="acceptable below the review_needed threshold, review_needed below "
        "reject, reject from the reject threshold up."
    )
    pass_fail: Literal["pass", "fail"] = Field(description="pass iff risk_level is acceptable.")
    flagged: bool = Field(
        description="A model flagged a category of the response at its own thresholds, or "
        "risk_level is reject."
    )


class ModelScore(BaseModel):
    model: str
    individual_score: float = Field(ge=0, le=1, description="The model's score for the item.")
    weight: float = Field(
        ge=0, le=1, description="Its weight, normalised over the answering models."
    )
    weighted_contribution: float = Field(ge=0, le=1, description="weight x individual_score.")
    role: str = Field(description="The role the policy gives the model (echoed, no effect).")


class StatisticalMetrics(BaseModel):
    standard_deviation: float = Field(ge=0, description="Weighted, of the models' scores.")
    range: float = Field(ge=0, le=1, description="Highest minus lowest model score.")
    coefficient_variation: float = Field(
        ge=0, description="standard_deviation / final_consensus_score (0 when that is 0)."
    )


class ConsensusAnalysis(BaseModel):
    method: Literal["weighted_mean"]
    models_succeeded: int = Field(ge=1)
    models_failed: int = Field(ge=0)
    agreement_score: float = Field(
        ge=0, le=1, description="1 - 2 x standard_deviation: 1 = every model gave the same score."
    )
    model_scores: list[ModelScore] = Field(description="One entry per model that answered.")
    statistical_metrics: StatisticalMetrics
    disagreement_detected: bool = Field(description="range above the disagreement limit (0.3).")


class ModelLatency(BaseModel):
    model: str
    latency_ms: float = Field(ge=0, description="Its call, queueing included (whole batch).")
    succeeded: bool
    error: str | None = Field(description="Why the model failed; null when it answered.")


class ModelExecution(BaseModel):
    total_latency_ms: float = Field(
        ge=0, description="Wall time of the ensemble (models run concurrently; whole batch)."
    )
    models: list[ModelLatency] = Field(description="Every model of the ensemble.")


class CategoryScore(BaseModel):
    category: str
    score: float = Field(ge=0, le=1)


class ModelDetails(BaseModel):
    model: str
    role: str
    score: float = Field(
        ge=0, le=1, description="Its top category score on the response alone: the verdict's."
    )
    in_context_score: float = Field(
        ge=0, le=1, description="Its top category score on the prompt + response."
    )
    score_driver: ScoreDriver = Field(
        description="prompt_context when the response reaches a higher risk level in the "
        "prompt's context than alone (the item then needs human review); response otherwise."
    )
    category_scores: dict[str, float] = Field(
        description="Every category the model scores (OpenAI names), on the response alone."
    )
    flagged_categories: list[str] = Field(
        description="Categories of the response flagged at the model's own thresholds."
    )
    top_categories: list[CategoryScore] = Field(description="The three highest, highest first.")


class RiskFactor(BaseModel):
    kind: Literal["category", "prompt_context", "model_disagreement", "model_failure"]
    detail: str


class Thresholds(BaseModel):
    review_needed: float = Field(gt=0, lt=1)
    reject: float = Field(gt=0, lt=1)
    block: float = Field(gt=0, lt=1)


class RiskAssessment(BaseModel):
    thresholds: Thresholds = Field(description="The policy's thresholds used for this answer.")
    risk_factors: list[RiskFactor]
    model_agreement: float = Field(
        ge=0,
        le=1,
        description="Weighted share of the models whose own score falls in the consensus's "
        "risk level.",
    )


class CategorySeverity(BaseModel):
    score: float = Field(ge=0, le=1, description="Weighted mean over the models that score it.")
    severity: Severity = Field(description="low < reject <= medium < block <= high.")
    flagged_by: list[str] = Field(description="Models that flagged it at their own thresholds.")


class ToxicityAnalysis(BaseModel):
    categories_detected: list[str] = Field(
        description="OpenAI categories at or above review_needed, or flagged by a model."
    )
    severity_breakdown: dict[str, CategorySeverity]
    recommended_action: Action = Field(
        description="allow < review_needed <= review < reject <= removal_with_review < block "
        "<= block."
    )
    human_review_required: bool = Field(
        description="recommended_action is review or removal_with_review, the models "
        "disagree, the prompt escalates a model's reading (score_driver), or a model flagged "
        "a response the consensus passes."
    )


class ItemEvaluation(BaseModel):
    """The evaluation of one exchange (one entry of a batch's ``results``)."""

    final_consensus_score: float = Field(
        ge=0, le=1, description="Weighted mean of the models' scores."
    )
    consensus_confidence: float = Field(
        ge=0,
        le=1,
        description="agreement_score x (0.5 + 0.5 x min(1, distance to the nearest "
        "threshold / 0.15)): 0.5 x agreement on a threshold, agreement when clear of all.",
    )
    evaluation: Evaluation
    consensus_analysis: ConsensusAnalysis
    model_execution: ModelExecution
    individual_model_details: list[ModelDetails]
    risk_assessment: RiskAssessment
    toxicity_analysis: ToxicityAnalysis


class EvaluationMetadata(BaseModel):
    evaluation_timestamp: str = Field(description="ISO 8601, UTC.")
    evaluator_version: str = Field(description="Server version / scoring rule version.")
    request_id: str = Field(description="The request's x-request-id.")


class EvaluationResponse(ItemEvaluation):
    """Answer to a single ``{"prompt", "response"}``."""

    metadata: EvaluationMetadata


class BatchEvaluationResponse(BaseModel):
    """Answer to ``{"items": [...]}``: one result per item, in order."""

    results: list[ItemEvaluation]
    metadata: EvaluationMetadata


def parse_evaluate_request(
    body: Any, max_items: int, max_chars_per_field: int
) -> tuple[list[EvaluateItem], bool]:
    """A decoded JSON body -> (items, whether it was the batch form), or ``InvalidRequest``
    naming the ``param`` (``response``, ``items[3].prompt``, ...) and, for a size, the limit:
    at most ``max_items`` items, ``max_chars_per_field`` characters per prompt and response."""
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.", param=None)
    batch = "items" in body
    try:
        if batch:
            items = EvaluateBatchRequest.model_validate(body).items
        else:
            items = [EvaluateItem.model_validate(body)]
    except ValidationError as e:
        raise _invalid(e) from None
    if len(items) > max_items:
        raise InvalidRequest(
            f"'items' has {len(items)} items; at most {max_items} are allowed per request "
            f"(each item is {INPUTS_PER_ITEM} model inputs: {MAX_INPUTS_SETTING} / "
            f"{INPUTS_PER_ITEM}).",
            param="items",
        )
    for i, item in enumerate(items):
        for field in ("prompt", "response"):
            n = len(getattr(item, field))
            if n > max_chars_per_field:
                param = f"items[{i}].{field}" if batch else field
                raise InvalidRequest(
                    f"'{param}' is {n} characters; the limit is {max_chars_per_field} "
                    f"characters per field ({MAX_CHARS_SETTING}).",
                    param=param,
                    code="string_above_max_length",
                )
    return items, batch


_ITEM = '{"prompt": string, "response": string}'
_JSON_TYPES = {int: "a number", float: "a number", bool: "a boolean", type(None): "null",
               list: "an array", dict: "an object"}  # fmt: skip


def _invalid(err: ValidationError) -> InvalidRequest:
    """The first problem pydantic found, as a 400 in OpenAI's words."""
    first = err.errors(include_url=False)[0]
    loc = first["loc"]
    kind = first["type"]
    if kind == "extra_forbidden":
        name = clip(loc[-1]).strip("'\"")
        return InvalidRequest(
            f"Unrecognized request argument supplied: {clip(loc[-1])}. Send {_ITEM} or "
            f'{{"items": [{_ITEM}, ...]}}.',
            param=_param((*loc[:-1], name)),
        )
    param = _param(loc)
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    if kind == "string_type":
        got = _JSON_TYPES.get(type(first["input"]), "a non-string")
        return InvalidRequest(f"'{param}' must be a string, not {got}.", param=param)
    if kind == "too_short" and loc == ("items",):
        return InvalidRequest("'items' must not be an empty array.", param="items")
    if kind == "list_type":
        return InvalidRequest(f"'{param}' must be an array of {_ITEM}.", param=param)
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return InvalidRequest(f"'{param}' must be an object {_ITEM}.", param=param)
    return InvalidRequest(f"'{param}': {first['msg']}.", param=param)


def _param(loc: tuple[int | str, ...]) -> str:
    """pydantic's location -> the param name: ``("items", 3, "prompt")`` -> ``items[3].prompt``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
