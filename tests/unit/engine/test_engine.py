"""Engine end to end in-process with a tiny random model: batching changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from serving.config import Settings
from serving.engine.engine import Engine
from serving.engine.metrics import Metrics
from serving.errors import InferenceFailed, InvalidRequest, NotReady
from serving.model.load import load_model

TEXTS = [
    "hello",
    "I love this recipe, thanks for sharing it with everyone here",
    "the meeting moved to 3pm",
    "word " * 30,
    "a much longer text that keeps going " * 12,  # > 64 tokens: chunked
]


async def started(repo: Path, core_workers: int = 1, **overrides) -> Engine:
    """A started engine; the response cache is off unless asked for (these tests are about
    what the model path computes)."""
    settings = Settings(model_repo=repo, model="tiny", **{"cache_bytes": 0, **overrides})
    engine = Engine(load_model(repo / "tiny"), settings, Metrics(), core_workers=core_workers)
    await engine.start()
    return engine


@pytest.mark.parametrize("core_workers", [1, 2])
async def test_batched_equals_unbatched(tiny_repo: Path, core_workers: int):
    engine = await started(tiny_repo, core_workers, max_batch_wait_ms=50)
    try:
        alone = [await engine.classify([t]) for t in TEXTS]
        together = await asyncio.gather(*(engine.classify([t]) for t in TEXTS))
        one_request = await engine.classify(TEXTS)
    finally:
        await engine.stop()
    for i, a in enumerate(alone):
        np.testing.assert_allclose(together[i].scores, a.scores, atol=1e-5)
        np.testing.assert_allclose(one_request.scores[i], a.scores[0], atol=1e-5)
    assert one_request.scores.dtype == np.float32
    assert ((one_request.scores >= 0) & (one_request.scores <= 1)).all()


async def test_long_text_scores_max_over_chunks(tiny_repo: Path):
    engine = await started(tiny_repo, max_batch_wait_ms=0)
    try:
        text = " ".join(f"w{i}" for i in range(200))
        chunks = engine.tokenizer.chunk_texts([text])
        assert len(chunks) > 2
        raw = engine.forward([c.ids for c in chunks], 64)  # (M, L) per chunk
        result = await engine.classify([text])
    finally:
        await engine.stop()
    expect = raw.max(axis=0)
    cols = [result.categories.index(w) for w in engine.loaded.cfg.labels]
    np.testing.assert_allclose(
        result.scores[0, cols], np.minimum(expect, result.scores[0, cols]), atol=1e-6
    )
    # hate (parent) is untouched by capping, so it equals the chunk max exactly
    h = engine.loaded.cfg.labels.index("hate")
    assert result.scores[0, result.categories.index("hate")] == pytest.approx(expect[h], abs=1e-6)


async def test_input_over_token_limit_is_invalid_request(tiny_repo: Path):
    engine = await started(tiny_repo, max_input_tokens=50)
    try:
        with pytest.raises(InvalidRequest, match="50 tokens") as e:
            await engine.classify(["ok", "x " * 200])
        assert e.value.param == "input[1]"
    finally:
        await engine.stop()


async def test_model_failure_reaches_every_waiting_request(tiny_repo: Path):
    engine = await started(tiny_repo, max_batch_wait_ms=20)

    def broken(input_ids, attention_mask):
        raise RuntimeError("CUDA error: device-side assert")

    engine.loaded.model = broken  # type: ignore[assignment]
    try:
        results = await asyncio.gather(
            *(engine.classify([t]) for t in TEXTS[:3]), return_exceptions=True
        )
    finally:
        await engine.stop()
    assert all(isinstance(r, InferenceFailed) for r in results)


async def test_not_ready_before_start(tiny_repo: Path):
    settings = Settings(model_repo=tiny_repo, model="tiny")
    engine = Engine(load_model(tiny_repo / "tiny"), settings, Metrics())
    with pytest.raises(NotReady):
        await engine.classify(["hi"])


async def test_cancelled_request_never_reaches_model(tiny_repo: Path):
    engine = await started(tiny_repo, max_batch_wait_ms=60_000, max_batch_tokens=16384)
    try:
        task = asyncio.create_task(engine.classify(["hello"]))
        while engine.batcher.queued_sequences == 0:
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ok = asyncio.create_task(engine.classify(["x " * 60]))  # bucket 64: fills nothing
        while not engine.batcher.queued_in(64):
            await asyncio.sleep(0)
        engine.batcher.set_max_batch_wait_ms(0)
        await ok
        dropped = engine.metrics.registry.get_sample_value(
            "modserve_dropped_sequences_total", {"model": "tiny", "reason": "cancelled"}
        )
        assert dropped == 1
    finally:
        await engine.stop()


async def test_cpu_batch_token_budget_defaults_to_the_threads_per_worker(tiny_repo: Path):
    import torch

    engine = await started(tiny_repo)  # MODSERVE_MAX_BATCH_TOKENS unset: auto
    try:
        expect = max(1024 * torch.get_num_threads(), engine.buckets[-1])
        assert engine.batcher.max_batch_tokens == expect
    finally:
        await engine.stop()


async def test_span_scoring_takes_the_max_over_spans_and_windows(tiny_repo: Path):
    loaded = load_model(tiny_repo / "tiny")
    loaded.cfg = loaded.cfg.model_copy(update={"span_tokens": 16, "span_stride_tokens": 8})
    engine = Engine(loaded, Settings(model_repo=tiny_repo, model="tiny"), Metrics())
    await engine.start()
    try:
        text = " ".join(f"w{i}" for i in range(100))
        chunks = engine.tokenizer.chunk_texts([text])
        windows = [c for c in chunks if len(c.ids) > 16]
        assert len(chunks) > len(windows) + 5  # spans beside the windows
        raw = np.concatenate([engine.forward([c.ids], len(c.ids)) for c in chunks])
        result = await engine.classify([text])
    finally:
        await engine.stop()
    h = engine.loaded.cfg.labels.index("hate")  # a parent: not capped by the hierarchy
    assert result.scores[0, result.categories.index("hate")] == pytest.approx(
        raw[:, h].max(), abs=1e-5
    )


async def test_cache_answers_repeats_without_the_model_and_with_the_same_scores(tiny_repo: Path):
    engine = await started(tiny_repo, cache_bytes=2**20)
    try:
        first = await engine.classify(TEXTS[:3])
        runs_before = engine.metrics.registry.get_sample_value(
            "modserve_tokens_real_total", {"model": "tiny"}
        )
        # "HELLO" is "hello" to this uncased tokenizer; a repeat inside one request counts once
        again = await engine.classify([TEXTS[1], "HELLO", TEXTS[2], TEXTS[2]])
        runs_after = engine.metrics.registry.get_sample_value(
            "modserve_tokens_real_total", {"model": "tiny"}
        )
        mixed = await engine.classify(["something new", TEXTS[0], "something new"])
    finally:
        await engine.stop()
    assert first.timings.cached_inputs == 0
    assert again.timings.cached_inputs == 4 and again.timings.tokens == 0
    assert runs_after == runs_before  # nothing reached the model
    np.testing.assert_array_equal(again.scores[:3], first.scores[[1, 0, 2]])
    np.testing.assert_array_equal(again.flags[:3], first.flags[[1, 0, 2]])
    assert mixed.timings.cached_inputs == 1 and mixed.timings.tokens > 0
    np.testing.assert_array_equal(mixed.scores[0], mixed.scores[2])
    np.testing.assert_array_equal(mixed.scores[1], first.scores[0])
    sample = engine.metrics.registry.get_sample_value
    assert sample("modserve_cache_lookups_total", {"model": "tiny", "result": "hit"}) == 5
    assert sample("modserve_cache_lookups_total", {"model": "tiny", "result": "miss"}) == 5
    assert sample("modserve_cache_bytes", {"model": "tiny"}) == 4 * engine.cache.entry_bytes


async def test_cached_answers_keep_the_text_rules_of_derived_categories(tiny_repo: Path):
    """The cache holds model scores only: a derived category's text rule (the tiny model's
    violence/graphic gate, ``\\bblood\\b``) is applied to each request's own text. "bloöd" is
    "blood" to the accent-stripping tokenizer (one cache entry) but not to the rule."""
    engine = await started(tiny_repo, cache_bytes=2**20)
    try:
        gated = await engine.classify(["there was blood on the floor"])
        ungated = await engine.classify(["there was bloöd on the floor"])
    finally:
        await engine.stop()
    assert ungated.timings.cached_inputs == 1
    col = {w: j for j, w in enumerate(gated.categories)}
    violence, graphic = col["violence"], col["violence/graphic"]
    np.testing.assert_array_equal(ungated.scores[0, violence], gated.scores[0, violence])
    assert gated.scores[0, graphic] == pytest.approx(gated.scores[0, violence])
    factor = engine.loaded.cfg.derived["violence/graphic"].ungated_factor
    assert ungated.scores[0, graphic] == pytest.approx(factor * gated.scores[0, violence])
    assert factor < 1


async def test_cache_off_computes_every_time(tiny_repo: Path):
    engine = await started(tiny_repo, cache_bytes=0)
    try:
        await engine.classify(["hello"])
        again = await engine.classify(["hello"])
    finally:
        await engine.stop()
    assert again.timings.cached_inputs == 0 and again.timings.tokens > 0
    assert not engine.cache.enabled
