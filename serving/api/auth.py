"""The gateway on HTTP routes (``serving.gateway``): the access check as one FastAPI
dependency, the project's view of a result, and the decision's audit record.

``Depends(require_access(registry, "moderate"))`` answers 401 / 403 / 429 before the body is
read, puts the caller in ``scope["state"]["principal"]`` and its ``x-ratelimit-*`` headers
in ``scope["state"]["ratelimit_headers"]`` (the request-id middleware sends them), and
releases its concurrency slot when the request ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import Request

from serving.api.request_id import request_id
from serving.engine.types import Classifier, ClassifyResult, Registry
from serving.errors import ModerationError
from serving.gateway import decisions
from serving.gateway.access import Gatekeeper, Principal


def require_access(
    registry: Registry, scope: str | None
) -> Callable[[Request], AsyncIterator[Principal]]:
    """``scope`` None: any valid key, no quota charge (listing models, metadata)."""
    gate = Gatekeeper.shared(registry.settings, registry.metrics)

    async def check(request: Request) -> AsyncIterator[Principal]:
        state = _state(request)
        state["gatekeeper"] = gate
        principal = gate.authenticate(request.headers.get("authorization"))
        state["principal"] = principal
        if scope is None:
            yield principal
            return
        gate.authorize(principal, scope)
        state["ratelimit_headers"] = gate.admit(principal)
        try:
            yield principal
        finally:
            gate.release(principal)

    return check


def _state(request: Request) -> dict[str, Any]:
    return request.scope.setdefault("state", {})


def principal_of(request: Request) -> Principal:
    """The caller ``require_access`` found for this request."""
    principal = _state(request).get("principal")
    if principal is None:
        raise RuntimeError("route has no require_access dependency")
    return principal


def charge_and_check_model(request: Request, texts: list[str], model: str | None) -> None:
    """After the body is read and the model resolved: the project may use ``model`` (403;
    None: the project's own evaluation ensemble, allowed by its policy) and the inputs fit
    the token quota (429); the rate-limit headers are updated."""
    principal = principal_of(request)
    state = _state(request)
    gate: Gatekeeper = state["gatekeeper"]
    try:
        state["ratelimit_headers"] = gate.charge(principal, texts, model)
    except ModerationError as e:
        state["ratelimit_headers"] = e.headers
        raise


def project_view(request: Request, result: ClassifyResult) -> ClassifyResult:
    """``result`` with the caller's project thresholds applied to its flags."""
    return decisions.project_view(principal_of(request).project, result)


def audit(
    request: Request,
    engine: Classifier | None = None,
    result: ClassifyResult | None = None,
    texts: Sequence[str] | None = None,
    error: ModerationError | None = None,
    model: str | None = None,
) -> None:
    """The audit record of this request's decision (its error, if it failed); ``model``
    names the model(s) when there is no single ``engine`` (an evaluation ensemble)."""
    state = _state(request)
    gate: Gatekeeper | None = state.get("gatekeeper")
    if gate is None:  # refused before the access check ran (e.g. 405): not a decision
        return
    decisions.record(
        gate,
        request_id=request_id(request.scope),
        route=request.url.path,
        principal=state.get("principal"),
        started_s=state.get("started_s", time.perf_counter()),
        status=200 if error is None else error.status,
        kind="evaluation" if request.url.path.startswith("/v1/evaluate") else "moderation",
        model=model if engine is None else engine.name,
        model_version=None if engine is None else engine.version,
        result=result,
        texts=texts,
        error=error,
    )
