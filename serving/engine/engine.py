"""The engine: pre (tokenize, chunk, bucket) -> batcher -> core (model) -> post.

The one entry point is ``Engine.classify(texts)``. Inputs whose model scores are in the
response cache (``response_cache.py``) skip every stage below. Stages overlap: requests are
tokenized on a thread pool as they arrive, the batch loop cuts batch n+1 while
the core thread runs batch n (one batch ready ahead of the core threads: on CPU
``MODSERVE_CPU_WORKERS`` core threads each run their own batch),
and post-processing runs on the event loop when a request's sequences are
back. Nothing here knows about HTTP, gRPC or Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serving import tracing
from serving.config import Settings
from serving.engine.admission import TokenizerGate
from serving.engine.batcher import Batch, TokenBudgetBatcher
from serving.engine.metrics import Metrics
from serving.engine.postprocess import PostProcessor
from serving.engine.response_cache import ResponseCache, tokenizer_normalizer
from serving.engine.stats import InferenceStats
from serving.engine.tokenization import (
    Chunk,
    ChunkingTokenizer,
    TextTooLongError,
    bucket_for,
    pad_batch,
)
from serving.engine.types import ClassifyResult, Timings
from serving.errors import DeadlineExceeded, InferenceFailed, InvalidRequest, NotReady
from serving.model.backend_choice import Choice
from serving.model.load import LoadedModel

log = logging.getLogger(__name__)

READY_AHEAD = 1  # batches cut ahead of the core threads: each running one, plus this many
LAST_RESORT_GRACE_S = 5.0  # past its deadline, a request is answered 504 whatever the batcher


@dataclass(frozen=True, slots=True)
class ScoredSequence:
    """What the core hands back for one queued sequence (a chunk of an input)."""

    scores: np.ndarray  # (L,) fp32, one per trained head
    queue_s: float  # enqueued -> its batch was cut
    inference_s: float  # its batch's forward pass


def _yield_to_serving(nice: int) -> None:
    """Core thread start-up: lower this thread's CPU priority by ``nice`` (Linux, per
    thread), so that the event loop, which parses requests and answers 429s, is never
    starved by model work when the cores are full. The loop uses little CPU, so the model
    loses nothing while the loop is idle."""
    if nice and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):  # not permitted here: normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def _retrieve(f: asyncio.Future[Any]) -> None:
    if not f.cancelled():
        f.exception()


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        settings: Settings,
        metrics: Metrics,
        core_workers: int = 1,
        choice: Choice | None = None,
    ) -> None:
        """``core_workers``: threads running batches concurrently (CPU: from
        ``serving.model.cpu_layout.apply_cpu_layout``; a GPU runs one stream: 1).
        ``choice``: how the backend and dtype were chosen (``/v1/models`` shows it)."""
        self.loaded = loaded
        self.choice = choice or Choice(loaded.backend, loaded.dtype, "given")
        metrics.backend.labels(loaded.name, loaded.backend, loaded.dtype).set(1)
        for p in self.choice.probes:
            if p.tokens_per_s:
                metrics.backend_probe.labels(loaded.name, p.backend, p.dtype).set(p.tokens_per_s)
        self.name = loaded.name
        self.settings = settings
        self.metrics = metrics
        cfg = loaded.cfg
        self.tokenizer = ChunkingTokenizer.for_model(loaded.tokenizer, cfg)
        self.buckets = cfg.buckets_tokens
        self.post = PostProcessor(cfg)
        self.categories = self.post.categories
        self.label_map = dict(cfg.label_map)
        self.stats = InferenceStats()  # Triton-form counters: KServe .../stats
        if settings.otel_endpoint and not tracing.enabled():
            tracing.configure(settings.otel_endpoint, settings.otel_service_name)
        device = str(loaded.device).split(":")[0]
        self.batcher = TokenBudgetBatcher(
            self.buckets,
            settings.resolved_max_batch_tokens(device, torch.get_num_threads(), self.buckets[-1]),
            settings.max_batch_size,
            settings.max_batch_wait_ms,
            settings.max_queue_tokens,
            on_drop=self._on_drop,
            max_queue_wait_s=settings.max_queue_wait_s,
            core_workers=core_workers,
        )
        self.tokenizer_gate = TokenizerGate(settings.max_queue_wait_s)
        self.cache = ResponseCache(
            settings.cache_bytes,
            f"{self.name}\0{cfg.version}\0{loaded.backend}\0{loaded.dtype}",
            len(cfg.labels),
            tokenizer_normalizer(self.tokenizer.backend),
        )
        self._pre_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-pre")
        self.core_workers = core_workers
        self._core_pool = ThreadPoolExecutor(
            self.core_workers,
            thread_name_prefix=f"{self.name}-core",
            initializer=_yield_to_serving,
            initargs=(settings.core_thread_nice,),
        )
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.ready = False

    @property
    def version(self) -> str:
        return str(self.loaded.cfg.version)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Warm every bucket, measure it, then start the batch loop.

        Batch sizes 1 and 2 per bucket: first-call costs, and for the compiled int8 encoder
        both graphs torch.compile makes (batch 1 is specialised, >= 2 is dynamic). Then one
        full batch per bucket, timed: admission's first estimate of this machine's speed
        (``serving/engine/admission.py``; real batches refine it).
        """
        loop = asyncio.get_running_loop()
        for b in self.buckets:
            tk = self.tokenizer
            fill = b - len(tk.prefix) - len(tk.suffix)
            seq = tk.prefix + [tk.pad_id] * fill + tk.suffix
            for n in (1, 2):
                await loop.run_in_executor(self._core_pool, self.forward, [seq] * n, b)
            n = self.batcher.capacity(b)  # every core thread at once: speed under load
            runs = await asyncio.gather(
                *(
                    loop.run_in_executor(self._core_pool, self._timed_forward, [seq] * n, b)
                    for _ in range(self.core_workers)
                )
            )
            self.batcher.service.observe(b, n, max(took_s for _, took_s in runs))
        self._loop_task = loop.create_task(self._supervised_loop(), name=f"{self.name}-batcher")
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self.batcher.fail_all(NotReady("The server is shutting down."))
        await asyncio.gather(*self._inflight, return_exceptions=True)
        self._pre_pool.shutdown(wait=False)
        self._core_pool.shutdown(wait=False)

    # -- the entry point: cache -> pre -> batcher -> core -> post -------------------------
    async def classify(self, texts: list[str], timeout_s: float | None = None) -> ClassifyResult:
        """Scores for ``texts``. ``timeout_s``: the caller's deadline (e.g. gRPC's), capped
        at ``MODSERVE_REQUEST_TIMEOUT_S``: no client can hold the model longer than that."""
        if not self.ready:
            raise NotReady(f"Model {self.name!r} is still loading; retry shortly.")
        t0, started_ns = time.perf_counter(), time.time_ns()
        try:
            result = await self._classify(texts, timeout_s, t0)
        except BaseException:
            self.stats.request_done(False, time.perf_counter() - t0)
            raise
        t = result.timings
        post_s = max(0.0, t.total_s - t.tokenization_s - t.queue_s - t.inference_s)
        self.stats.request_done(
            True,
            t.total_s,
            len(texts),
            t.cached_inputs,
            queue=t.queue_s,
            compute_input=t.tokenization_s,
            compute_infer=t.inference_s,
            compute_output=post_s,
        )
        if tracing.enabled():
            stages = {"tokenize": t.tokenization_s, "queue": t.queue_s,
                      "forward": t.inference_s, "post": post_s}  # fmt: skip
            sizes = {"inputs": len(texts), "tokens": t.tokens, "cached_inputs": t.cached_inputs}
            tracing.record_classify(self.name, started_ns, stages, sizes)
        return result

    async def _classify(
        self, texts: list[str], timeout_s: float | None, t0: float
    ) -> ClassifyResult:
        keys = [self.cache.key(t) for t in texts] if self.cache.enabled else []
        known = self.cache.lookup(keys) if keys else [None] * len(texts)
        # each distinct unknown text once (a request may repeat a text); without the cache
        # every input is its own
        ids: list[bytes] | list[int] = keys or list(range(len(texts)))
        todo: dict[bytes | int, int] = {}
        for i, h in enumerate(known):
            if h is None:
                todo.setdefault(ids[i], i)
        heads = np.empty((len(texts), len(self.loaded.cfg.labels)), dtype=np.float32)
        timings = Timings(characters=sum(len(t) for t in texts), cached_inputs=len(texts))
        if todo:
            first = list(todo.values())
            computed = await self._compute([texts[i] for i in first], timeout_s, timings)
            slot = dict(zip(todo, computed, strict=True))
            for i, h in enumerate(known):
                heads[i] = h if h is not None else slot[ids[i]]
            timings.cached_inputs = len(texts) - sum(h is None for h in known)
            if keys:
                self._remember([keys[i] for i in first], computed)
        else:
            heads[:] = np.stack(known)  # type: ignore[arg-type]  # all hits: no None left
        self._count_cache(timings.cached_inputs, len(texts))
        scores = self.post.served(heads, texts)
        timings.total_s = time.perf_counter() - t0
        self.metrics.inputs.labels(self.name).inc(len(texts))
        flags, thresholds = self.post.flags(scores), self.post.flagger.thresholds
        return ClassifyResult(
            self.name, self.categories, scores, flags, timings, thresholds=thresholds
        )

    async def _compute(
        self, texts: list[str], timeout_s: float | None, timings: Timings
    ) -> np.ndarray:
        """(N, L) head scores of ``texts`` from the model: admission, tokenize, batch, run."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        budget_s = min(timeout_s or math.inf, self.settings.request_timeout_s)
        deadline = loop.time() + budget_s
        # Cheapest check first: one sequence per input in the smallest bucket is a lower
        # bound on the cost; if even that would wait too long, answer 429 before tokenizing.
        self.batcher.check([self.buckets[0]] * len(texts), budget_s)
        chunks = await self._pre(texts)
        t1 = time.perf_counter()
        scored = await self._batched(chunks, deadline)
        timings.tokenization_s = t1 - t0
        timings.queue_s = max(s.queue_s for s in scored)
        timings.inference_s = max(s.inference_s for s in scored)
        timings.tokens = sum(len(c.ids) for c in chunks)
        self.metrics.tokenization_duration.labels(self.name).observe(t1 - t0)
        counts = [0] * len(texts)
        for c in chunks:
            counts[c.input_index] += 1
        return self.post.per_input(np.stack([s.scores for s in scored]), counts)

    def _remember(self, keys: list[bytes], heads: np.ndarray) -> None:
        evicted = self.cache.store(keys, heads)
        if evicted:
            self.metrics.cache_evictions.labels(self.name).inc(evicted)
        self.metrics.cache_bytes.labels(self.name).set(self.cache.size_bytes)

    def _count_cache(self, hits: int, inputs: int) -> None:
        if self.cache.enabled:
            self.metrics.cache_lookups.labels(self.name, "hit").inc(hits)
            self.metrics.cache_lookups.labels(self.name, "miss").inc(inputs - hits)

    async def _pre(self, texts: list[str]) -> list[Chunk]:
        """Tokenize and cut into model-window chunks: small requests at once on the event
        loop, large ones on the tokenizer thread while its backlog is within bounds
        (``admission.TokenizerGate``: else 429 before any tokenizing)."""
        chars = sum(len(t) for t in texts)
        limit = self.settings.max_input_tokens
        try:
            if self.tokenizer_gate.inline(chars):
                return self.tokenizer.chunk_texts(texts, limit)
            self.tokenizer_gate.enter(chars)
            took_s: float | None = None
            try:
                loop = asyncio.get_running_loop()
                chunks, took_s = await loop.run_in_executor(
                    self._pre_pool, self._timed_chunks, texts, limit
                )
                return chunks
            finally:
                self.tokenizer_gate.leave(chars, took_s)
        except TextTooLongError as e:
            raise InvalidRequest(
                f"{e} (MODSERVE_MAX_INPUT_TOKENS).",
                param=f"input[{e.index}]",
                code="string_above_max_length",
            ) from None

    def _timed_chunks(self, texts: list[str], limit: int) -> tuple[list[Chunk], float]:
        t0 = time.perf_counter()
        chunks = self.tokenizer.chunk_texts(texts, limit)
        return chunks, time.perf_counter() - t0

    async def _batched(self, chunks: list[Chunk], deadline: float) -> list[ScoredSequence]:
        """Queue every chunk in its length bucket; the batch loop runs them on the core.

        The batcher answers every future (result, error, or deadline), and the batch loop is
        supervised; the wait is still bounded (deadline + ``LAST_RESORT_GRACE_S``) so that no
        admitted request can hang whatever goes wrong."""
        seqs = [(c.ids, bucket_for(len(c.ids), self.buckets)) for c in chunks]
        futures = self.batcher.submit(seqs, deadline)
        self._update_queue_gauges()
        gathered = asyncio.gather(*futures)
        gathered.add_done_callback(_retrieve)  # cancelled halfway: no "never retrieved" noise
        left_s = deadline - asyncio.get_running_loop().time() + LAST_RESORT_GRACE_S
        try:
            return list(await asyncio.wait_for(gathered, left_s))
        except TimeoutError:
            log.error("a request outlived its deadline by %.0f s; answering 504",
                      LAST_RESORT_GRACE_S)  # fmt: skip
            raise DeadlineExceeded(
                "The request's deadline passed before it was answered (MODSERVE_REQUEST_TIMEOUT_S)."
            ) from None
        finally:
            for f in futures:  # anything still queued is dropped before the model
                f.cancel()

    # -- batch loop and core ----------------------------------------------------------------
    async def _supervised_loop(self) -> None:
        """``_batch_loop``, restarted if it ever fails: the requests queued at that moment
        get a 500 in their envelope (never a hang), later ones are served as usual."""
        while True:
            try:
                await self._batch_loop()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.exception("the batch loop failed; failing its queued requests, restarting")
                self.metrics.request_failures.labels("batch_loop").inc()
                self.batcher.fail_all(InferenceFailed(f"Internal batching error: {e}"[:200]))
                self._update_queue_gauges()
                await asyncio.sleep(0)

    async def _batch_loop(self) -> None:
        slots = asyncio.Semaphore(self.core_workers + READY_AHEAD)
        while True:
            await slots.acquire()
            try:
                batch = await self.batcher.next_batch()
            except BaseException:
                slots.release()
                raise
            self._update_queue_gauges()
            task = asyncio.get_running_loop().create_task(self._run_batch(batch, slots))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run_batch(self, batch: Batch, slots: asyncio.Semaphore) -> None:
        """Run ``batch`` on a core thread and answer every future in it, whatever happens
        (all-or-nothing: an error reaches every request of the batch)."""
        loop = asyncio.get_running_loop()
        infer_s: float | None = None
        try:
            out, took_s = await loop.run_in_executor(
                self._core_pool, self._timed_forward, [s.ids for s in batch.items], batch.length
            )
            infer_s = took_s
            self.batcher.complete(
                batch,
                [
                    ScoredSequence(out[i], batch.cut_at - s.enqueued, took_s)
                    for i, s in enumerate(batch.items)
                ],
            )
            self._record_batch(batch, took_s)
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                log.exception("inference failed for a batch of %d", len(batch.items))
            self.batcher.fail(batch, InferenceFailed(f"Inference failed: {type(e).__name__}."))
            if not isinstance(e, Exception):
                raise
        finally:
            self.batcher.done(batch, infer_s)
            slots.release()

    def _timed_forward(self, seqs: list[list[int]], length: int) -> tuple[np.ndarray, float]:
        """Core thread: ``forward`` and its duration, timed here so that the time a batch
        waits for a core thread (the batch cut ahead) is not counted as model time."""
        t0 = time.perf_counter()
        out = self.forward(seqs, length)
        return out, time.perf_counter() - t0

    def forward(self, seqs: list[list[int]], length: int) -> np.ndarray:
        """The core: pad ``seqs`` to ``length`` tokens, run the model, return (n, L) fp32 head
        scores. Runs on a core thread; benchmarks and tests may call it directly."""
        ids, mask = pad_batch(seqs, length, self.tokenizer.pad_id)
        dev = self.loaded.device
        with torch.inference_mode():
            scores = self.loaded.model(
                torch.from_numpy(ids).to(dev, non_blocking=True),
                torch.from_numpy(mask).to(dev, non_blocking=True),
            )
        return scores.float().cpu().numpy()

    # -- metrics ----------------------------------------------------------------------------
    def _record_batch(self, batch: Batch, infer_s: float) -> None:
        self.stats.execution_count += 1
        m, n = self.metrics, self.name
        m.batch_size.labels(n, str(batch.bucket)).observe(len(batch.items))
        m.batch_tokens.labels(n).observe(batch.padded_tokens)
        m.real_tokens.labels(n).inc(batch.real_tokens)
        m.padded_tokens.labels(n).inc(batch.padded_tokens)
        m.inference_duration.labels(n, str(batch.bucket)).observe(infer_s)
        for s in batch.items:
            m.queue_duration.labels(n).observe(batch.cut_at - s.enqueued)

    def _update_queue_gauges(self) -> None:
        self.metrics.queue_tokens.labels(self.name).set(self.batcher.queued_tokens)
        self.metrics.queue_sequences.labels(self.name).set(self.batcher.queued_sequences)

    def _on_drop(self, reason: str, n: int) -> None:
        self.metrics.dropped.labels(self.name, reason).inc(n)
