"""OpenAI moderation request/response, in exact wire form.

``parse_request`` turns a decoded JSON body into (texts, model) or raises
``InvalidRequest`` naming the offending ``param``. ``build_response`` writes
the OpenAI ``ModerationCreateResponse`` shape. The pydantic models below
document the schema in OpenAPI; responses are built as plain dicts for speed
and keep the categories in canonical order.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.categories import BY_WIRE
from serving.errors import InvalidRequest, clip, clip_all
from serving.protocol.limits import check_texts


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ModerationRequest(BaseModel):
    """Body of ``POST /v1/moderations``."""

    model_config = ConfigDict(extra="forbid")  # unknown arguments are a 400

    input: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TextPart], Field(min_length=1)]
    ) = Field(
        description="A string, an array of strings, or an array of {type: text} content parts."
    )
    model: str | None = Field(None, description="A model_repo name or an OpenAI model name.")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, the body of every non-200 answer under ``/v1``."""

    error: ErrorBody


_ERRORS = {
    400: "Malformed JSON, invalid UTF-8, wrong types, empty or too many inputs, a text over "
    "the character or token limit, unknown arguments, image parts.",
    401: "MODSERVE_API_KEYS is set and the bearer key is missing or wrong.",
    404: "Unknown model.",
    413: "Body over MODSERVE_MAX_REQUEST_BODY_BYTES, or a request that needs more model time "
    "than its deadline allows even on an idle server (split it).",
    429: "Busy: the predicted wait is over MODSERVE_MAX_QUEUE_WAIT_S. Retry-After says when.",
    503: "Model loading (Retry-After), or failed to load (no Retry-After; the message says why).",
    504: "The request's deadline passed before it reached the model.",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in _ERRORS.items()
}


class ModerationResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


def parse_request(body: Any, max_inputs: int, max_chars: int) -> tuple[list[str], str | None]:
    """Validate a decoded JSON body; return (texts, requested model or None)."""
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.", param=None)
    unknown = sorted(set(body) - {"input", "model"})
    if unknown:
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {clip_all(unknown)}",
            param=clip(unknown[0]).strip("'\""),
        )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string.", param="model")
    if "input" not in body:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    raw = body["input"]
    texts: list[str]
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        texts = [_item_text(item, i) for i, item in enumerate(raw)]
    else:
        raise InvalidRequest(
            "'input' must be a string, an array of strings, or an array of content parts.",
            param="input",
        )
    return check_texts(texts, max_inputs, max_chars), model


def _item_text(item: Any, i: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        kind = item.get("type")
        if kind == "text":
            text = item.get("text")
            if not isinstance(text, str):
                raise InvalidRequest(f"input[{i}].text must be a string.", param=f"input[{i}].text")
            return text
        if kind == "image_url":
            raise InvalidRequest(
                "Image inputs are not supported by the served model; send text parts only.",
                param=f"input[{i}]",
                code="image_input_not_supported",
            )
        raise InvalidRequest(
            f"input[{i}].type must be 'text' (got {clip(kind)}).", param=f"input[{i}].type"
        )
    raise InvalidRequest(
        f"input[{i}] must be a string or a content part object, not {type(item).__name__}.",
        param=f"input[{i}]",
    )


def new_id() -> str:
    return "modr-" + uuid.uuid4().hex


def build_results(
    categories: list[str],
    scores: np.ndarray,
    flags: np.ndarray,
    extras: dict[str, list[Any]] | None = None,
) -> list[dict[str, Any]]:
    """(N, C) scores/flags in ``categories`` order -> OpenAI ``results`` list.

    ``extras`` adds per-input fields after the OpenAI ones (e.g. an ensemble's
    ``model_agreement``); clients that do not know them ignore them.
    """
    applied = {w: list(BY_WIRE[w].input_types) for w in categories}
    out = []
    for row_s, row_f in zip(scores.tolist(), flags.tolist(), strict=True):
        out.append(
            {
                "flagged": bool(any(row_f)),
                "categories": dict(zip(categories, (bool(f) for f in row_f), strict=True)),
                "category_scores": dict(zip(categories, row_s, strict=True)),
                "category_applied_input_types": applied,
            }
        )
    for key, values in (extras or {}).items():
        for result, value in zip(out, values, strict=True):
            result[key] = value
    return out


def build_response(
    model: str,
    categories: list[str],
    scores: np.ndarray,
    flags: np.ndarray,
    extras: dict[str, list[Any]] | None = None,
) -> dict[str, Any]:
    results = build_results(categories, scores, flags, extras)
    return {"id": new_id(), "model": model, "results": results}
