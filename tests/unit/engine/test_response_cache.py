"""The response cache on its own: keys, LRU order, the byte bound and what it really holds."""

from __future__ import annotations

import tracemalloc

import numpy as np
from tokenizers import Tokenizer

from serving.engine.response_cache import ResponseCache, tokenizer_normalizer
from tests.helpers import copy_packaged_tokenizer


def rows(n: int, heads: int = 8) -> np.ndarray:
    return np.arange(n * heads, dtype=np.float32).reshape(n, heads) / (n * heads)


def test_least_recently_used_goes_first_and_the_bound_holds():
    c = ResponseCache(3 * 242, "m", 8)  # room for three entries
    assert c.entry_bytes == 242 and c.max_entries == 3
    keys = [c.key(t) for t in "abcd"]
    c.store(keys[:3], rows(3))
    assert c.lookup([keys[0]])[0] is not None  # "a" is now the most recently used
    assert c.store([keys[3]], rows(1)) == 1  # "b" goes
    found = c.lookup(keys)
    assert [f is not None for f in found] == [True, False, True, True]
    np.testing.assert_array_equal(found[3], rows(1)[0])
    assert len(c) == 3 and c.size_bytes <= 3 * 242 and c.evictions == 1
    assert (c.hits, c.misses) == (4, 1)


def test_keys_depend_on_the_model_and_the_text_not_on_what_the_tokenizer_ignores(tmp_path):
    copy_packaged_tokenizer(tmp_path)
    norm = tokenizer_normalizer(Tokenizer.from_file(str(tmp_path / "tokenizer.json")))
    assert norm is not None
    v1 = ResponseCache(2**20, "m\0001\0float32", 8, norm)
    v2 = ResponseCache(2**20, "m\0002\0float32", 8, norm)
    assert v1.key("Héllo World") == v1.key("hello world")  # uncased, accents stripped
    assert v1.key("hello world") != v1.key("hello  world!")
    assert v1.key("hello") != v2.key("hello")  # another model version: another entry
    exact = ResponseCache(2**20, "m", 8)  # no normaliser: the exact text
    assert exact.key("Hello") != exact.key("hello")
    assert len(v1.key("x" * 10_000)) == 16  # a digest, never the text


def test_zero_bytes_is_off():
    c = ResponseCache(0, "m", 8)
    assert not c.enabled and c.store([c.key("a")], rows(1)) == 0 and len(c) == 0


def test_the_bound_counts_real_memory():
    """What the cache says it holds is at least what Python really allocated for it."""
    n = 50_000
    c = ResponseCache(10**9, "m", 8)
    texts = [f"text number {i}" for i in range(n)]
    scores = rows(n)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        c.store([c.key(t) for t in texts], scores)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(c) == n
    assert held <= c.size_bytes, (held / n, c.entry_bytes)


def test_long_texts_are_keyed_as_sent(tmp_path):
    """Normalising runs on the event loop: past NORMALIZE_MAX_CHARS a text is hashed as sent
    (a repeat still hits; only its case variants get their own entry)."""
    from serving.engine.response_cache import NORMALIZE_MAX_CHARS

    copy_packaged_tokenizer(tmp_path)
    norm = tokenizer_normalizer(Tokenizer.from_file(str(tmp_path / "tokenizer.json")))
    c = ResponseCache(2**20, "m", 8, norm)
    long = "Word " * (NORMALIZE_MAX_CHARS // 5 + 1)
    assert c.key(long) == c.key(long) and c.key(long) != c.key(long.lower())
    short = "Word " * 10
    assert c.key(short) == c.key(short.lower())
