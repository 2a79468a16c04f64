"""The dilution evaluation and the export's promotion rule, on tiny hand-made rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from serving.model.load import packaged_encoder_dir
from training import dilution as DL
from training.data import Example
from training.defaults import default_model_config
from training.export import promote, promotion_decision, silent_heads

LABELS = ["hate", "violence"]
THREATS = ["I am going to kill you tonight.", "I will stab you.", "You will die screaming."]


def _val() -> list[Example]:
    known0 = (np.zeros(2, np.float32), np.ones(2, np.float32))
    rows = [Example(f"The river {i} floods in spring.", *known0, "wikipedia_npov_sentences")
            for i in range(12)]  # fmt: skip
    violent = (np.array([0.0, 1.0], np.float32), np.ones(2, np.float32))
    rows += [Example(t, *violent, "threatgram_telegram_replies") for t in THREATS]
    rows.append(Example("unrelated", *known0, "davidson_hate_offensive"))  # not context
    return rows


def _set() -> DL.DilutionSet:
    tok = AutoTokenizer.from_pretrained(str(packaged_encoder_dir()))
    return DL.build_set(_val(), LABELS, tok, seed=1, targets=3, benign_per_size=4)


def test_every_target_once_per_context_size_and_benign_composites_without_targets():
    d = _set()
    target = np.array([bool(c) for c in d.target_categories])
    for k in DL.CONTEXT_SIZES:
        at_k = d.context_size == k
        assert (at_k & target).sum() == 3
        assert (at_k & ~target).sum() == (0 if k == 0 else 4)
    for text, cats, pos, k in zip(
        d.texts, d.target_categories, d.position, d.context_size, strict=True
    ):
        threats = [t for t in THREATS if t in text]
        assert len(threats) == (1 if cats else 0)
        assert "unrelated" not in text  # only context sources are context
        assert text.count("The river") == (k if cats else k + 1)
        if cats:
            assert cats == {"violence"}
            assert pos == "alone" if k == 0 else pos in ("start", "middle", "end")
            if pos == "start":
                assert text.startswith(threats[0])
            if pos == "end":
                assert text.endswith(threats[0])


def test_metrics_count_flags_by_context_size():
    d = _set()
    # a scorer that catches a threat only with <= 2 context rows and flags one benign text
    has_threat = np.array([any(t in s for t in THREATS) for s in d.texts])
    caught = has_threat & (d.context_size <= 2)
    false = np.zeros(len(d.texts), bool)
    false[np.flatnonzero(~has_threat & (d.context_size == 8))[0]] = True
    flags = np.stack([np.zeros(len(d.texts), bool), caught | false], axis=1)
    scores = flags.astype(np.float32) * 0.9 + 0.05
    res = DL.evaluate(d, LABELS, scores, flags)
    by = res["by_context_size"]
    assert by["0"]["recall"] == 1.0 and by["2"]["recall"] == 1.0 and by["3"]["recall"] == 0.0
    assert by["8"]["false_flag_rate"] == 0.25 and by["1"]["false_flag_rate"] == 0.0
    assert res["headline_recall"] == round(6 / 15, 4)  # sizes 1, 2 of 1, 2, 3, 5, 8
    assert res["by_position"]["alone"]["recall"] == 1.0
    assert by["1"]["recall_in_category"] == 1.0  # flagged as violence, its own category
    assert by["2"]["retained"] == 1.0 and by["5"]["retained"] == 0.0
    assert res["headline_retained"] == res["headline_recall"]  # every target caught alone


def test_promotion_refuses_a_model_that_catches_less_diluted_harm(tmp_path: Path):
    def dil(ours: float, theirs: float, ff: float = 0.02, ff_shipped: float = 0.02) -> dict:
        return {
            "candidate": {"headline_recall": ours, "headline_false_flag_rate": ff},
            "shipped": {"headline_recall": theirs, "headline_false_flag_rate": ff_shipped},
        }

    assert promotion_decision(dil(0.9, 0.6), False)["promoted"]
    refused = promotion_decision(dil(0.5, 0.6), False)
    assert not refused["promoted"] and "0.500 < shipped 0.600" in refused["reason"]
    assert promotion_decision(dil(0.5, 0.6), True)["promoted"]
    # recall bought with false flags (the first v2 candidate: 0.88 recall, 35 % false flags)
    flagging = promotion_decision(dil(0.88, 0.37, ff=0.35, ff_shipped=0.018), False)
    assert not flagging["promoted"] and "false flags" in flagging["reason"]
    assert promotion_decision(dil(0.88, 0.37, ff=0.025, ff_shipped=0.018), False)["promoted"]
    assert promotion_decision({"skipped": "no context"}, False)["promoted"]
    # a head that catches none of its validation positives is never promoted
    silent = promotion_decision(dil(0.9, 0.6), True, ["illicit"])
    assert not silent["promoted"] and "illicit" in silent["reason"]


def test_a_head_with_positives_but_no_flagged_one_is_silent():
    cfg = default_model_config()
    cats = {w: {"positives": 10, "f1": 0.8} for w in cfg.served_categories}
    cats["illicit"] = {"positives": 7, "f1": 0.0}  # threshold above every positive
    cats["illicit/violent"] = {"positives": 0, "f1": float("nan")}  # nothing to catch
    cats["sexual/minors"] = {"positives": 3, "f1": 0.0}  # derived: no head of its own
    assert silent_heads(cfg, {"per_category": cats}) == ["illicit"]


def test_promote_copies_the_version_and_keeps_two(tmp_path: Path):
    served = tmp_path / "repo" / "m"
    for v in ("1", "2"):
        (served / v).mkdir(parents=True)
    (served / "config.yaml").write_text("version: '2'\n")
    staged = tmp_path / "run" / "export" / "m"
    (staged / "3").mkdir(parents=True)
    (staged / "3" / "model.safetensors").write_text("w")
    (staged / "config.yaml").write_text("version: '3'\n")
    (staged / "README.md").write_text("card")
    promote(staged, served, "3")
    assert sorted(p.name for p in served.iterdir() if p.is_dir()) == ["2", "3"]
    assert (served / "config.yaml").read_text() == "version: '3'\n"
    assert (served / "3" / "model.safetensors").is_file() and (served / "README.md").is_file()
