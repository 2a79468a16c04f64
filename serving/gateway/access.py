"""The one access check every route runs, HTTP and gRPC alike: who is calling (401), may
they do this (403), are they within their quotas (429).

Modes, from the settings:

* ``MODSERVE_POLICY_FILE`` set: keys from the key store (``MODSERVE_KEY_STORE``) belong to
  the policy's projects and carry scopes; ``MODSERVE_API_KEYS`` still work, as the
  ``default`` project (the policy's own ``default`` project if it declares one, else every
  model, every scope, no quotas).
* no policy file: ``MODSERVE_API_KEYS`` as before (or no keys: an open server); every caller
  is the implicit ``default`` project.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from serving.config import Settings
from serving.engine.metrics import Metrics
from serving.errors import Forbidden, QuotaExceeded, Unauthorized, clip
from serving.gateway.audit import AuditLog, open_audit_log
from serving.gateway.keys import SCOPES, KeyStore, SqliteKeyStore
from serving.gateway.policy import (
    DEFAULT_PROJECT_ID,
    IMPLICIT_POLICY,
    Policy,
    Project,
    Quotas,
    load_policy,
)
from serving.gateway.quota import QuotaBook, estimated_tokens

ALL_SCOPES = frozenset(SCOPES)
_SHARED: dict[tuple, Gatekeeper] = {}


@dataclass(frozen=True)
class Principal:
    """The caller of one request: its project, key id (None for a static key or an open
    server: those have no id of their own) and scopes."""

    project: Project
    key_id: str | None
    scopes: frozenset[str]

    @property
    def owners(self) -> list[tuple[str, Quotas]]:
        """Whose quotas a request of this caller counts against."""
        out = [(f"project:{self.project.id}", self.project.quotas)]
        if self.key_id is not None:
            out.append((f"key:{self.key_id}", self.project.key_quotas))
        return out


class Gatekeeper:
    def __init__(
        self,
        policy: Policy,
        store: KeyStore | None,
        static_keys: Sequence[str],
        default_model: str,
        quotas: QuotaBook | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.store = store
        self.static_keys = [k.encode() for k in static_keys]
        self.default_model = default_model
        self.quotas = quotas or QuotaBook()
        declared = policy.project(DEFAULT_PROJECT_ID)
        self._static = Principal(
            declared or IMPLICIT_POLICY.projects[DEFAULT_PROJECT_ID], None, ALL_SCOPES
        )

    @classmethod
    def shared(cls, settings: Settings, metrics: Metrics | None = None) -> Gatekeeper:
        """The process's gatekeeper for these settings: HTTP and gRPC share one, so a key's
        quotas count both, and one audit log (its counters in ``metrics``). Reads the policy
        file (``PolicyError`` if it is bad) and opens the audit log."""
        key = (
            settings.policy_file,
            settings.key_store,
            settings.key_cache_s,
            tuple(settings.api_keys),
            settings.model,
            settings.audit_log,
        )
        gate = _SHARED.get(key)
        if gate is None:
            store, policy = None, IMPLICIT_POLICY
            if settings.policy_file is not None:
                policy = load_policy(settings.policy_file)
                store = SqliteKeyStore(settings.key_store, settings.key_cache_s)
            audit = open_audit_log(
                settings.audit_log,
                written_metric=metrics.audit_written if metrics else None,
                dropped_metric=metrics.audit_dropped if metrics else None,
                errors_metric=metrics.audit_errors if metrics else None,
            )
            gate = _SHARED[key] = cls(policy, store, settings.api_keys, settings.model, audit=audit)
        return gate

    def close(self) -> None:
        """Write what the audit log still holds (at shutdown)."""
        if self.audit is not None:
            self.audit.close()

    @property
    def open(self) -> bool:
        """No key is needed (no policy file and no static keys)."""
        return self.store is None and not self.static_keys

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an ``authorization`` header; 401 if there is none."""
        if self.open:
            return self._static
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer" and key:
            if any(hmac.compare_digest(key.encode(), k) for k in self.static_keys):
                return self._static
            record = self.store.verify(key) if self.store is not None else None
            if record is not None:
                project = self.policy.project(record.project_id)
                if project is None:
                    raise Forbidden(
                        f"The key's project {clip(record.project_id)} is not in the policy "
                        f"(version {self.policy.version})."
                    )
                return Principal(project, record.key_id, record.scopes)
        where = "MODSERVE_API_KEYS" if self.store is None else "`modserve keys create`"
        raise Unauthorized(
            f"Incorrect API key provided. Send 'authorization: Bearer <key>' with a key from "
            f"{where}."
        )

    def authorize(self, principal: Principal, scope: str) -> None:
        """403 unless the caller's key has ``scope`` (``admin`` has them all)."""
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise Forbidden(
                f"This key may not use this route: it needs the {scope!r} scope and has "
                f"{sorted(principal.scopes)}."
            )

    def authorize_model(self, principal: Principal, model: str) -> None:
        if principal.key_id is None and principal.project.models is None:
            return  # a static key of the implicit project: every model, as before policies
        if not principal.project.may_use(model, self.default_model):
            raise Forbidden(
                f"Project {principal.project.id!r} may not use model {clip(model)}.",
                param="model",
            )

    def admit(self, principal: Principal) -> dict[str, str]:
        """Charge one request; the ``x-ratelimit-*`` headers to send. 429 if over a quota.
        An admitted request must be ``release``d when it ends."""
        verdict = self.quotas.admit(principal.owners)
        if not verdict.allowed:
            raise self._over(verdict.reason, verdict.retry_after_s, verdict.headers)
        return verdict.headers

    def charge(
        self, principal: Principal, texts: Iterable[str], model: str | None
    ) -> dict[str, str]:
        """Once the inputs and the model are known: the project may use ``model`` (403; None:
        the project's own evaluation ensemble, which its policy names) and the request's
        estimated input tokens fit its token quotas (429; the caller still releases)."""
        if model is not None:
            self.authorize_model(principal, model)
        verdict = self.quotas.charge_tokens(principal.owners, estimated_tokens(texts))
        if not verdict.allowed:
            raise self._over(verdict.reason, verdict.retry_after_s, verdict.headers)
        return verdict.headers

    def release(self, principal: Principal) -> None:
        self.quotas.release(principal.owners)

    @staticmethod
    def _over(reason: str, wait_s: float, headers: dict[str, str]) -> QuotaExceeded:
        never = math.isinf(wait_s)
        err = QuotaExceeded(
            f"Rate limit reached: {reason}."
            + (" This request alone exceeds it: send fewer inputs." if never else ""),
            retry_after_s=None if never else max(wait_s, 0.001),
        )
        if never:
            err.retryable = False
        err.headers = dict(headers)
        return err


def close_all() -> None:
    """Flush every gatekeeper's audit log (the server calls this as it stops)."""
    for gate in _SHARED.values():
        gate.close()
