"""The precision gate: what users notice (AUPRC, flag agreement, score-move tail), not one row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.accuracy_gate import main
from training.gate import GateLimits, compare

THR = [0.5, 0.5]
LIM = GateLimits(max_auprc_drop=0.01, max_p999_score_move=0.05)

NAMES = ["hate", "violence"]


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 2)) < 0.3).astype(np.float32)
    mask = np.ones((n, 2), np.float32)
    mask[: n // 4, 1] = 0  # violence unknown on a quarter of the rows
    scores = np.clip(labels * 0.5 + rng.random((n, 2)) * 0.5, 0, 1).astype(np.float32)
    return labels, mask, scores


def test_identical_scores_pass() -> None:
    y, m, s = _data()
    res = compare(y, m, s, s.copy(), NAMES, THR, LIM)
    assert res["passed"] and res["failures"] == []
    assert res["categories"]["violence"]["known"] == 150
    assert res["categories"]["hate"]["auprc_drop"] == 0.0


def test_small_noise_within_tolerance_passes() -> None:
    y, m, s = _data()
    noisy = s + np.random.default_rng(1).uniform(-0.001, 0.001, s.shape).astype(np.float32)
    res = compare(y, m, s, noisy, NAMES, THR, LIM)
    assert res["passed"], res["failures"]
    assert 0 < res["max_abs_score_diff"] <= 0.001 + 1e-6


def test_auprc_drop_fails_even_when_scores_move_little() -> None:
    y, m, s = _data()
    worse = s.copy()
    worse[:, 0] = np.where(y[:, 0] > 0, s[:, 0] - 0.04, s[:, 0] + 0.04)  # positives sink
    res = compare(y, m, s, worse, NAMES, THR, LIM)
    assert not res["passed"]
    assert any(f.startswith("hate: AUPRC") for f in res["failures"])
    assert res["categories"]["hate"]["auprc_drop"] > 0.01
    assert res["categories"]["violence"]["auprc_drop"] == 0.0


def test_one_moved_score_is_reported_not_gated() -> None:
    """One row in 1,000 moving a lot (and flipping its flag): the single-row limit this gate
    replaced refused that; flag agreement (99.9 % of rows) and the tail pass."""
    y, m, s = _data(n=1000)
    moved = s.copy()
    moved[7, 1] = 0.2 if s[7, 1] >= 0.5 else 0.8  # a big move that flips its flag
    res = compare(y, m, s, moved, NAMES, THR, GateLimits(max_auprc_drop=1.0))
    assert res["passed"], res["failures"]
    assert res["largest_move"]["row"] == 7 and res["largest_move"]["category"] == "violence"
    assert res["max_abs_score_diff"] > 0.2
    assert res["row_flag_agreement"] == 0.999 and res["pair_flag_agreement"] == 0.9995


def test_flags_that_disagree_on_many_rows_fail() -> None:
    y, m, s = _data(n=1000)
    near = s.copy()
    near[:, 0] = 0.5  # every hate score sits at the threshold ...
    moved = near.copy()
    moved[:10, 0] = 0.49  # ... and 10 rows (1 %) drop just below it: tiny moves, 1 % flips
    res = compare(y, m, near, moved, NAMES, THR, GateLimits(max_auprc_drop=1.0))
    assert not res["passed"]
    assert res["max_abs_score_diff"] < 0.011
    assert any("of rows" in f for f in res["failures"])
    assert res["categories"]["hate"]["flag_agreement"] == 0.99


def test_score_move_tail_fails_when_many_rows_move() -> None:
    y, m, s = _data(n=1000)
    rows = np.flatnonzero((s[:, 1] > 0.1) & (s[:, 1] < 0.4))[:20]  # 1 % of the pairs
    moved = s.copy()
    moved[rows, 1] += 0.06  # stays below the 0.5 threshold: no flag changes
    lim = GateLimits(max_auprc_drop=1.0, min_row_agreement=0.0, min_pair_agreement=0.0)
    res = compare(y, m, s, moved, NAMES, THR, lim)
    assert res["p999_abs_score_diff"] > 0.05
    assert not res["passed"] and any("99.9th percentile" in f for f in res["failures"])


EVAL_ROWS = [
    {"text": "I will hurt you badly", "labels": {"violence": 1, "hate": 0}},
    {"text": "what a lovely sunny day", "labels": {"violence": 0, "hate": 0}},
    {"text": "those people are vermin", "labels": {"hate": 1}},
    {"text": "see you at lunch", "labels": {"hate": 0, "violence": 0}},
] * 5


def _gate_args(tiny_repo: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """(argv for the gate command on a 20-row eval file, its JSON report path)."""
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in EVAL_ROWS))
    out = tmp_path / "gate.json"
    return ["--model-dir", str(tiny_repo / "tiny"), "--data", str(data), "--out", str(out)], out


def test_gate_command_on_a_model_dir(tiny_repo: Path, tmp_path: Path) -> None:
    args, out = _gate_args(tiny_repo, tmp_path)
    assert main([*args, "--precisions", "float32,int8", "--score-tol", "int8=1.0"]) == 0
    report = json.loads(out.read_text())
    assert report["passed"] and report["rows"] == 20
    assert set(report["precisions"]) == {"float32", "int8"}
    assert report["precisions"]["float32"]["max_abs_score_diff"] == 0.0
    moved = report["precisions"]["int8"]["max_abs_score_diff"]
    assert moved > 0.0  # int8 really ran: scores differ from fp32
    # the same run with a score tolerance below what int8 moved fails with exit code 1
    assert main([*args, "--precisions", "int8", "--score-tol", f"int8={moved / 2}"]) == 1
    assert json.loads(out.read_text())["passed"] is False


def test_gate_command_covers_every_backend(tiny_repo: Path, tmp_path: Path) -> None:
    args, out = _gate_args(tiny_repo, tmp_path)
    argv = [*args, "--backends", "torch,onnxruntime", "--score-tol", "int8=1.0"]
    assert main(argv) == 0
    report = json.loads(out.read_text())["precisions"]
    assert set(report) == {"float32", "int8", "onnxruntime/float32", "onnxruntime/int8"}
    assert report["onnxruntime/float32"]["max_abs_score_diff"] < 1e-5  # same function
    assert report["onnxruntime/int8"]["max_abs_score_diff"] > 0.0  # really quantised
