"""Post-processing: max over chunks, derived categories, hierarchy, thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from serving.engine.postprocess import PostProcessor
from serving.model.repo_config import DerivedRule, ModelConfig

CORE = [
    "harassment",
    "harassment/threatening",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
]
CFG = ModelConfig(
    name="t",
    labels=["hate", "hate/threatening", "sexual", "violence", *CORE],
    thresholds={"hate": 0.5, "hate/threatening": 0.2, "sexual": 0.5, "violence": 0.5},
    derived={
        "sexual/minors": DerivedRule(parent="sexual", gate_regex=r"\b(child|kid)s?\b"),
        "violence/graphic": DerivedRule(
            parent="violence", gate_regex=r"\bgore\b", ungated_factor=0.25
        ),
    },
)


def test_served_categories_in_canonical_order():
    assert PostProcessor(CFG).categories == [
        "harassment",
        "harassment/threatening",
        "hate",
        "hate/threatening",
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "sexual/minors",
        "violence",
        "violence/graphic",
    ]


def test_config_must_cover_every_core_category():
    with pytest.raises(ValueError, match="does not score"):
        ModelConfig(name="t", labels=["hate", "violence"])


def test_max_over_chunks_derived_and_hierarchy():
    pp = PostProcessor(CFG)
    chunk_scores = np.zeros((3, len(CFG.labels)), dtype=np.float32)
    chunk_scores[:, :4] = [
        [0.1, 0.9, 0.8, 0.2],  # input 0 chunk 0: child above parent
        [0.3, 0.1, 0.1, 0.6],  # input 0 chunk 1
        [0.0, 0.0, 0.7, 0.8],  # input 1
    ]
    texts = ["a kid and gore", "nothing to gate"]
    s = pp.scores(chunk_scores, [2, 1], texts)
    col = {w: i for i, w in enumerate(pp.categories)}
    # max over chunks, then child capped by parent: hate=max(.1,.3)=.3, hate/thr=min(.9,.3)
    assert s[0, col["hate"]] == np.float32(0.3)
    assert s[0, col["hate/threatening"]] == np.float32(0.3)
    assert s[0, col["sexual/minors"]] == np.float32(0.8)  # gated in: equals parent
    assert s[0, col["violence/graphic"]] == np.float32(0.6)
    assert s[1, col["sexual/minors"]] == 0.0  # gate miss, factor 0
    assert s[1, col["violence/graphic"]] == np.float32(0.8 * 0.25)
    children = [col[w] for w in ("hate/threatening", "sexual/minors", "violence/graphic")]
    parents = [col[w] for w in ("hate", "sexual", "violence")]
    assert (s[:, children] <= s[:, parents]).all()


def test_flagged_child_flags_parent():
    pp = PostProcessor(CFG)
    col = {w: i for i, w in enumerate(pp.categories)}
    s = np.zeros((1, len(pp.categories)), dtype=np.float32)
    s[0, col["hate"]] = 0.3  # below hate's 0.5
    s[0, col["hate/threatening"]] = 0.25  # above its own 0.2
    f = pp.flags(s)
    assert f[0, col["hate/threatening"]] and f[0, col["hate"]]
    assert not f[0, col["sexual"]]


def test_thresholds_default_and_per_category():
    cfg = CFG.model_copy(update={"thresholds": {"hate": 0.9}})
    pp = PostProcessor(cfg)
    col = {w: i for i, w in enumerate(pp.categories)}
    s = np.zeros((1, len(pp.categories)), dtype=np.float32)
    s[0, col["hate"]], s[0, col["violence"]] = 0.8, 0.6
    f = pp.flags(s)[0]
    assert not f[col["hate"]] and f[col["violence"]]  # hate needs 0.9; violence uses 0.5
