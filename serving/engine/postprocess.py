"""Post-processing: chunk scores -> per-input category scores and flags.

Shared by the engine and by offline evaluation, so offline metrics match what
the server answers:

1. max over the chunks of each input (a long text is flagged if any part is): ``per_input``;
2. (``served``) derived categories (no trained head): parent score gated by a lexicon rule
   from the model's ``config.yaml``;
3. hierarchy: a child never scores above its parent (``hate/threatening`` <= ``hate``);
4. flags: score >= the category's threshold; a flagged child flags its parent.
"""

from __future__ import annotations

import numpy as np

from serving.categories import parent_of
from serving.model.repo_config import ModelConfig


class Flagger:
    """Thresholds + hierarchy for one column order: score >= threshold, child flag => parent."""

    def __init__(
        self, categories: list[str], thresholds: list[float], hierarchy: bool = True
    ) -> None:
        """``hierarchy``: OpenAI's parent/child rule; off for a model's own labels."""
        col = {w: i for i, w in enumerate(categories)}
        pairs = (
            [(col[w], col[p]) for w in categories if (p := parent_of(w)) in col]
            if hierarchy
            else []
        )
        self.child_cols = np.array([c for c, _ in pairs], dtype=np.int64)
        self.parent_cols = np.array([p for _, p in pairs], dtype=np.int64)
        self.thresholds = np.array(thresholds, dtype=np.float32)

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """(N, C) scores -> (N, C) bool flags with the child-implies-parent rule."""
        return self.with_parents(scores >= self.thresholds)

    def with_parents(self, flags: np.ndarray) -> np.ndarray:
        """``flags`` (changed in place) with every flagged child's parent flagged too."""
        if len(self.child_cols):
            # On the (C, N) view, logical_or.at handles several children of one parent.
            by_cat = flags.T
            np.logical_or.at(by_cat, self.parent_cols, by_cat[self.child_cols])
        return flags


class PostProcessor:
    """Precomputed column maps for one model config; ``scores`` and ``flags`` are vectorized."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.categories = cfg.served_categories
        col = {w: i for i, w in enumerate(self.categories)}
        self.head_cols = np.array([col[w] for w in cfg.labels], dtype=np.int64)
        self.derived = [
            (col[child], col[rule.parent], rule.compiled(), rule.ungated_factor)
            for child, rule in cfg.derived.items()
        ]
        self.flagger = Flagger(
            self.categories,
            [cfg.threshold(w) for w in self.categories],
            hierarchy=cfg.architecture == "modserve",
        )
        self.child_cols, self.parent_cols = self.flagger.child_cols, self.flagger.parent_cols

    def scores(
        self, chunk_scores: np.ndarray, chunk_counts: list[int], texts: list[str]
    ) -> np.ndarray:
        """(M, L) chunk scores, chunks per input, input texts -> (N, C) served scores (fp32)."""
        return self.served(self.per_input(chunk_scores, chunk_counts), texts)

    @staticmethod
    def per_input(chunk_scores: np.ndarray, chunk_counts: list[int]) -> np.ndarray:
        """(M, L) chunk scores, chunks per input -> (N, L) head scores: max over chunks."""
        starts = np.concatenate([[0], np.cumsum(chunk_counts)[:-1]]).astype(np.int64)
        return np.maximum.reduceat(chunk_scores.astype(np.float32), starts, axis=0)

    def served(self, per_input: np.ndarray, texts: list[str]) -> np.ndarray:
        """(N, L) head scores of ``texts`` -> (N, C) served scores: derived categories from
        their parent and text rule, a child never above its parent."""
        out = np.zeros((len(texts), len(self.categories)), dtype=np.float32)
        out[:, self.head_cols] = per_input
        for child, parent, gate, ungated in self.derived:
            if gate is None:
                factor = np.ones(len(texts), dtype=np.float32)
            else:
                factor = np.array(
                    [1.0 if gate.search(t) else ungated for t in texts], dtype=np.float32
                )
            out[:, child] = out[:, parent] * factor
        if len(self.child_cols):
            out[:, self.child_cols] = np.minimum(out[:, self.child_cols], out[:, self.parent_cols])
        return out

    def flags(self, scores: np.ndarray) -> np.ndarray:
        """(N, C) served scores -> (N, C) bool flags (thresholds, child flag => parent)."""
        return self.flagger.flags(scores)
