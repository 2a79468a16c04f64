"""The project-written benign idioms: negatives for every category, a held-out part that
shares no text, template or verb with the train part, and loadable as a corpus source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serving.categories import WIRE_NAMES
from training import benign_idioms as B
from training import data as D


def test_rows_are_negative_for_every_category_and_deterministic() -> None:
    rows = B.rows("train", seed=3)
    assert rows == B.rows("train", seed=3)
    assert len(rows) > 150
    assert all(r["labels"] == dict.fromkeys(WIRE_NAMES, 0) for r in rows)
    assert {r["source"] for r in rows} == {B.SOURCE}
    assert "Kill the process with kill -9" in {r["text"] for r in rows}


def test_the_held_out_part_shares_no_text_template_or_tool() -> None:
    train, held_out = set(B.texts("train")), set(B.texts("eval"))
    assert len(held_out) > 100 and not train & held_out
    assert not set(B._TEMPLATES["train"]) & set(B._TEMPLATES["eval"])
    assert not set(B._TECH_TOOLS["train"]) & set(B._TECH_TOOLS["eval"])
    assert not set(B._TECH_OBJECTS["train"]) & set(B._TECH_OBJECTS["eval"])
    assert not any("kill" in t.lower().split()[0] for t in held_out)  # other verbs


def test_the_written_file_loads_as_known_negatives(tmp_path: Path) -> None:
    out = tmp_path / "idioms.jsonl"
    assert B.main(["--split", "eval", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert [json.loads(x) for x in lines] == B.rows("eval")
    labels = ["harassment", "violence"]
    ex = D.load_examples([out], labels)
    assert len(ex) == len(lines)
    assert all(e.mask.tolist() == [1.0, 1.0] and e.labels.tolist() == [0.0, 0.0] for e in ex)


def test_false_flags_counts_the_held_out_part_per_template() -> None:
    murder = "Please murder this {obj}, it has been stuck for hours (with {tool})."

    def score(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
        flags = np.array([[t.startswith("Please murder")] for t in texts])
        return ["violence"], flags.astype(np.float32), flags

    res = B.false_flags(score)
    held_out = B.texts("eval")
    n = sum(t.startswith("Please murder") for t in held_out)
    assert n == len(B._TECH_OBJECTS["eval"]) * len(B._TECH_TOOLS["eval"])
    assert res["rows"] == len(held_out)
    assert res["false_flag_rate"] == round(n / len(held_out), 4)
    assert res["by_template"][murder] == 1.0
    assert res["templates_with_a_false_flag"] == 1
    assert sum(res["by_template"].values()) == 1.0
    assert len(res["flagged_examples"]) == 10
