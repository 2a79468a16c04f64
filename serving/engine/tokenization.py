"""Tokenizer wrapper: batch tokenization, chunking of long inputs, length buckets, padding.

Inputs longer than the model window are split into overlapping chunks
(``stride`` tokens of overlap) and later scored as the max over chunks, so the
user never has to pre-split text. Training and evaluation use the same
``chunk_texts`` so that offline metrics match what the server answers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Chunk:
    input_index: int  # which input text of the request/batch it came from
    ids: list[int]  # token ids including special tokens


class TextTooLongError(ValueError):
    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"input[{index}] is {tokens} tokens long; the limit is {limit} tokens")
        self.index, self.tokens, self.limit = index, tokens, limit


class ChunkingTokenizer:
    """Turns texts into model-window chunks with the model's fast (Rust) tokenizer."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length_tokens: int, stride_tokens: int
    ):
        self.tokenizer = tokenizer
        # Own copy of the Rust tokenizer with the file's truncation/padding switched off:
        # we chunk and pad ourselves (to length buckets).
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        plain = backend.encode("a", add_special_tokens=False).ids
        full = backend.encode("a", add_special_tokens=True).ids
        cut = next(i for i in range(len(full)) if full[i : i + len(plain)] == plain)
        self.prefix, self.suffix = list(full[:cut]), list(full[cut + len(plain) :])
        self.window = max_length_tokens - len(self.prefix) - len(self.suffix)
        if self.window <= stride_tokens:
            raise ValueError("chunk stride must be smaller than the model window")
        self.step = self.window - stride_tokens
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)

    def chunk_texts(self, texts: list[str], max_input_tokens: int | None = None) -> list[Chunk]:
        """All chunks of all texts, in input order. Raises TextTooLongError over the cap."""
        enc = self.backend.encode_batch(texts, add_special_tokens=False)
        chunks: list[Chunk] = []
        for i, e in enumerate(enc):
            ids = e.ids
            if max_input_tokens is not None and len(ids) > max_input_tokens:
                raise TextTooLongError(i, len(ids), max_input_tokens)
            start = 0
            while True:
                piece = ids[start : start + self.window]
                chunks.append(Chunk(i, self.prefix + piece + self.suffix))
                if start + self.window >= len(ids):
                    break
                start += self.step
        return chunks


def bucket_for(length: int, buckets: list[int]) -> int:
    """Smallest bucket that holds ``length`` tokens (buckets sorted ascending)."""
    i = bisect.bisect_left(buckets, length)
    if i == len(buckets):
        raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


def pad_batch(seqs: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to ``length``: returns (input_ids, attention_mask), both int64 (B, length)."""
    ids = np.full((len(seqs), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), length), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
        mask[r, : len(s)] = 1
    return ids, mask
