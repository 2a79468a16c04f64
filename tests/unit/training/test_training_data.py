"""Data reading: both layouts, unknown = masked, source filters, stratified split."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from training import data as D

LABELS = ["hate", "hate/threatening", "sexual", "sexual/minors", "violence"]


def _write(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def test_corpus_layout_unknown_is_masked(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "a.jsonl.gz",
        [
            {"text": "I hate them", "labels": {"hate": 1}, "source": "a"},
            {"text": "nice day", "labels": {"hate": 0, "violence": 0}, "source": "a"},
        ],
    )
    ex = D.load_examples([p], LABELS, fill_hierarchy=False)
    assert len(ex) == 2
    assert ex[0].labels.tolist() == [1, 0, 0, 0, 0]
    assert ex[0].mask.tolist() == [1, 0, 0, 0, 0]
    assert ex[1].mask.tolist() == [1, 0, 0, 0, 1]
    assert ex[0].source == "a"


def test_hierarchy_fill_only_unknowns() -> None:
    filled = D.complete_hierarchy({"hate": 0, "sexual/minors": 1})
    assert filled["hate/threatening"] == 0  # parent 0 -> child 0
    assert filled["sexual"] == 1  # child 1 -> parent 1
    assert D.complete_hierarchy({"hate": 0, "hate/threatening": 1})["hate"] == 0  # stated kept


def test_eval_layout(tmp_path: Path) -> None:
    _write(
        tmp_path / "eval.jsonl",
        [
            {"prompt": "some text", "S": 1, "H": 0, "V": 0, "S3": 0},
            {"prompt": "other text", "H": 1, "H2": 1},
        ],
    )
    ex = D.load_examples([tmp_path], LABELS, dedup=False, fill_hierarchy=False)
    assert [e.text for e in ex] == ["some text", "other text"]
    assert ex[0].labels.tolist() == [0, 0, 1, 0, 0]
    assert ex[0].mask.tolist() == [1, 0, 1, 1, 1]  # H2 missing -> unknown
    assert ex[1].labels.tolist() == [1, 1, 0, 0, 0]
    assert ex[1].mask.tolist() == [1, 1, 0, 0, 0]
    assert ex[0].source == "eval"


def test_dedup_merges_and_masks_conflicts(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "a.jsonl",
        [
            {"text": "Hello, World!", "labels": {"hate": 0, "violence": 0}, "source": "a"},
            {"text": "hello world", "labels": {"hate": 1, "sexual": 0}, "source": "b"},
        ],
    )
    ex = D.load_examples([p], LABELS, fill_hierarchy=False)
    assert len(ex) == 1
    assert ex[0].mask.tolist() == [0, 0, 1, 0, 1]  # hate conflicts -> masked


def test_source_filters(tmp_path: Path) -> None:
    rows = [
        {"text": f"text {s} {i}", "labels": {"hate": 0}, "source": s}
        for s in ("open_src", "nc_src", "other")
        for i in range(3)
    ]
    p = _write(tmp_path / "a.jsonl", rows)
    sj = tmp_path / "sources.json"
    sj.write_text(
        json.dumps(
            {
                "sources": [
                    {"name": "open_src", "license_status": "open"},
                    {
                        "name": "nc_src",
                        "license_status": "non-commercial (CC-BY-NC-4.0)",
                        "weak_label": False,
                    },
                    {"name": "other", "license_status": "unclear", "weak_label": True},
                ]
            }
        )
    )
    srcs = {e.source for e in D.load_examples([p], LABELS, sj)}
    assert srcs == {"open_src", "other"}
    srcs = {e.source for e in D.load_examples([p], LABELS, sj, exclude_license=())}
    assert srcs == {"open_src", "nc_src", "other"}
    srcs = {e.source for e in D.load_examples([p], LABELS, sj, include_sources=["other"])}
    assert srcs == {"other"}
    srcs = {e.source for e in D.load_examples([p], LABELS, sj, exclude_sources=["other"])}
    assert srcs == {"open_src"}
    w = D.default_source_weights(D.load_sources_meta(sj))
    assert w["other"] == D.WEAK_LABEL_WEIGHT and w["open_src"] == 1.0
    assert D.parse_source_weights(["a=0.25", "b = 2"]) == {"a": 0.25, "b": 2.0}


def _examples(counts: dict[str, int]) -> list[D.Example]:
    return [
        D.Example(f"{s} {i}", np.zeros(1, np.float32), np.ones(1, np.float32), s)
        for s, n in counts.items()
        for i in range(n)
    ]


def test_stratified_split_per_source_and_deterministic() -> None:
    ex = _examples({"big": 1000, "mid": 200, "tiny": 3})
    tr, va = D.stratified_split(ex, val_fraction=0.1, seed=7)
    assert len(tr) + len(va) == len(ex)
    assert not {e.text for e in tr} & {e.text for e in va}
    by = {s: sum(e.source == s for e in va) for s in ("big", "mid", "tiny")}
    assert by == {"big": 100, "mid": 20, "tiny": 1}
    _tr2, va2 = D.stratified_split(ex, val_fraction=0.1, seed=7)
    assert [e.text for e in va] == [e.text for e in va2]
    _, capped = D.stratified_split(ex, val_fraction=0.1, seed=7, max_val=60)
    assert 55 <= len(capped) <= 65
    sub = D.subsample_stratified(va, 30)
    assert {e.source for e in sub} >= {"big", "mid"}
