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

from serving.categories import BY_WIRE, WIRE_NAMES, ordered
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


UNSCORED = "unscored_categories"  # per result: categories the model has no score for
# What OpenAI's API echoes in ``model`` for the aliases clients send; any other request
# (a model_repo name, or none) gets the served model's own name.
ECHOED_MODEL = {
    "omni-moderation-latest": "omni-moderation-latest",
    "omni-moderation-2024-09-26": "omni-moderation-2024-09-26",
    "text-moderation-latest": "text-moderation-007",
    "text-moderation-stable": "text-moderation-007",
}


def echoed_model(requested: str | None, served: str) -> str:
    """The response's ``model`` for a request that asked for ``requested``."""
    return ECHOED_MODEL.get(requested or "", served)


def unscored_categories(categories: list[str]) -> list[str]:
    """The OpenAI categories a model serving ``categories`` has no score for."""
    have = set(categories)
    return [w for w in WIRE_NAMES if w not in have]


def openai_view(
    label_map: dict[str, str], categories: list[str], scores: np.ndarray, flags: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """An imported model's own labels as OpenAI categories (``label_map``): a category
    scores the max of the labels mapped to it and is flagged if any of them is; labels
    mapped to nothing are left out. Without a map the columns are OpenAI's already."""
    if not label_map:
        return categories, scores, flags
    wires = ordered(sorted(set(label_map.values())))
    out_s = np.zeros((scores.shape[0], len(wires)), dtype=np.float32)
    out_f = np.zeros((scores.shape[0], len(wires)), dtype=bool)
    for j, own in enumerate(categories):
        if own in label_map:
            k = wires.index(label_map[own])
            out_s[:, k] = np.maximum(out_s[:, k], scores[:, j])
            out_f[:, k] |= flags[:, j]
    return wires, out_s, out_f


def openai_categories(label_map: dict[str, str], categories: list[str]) -> list[str]:
    """The OpenAI categories a model scores (see :func:`openai_view`)."""
    return ordered(sorted(set(label_map.values()))) if label_map else list(categories)


def full_taxonomy(
    categories: list[str], scores: np.ndarray, flags: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Every OpenAI category (13, canonical order), as OpenAI answers and its SDK expects.

    A category the model does not score gets score 0.0 and flag false, and is named in the
    returned list (``unscored_categories`` in each result, ``x-unscored-categories`` in the
    headers, ``/v1/models``), so that a 0 there never reads as "safe"."""
    col = {w: j for j, w in enumerate(categories)}
    unscored = unscored_categories(categories)
    if not unscored:
        return list(categories), scores, flags, []
    n = scores.shape[0]
    full_s = np.zeros((n, len(WIRE_NAMES)), dtype=np.float32)
    full_f = np.zeros((n, len(WIRE_NAMES)), dtype=bool)
    for j, w in enumerate(WIRE_NAMES):
        if w in col:
            full_s[:, j] = scores[:, col[w]]
            full_f[:, j] = flags[:, col[w]]
    return list(WIRE_NAMES), full_s, full_f, unscored


def build_results(
    categories: list[str],
    scores: np.ndarray,
    flags: np.ndarray,
    extras: dict[str, list[Any]] | None = None,
) -> list[dict[str, Any]]:
    """(N, C) scores/flags in ``categories`` order -> OpenAI ``results`` list, over every
    OpenAI category (``full_taxonomy``).

    ``extras`` adds per-input fields after the OpenAI ones (e.g. an ensemble's
    ``model_agreement``); clients that do not know them ignore them.
    """
    categories, scores, flags, unscored = full_taxonomy(categories, scores, flags)
    applied = {w: list(BY_WIRE[w].input_types) for w in categories}
    out = []
    for row_s, row_f in zip(scores.tolist(), flags.tolist(), strict=True):
        result: dict[str, Any] = {
            "flagged": bool(any(row_f)),
            "categories": dict(zip(categories, (bool(f) for f in row_f), strict=True)),
            "category_scores": dict(zip(categories, row_s, strict=True)),
            "category_applied_input_types": applied,
        }
        if unscored:
            result[UNSCORED] = unscored
        out.append(result)
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
