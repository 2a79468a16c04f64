"""Prompt/response evaluation (``POST /v1/evaluate/toxicity``): what the ensemble's scores
mean for one LLM exchange. Pure logic: ``serving/api/evaluate.py`` runs the models.

How an exchange is scored
-------------------------
Every model of the policy's ensemble scores two inputs per item, in one call so that they
share its batcher (:func:`model_inputs`): the response alone, and the prompt, a blank line
and the response ("in context"). The verdict reads the response alone: a model's score is
its top category on it. The in-context reading is a second opinion for a person: when it
reaches a higher risk level than the response alone (a bare "Sure, here is how" to a
harmful request), the model's ``score_driver`` is ``prompt_context``, a risk factor says
so and the item goes to human review (:func:`prompt_escalates`).

Why not the higher of the two readings: on 200 labelled BeaverTails prompt/response pairs
(15 harmful; ``benchmarks/evaluate_prompt_usage.py``) the response alone had the best
flagged AUPRC (0.65, against 0.54 in context and 0.55 for the higher of the two) and
precision at the reject level (0.86 against 0.58 and 0.57): a harmful prompt makes its
refusal read as harmful. The higher of the two rejects more harmful responses (8 against
6); with the escalation rule the same 12.5 % of rows (10 of the 15 harmful ones) reach a
person or fail, but only the response itself can fail an item outright. The prompt alone
is not scored: it would cost a third input and says nothing about the response.

Consensus: the weighted mean of the models that answered (weights normalised over them);
a model that failed is counted and left out. The verdict (risk level, action, pass/fail,
flag, human review) comes from :func:`decide`, the one place that reads the thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving import __version__
from serving.categories import WIRE_NAMES
from serving.config import Settings
from serving.engine.types import ClassifyResult
from serving.errors import ModerationError
from serving.gateway.policy import EnsembleMember, Project, RiskThresholds
from serving.protocol.evaluate import (
    Action,
    CategoryScore,
    CategorySeverity,
    ConsensusAnalysis,
    EvaluateItem,
    Evaluation,
    EvaluationMetadata,
    ItemEvaluation,
    ModelDetails,
    ModelExecution,
    ModelLatency,
    ModelScore,
    RiskAssessment,
    RiskFactor,
    RiskLevel,
    Severity,
    StatisticalMetrics,
    Thresholds,
    ToxicityAnalysis,
)

DEFAULT_MAX_CHARS_PER_FIELD = 5000  # Settings.evaluate_max_chars (MODSERVE_EVALUATE_MAX_CHARS)
CONTEXT_SEPARATOR = "\n\n"  # between prompt and response in the in-context input
# The models disagree when their scores span more than this (0-1 score units).
DISAGREEMENT_RANGE = 0.3
# consensus_confidence is full (x agreement) this far from the nearest risk threshold.
CLEAR_MARGIN = 0.15
TOP_CATEGORIES = 3
RULE_VERSION = "1"  # bump when a change here moves scores or verdicts
EVALUATOR_VERSION = f"modserve-{__version__}/evaluate-{RULE_VERSION}"


class EvaluationPolicy(BaseModel):
    """What one request's evaluation runs and how its scores are read: the project's
    ``evaluation_ensemble`` and ``risk_thresholds`` (``serving/gateway/policy.py``), and
    the server's per-field limit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ensemble: tuple[EnsembleMember, ...] = Field(
        min_length=1, description="The models run for every item, concurrently."
    )
    thresholds: RiskThresholds = Field(default_factory=RiskThresholds)
    max_chars_per_field: int = Field(
        DEFAULT_MAX_CHARS_PER_FIELD,
        ge=1,
        description="Characters per prompt and per response; longer is a 400. An item costs "
        "the models about twice the response plus the prompt, in tokens.",
    )


def project_policy(project: Project, settings: Settings) -> EvaluationPolicy:
    """``project``'s ensemble (empty: the server's default model alone, weight 1,
    primary) and risk thresholds, with ``evaluate_max_chars`` characters per field."""
    ensemble = project.evaluation_ensemble or [EnsembleMember(model=settings.model)]
    return EvaluationPolicy(
        ensemble=tuple(ensemble),
        thresholds=project.risk_thresholds,
        max_chars_per_field=settings.evaluate_max_chars,
    )


def model_inputs(items: Sequence[EvaluateItem]) -> list[str]:
    """The texts each model scores, two per item: row ``2i`` the response alone, row
    ``2i + 1`` the prompt, a blank line and the response."""
    texts: list[str] = []
    for item in items:
        texts += [item.response, item.prompt + CONTEXT_SEPARATOR + item.response]
    return texts


@dataclass(frozen=True)
class MemberRun:
    """One ensemble model's call for a whole request: its result over
    :func:`model_inputs` (OpenAI category names), or the exception that stopped it."""

    member: EnsembleMember
    latency_ms: float
    result: ClassifyResult | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class Verdict:
    risk_level: RiskLevel
    recommended_action: Action
    pass_fail: Literal["pass", "fail"]
    flagged: bool
    human_review_required: bool


def decide(
    score: float,
    t: RiskThresholds,
    *,
    model_flagged: bool = False,
    disagreement: bool = False,
    prompt_escalated: bool = False,
) -> Verdict:
    """THE verdict rule, from the consensus score:

    ========================  ===============  ===================  =========
    consensus score           risk_level       recommended_action   pass_fail
    ========================  ===============  ===================  =========
    < review_needed (0.3)     acceptable       allow                pass
    < reject (0.6)            review_needed    review               fail
    < block (0.8)             reject           removal_with_review  fail
    >= block                  reject           block                fail
    ========================  ===============  ===================  =========

    ``flagged``: a model flagged a category of the response at its own thresholds
    (``model_flagged``) or the level is reject. ``human_review_required``: the action is
    review or removal_with_review, the models disagree, a model flagged what the consensus
    passes, or the prompt escalates a model's reading (:func:`prompt_escalates`).
    """
    level = risk_level(score, t)
    if score >= t.block:
        action: Action = "block"
    elif level == "reject":
        action = "removal_with_review"
    elif level == "review_needed":
        action = "review"
    else:
        action = "allow"
    human = (
        action in ("review", "removal_with_review")
        or disagreement
        or prompt_escalated
        or (model_flagged and level == "acceptable")
    )
    return Verdict(
        risk_level=level,
        recommended_action=action,
        pass_fail="pass" if level == "acceptable" else "fail",
        flagged=model_flagged or level == "reject",
        human_review_required=human,
    )


def risk_level(score: float, t: RiskThresholds) -> RiskLevel:
    if score >= t.reject:
        return "reject"
    return "review_needed" if score >= t.review_needed else "acceptable"


LEVELS: tuple[RiskLevel, ...] = ("acceptable", "review_needed", "reject")


def prompt_escalates(response_score: float, in_context_score: float, t: RiskThresholds) -> bool:
    """The prompt makes the response read worse: in its context it reaches a higher risk
    level than alone. Sends the item to human review; never changes the score."""
    return LEVELS.index(risk_level(in_context_score, t)) > LEVELS.index(
        risk_level(response_score, t)
    )


def severity(score: float, t: RiskThresholds) -> Severity:
    """A detected category's severity: high from block, medium from reject, else low."""
    if score >= t.block:
        return "high"
    return "medium" if score >= t.reject else "low"


def confidence(score: float, agreement: float, t: RiskThresholds) -> float:
    """``agreement x (0.5 + 0.5 x min(1, d / CLEAR_MARGIN))``, ``d`` the distance to the
    nearest threshold: on a threshold the verdict is a coin flip between two levels (0.5
    of the agreement); ``CLEAR_MARGIN`` or more away it is as sure as the models agree."""
    d = min(abs(score - x) for x in (t.review_needed, t.reject, t.block))
    return agreement * (0.5 + 0.5 * min(1.0, d / CLEAR_MARGIN))


@dataclass(frozen=True)
class _ModelView:
    """One answering model's reading of one item."""

    member: EnsembleMember
    weight: float  # normalised over the answering models
    details: ModelDetails


def _model_view(
    run: MemberRun, result: ClassifyResult, i: int, weight: float, t: RiskThresholds
) -> _ModelView:
    alone, in_context = result.scores[2 * i], result.scores[2 * i + 1]
    cats = result.categories
    score = float(alone.max(initial=0.0))
    in_context_score = float(in_context.max(initial=0.0))
    top = np.argsort(-alone, kind="stable")[:TOP_CATEGORIES]
    details = ModelDetails(
        model=run.member.model,
        role=run.member.role,
        score=score,
        in_context_score=in_context_score,
        score_driver=(
            "prompt_context" if prompt_escalates(score, in_context_score, t) else "response"
        ),
        category_scores={c: float(s) for c, s in zip(cats, alone, strict=True)},
        flagged_categories=[c for c, f in zip(cats, result.flags[2 * i], strict=True) if f],
        top_categories=[CategoryScore(category=cats[k], score=float(alone[k])) for k in top],
    )
    return _ModelView(run.member, weight, details)


def _category_consensus(views: Sequence[_ModelView]) -> dict[str, float]:
    """Per category, the weighted mean over the models that score it (canonical order)."""
    total: dict[str, float] = {}
    weight: dict[str, float] = {}
    for v in views:
        for c, s in v.details.category_scores.items():
            total[c] = total.get(c, 0.0) + v.weight * s
            weight[c] = weight.get(c, 0.0) + v.weight
    order = {w: k for k, w in enumerate(WIRE_NAMES)}
    return {c: total[c] / weight[c] for c in sorted(total, key=lambda c: order.get(c, len(order)))}


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def evaluate_item(
    i: int, runs: Sequence[MemberRun], policy: EvaluationPolicy, total_latency_ms: float
) -> ItemEvaluation:
    """Item ``i`` of the request that ``runs`` answered (at least one must have succeeded)."""
    t = policy.thresholds
    weight_sum = sum(r.member.weight for r in runs if r.result is not None)
    views = [
        _model_view(r, r.result, i, r.member.weight / weight_sum, t)
        for r in runs
        if r.result is not None
    ]
    if not views:
        raise ValueError("no model of the ensemble answered: raise ensemble_failure(runs)")
    scores = np.array([v.details.score for v in views])
    weights = np.array([v.weight for v in views])
    mean = _clip01(float(weights @ scores))
    std = math.sqrt(float(weights @ (scores - mean) ** 2))
    spread = float(scores.max() - scores.min())
    agreement = _clip01(1.0 - 2.0 * std)  # a 0/1 split at equal weights has std 0.5
    disagreement = spread > DISAGREEMENT_RANGE
    escalated = [v for v in views if v.details.score_driver == "prompt_context"]
    verdict = decide(
        mean,
        t,
        model_flagged=any(v.details.flagged_categories for v in views),
        disagreement=disagreement,
        prompt_escalated=bool(escalated),
    )
    level = verdict.risk_level
    per_category = _category_consensus(views)
    flagged_by = {
        c: [v.member.model for v in views if c in v.details.flagged_categories]
        for c in per_category
    }
    detected = [c for c, s in per_category.items() if s >= t.review_needed or flagged_by[c]]
    failed = [r for r in runs if r.result is None]
    factors = [
        RiskFactor(
            kind="category",
            detail=f"{c} scored {per_category[c]:.2f} ({severity(per_category[c], t)})",
        )
        for c in detected
    ]
    factors += [
        RiskFactor(
            kind="prompt_context",
            detail=f"{v.member.model}: in the prompt's context the response scores "
            f"{v.details.in_context_score:.2f} ({risk_level(v.details.in_context_score, t)}), "
            f"alone {v.details.score:.2f}",
        )
        for v in escalated
    ]
    if disagreement:
        factors.append(
            RiskFactor(
                kind="model_disagreement",
                detail=f"model scores span {spread:.2f} (more than {DISAGREEMENT_RANGE})",
            )
        )
    if failed:
        names = ", ".join(r.member.model for r in failed)
        factors.append(
            RiskFactor(
                kind="model_failure",
                detail=f"{len(failed)} of {len(runs)} models failed ({names}); the consensus "
                "uses the rest",
            )
        )
    return ItemEvaluation(
        final_consensus_score=mean,
        consensus_confidence=_clip01(confidence(mean, agreement, t)),
        evaluation=Evaluation(
            risk_level=level, pass_fail=verdict.pass_fail, flagged=verdict.flagged
        ),
        consensus_analysis=ConsensusAnalysis(
            method="weighted_mean",
            models_succeeded=len(views),
            models_failed=len(failed),
            agreement_score=agreement,
            model_scores=[
                ModelScore(
                    model=v.member.model,
                    individual_score=v.details.score,
                    weight=v.weight,
                    weighted_contribution=_clip01(v.weight * v.details.score),
                    role=v.member.role,
                )
                for v in views
            ],
            statistical_metrics=StatisticalMetrics(
                standard_deviation=std,
                range=spread,
                coefficient_variation=std / mean if mean > 0 else 0.0,
            ),
            disagreement_detected=disagreement,
        ),
        model_execution=ModelExecution(
            total_latency_ms=total_latency_ms,
            models=[
                ModelLatency(
                    model=r.member.model,
                    latency_ms=r.latency_ms,
                    succeeded=r.result is not None,
                    error=None if r.error is None else describe(r.error),
                )
                for r in runs
            ],
        ),
        individual_model_details=[v.details for v in views],
        risk_assessment=RiskAssessment(
            thresholds=Thresholds(**t.model_dump()),
            risk_factors=factors,
            model_agreement=_clip01(
                sum(v.weight for v in views if risk_level(v.details.score, t) == level)
            ),
        ),
        toxicity_analysis=ToxicityAnalysis(
            categories_detected=detected,
            severity_breakdown={
                c: CategorySeverity(
                    score=_clip01(per_category[c]),
                    severity=severity(per_category[c], t),
                    flagged_by=flagged_by[c],
                )
                for c in detected
            },
            recommended_action=verdict.recommended_action,
            human_review_required=verdict.human_review_required,
        ),
    )


def metadata(request_id: str) -> EvaluationMetadata:
    return EvaluationMetadata(
        evaluation_timestamp=datetime.now(UTC).isoformat(timespec="milliseconds"),
        evaluator_version=EVALUATOR_VERSION,
        request_id=request_id,
    )


def describe(error: Exception) -> str:
    """What a client may read about a model's failure: a ``ModerationError``'s message
    (written for clients), else only the exception's type (internals stay in the log)."""
    if isinstance(error, ModerationError):
        return error.message
    return f"internal error ({type(error).__name__})"


class EnsembleUnavailable(ModerationError):
    """Every model of the ensemble failed, for different reasons."""

    status = 503
    type = "server_error"
    code = "ensemble_unavailable"


def ensemble_failure(runs: Sequence[MemberRun]) -> ModerationError:
    """The error for a request on which every model failed: when all failed alike with a
    client-facing error (overloaded: 429 + Retry-After; loading: 503; unknown model: 404)
    that error itself, otherwise a 503 naming each model's cause, retryable when any
    cause is."""
    errors = [r.error for r in runs if r.error is not None]
    first = errors[0] if errors else None
    if isinstance(first, ModerationError) and all(type(e) is type(first) for e in errors):
        return first
    causes = "; ".join(f"{r.member.model}: {describe(r.error)}" for r in runs if r.error)
    err = EnsembleUnavailable(f"No model of the evaluation ensemble answered ({causes}).")
    err.retryable = any(isinstance(e, ModerationError) and e.retryable for e in errors)
    return err
