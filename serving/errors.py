"""Errors that reach clients, each with its HTTP status and OpenAI error envelope fields."""

from __future__ import annotations


class ModerationError(Exception):
    """Base: carries everything needed for ``{"error": {message, type, param, code}}``."""

    status = 500
    type = "server_error"
    code: str | None = None
    retryable = False  # the same request may succeed later: every transport sends Retry-After

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

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


class ModelNotFound(ModerationError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class BodyTooLarge(ModerationError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(ModerationError):
    """The batcher's token queue is full: retry later (429 + Retry-After)."""

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


class InferenceFailed(ModerationError):
    status = 500
    type = "server_error"
    code = "inference_failed"
