"""Chunking, buckets and padding with the real MiniLM fast tokenizer."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from serving.engine.tokenization import ChunkingTokenizer, TextTooLongError, bucket_for, pad_batch
from serving.model.load import packaged_encoder_dir


@pytest.fixture(scope="module")
def tok() -> ChunkingTokenizer:
    return ChunkingTokenizer(AutoTokenizer.from_pretrained(str(packaged_encoder_dir())), 16, 4)


def test_short_text_is_one_chunk_with_special_tokens(tok: ChunkingTokenizer):
    (c,) = tok.chunk_texts(["hello world"])
    assert c.ids[0] == 101 and c.ids[-1] == 102 and len(c.ids) == 4


def test_long_text_chunks_overlap_and_cover_everything(tok: ChunkingTokenizer):
    words = [f"w{i}" for i in range(40)]
    ids = tok.backend.encode(" ".join(words), add_special_tokens=False).ids
    chunks = tok.chunk_texts(["short", " ".join(words)])
    assert chunks[0].input_index == 0
    body = [c.ids[1:-1] for c in chunks if c.input_index == 1]
    assert all(len(c.ids) <= 16 for c in chunks)
    assert body[0] == ids[:14]
    assert body[1][:4] == body[0][-4:]  # 4 tokens of overlap
    covered = body[0] + [t for b in body[1:] for t in b[4:]]
    assert covered == ids


def test_token_cap(tok: ChunkingTokenizer):
    with pytest.raises(TextTooLongError) as e:
        tok.chunk_texts(["ok", "a " * 30], max_input_tokens=20)
    assert e.value.index == 1 and e.value.tokens == 30


def test_empty_text_still_scores(tok: ChunkingTokenizer):
    (c,) = tok.chunk_texts([""])
    assert c.ids == [101, 102]


def test_buckets_and_padding():
    assert bucket_for(3, [16, 32]) == 16
    assert bucket_for(16, [16, 32]) == 16
    assert bucket_for(17, [16, 32]) == 32
    with pytest.raises(ValueError):
        bucket_for(33, [16, 32])
    ids, mask = pad_batch([[1, 2, 3], [4]], 4, 0)
    assert ids.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_spans_are_scored_beside_the_windows():
    base = AutoTokenizer.from_pretrained(str(packaged_encoder_dir()))
    spans = ChunkingTokenizer(base, 16, 4, span_tokens=8, span_stride_tokens=2)
    words = " ".join(f"w{i}" for i in range(40))
    ids = spans.backend.encode(words, add_special_tokens=False).ids
    windows = [c for c in ChunkingTokenizer(base, 16, 4).chunk_texts([words])]
    chunks = spans.chunk_texts(["short", words])
    assert [c.ids for c in chunks if c.input_index == 0] == [[101, *ids_of(spans, "short"), 102]]
    mine = [c.ids for c in chunks if c.input_index == 1]
    assert mine[: len(windows)] == [c.ids for c in windows]  # the full windows first
    span_bodies = [c[1:-1] for c in mine[len(windows) :]]
    assert all(len(b) <= 6 for b in span_bodies) and span_bodies[0] == ids[:6]
    assert span_bodies[1][:2] == span_bodies[0][-2:]  # 2 tokens of overlap
    assert span_bodies[0] + [t for b in span_bodies[1:] for t in b[2:]] == ids


def ids_of(tok: ChunkingTokenizer, text: str) -> list[int]:
    return list(tok.backend.encode(text, add_special_tokens=False).ids)
