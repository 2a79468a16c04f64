"""Hand-computed checks of the masked metrics and the masked loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training import metrics as M
from training.train import masked_bce


def test_average_precision_hand_computed() -> None:
    # ranking: 1 (0.9), 0 (0.8), 1 (0.7), 0 (0.1) -> P@R=0.5 is 1, P@R=1 is 2/3
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    assert M.average_precision(y, s) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_average_precision_perfect_and_ties() -> None:
    assert M.average_precision(np.array([0, 1, 1]), np.array([0.1, 0.8, 0.9])) == 1.0
    # a tie between a positive and a negative is one threshold: precision 1/2
    assert M.average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    # worst order: positive ranked last of 4 -> precision 1/4
    assert M.average_precision(np.array([0, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1])) == 0.25


def test_average_precision_no_positive_is_nan() -> None:
    assert math.isnan(M.average_precision(np.array([0, 0]), np.array([0.2, 0.3])))


def test_average_precision_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 2)  # rounding creates ties
    assert M.average_precision(y, s) == pytest.approx(sk.average_precision_score(y, s))


def test_f1_at_threshold() -> None:
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.1])
    # threshold 0.75 -> predicted [1, 1, 0, 0]: tp 1, fp 1, fn 1 -> 2/(2+1+1)
    assert M.f1_at(y, s, 0.75) == pytest.approx(0.5)
    # threshold 0.5 -> [1, 1, 1, 0]: tp 2, fp 1, fn 0 -> 4/5
    assert M.f1_at(y, s, 0.5) == pytest.approx(0.8)
    assert M.f1_at(np.array([0, 0]), np.array([0.1, 0.2]), 0.5) == 0.0


def test_flagged_average_precision_hand_computed() -> None:
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    mask = np.ones_like(labels)
    scores = np.array([[0.9, 0.1], [0.2, 0.3], [0.1, 0.6], [0.7, 0.2]], dtype=np.float32)
    # truth [1, 0, 1, 0], score = row max [0.9, 0.3, 0.6, 0.7] -> ranks 1, 0, 1, 0
    assert M.flagged_average_precision(labels, scores, mask) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_flagged_ignores_masked_positive_and_unknown_rows() -> None:
    labels = np.array([[1, 1], [0, 1], [0, 0]], dtype=np.float32)
    mask = np.array([[1, 1], [1, 0], [0, 0]], dtype=np.float32)
    scores = np.array([[0.2, 0.1], [0.9, 0.9], [0.95, 0.9]], dtype=np.float32)
    # row 1's positive is masked -> a negative; row 2 has no known label -> skipped
    truth, _score = M.flagged_truth_and_score(labels, scores, mask)
    assert truth.tolist() == [1.0, 0.0]
    assert M.flagged_average_precision(labels, scores, mask) == pytest.approx(0.5)


def test_per_category_masked_labels_ignored() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (50, 3)).astype(np.float32)
    scores = rng.random((50, 3)).astype(np.float32)
    mask = (rng.random((50, 3)) > 0.3).astype(np.float32)
    before = M.per_category(labels, scores, mask, ["a", "b", "c"])
    flipped = labels.copy()
    flipped[mask == 0] = 1 - flipped[mask == 0]
    after = M.per_category(flipped, scores, mask, ["a", "b", "c"])
    assert before == after
    assert M.flagged_average_precision(labels, scores, mask) == pytest.approx(
        M.flagged_average_precision(labels * mask, scores, mask)
    )
    # counts are over known entries only
    assert before["a"]["positives"] + before["a"]["negatives"] == int(mask[:, 0].sum())


def test_masked_bce_ignores_masked_entries() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    a = masked_bce(logits, labels, mask, None)
    b = masked_bce(logits, torch.tensor([[1.0, 1.0], [0.0, 1.0]]), mask, None)
    assert a.item() == pytest.approx(b.item())
    # equals the mean over the three known entries
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    known = [
        bce(torch.tensor(2.0), torch.tensor(1.0)),
        bce(torch.tensor(0.5), torch.tensor(0.0)),
        bce(torch.tensor(3.0), torch.tensor(1.0)),
    ]
    assert a.item() == pytest.approx(float(sum(known) / 3))
    # gradient does not flow into the masked logit
    lg = logits.clone().requires_grad_(True)
    masked_bce(lg, labels, mask, torch.tensor([2.0, 2.0])).backward()
    assert lg.grad is not None and lg.grad[0, 1].item() == 0.0


def test_flagged_known_only_vs_all_categories() -> None:
    # row 1 is known-negative for category 0 only; the model scores its unknown category high
    labels = np.array([[1, 0], [0, 0]], dtype=np.float32)
    mask = np.array([[1, 1], [1, 0]], dtype=np.float32)
    scores = np.array([[0.6, 0.1], [0.2, 0.9]], dtype=np.float32)
    assert M.flagged_average_precision(labels, scores, mask) == 1.0
    assert M.flagged_average_precision(labels, scores, mask, known_only=False) == 0.5


def test_flagged_by_source_by_hand() -> None:
    # 2 categories; row 4 has no known label and is skipped (and so is its source entry)
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 0], [1, 1]], dtype=np.float32)
    m = np.array([[1, 1], [1, 1], [0, 1], [1, 0], [0, 0]], dtype=np.float32)
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.99, 0.3], [0.5, 0.95], [1.0, 1.0]], dtype=np.float32)
    out = M.flagged_by_source(y, s, m, ["a", "a", "b", "b", "c"])
    # source a: truth [1, 0], known-max score [0.9, 0.8] -> AP 1.0
    assert out["a"] == {"rows": 2, "positives": 1, "auprc": 1.0}
    # source b: truth [1, 0], known-max score [0.3, 0.5] (0.99 and 0.95 are unknown):
    # the negative ranks first -> AP = precision 1/2 at the one positive
    assert out["b"] == {"rows": 2, "positives": 1, "auprc": 0.5}
    assert "c" not in out
