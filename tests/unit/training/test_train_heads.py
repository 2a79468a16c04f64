"""``train.py --train-heads``: only the named heads learn; the encoder and the other heads
stay bit-identical, and the export keeps the frozen heads' thresholds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serving.model.load import ModerationModel
from serving.model.repo_config import save_model_config
from tests.helpers import tiny_bert
from training import data as D
from training.defaults import DEFAULT_LABELS, default_model_config
from training.export import keep_frozen_thresholds
from training.train import (
    TrainArgs,
    build_optimizer,
    freeze_except_heads,
    rows_for_heads,
    train_mode,
    train_step,
)

LABELS = list(DEFAULT_LABELS)  # the last two: illicit, illicit/violent
TRAINED = ["illicit", "illicit/violent"]


def _model() -> ModerationModel:
    torch.manual_seed(0)
    cfg = default_model_config(labels=LABELS)
    cfg.pooling = "attention"
    model = ModerationModel(tiny_bert(), len(LABELS), cfg)
    with torch.no_grad():
        assert model.classifier.query is not None
        model.classifier.query.normal_()
    return model


def test_only_the_named_heads_change_and_the_rest_stays_bit_identical() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freeze_except_heads(model, TRAINED)
    opt = build_optimizer(model, TrainArgs(data=[], run_dir=""))
    train_mode(model, frozen_encoder=True)
    assert not model.encoder.training and model.classifier.training
    ids = torch.randint(1000, 2000, (4, 12))
    mask = torch.ones_like(ids)
    y = (torch.rand(4, len(LABELS)) > 0.5).float()
    m = torch.ones_like(y)  # every label known: frozen heads get a loss, yet must not move
    for _ in range(3):
        train_step(model, opt, (ids, mask, y, m), torch.ones(len(LABELS)), False, True)

    after = model.state_dict()
    for k, v in before.items():
        if not k.startswith("classifier."):
            assert torch.equal(after[k], v), k
    for k in ("weight", "bias", "query"):
        old, new = before[f"classifier.{k}"], after[f"classifier.{k}"]
        assert torch.equal(new[:-2], old[:-2]), k  # the eight older heads: frozen
        assert not torch.equal(new[-2:], old[-2:]), k  # illicit, illicit/violent: trained


def test_a_head_that_is_not_a_label_is_refused() -> None:
    with pytest.raises(ValueError, match="sexual/minors"):
        freeze_except_heads(_model(), ["sexual/minors"])


def test_only_rows_that_know_a_trained_head_are_sampled() -> None:
    def row(known: dict[str, int]) -> D.Example:
        y = np.array([known.get(w, 0) for w in LABELS], np.float32)
        mask = np.array([w in known for w in LABELS], np.float32)
        return D.Example(text=str(known), labels=y, mask=mask, source="s")

    rows = [row({"hate": 1}), row({"illicit": 0}), row({"hate": 0, "illicit/violent": 1})]
    kept = rows_for_heads(rows, LABELS, TRAINED)
    assert [r.text for r in kept] == [r.text for r in rows[1:]]


def test_frozen_heads_keep_the_starting_models_thresholds(tmp_path: Path) -> None:
    start = default_model_config(labels=LABELS)
    start.thresholds = {"hate": 0.61, "violence": 0.96, "violence/graphic": 0.96}
    save_model_config(start, tmp_path)
    fresh = default_model_config(labels=LABELS)
    fresh.thresholds = dict.fromkeys(fresh.served_categories, 0.5)

    out = keep_frozen_thresholds(fresh, tmp_path, TRAINED)
    assert out.thresholds["hate"] == 0.61
    assert out.thresholds["violence"] == 0.96
    assert out.thresholds["violence/graphic"] == 0.96  # a derived category follows its head
    assert out.thresholds["illicit"] == 0.5 and out.thresholds["illicit/violent"] == 0.5
