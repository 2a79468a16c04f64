"""Masked multi-label metrics, by hand with numpy (no sklearn at runtime).

* ``average_precision``: AUPRC as the step-wise sum ``sum_k (R_k - R_{k-1}) * P_k`` over
  distinct score thresholds (ties form one step), the same definition as
  ``sklearn.metrics.average_precision_score``. NaN when there is no positive.
* ``f1_at``: F1 of ``score >= threshold``.
* ``flagged_average_precision``: binary "flagged" AUPRC; truth = any *known* category
  positive, score = max over categories. Rows with no known label are skipped.
  ``known_only=True`` (the default) takes the max only over the row's *known*
  categories: with partially labelled corpora a row such as an offensive tweet labelled
  only ``hate=0`` must not count as a false positive because the model (rightly) scores
  its unknown ``harassment`` high. When every category is labelled (e.g. the 8-code
  eval layout) both variants coincide; ``known_only=False`` is the plain max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    n_pos = float(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    tp = np.cumsum(y)
    fp = np.cumsum(1.0 - y)
    # last index of each run of equal scores = one threshold
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


def f1_at(y: np.ndarray, s: np.ndarray, threshold: float) -> float:
    y = np.asarray(y).ravel() > 0.5
    p = np.asarray(s).ravel() >= threshold
    tp = float(np.sum(p & y))
    fp = float(np.sum(p & ~y))
    fn = float(np.sum(~p & y))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


def masked_column(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray, j: int
) -> tuple[np.ndarray, np.ndarray]:
    """Known (label, score) pairs for column ``j``."""
    keep = mask[:, j] > 0
    return labels[keep, j], scores[keep, j]


def per_category(
    labels: np.ndarray,
    scores: np.ndarray,
    mask: np.ndarray,
    names: list[str],
    thresholds: dict[str, float] | None = None,
    default_threshold: float = 0.5,
    predictions: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """``{category: {positives, negatives, auprc, f1, threshold}}`` on known entries only.

    F1 is of ``score >= threshold`` unless boolean ``predictions`` (N, C) are given.
    """
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        y, s = masked_column(labels, scores, mask, j)
        thr = (thresholds or {}).get(name, default_threshold)
        if predictions is not None:
            pred = predictions[mask[:, j] > 0, j].astype(np.float64)
            f1 = f1_at(y, pred, 0.5)
        else:
            f1 = f1_at(y, s, thr)
        out[name] = {
            "positives": int(y.sum()),
            "negatives": int(len(y) - y.sum()),
            "auprc": average_precision(y, s),
            "f1": f1 if y.sum() > 0 else float("nan"),
            "threshold": float(thr),
        }
    return out


def flagged_truth_and_score(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray, known_only: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    known = mask.sum(axis=1) > 0
    truth = ((labels * mask).max(axis=1) > 0.5).astype(np.float64)
    score = np.where(mask > 0, scores, -np.inf).max(axis=1) if known_only else scores.max(axis=1)
    return truth[known], score[known]


def flagged_average_precision(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray, known_only: bool = True
) -> float:
    truth, score = flagged_truth_and_score(labels, scores, mask, known_only)
    return average_precision(truth, score)


def flagged_by_source(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray, sources: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Flagged AUPRC (known categories) within each source: where the mix is weak.

    ``{source: {"rows", "positives", "auprc"}}``; AUPRC is NaN for a source without
    both flagged and unflagged rows.
    """
    src = np.asarray(sources)
    out: dict[str, dict[str, float]] = {}
    for name in sorted(set(sources)):
        sel = src == name
        t, score = flagged_truth_and_score(labels[sel], scores[sel], mask[sel], True)
        if len(t) == 0:  # no row of this source has a known label
            continue
        ap = average_precision(t, score) if 0 < t.sum() < len(t) else float("nan")
        out[name] = {"rows": len(t), "positives": int(t.sum()), "auprc": ap}
    return out


def mean_auprc(report: dict[str, dict[str, float]]) -> float:
    vals = [v["auprc"] for v in report.values() if not math.isnan(v["auprc"])]
    return float(np.mean(vals)) if vals else float("nan")


def json_safe(obj: object) -> object:
    """Replace NaN/inf floats by None (strict JSON) recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
