"""Thresholds within a false-flag budget on benign composites (training.calibrate)."""

from __future__ import annotations

import numpy as np

from serving.model.repo_config import ModelConfig
from training.calibrate import meet_false_flag_budget
from training.defaults import default_model_config


def _low_benign_scores(
    seed: int,
) -> tuple[ModelConfig, dict[str, int], np.random.Generator, np.ndarray]:
    """The default config, its column per served category, a generator, and 400 benign rows
    scoring 0-0.3 everywhere (no flags at 0.5)."""
    cfg = default_model_config()
    col = {w: j for j, w in enumerate(cfg.served_categories)}
    rng = np.random.default_rng(seed)
    return cfg, col, rng, rng.uniform(0.0, 0.3, (400, len(col))).astype(np.float32)


def test_the_head_that_flags_benign_text_is_raised_and_the_budget_is_met():
    cfg, col, rng, benign = _low_benign_scores(0)
    served = cfg.served_categories
    benign[:40, col["hate"]] = rng.uniform(0.5, 0.7, 40)  # 10 % flagged by hate at 0.5
    benign[:40, col["hate/threatening"]] = 0.0
    positives = rng.uniform(0.0, 0.3, (100, len(served))).astype(np.float32)
    positives[:50, col["hate"]] = rng.uniform(0.75, 1.0, 50)  # true hate scores high
    positives[50:, col["violence"]] = rng.uniform(0.55, 1.0, 50)
    start = dict.fromkeys(served, 0.5)
    out = meet_false_flag_budget(cfg, start, positives, benign, budget=0.02)

    flagged = (benign >= np.array([out[w] for w in served])).any(axis=1).mean()
    assert flagged <= 0.02
    assert 0.6 < out["hate"] <= 0.75  # raised past the benign scores, below the true ones
    assert out["violence"] == 0.5 and out["sexual"] == 0.5  # heads that flag nothing benign
    kept = (positives >= np.array([out[w] for w in served])).any(axis=1).mean()
    assert kept == 1.0


def test_a_budget_already_met_changes_nothing():
    cfg = default_model_config()
    served = cfg.served_categories
    start = dict.fromkeys(served, 0.5)
    benign = np.zeros((10, len(served)), dtype=np.float32)
    assert meet_false_flag_budget(cfg, start, benign + 0.9, benign, budget=0.0) == start


def test_only_movable_heads_are_raised_and_the_frozen_ones_flags_still_count():
    cfg, col, rng, benign = _low_benign_scores(1)
    served = cfg.served_categories
    benign[:4, col["hate"]] = 0.9  # 1 % flagged by a frozen head: counts, cannot move
    benign[4:40, col["illicit"]] = rng.uniform(0.5, 0.7, 36)  # 9 % by the trained head
    positives = np.zeros((10, len(served)), dtype=np.float32)
    positives[:, col["illicit"]] = 0.95
    start = dict.fromkeys(served, 0.5)
    out = meet_false_flag_budget(cfg, start, positives, benign, budget=0.015, movable=["illicit"])

    assert out["hate"] == 0.5  # frozen
    assert 0.6 < out["illicit"] < 0.95
    flagged = (benign >= np.array([out[w] for w in served])).any(axis=1).mean()
    assert 0.01 <= flagged <= 0.015
