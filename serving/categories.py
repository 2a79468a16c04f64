"""THE list of moderation categories: wire name, python field name, parent.

Every other module (protocol, model loading, post-processing, training,
evaluation) derives its category handling from this file. A model declares
which of these it scores (its ``labels`` in ``config.yaml``); the order of
``CATEGORIES`` is the canonical order used in responses and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Category:
    wire: str  # the OpenAI name, e.g. "hate/threatening"
    field: str  # the python attribute name, e.g. "hate_threatening"
    parent: str | None  # wire name of the parent category, None for a top-level one
    input_types: tuple[str, ...]  # what OpenAI lists in category_applied_input_types for text


def _cat(wire: str, parent: str | None = None) -> Category:
    return Category(wire, wire.replace("/", "_").replace("-", "_"), parent, ("text",))


CATEGORIES: tuple[Category, ...] = (
    _cat("harassment"),
    _cat("harassment/threatening", "harassment"),
    _cat("hate"),
    _cat("hate/threatening", "hate"),
    _cat("illicit"),
    _cat("illicit/violent", "illicit"),
    _cat("self-harm"),
    _cat("self-harm/intent", "self-harm"),
    _cat("self-harm/instructions", "self-harm"),
    _cat("sexual"),
    _cat("sexual/minors", "sexual"),
    _cat("violence"),
    _cat("violence/graphic", "violence"),
)

BY_WIRE: dict[str, Category] = {c.wire: c for c in CATEGORIES}
WIRE_NAMES: tuple[str, ...] = tuple(c.wire for c in CATEGORIES)

# The eleven categories every OpenAI moderation model answers; ``illicit`` and
# ``illicit/violent`` appear only when the served model has heads for them.
CORE_WIRE_NAMES: tuple[str, ...] = tuple(w for w in WIRE_NAMES if not w.startswith("illicit"))

# Single-letter codes used by the common "prompt + S/H/V/..." evaluation layout.
EVAL_CODES: dict[str, str] = {
    "S": "sexual",
    "H": "hate",
    "V": "violence",
    "HR": "harassment",
    "SH": "self-harm",
    "S3": "sexual/minors",
    "H2": "hate/threatening",
    "V2": "violence/graphic",
}


def parent_of(wire: str) -> str | None:
    return BY_WIRE[wire].parent


def ordered(labels: list[str] | tuple[str, ...]) -> list[str]:
    """Return ``labels`` in canonical order; raise ValueError on an unknown name."""
    unknown = [w for w in labels if w not in BY_WIRE]
    if unknown:
        raise ValueError(f"unknown moderation categories {unknown}; known: {list(WIRE_NAMES)}")
    return [w for w in WIRE_NAMES if w in set(labels)]
