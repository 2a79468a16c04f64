"""Errors that reach clients, each with its HTTP status and OpenAI error envelope fields."""

from __future__ import annotations

import math

ECHO_CHARS = 100  # the most of one client-supplied value an error message repeats


def clip(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters: client input can be
    megabytes, or carry newlines and control characters (repr escapes them, so an echoed
    value can neither bloat an answer nor forge a log line)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def clip_all(values: object, most: int = 5) -> str:
    """``clip`` for each of the first ``most`` values, and how many more there were."""
    items = list(values) if isinstance(values, (list, tuple, set, frozenset)) else [values]
    shown = ", ".join(clip(v) for v in items[:most])
    more = len(items) - most
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"


class ModerationError(Exception):
    """Base: carries everything needed for ``{"error": {message, type, param, code}}``."""

    status = 500
    type = "server_error"
    code: str | None = None
    retryable = False  # the same request may succeed later: every transport sends Retry-After

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s  # None: MODSERVE_RETRY_AFTER_S (if retryable)
        self.headers: dict[str, str] = {}  # sent with the answer (gRPC: trailing metadata)

    def retry_after(self, default_s: float) -> int | None:
        """Whole seconds for ``Retry-After`` if a retry may succeed (this error's own estimate,
        else ``default_s``: MODSERVE_RETRY_AFTER_S), None otherwise."""
        if not self.retryable:
            return None
        return math.ceil(self.retry_after_s if self.retry_after_s is not None else default_s)

    def envelope(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ModerationError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ModerationError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(ModerationError):
    """A valid key that may not do this: a scope it lacks, or a model its project may not use."""

    status = 403
    type = "permission_error"
    code = "permission_denied"


class QuotaExceeded(ModerationError):
    """A key or project is over its quota (``serving.gateway.quota``): 429, ``Retry-After``
    = seconds until its bucket allows the request, and the ``x-ratelimit-*`` headers."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class ModelNotFound(ModerationError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class BodyTooLarge(ModerationError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTooExpensive(ModerationError):
    """The request alone needs more model time than its deadline allows (admission)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(ModerationError):
    """The predicted wait is over the limit (or the queue is full): retry later (429 +
    Retry-After, the predicted excess wait when known)."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"
    retryable = True


class DeadlineExceeded(ModerationError):
    status = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class NotReady(ModerationError):
    status = 503
    type = "server_error"
    code = "not_ready"
    retryable = True


class ClientClosedRequest(ModerationError):
    """The client hung up first: nobody reads the answer, and it is not a server error."""

    status = 499  # nginx's code for "the client went away first"
    type = "invalid_request_error"
    code = "client_closed_request"


class ModelLoadFailed(ModerationError):
    """The model could not be loaded: permanent until an operator acts (no Retry-After)."""

    status = 503
    type = "server_error"
    code = "model_load_failed"

    @classmethod
    def because(cls, cause: str) -> ModelLoadFailed:
        return cls(f"The model failed to load: {cause}")


class InferenceFailed(ModerationError):
    status = 500
    type = "server_error"
    code = "inference_failed"
