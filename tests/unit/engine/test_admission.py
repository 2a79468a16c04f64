"""Admission's cost model and rules (serving/engine/admission.py), on plain numbers."""

from __future__ import annotations

import pytest

from serving.engine.admission import (
    INLINE_TOKENIZE_CHARS,
    ServiceModel,
    TokenizerGate,
    check_admission,
)
from serving.errors import Overloaded, RequestTooExpensive


def model(workers: int = 1) -> ServiceModel:
    return ServiceModel([16, 64, 256], lambda b: 1024 // b, workers)


def test_nothing_measured_refuses_nothing():
    m = model()
    assert m.seq_s(64) == 0.0
    check_admission(m.seq_s(64) * 10_000, [], 0.0, 30.0, 1.0)


def test_seconds_per_sequence_from_a_full_batch_and_its_workers():
    m = model(workers=2)
    m.observe(64, 16, 0.32)  # a full batch: 16 x 64 tokens in 0.32 s on one of 2 workers
    assert m.seq_s(64) == pytest.approx(0.01)
    assert m.seq_s(256) == pytest.approx(0.04)  # scaled by length from the nearest bucket
    assert m.tokens_per_s() == pytest.approx(6400)


def test_nearly_empty_batches_do_not_move_the_estimate():
    m = model()
    m.observe(64, 16, 0.32)
    m.observe(64, 1, 0.1)  # overhead-bound: would claim 1.6 s per full batch
    assert m.seq_s(64) == pytest.approx(0.02)
    m.observe(64, 16, 0.52)  # a full batch moves it by the EWMA weight
    assert m.seq_s(64) == pytest.approx((0.8 * 0.32 + 0.2 * 0.52) / 16)


def test_rules():
    check_admission(5.0, [], 0.0, 30.0, 1.0)  # idle: anything within the deadline
    with pytest.raises(RequestTooExpensive):
        check_admission(31.0, [], 0.0, 30.0, 1.0)
    check_admission(0.01, [20.0, 20.0], 0.3, 30.0, 1.0)  # small beside big: fair share
    with pytest.raises(Overloaded) as e:
        check_admission(0.1, [0.1] * 30, 0.0, 30.0, 1.0)  # 3 s of small requests ahead
    assert e.value.retry_after_s == 2
    with pytest.raises(Overloaded):  # the wait fits the bound, but not the deadline
        check_admission(2.0, [0.5], 0.0, 2.4, 1.0)


def test_tokenizer_gate():
    g = TokenizerGate(max_wait_s=1.0)
    assert g.inline(INLINE_TOKENIZE_CHARS) and not g.inline(INLINE_TOKENIZE_CHARS + 1)
    g.enter(10_000_000)  # an empty tokenizer takes anything
    with pytest.raises(Overloaded, match="tokenizer is busy"):
        g.enter(10_000)  # 5 s of text ahead of it at 2M chars/s
    g.leave(10_000_000, 4.0)
    assert g.backlog_chars == 0 and g.chars_per_s == pytest.approx(0.8 * 2e6 + 0.2 * 2.5e6)
    g.enter(10_000)
