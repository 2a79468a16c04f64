"""What a served decision becomes, the same on every route and transport: the caller's
project thresholds applied to the flags (``project_view``), and one audit record
(``record``) when the audit log is on (``MODSERVE_AUDIT_LOG``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np

from serving.categories import BY_WIRE
from serving.engine.postprocess import Flagger
from serving.engine.types import ClassifyResult
from serving.errors import ModerationError
from serving.gateway.access import Gatekeeper, Principal
from serving.gateway.audit import Decision, InputDecision, decide_inputs
from serving.gateway.policy import Project


def project_view(project: Project, result: ClassifyResult) -> ClassifyResult:
    """``result`` flagged by the project's thresholds where it sets one (score >= threshold)
    and the model's elsewhere, a flagged child flagging its parent as the model does."""
    cats = result.categories
    cols = [j for j, c in enumerate(cats) if c in project.thresholds]
    if not cols:
        return result
    overrides = np.array([project.thresholds[cats[j]] for j in cols], dtype=np.float32)
    thresholds = result.thresholds
    if thresholds is not None:  # the model's thresholds with the project's in their place
        thresholds = np.array(thresholds, dtype=np.float32)
        thresholds[cols] = overrides
        flags = result.scores >= thresholds
    else:  # a model that does not report them: its other flags stay as they are
        flags = result.flags.copy()
        flags[:, cols] = result.scores[:, cols] >= overrides
    hierarchy = all(c in BY_WIRE for c in cats)
    flags = Flagger(cats, [1.0] * len(cats), hierarchy).with_parents(flags)
    return dataclasses.replace(result, flags=flags, thresholds=thresholds)


def reason_of(err: ModerationError) -> str:
    """A whole-request audit reason code: ``quota_exceeded``, ``unauthorized``, ..."""
    return {
        "rate_limit_exceeded": "quota_exceeded",
        "invalid_api_key": "unauthorized",
        "permission_denied": "forbidden",
        "string_above_max_length": "input_too_long",
        "request_too_large": "request_too_large",
        "queue_full": "overloaded",
    }.get(err.code or "", err.code or type(err).__name__)


def record(
    gate: Gatekeeper,
    *,
    request_id: str,
    route: str,
    principal: Principal | None,
    started_s: float,
    status: int = 200,
    kind: Literal["moderation", "evaluation"] = "moderation",
    model: str | None = None,
    model_version: str | None = None,
    result: ClassifyResult | None = None,
    texts: Sequence[str] | None = None,
    error: ModerationError | None = None,
) -> None:
    """One audit record (nothing when the audit log is off); never blocks, never raises.
    ``started_s``: ``time.perf_counter()`` when the request arrived. Input text is kept only
    for projects with ``retain_text``."""
    if gate.audit is None:
        return
    inputs: list[InputDecision] = []
    if result is not None:
        thresholds: dict[str, float] = {}
        if result.thresholds is not None:
            thresholds = dict(zip(result.categories, map(float, result.thresholds), strict=True))
        keep = principal is not None and principal.project.retain_text
        inputs = decide_inputs(
            result.categories, result.scores, result.flags, thresholds, texts if keep else None
        )
    gate.audit.record(
        Decision(
            ts=time.time(),
            request_id=request_id,
            kind=kind,
            route=route,
            project_id=None if principal is None else principal.project.id,
            key_id=None if principal is None else principal.key_id,
            policy_id=gate.policy.policy_id,
            policy_version=gate.policy.version,
            model=model,
            model_version=model_version,
            status=status,
            reason=None if error is None else reason_of(error),
            latency_ms=(time.perf_counter() - started_s) * 1000.0,
            inputs=inputs,
        )
    )
