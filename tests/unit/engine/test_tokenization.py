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
