"""The precision gate: does a faster precision score like float32 on the same rows?

One rule, used by ``benchmarks/accuracy_gate.py`` (any precision, any evaluation file) and
by ``training/export.py`` (int8 on the validation split, which sets ``int8_ok``). A
precision FAILS if

* any category's masked AUPRC drops by more than ``max_auprc_drop`` (0.01, absolute), or
* any single score (any row, any category) moves by more than ``score_tol`` for that
  precision: int8 0.10, float16 0.01, bfloat16 0.03 (absolute, on probabilities).

The int8 tolerance is 0.10 because int8 activations carry about two significant digits:
W8A8 with per-token scales moved the default model's scores by at most 0.097 on 400 corpus
texts, while the per-tensor scheme it replaced moved them by up to 0.84. The limit
separates those two; the AUPRC limit is what guards ranking quality.
"""

from __future__ import annotations

import math

import numpy as np

from training import metrics as M

DEFAULT_SCORE_TOL = {"float32": 1e-6, "int8": 0.10, "float16": 0.01, "bfloat16": 0.03}
DEFAULT_MAX_AUPRC_DROP = 0.01


def compare(
    labels: np.ndarray,  # (N, C) 0/1
    mask: np.ndarray,  # (N, C) 1 = known
    ref: np.ndarray,  # (N, C) float32 scores
    cand: np.ndarray,  # (N, C) candidate scores
    names: list[str],
    max_auprc_drop: float,
    score_tol: float,
) -> dict:
    """Per-category AUPRC (ref vs cand) and score movement; ``passed`` applies both limits."""
    cats: dict[str, dict] = {}
    failures: list[str] = []
    for j, name in enumerate(names):
        y, s_ref = M.masked_column(labels, ref, mask, j)
        _, s_new = M.masked_column(labels, cand, mask, j)
        a_ref, a_new = M.average_precision(y, s_ref), M.average_precision(y, s_new)
        drop = a_ref - a_new if not (math.isnan(a_ref) or math.isnan(a_new)) else float("nan")
        cats[name] = {
            "positives": int(y.sum()),
            "known": len(y),
            "auprc_float32": a_ref,
            "auprc": a_new,
            "auprc_drop": drop,
            "max_abs_score_diff": float(np.abs(cand[:, j] - ref[:, j]).max(initial=0.0)),
        }
        if drop > max_auprc_drop:
            failures.append(f"{name}: AUPRC {a_ref:.4f} -> {a_new:.4f} (drop {drop:.4f})")
    diff = np.abs(cand - ref)
    max_diff = float(diff.max(initial=0.0))
    if max_diff > score_tol:
        r, c = np.unravel_index(int(diff.argmax()), diff.shape)
        failures.append(
            f"score moved by {max_diff:.4f} > {score_tol} (row {r}, {names[c]}: "
            f"{ref[r, c]:.4f} -> {cand[r, c]:.4f})"
        )
    return {
        "passed": not failures,
        "failures": failures,
        "max_abs_score_diff": max_diff,
        "p99_abs_score_diff": float(np.quantile(diff, 0.99)) if diff.size else 0.0,
        "mean_abs_score_diff": float(diff.mean()) if diff.size else 0.0,
        "score_tol": score_tol,
        "max_auprc_drop": max_auprc_drop,
        "categories": cats,
    }
