"""Framework-free asyncio token-budget batcher with length buckets.

Sequences (model-window chunks of tokenized inputs) wait in one FIFO per
length bucket. A batch is cut from the bucket whose head has waited longest and
is filled with sequences of that bucket only (similar lengths, little
padding) while ``bucket_len * n <= max_batch_tokens`` and ``n <=
max_batch_size``. A partly filled batch waits up to ``max_batch_wait_ms`` for
company. Sequences whose future is already done (client went away, request
cancelled) or whose deadline passed are dropped before they reach the model.
The queue is bounded in padded tokens: ``submit`` raises ``Overloaded`` beyond
``max_queue_tokens``.

Contract (all-or-nothing): every submitted future gets its result or an
exception; ``complete``/``fail`` fan out per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.errors import DeadlineExceeded, Overloaded


@dataclass(eq=False)
class QueuedSequence:
    """One queued sequence and the future its request awaits."""

    ids: list[int]
    bucket: int
    deadline: float  # loop-clock time after which it must not start
    future: asyncio.Future[Any]
    enqueued: float = 0.0


@dataclass
class Batch:
    bucket: int
    items: list[QueuedSequence]
    cut_at: float

    @property
    def padded_tokens(self) -> int:
        return self.bucket * len(self.items)

    @property
    def real_tokens(self) -> int:
        return sum(len(s.ids) for s in self.items)


class TokenBudgetBatcher:
    def __init__(
        self,
        buckets: list[int],
        max_batch_tokens: int,
        max_batch_size: int,
        max_batch_wait_ms: float,
        max_queue_tokens: int,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        self.buckets = sorted(buckets)
        if max_batch_tokens < self.buckets[-1]:
            raise ValueError(
                f"max_batch_tokens={max_batch_tokens} cannot hold one sequence of the largest "
                f"bucket ({self.buckets[-1]} tokens)"
            )
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_batch_wait_ms / 1000.0
        self.max_queue_tokens = max_queue_tokens
        self._queues: dict[int, deque[QueuedSequence]] = {b: deque() for b in self.buckets}
        self._queued_tokens = 0
        self._queued_seqs = 0
        self._wakeup = asyncio.Event()
        self._on_drop = on_drop or (lambda reason, n: None)

    # -- producer side ----------------------------------------------------------------------
    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    @property
    def queued_sequences(self) -> int:
        return self._queued_seqs

    def queued_in(self, bucket: int) -> int:
        """Sequences waiting in ``bucket``."""
        return len(self._queues[bucket])

    def set_max_batch_wait_ms(self, wait_ms: float) -> None:
        """Change how long a partly filled batch waits for company; applies at once, also to
        the batch being held back now (run-time tuning, tests)."""
        self.max_wait_s = wait_ms / 1000.0
        self._wakeup.set()

    def capacity(self, bucket: int) -> int:
        return max(1, min(self.max_batch_size, self.max_batch_tokens // bucket))

    def submit(self, seqs: list[tuple[list[int], int]], deadline: float) -> list[asyncio.Future]:
        """Queue (ids, bucket) pairs of one request atomically; raise Overloaded if full."""
        cost = sum(b for _, b in seqs)
        if self._queued_tokens + cost > self.max_queue_tokens and self._queued_seqs > 0:
            raise Overloaded(
                f"The server queue is full ({self._queued_tokens} of {self.max_queue_tokens} "
                "tokens waiting); retry after the Retry-After delay."
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = []
        for ids, bucket in seqs:
            fut: asyncio.Future[Any] = loop.create_future()
            self._queues[bucket].append(QueuedSequence(ids, bucket, deadline, fut, now))
            futures.append(fut)
        self._queued_tokens += cost
        self._queued_seqs += len(seqs)
        self._wakeup.set()
        return futures

    # -- consumer side ----------------------------------------------------------------------
    def _pop(self, bucket: int) -> QueuedSequence:
        item = self._queues[bucket].popleft()
        self._queued_tokens -= bucket
        self._queued_seqs -= 1
        return item

    def _prune(self, now: float) -> None:
        """Drop every queued sequence that is cancelled/answered or past its deadline."""
        for b, q in self._queues.items():
            kept: deque[QueuedSequence] = deque()
            dropped_cancel = dropped_deadline = 0
            for s in q:
                if s.future.done():
                    dropped_cancel += 1
                elif s.deadline <= now:
                    s.future.set_exception(
                        DeadlineExceeded(
                            "The request's deadline passed before it reached the model "
                            "(MODSERVE_REQUEST_TIMEOUT_S)."
                        )
                    )
                    dropped_deadline += 1
                else:
                    kept.append(s)
            n = dropped_cancel + dropped_deadline
            if n:
                self._queues[b] = kept
                self._queued_tokens -= b * n
                self._queued_seqs -= n
                if dropped_cancel:
                    self._on_drop("cancelled", dropped_cancel)
                if dropped_deadline:
                    self._on_drop("deadline", dropped_deadline)

    def _oldest_bucket(self) -> int | None:
        heads = [(q[0].enqueued, b) for b, q in self._queues.items() if q]
        return min(heads)[1] if heads else None

    async def next_batch(self) -> Batch:
        """Wait for and cut the next batch (never empty)."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._prune(now)
            bucket = self._oldest_bucket()
            if bucket is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            q = self._queues[bucket]
            cap = self.capacity(bucket)
            waited = now - q[0].enqueued
            if len(q) >= cap or waited >= self.max_wait_s:
                items = [self._pop(bucket) for _ in range(min(cap, len(q)))]
                return Batch(bucket, items, now)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.max_wait_s - waited)

    @staticmethod
    def complete(batch: Batch, results: list[Any]) -> None:
        for s, r in zip(batch.items, results, strict=True):
            if not s.future.done():
                s.future.set_result(r)

    @staticmethod
    def fail(batch: Batch, exc: BaseException) -> None:
        for s in batch.items:
            if not s.future.done():
                s.future.set_exception(exc)

    def fail_all(self, exc: BaseException) -> None:
        """Shutdown: every waiting future gets ``exc``."""
        for b in self.buckets:
            while self._queues[b]:
                s = self._pop(b)
                if not s.future.done():
                    s.future.set_exception(exc)
