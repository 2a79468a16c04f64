"""benchmarks.span_scoring: its settings parse, and a span setting scores long inputs as
more (shorter) chunks than the windows alone while short inputs cost the same."""

from __future__ import annotations

from pathlib import Path

from benchmarks import span_scoring as S
from serving.engine.tokenization import ChunkingTokenizer
from serving.model.load import load_model


def test_parse_spans() -> None:
    assert S.parse_spans("64/32,128/32") == [(64, 32), (128, 32)]
    assert S.parse_spans("96") == [(96, 0)]
    assert S.parse_spans("") == []


def test_spans_add_tokens_only_for_long_inputs(tiny_repo: Path) -> None:
    base = load_model(tiny_repo / "tiny", "cpu", "float32")
    spans = S.with_spans(base, 16, 4)
    assert spans.cfg.span_tokens == 16 and base.cfg.span_tokens == 0  # the base is unchanged
    short, long = ["a short text"], ["word " * 200]
    assert S.model_tokens(spans, short) == S.model_tokens(base, short)
    assert S.model_tokens(spans, long) > S.model_tokens(base, long)
    chunks = ChunkingTokenizer.for_model(spans.tokenizer, spans.cfg).chunk_texts(long)
    assert min(len(c.ids) for c in chunks) <= 16  # the spans are among the chunks
