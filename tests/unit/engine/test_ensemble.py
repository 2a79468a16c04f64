"""Weighted ensembles: combined scores, thresholds, hierarchy and agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from serving.engine.ensemble import EnsembleConfig, EnsembleEngine, plan_models
from serving.engine.types import ClassifyResult, Timings

CATS = ["hate", "hate/threatening", "violence"]


class Fixed:
    """A member that always answers the same scores."""

    def __init__(self, name: str, rows: list[list[float]], threshold: float = 0.5) -> None:
        self.name, self.categories = name, CATS
        self.label_map: dict[str, str] = {}  # OpenAI columns already
        self.scores = np.array(rows, dtype=np.float32)
        self.threshold = threshold

    async def classify(self, texts: list[str], timeout_s: float | None = None) -> ClassifyResult:
        s = self.scores[: len(texts)]
        return ClassifyResult(self.name, CATS, s, s >= self.threshold, Timings(tokens=3))


async def test_weighted_mean_thresholds_and_agreement():
    a = Fixed("a", [[0.9, 0.1, 0.0], [0.1, 0.0, 0.2]])
    b = Fixed("b", [[0.3, 0.1, 0.0], [0.1, 0.0, 0.2]])
    cfg = EnsembleConfig(
        name="ens", members={"a": 3.0, "b": 1.0}, thresholds={"hate/threatening": 0.05}
    )
    r = await EnsembleEngine(cfg, {"a": a, "b": b}).classify(["x", "y"])
    np.testing.assert_allclose(r.scores[0], [0.75, 0.1, 0.0], atol=1e-6)  # (3*.9 + .3) / 4
    assert r.flags[0].tolist() == [True, True, False]
    assert r.flags[1].tolist() == [False, False, False]
    # input 0: a flagged, b did not -> 1 of 2 agree; input 1: both agree (not flagged)
    assert r.extras["model_agreement"] == [0.5, 1.0]


async def test_plain_mean_ignores_weights_and_child_flags_parent():
    a = Fixed("a", [[0.2, 0.2, 0.0]])
    b = Fixed("b", [[0.4, 0.4, 0.0]])
    cfg = EnsembleConfig(
        name="e",
        members={"a": 9.0, "b": 1.0},
        combine="mean",
        thresholds={"hate": 0.9, "hate/threatening": 0.3},
    )
    r = await EnsembleEngine(cfg, {"a": a, "b": b}).classify(["x"])
    np.testing.assert_allclose(r.scores[0], [0.3, 0.3, 0.0], atol=1e-6)
    assert r.flags[0].tolist() == [True, True, False]  # child over 0.3 flags hate too


def test_an_imported_model_with_its_own_labels_cannot_be_a_member():
    a, b = Fixed("a", [[0.2, 0.2, 0.0]]), Fixed("b", [[0.4, 0.4, 0.0]])
    b.label_map = {"toxic": "harassment"}
    cfg = EnsembleConfig(name="e", members={"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="imported models with their own labels"):
        EnsembleEngine(cfg, {"a": a, "b": b})


def test_plan_models_loads_members_once(tmp_path: Path):
    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "config.yaml").write_text(
        yaml.safe_dump({"name": "ens", "members": {"m1": 1.0, "m2": 1.0}})
    )
    plain, ensembles = plan_models(["m1", "ens"], tmp_path)
    assert plain == ["m1", "m2"] and list(ensembles) == ["ens"]
    (ens / "config.yaml").write_text(yaml.safe_dump({"name": "other", "members": {"m1": 1}}))
    with pytest.raises(ValueError, match="names itself"):
        plan_models(["ens"], tmp_path)
