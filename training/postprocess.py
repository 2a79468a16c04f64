"""Score post-processing shared by evaluation and the server: derived categories + hierarchy.

Given per-head scores the served score matrix is built in two steps:

1. ``expand_head_scores``: place the trained heads (``cfg.labels`` order) into the
   ``cfg.served_categories`` column order (derived columns start at 0).
2. ``apply_derived_and_hierarchy``:
   * every derived category (``cfg.derived``) gets
     ``parent_score * (1 if rule.gate_regex matches the text else rule.ungated_factor)``;
   * hierarchy capping: a child's score is never above its parent's
     (``child = min(child, parent)``) when both are served.

``served_scores`` does both. Thresholds are not applied here (see ``flags``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.categories import BY_WIRE
from serving.model_config import ModelConfig


def expand_head_scores(head_scores: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """(N, len(cfg.labels)) -> (N, len(cfg.served_categories)); derived columns are 0."""
    served = cfg.served_categories
    out = np.zeros((head_scores.shape[0], len(served)), dtype=np.float32)
    for j, w in enumerate(cfg.labels):
        out[:, served.index(w)] = head_scores[:, j]
    return out


def apply_derived_and_hierarchy(
    scores: np.ndarray, texts: Sequence[str], cfg: ModelConfig
) -> np.ndarray:
    """Fill derived columns and cap children at their parents.

    ``scores``: (N, len(cfg.served_categories)) float array in served (canonical) column
    order; the values in derived columns are ignored and recomputed. ``texts``: the N
    input texts (the full text, not a chunk: gates look at the whole input). Returns a
    new float32 array of the same shape; the input is not modified.
    """
    served = cfg.served_categories
    col = {w: i for i, w in enumerate(served)}
    out = np.array(scores, dtype=np.float32, copy=True)
    if out.ndim != 2 or out.shape[1] != len(served):
        raise ValueError(f"scores must be (N, {len(served)}) in served order, got {out.shape}")
    if len(texts) != out.shape[0]:
        raise ValueError(f"{len(texts)} texts for {out.shape[0]} score rows")
    for child, rule in cfg.derived.items():
        gate = rule.compiled()
        parent = out[:, col[rule.parent]]
        if gate is None:
            factor = np.ones(len(texts), dtype=np.float32)
        else:
            factor = np.array(
                [1.0 if gate.search(t) else rule.ungated_factor for t in texts], dtype=np.float32
            )
        out[:, col[child]] = parent * factor
    for w in served:
        parent_name = BY_WIRE[w].parent
        if parent_name is not None and parent_name in col:
            out[:, col[w]] = np.minimum(out[:, col[w]], out[:, col[parent_name]])
    return out


def served_scores(head_scores: np.ndarray, texts: Sequence[str], cfg: ModelConfig) -> np.ndarray:
    """Head scores (N, len(labels)) -> final served scores (N, len(served_categories))."""
    return apply_derived_and_hierarchy(expand_head_scores(head_scores, cfg), texts, cfg)


def flags(scores: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Boolean (N, len(served)): ``score >= cfg.threshold(category)``, and a flagged child
    also flags its parent (as the server answers)."""
    served = cfg.served_categories
    thr = np.array([cfg.threshold(w) for w in served], dtype=np.float32)
    out = scores >= thr[None, :]
    for j, w in enumerate(served):
        parent = BY_WIRE[w].parent
        if parent is not None and parent in served:
            k = served.index(parent)
            out[:, k] |= out[:, j]
    return out
