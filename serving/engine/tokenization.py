"""Tokenizer wrapper: batch tokenization, chunking of long inputs, length buckets, padding.

Inputs longer than the model window are split into overlapping chunks
(``stride`` tokens of overlap) and later scored as the max over chunks, so the
user never has to pre-split text. Training and evaluation use the same
``chunk_texts`` so that offline metrics match what the server answers.

Span scoring (``span_tokens`` > 0 in the model config): an input longer than one span is
also cut into overlapping spans of ``span_tokens`` (``span_stride_tokens`` of overlap),
scored beside its full windows; the max over all of them is the input's score, so a
harmful sentence is never averaged with a page of benign text around it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from serving.model.repo_config import ModelConfig


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

    @classmethod
    def for_model(cls, tokenizer: PreTrainedTokenizerBase, cfg: ModelConfig) -> ChunkingTokenizer:
        """Windows and spans as ``cfg`` (the model's config.yaml) sets them."""
        return cls(
            tokenizer,
            cfg.max_length_tokens,
            cfg.chunk_stride_tokens,
            cfg.span_tokens,
            cfg.span_stride_tokens,
        )

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length_tokens: int,
        stride_tokens: int,
        span_tokens: int = 0,
        span_stride_tokens: int = 0,
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
        specials = len(self.prefix) + len(self.suffix)
        self.span = max(0, span_tokens - specials) if span_tokens else 0  # content tokens
        if self.span and self.span <= span_stride_tokens:
            raise ValueError("span stride must be smaller than the span")
        self.span_step = self.span - span_stride_tokens
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
            self._windows(chunks, i, ids, self.window, self.step)
            if self.span and len(ids) > self.span:
                self._windows(chunks, i, ids, self.span, self.span_step)
        return chunks

    def _windows(self, out: list[Chunk], i: int, ids: list[int], size: int, step: int) -> None:
        """Overlapping ``size``-token windows of ``ids`` (at least one), as chunks of input i."""
        start = 0
        while True:
            out.append(Chunk(i, self.prefix + ids[start : start + size] + self.suffix))
            if start + size >= len(ids):
                break
            start += step


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
