"""Response cache: per-input model scores of texts seen before, consulted before tokenizing.

Moderation traffic repeats itself (spam waves, bots, client retries, the same LLM answer
many times). A text whose model output is already known skips tokenization, the queue and
the model: the engine looks every input up here first and sends only the misses on.

* Key: a 16-byte BLAKE2b digest of the model (name, version, dtype) and the input text as
  the tokenizer normalises it (``normalizer``: e.g. lower-casing and accent stripping of an
  uncased BERT vocabulary), so texts the model cannot tell apart share one entry; texts over
  ``NORMALIZE_MAX_CHARS`` are keyed as sent. The text itself is never stored, only its
  digest.
* Value: the model's head scores for the input (max over its chunks), as float32 bytes.
  Post-processing (the derived categories' text rules, thresholds) still runs on the real
  text of every request, so a hit answers what a miss would (up to the float rounding
  between two batch shapes, ~1e-6).
* Bound: ``MODSERVE_CACHE_BYTES`` in total, least recently used entries evicted first; an
  entry's size counts its key, value and the dictionary slot (``entry_bytes``), so the
  bound holds for the process's real memory, not just the payload. 0 turns the cache off.

Only the event loop touches it (no lock): the engine looks up and stores on the loop.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

# Keys are computed on the event loop; a text longer than this is keyed as sent, not as the
# tokenizer normalises it (measured: normalising a 40,000-character text takes 3.6 ms of
# loop time, hashing it 0.05 ms; 100 of them in one request held the loop 0.36 s): only its
# case/accent variants stop sharing an entry.
NORMALIZE_MAX_CHARS = 2048
SLOT_OVERHEAD_BYTES = 128  # an OrderedDict slot (hash table entry, order node), table growth


def entry_bytes(heads: int) -> int:
    """Memory one entry holds: digest and score bytes objects plus the dictionary slot."""
    return sys.getsizeof(b"\0" * 16) + sys.getsizeof(b"\0" * (4 * heads)) + SLOT_OVERHEAD_BYTES


class ResponseCache:
    """LRU of ``digest -> (L,) float32 head scores``, bounded by ``max_bytes``."""

    def __init__(
        self,
        max_bytes: int,
        model_key: str,
        heads: int,
        normalizer: Callable[[str], str] | None = None,
    ) -> None:
        """``model_key``: what makes scores differ besides the text (name, version, dtype).
        ``normalizer``: the tokenizer's own text normalisation (None: the exact text)."""
        self.heads = heads
        self.entry_bytes = entry_bytes(heads)
        self.max_entries = max(0, max_bytes) // self.entry_bytes
        self._prefix = hashlib.blake2b(model_key.encode(), digest_size=16).digest()
        self._normalize = normalizer
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    @property
    def size_bytes(self) -> int:
        return len(self._entries) * self.entry_bytes

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, text: str) -> bytes:
        if self._normalize is not None and len(text) <= NORMALIZE_MAX_CHARS:
            text = self._normalize(text)
        h = hashlib.blake2b(self._prefix, digest_size=16)
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.digest()

    def lookup(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """Head scores per key (None: a miss); hits become the most recently used."""
        out: list[np.ndarray | None] = []
        for k in keys:
            v = self._entries.get(k)
            if v is None:
                self.misses += 1
                out.append(None)
            else:
                self._entries.move_to_end(k)
                self.hits += 1
                out.append(np.frombuffer(v, dtype=np.float32))
        return out

    def store(self, keys: Sequence[bytes], heads: np.ndarray) -> int:
        """Remember ``heads[i]`` (L,) for ``keys[i]``; returns how many entries were evicted."""
        if not self.enabled:
            return 0
        rows = np.ascontiguousarray(heads, dtype=np.float32)
        for k, row in zip(keys, rows, strict=True):
            self._entries[k] = row.tobytes()
            self._entries.move_to_end(k)
        evicted = 0
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            evicted += 1
        self.evictions += evicted
        return evicted


def tokenizer_normalizer(backend: object) -> Callable[[str], str] | None:
    """A ``tokenizers.Tokenizer``'s normaliser as a function (None if it has none): two texts
    it maps to the same string are tokenized identically, so they share a cache entry."""
    normalizer = getattr(backend, "normalizer", None)
    if normalizer is None:
        return None
    normalize: Callable[[str], str] = normalizer.normalize_str
    return normalize
