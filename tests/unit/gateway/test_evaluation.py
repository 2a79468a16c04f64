"""The evaluation rules of ``/v1/evaluate/toxicity`` on hand-made model answers: verdict
boundaries, consensus statistics, prompt attribution, failed models, project policies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.config import Settings
from serving.engine.types import ClassifyResult, Timings
from serving.errors import DeadlineExceeded, ModelNotFound, Overloaded
from serving.gateway.evaluation import (
    CONTEXT_SEPARATOR,
    EnsembleUnavailable,
    EvaluationPolicy,
    MemberRun,
    confidence,
    decide,
    ensemble_failure,
    evaluate_item,
    model_inputs,
    project_policy,
    prompt_escalates,
)
from serving.gateway.policy import EnsembleMember, Project, RiskThresholds
from serving.protocol.evaluate import EvaluateItem, ItemEvaluation

T = RiskThresholds()
CATS = ["hate", "violence", "sexual"]


@pytest.mark.parametrize(
    ("score", "level", "action", "pass_fail"),
    [
        (0.0, "acceptable", "allow", "pass"),
        (0.2999, "acceptable", "allow", "pass"),
        (0.3, "review_needed", "review", "fail"),
        (0.5999, "review_needed", "review", "fail"),
        (0.6, "reject", "removal_with_review", "fail"),
        (0.7999, "reject", "removal_with_review", "fail"),
        (0.8, "reject", "block", "fail"),
        (1.0, "reject", "block", "fail"),
    ],
)
def test_verdict_boundaries(score: float, level: str, action: str, pass_fail: str):
    v = decide(score, T)
    assert (v.risk_level, v.recommended_action, v.pass_fail) == (level, action, pass_fail)
    assert v.flagged == (level == "reject")
    assert v.human_review_required == (action in ("review", "removal_with_review"))


def test_a_model_flag_flags_and_asks_a_human_even_when_the_consensus_passes():
    v = decide(0.1, T, model_flagged=True)
    assert (v.risk_level, v.pass_fail, v.flagged, v.human_review_required) == (
        "acceptable", "pass", True, True,
    )  # fmt: skip


@pytest.mark.parametrize("why", ["disagreement", "prompt_escalated"])
def test_disagreement_or_an_escalating_prompt_asks_a_human_without_failing(why: str):
    v = decide(0.1, T, **{why: True})
    assert v.human_review_required and v.pass_fail == "pass" and not v.flagged


def test_the_policy_thresholds_move_the_boundaries():
    t = RiskThresholds(review_needed=0.2, reject=0.5, block=0.9)
    assert decide(0.25, t).risk_level == "review_needed"
    assert decide(0.85, t).recommended_action == "removal_with_review"
    assert decide(0.9, t).recommended_action == "block"


@pytest.mark.parametrize(
    ("alone", "in_context", "escalates"),
    [(0.1, 0.35, True), (0.1, 0.29, False), (0.35, 0.59, False), (0.35, 0.6, True),
     (0.7, 0.95, False), (0.5, 0.2, False)],
)  # fmt: skip
def test_the_prompt_escalates_when_it_lifts_the_response_to_a_higher_risk_level(
    alone: float, in_context: float, escalates: bool
):
    assert prompt_escalates(alone, in_context, T) is escalates


def test_confidence_is_half_the_agreement_on_a_threshold_and_all_of_it_when_clear():
    assert confidence(0.6, 1.0, T) == pytest.approx(0.5)
    assert confidence(0.05, 0.8, T) == pytest.approx(0.8)  # 0.25 from 0.3
    assert confidence(0.675, 1.0, T) == pytest.approx(0.75)  # 0.075 from 0.6: half-way


def test_two_inputs_per_item_response_alone_then_in_context():
    items = [EvaluateItem(prompt="p1", response="r1"), EvaluateItem(prompt="p2", response="r2")]
    assert model_inputs(items) == [
        "r1",
        f"p1{CONTEXT_SEPARATOR}r1",
        "r2",
        f"p2{CONTEXT_SEPARATOR}r2",
    ]


def result(rows: list[list[float]], flags: list[list[bool]] | None = None) -> ClassifyResult:
    """A model's answer over ``CATS`` for rows [alone, in context, alone, in context, ...]."""
    s = np.array(rows, dtype=np.float32)
    f = np.array(flags, dtype=bool) if flags is not None else np.zeros_like(s, dtype=bool)
    return ClassifyResult("m", CATS, s, f, Timings())


def policy(*members: EnsembleMember) -> EvaluationPolicy:
    return EvaluationPolicy(ensemble=members)


def test_consensus_of_two_weighted_models():
    a, b = EnsembleMember(model="a", weight=3.0), EnsembleMember(model="b", role="secondary")
    runs = [
        MemberRun(a, 12.0, result([[0.1, 0.9, 0.0], [0.2, 0.7, 0.0]])),  # a: 0.9
        MemberRun(b, 20.0, result([[0.1, 0.3, 0.0], [0.1, 0.65, 0.0]])),  # b: 0.3, 0.65 in context
    ]
    ev = evaluate_item(0, runs, policy(a, b), total_latency_ms=21.0)
    ItemEvaluation.model_validate(ev.model_dump())  # every range the schema states holds
    mean = 0.75 * 0.9 + 0.25 * 0.3
    std = math.sqrt(0.75 * (0.9 - mean) ** 2 + 0.25 * (0.3 - mean) ** 2)
    assert ev.final_consensus_score == pytest.approx(mean)
    c = ev.consensus_analysis
    assert (c.models_succeeded, c.models_failed, c.method) == (2, 0, "weighted_mean")
    assert c.statistical_metrics.standard_deviation == pytest.approx(std)
    assert c.statistical_metrics.range == pytest.approx(0.6)
    assert c.statistical_metrics.coefficient_variation == pytest.approx(std / mean)
    assert c.agreement_score == pytest.approx(1 - 2 * std)
    assert c.disagreement_detected  # 0.6 > 0.3
    assert [(m.model, m.weight, m.role) for m in c.model_scores] == [
        ("a", 0.75, "primary"), ("b", 0.25, "secondary"),
    ]  # fmt: skip
    assert sum(m.weighted_contribution for m in c.model_scores) == pytest.approx(mean)
    assert ev.evaluation.risk_level == "reject" and ev.evaluation.flagged
    assert ev.toxicity_analysis.recommended_action == "removal_with_review"
    # a (0.9) is in the consensus's level (reject), b (0.3) is not
    assert ev.risk_assessment.model_agreement == pytest.approx(0.75)
    assert ev.consensus_confidence == pytest.approx(confidence(mean, 1 - 2 * std, T))
    da, db = ev.individual_model_details
    assert (da.score_driver, db.score_driver) == ("response", "prompt_context")
    assert (db.score, db.in_context_score) == pytest.approx((0.3, 0.65))  # review -> reject
    assert db.category_scores == pytest.approx({"hate": 0.1, "violence": 0.3, "sexual": 0.0})
    assert [t.category for t in da.top_categories] == ["violence", "hate", "sexual"]
    assert ev.toxicity_analysis.categories_detected == ["violence"]
    v = ev.toxicity_analysis.severity_breakdown["violence"]
    assert v.score == pytest.approx(mean) and v.severity == "medium"
    kinds = [f.kind for f in ev.risk_assessment.risk_factors]
    assert kinds == ["category", "prompt_context", "model_disagreement"]
    assert ev.toxicity_analysis.human_review_required
    assert [m.latency_ms for m in ev.model_execution.models] == [12.0, 20.0]


def test_items_are_read_from_their_own_rows_and_only_the_response_flags_count():
    m = EnsembleMember(model="m")
    rows = [[0.0, 0.1, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.25], [0.0, 0.0, 0.2]]
    flags = [[False] * 3, [True, False, False], [False, False, True], [False] * 3]
    runs = [MemberRun(m, 1.0, result(rows, flags))]
    first, second = (evaluate_item(i, runs, policy(m), 1.0) for i in (0, 1))
    assert first.final_consensus_score == pytest.approx(0.1)
    assert not first.evaluation.flagged and first.evaluation.pass_fail == "pass"
    assert second.final_consensus_score == pytest.approx(0.25)
    assert second.evaluation.flagged and second.evaluation.pass_fail == "pass"
    assert second.toxicity_analysis.categories_detected == ["sexual"]  # flagged, under 0.3
    assert second.toxicity_analysis.severity_breakdown["sexual"].flagged_by == ["m"]
    assert second.toxicity_analysis.human_review_required


def test_a_failed_model_is_counted_and_left_out():
    a, b = EnsembleMember(model="a"), EnsembleMember(model="b", weight=5.0)
    runs = [
        MemberRun(a, 3.0, result([[0.05, 0.0, 0.0], [0.05, 0.0, 0.0]])),
        MemberRun(b, 9.0, error=Overloaded("busy")),
    ]
    ev = evaluate_item(0, runs, policy(a, b), 9.5)
    c = ev.consensus_analysis
    assert (c.models_succeeded, c.models_failed) == (1, 1)
    assert [m.weight for m in c.model_scores] == [1.0]
    assert ev.final_consensus_score == pytest.approx(0.05)
    assert c.agreement_score == 1.0 and not c.disagreement_detected
    failed = ev.model_execution.models[1]
    assert (failed.model, failed.succeeded, failed.error) == ("b", False, "busy")
    assert [f.kind for f in ev.risk_assessment.risk_factors] == ["model_failure"]


def test_when_every_model_fails():
    a, b = EnsembleMember(model="a"), EnsembleMember(model="b")
    alike = [MemberRun(a, 1.0, error=Overloaded("x")), MemberRun(b, 1.0, error=Overloaded("y"))]
    assert ensemble_failure(alike) is alike[0].error  # 429 + Retry-After, as for one model
    mixed = [
        MemberRun(a, 1.0, error=ModelNotFound("gone")),
        MemberRun(b, 1.0, error=RuntimeError()),
    ]
    err = ensemble_failure(mixed)
    assert isinstance(err, EnsembleUnavailable) and err.status == 503 and not err.retryable
    assert "a: gone" in err.message and "b: internal error (RuntimeError)" in err.message
    transient = [
        MemberRun(a, 1.0, error=Overloaded("x")),
        MemberRun(b, 1.0, error=DeadlineExceeded("t")),
    ]
    assert ensemble_failure(transient).retryable
    with pytest.raises(ValueError, match="no model"):
        evaluate_item(0, mixed, policy(a, b), 1.0)


def test_project_policy():
    settings = Settings(model="base-model")
    default = project_policy(Project(id="p"), settings)
    assert [(m.model, m.weight, m.role) for m in default.ensemble] == [
        ("base-model", 1.0, "primary")
    ]
    assert default.thresholds == RiskThresholds() and default.max_chars_per_field == 5000
    ensemble = [EnsembleMember(model="x", weight=2.0), EnsembleMember(model="y", role="judge")]
    strict = RiskThresholds(review_needed=0.1, reject=0.4, block=0.7)
    custom = project_policy(
        Project(id="q", evaluation_ensemble=ensemble, risk_thresholds=strict), settings
    )
    assert list(custom.ensemble) == ensemble and custom.thresholds == strict
