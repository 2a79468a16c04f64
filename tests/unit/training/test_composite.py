"""Composite examples: labels and masks of texts made of several rows, checked by hand."""

from __future__ import annotations

import numpy as np

from training import composite as C
from training.data import Example

# Three categories: (hate, violence, sexual)
HARM = (np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0]))  # hate=1, violence=0, sexual=?
BENIGN = (np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0]))  # every category a known 0
PARTLY = (np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0, 1.0]))  # violence unknown


def _combine(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[list[float], list[float]]:
    y, m = C.combine(parts)
    return y.tolist(), m.tolist()


def test_positive_anywhere_is_positive_and_negative_needs_every_part():
    # hate: positive in one part -> 1 (known); violence: 0 in HARM and BENIGN -> known 0;
    # sexual: unknown in HARM -> unknown
    assert _combine(BENIGN, HARM, BENIGN) == ([1.0, 0.0, 0.0], [1.0, 1.0, 0.0])
    assert _combine(BENIGN, BENIGN) == ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    # violence unknown in one part: unknown in the composite, though the others say 0
    assert _combine(BENIGN, PARTLY, BENIGN) == ([0.0, 0.0, 0.0], [1.0, 0.0, 1.0])
    assert _combine(HARM) == ([1.0, 0.0, 0.0], [1.0, 1.0, 0.0])  # one part: unchanged


def test_assumed_negative_weight_is_the_smallest_of_the_parts():
    assumed = (np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.25, 0.25]))
    y, m = _combine(BENIGN, assumed)
    assert y == [0.0, 0.0, 0.0] and m == [1.0, 0.25, 0.25]
    y, m = _combine(HARM, assumed)  # hate positive: weight 1 whatever the other parts say
    assert y == [1.0, 0.0, 0.0] and m == [1.0, 0.25, 0.0]


def test_context_rows_are_benign_rows_of_context_sources():
    ok = Example("The river floods in spring.", *BENIGN, source="wikipedia_npov_sentences")
    harmful = Example("x", *HARM, source="wikipedia_npov_sentences")
    elsewhere = Example("x", *BENIGN, source="davidson_hate_offensive")
    unknown = Example(
        "x", np.zeros(3, np.float32), np.zeros(3, np.float32), "liar_politifact_statements"
    )
    assert C.is_context(ok)
    assert not C.is_context(harmful) and not C.is_context(elsewhere) and not C.is_context(unknown)


def test_context_fits_the_room_and_the_target_keeps_its_place():
    rng = np.random.default_rng(0)
    pool = np.array([10, 11, 12, 13])
    tokens = np.array([30, 30, 30, 30])
    picked = C.pick_context(pool, tokens, n_wanted=4, room_tokens=70, rng=rng)
    assert len(picked) == 2 and set(picked) <= set(pool.tolist())
    assert C.pick_context(pool, tokens, n_wanted=3, room_tokens=20, rng=rng) == []
    assert C.join("T", ["a", "b", "c"], 0, " ") == "T a b c"
    assert C.join("T", ["a", "b", "c"], 2, "\n") == "a\nb\nT\nc"
    assert C.join("T", ["a", "b", "c"], 3, " ") == "a b c T"
