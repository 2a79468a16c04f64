"""The precision gate: does a faster precision answer users as float32 does, on the same rows?

One rule, used by ``benchmarks/accuracy_gate.py`` (any precision, any evaluation file) and
by ``training/export.py`` (int8 on the validation split, which sets ``int8_ok``). It judges
what users notice, never one outlier row. A precision FAILS if

* any category's masked AUPRC drops by more than ``max_auprc_drop`` (0.005, absolute);
* fewer than ``min_row_agreement`` (99.5 %) of rows get exactly the float32 flags, or fewer
  than ``min_pair_agreement`` (99.8 %) of (row, category) pairs get the float32 flag
  (flag = score >= the category's threshold);
* the 99.9th percentile of |score move| over every (row, category) pair exceeds
  ``max_p999_score_move`` for that precision: int8 0.05, float16 0.01, bfloat16 0.03,
  float32 1e-5 (another backend's float32, e.g. ONNX Runtime's).

The largest single move is still reported (``max_abs_score_diff``), not gated: int8 carries
about two significant digits, and on the default model one row in 48,000 moved by 0.18
while every AUPRC stayed within 0.001 of float32; such a row changes a flag only where it
sits at a threshold, and the flag-agreement limits count exactly that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from training import metrics as M


@dataclass(frozen=True)
class GateLimits:
    max_auprc_drop: float = 0.005
    min_row_agreement: float = 0.995
    min_pair_agreement: float = 0.998
    max_p999_score_move: float = 0.05


LIMITS: dict[str, GateLimits] = {
    # float32 on another backend reorders sums: ONNX Runtime moved the default model's
    # scores by p99.9 1.6e-6 (max 3.2e-6) on 1,998 rows; 1e-5 still flags a wrong graph.
    "float32": GateLimits(max_p999_score_move=1e-5),
    "int8": GateLimits(max_p999_score_move=0.05),
    "float16": GateLimits(max_p999_score_move=0.01),
    "bfloat16": GateLimits(max_p999_score_move=0.03),
}


def limits_for(precision: str, **overrides: float) -> GateLimits:
    """The limits for ``precision`` (int8's when unknown), with ``overrides`` applied."""
    return replace(LIMITS.get(precision, LIMITS["int8"]), **overrides)


def compare(
    labels: np.ndarray,  # (N, C) 0/1
    mask: np.ndarray,  # (N, C) 1 = known
    ref: np.ndarray,  # (N, C) float32 scores
    cand: np.ndarray,  # (N, C) candidate scores
    names: Sequence[str],
    thresholds: Sequence[float],  # (C,) flag thresholds, in ``names`` order
    limits: GateLimits,
) -> dict:
    """Per-category AUPRC, flag agreement and score movement; ``passed`` applies the limits."""
    cats: dict[str, dict] = {}
    failures: list[str] = []
    thr = np.asarray(thresholds, dtype=np.float32)
    ref_flags, cand_flags = ref >= thr, cand >= thr
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
            "flag_agreement": float((ref_flags[:, j] == cand_flags[:, j]).mean())
            if len(ref)
            else 1.0,
            "max_abs_score_diff": float(np.abs(cand[:, j] - ref[:, j]).max(initial=0.0)),
        }
        if drop > limits.max_auprc_drop:
            failures.append(f"{name}: AUPRC {a_ref:.4f} -> {a_new:.4f} (drop {drop:.4f})")
    same = ref_flags == cand_flags
    row_agreement = float(same.all(axis=1).mean()) if len(same) else 1.0
    pair_agreement = float(same.mean()) if same.size else 1.0
    if row_agreement < limits.min_row_agreement:
        failures.append(
            f"flags agree on {row_agreement:.4%} of rows < {limits.min_row_agreement:.1%}"
        )
    if pair_agreement < limits.min_pair_agreement:
        failures.append(
            f"flags agree on {pair_agreement:.4%} of (row, category) pairs "
            f"< {limits.min_pair_agreement:.1%}"
        )
    diff = np.abs(cand - ref)
    p999 = float(np.quantile(diff, 0.999)) if diff.size else 0.0
    if p999 > limits.max_p999_score_move:
        failures.append(f"99.9th percentile score move {p999:.4f} > {limits.max_p999_score_move}")
    max_diff = float(diff.max(initial=0.0))
    worst = None
    if diff.size:
        r, c = np.unravel_index(int(diff.argmax()), diff.shape)
        worst = {"row": int(r), "category": names[int(c)], "float32": float(ref[r, c]),
                 "candidate": float(cand[r, c])}  # fmt: skip
    return {
        "passed": not failures,
        "failures": failures,
        "limits": asdict(limits),
        "row_flag_agreement": row_agreement,
        "pair_flag_agreement": pair_agreement,
        "p999_abs_score_diff": p999,
        "p99_abs_score_diff": float(np.quantile(diff, 0.99)) if diff.size else 0.0,
        "mean_abs_score_diff": float(diff.mean()) if diff.size else 0.0,
        "max_abs_score_diff": max_diff,
        "largest_move": worst,
        "categories": cats,
    }
