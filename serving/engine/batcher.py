"""Framework-free asyncio token-budget batcher: length buckets, fair across requests.

Sequences (model-window chunks of tokenized inputs) wait in their length bucket, grouped by
the request that sent them (its ``Ticket``). A batch holds sequences of one bucket only
(similar lengths, little padding), at most ``capacity(bucket)`` of them
(``bucket_len * n <= max_batch_tokens``, ``n <= max_batch_size``).

Fairness (start-time fair queuing): every request carries a tag, the model seconds it has
been served; a new request starts at the tag of the request served last. The next batch is
cut from a bucket of the request with the smallest tag, and filled one sequence at a time
from the requests in that bucket with the smallest tags. So a request of 2,500 long
sequences is split into many batches and a small request that arrives behind it waits for
one of them, not for all: no request can starve the others, and batches stay full.

A partly filled batch waits up to ``max_batch_wait_ms`` for company. Sequences whose future
is already done (client went away, request cancelled) or whose deadline passed are dropped
before they reach the model. Admission (``serving/engine/admission.py``) happens in
``submit``, before anything is queued: ``RequestTooExpensive`` (413) or ``Overloaded``
(429 + Retry-After) by predicted wait; ``max_queue_tokens`` is an absolute ceiling on top.

Contract (all-or-nothing): every submitted future gets its result or an exception;
``complete``/``fail`` fan out per batch, ``fail_all`` empties the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.engine.admission import ServiceModel, check_admission, queued_share_s
from serving.errors import DeadlineExceeded, Overloaded

DRAIN_WINDOW_S = 1.0  # saturated wall time over which the drain rate is measured
MIN_SAMPLED_WAIT_S = 0.02  # shorter predicted waits are too noisy to check the model by


@dataclass(eq=False)
class Ticket:
    """One request's stake in the queue."""

    order: int  # arrival number: breaks ties between equal tags
    tag: float  # model seconds served so far, on the batcher's virtual clock
    queued: int = 0  # sequences still waiting
    remaining_s: float = 0.0  # their predicted model seconds
    running: int = 0  # sequences in batches on the cores
    arrived: float = 0.0  # loop time of submit
    own_s: float = 0.0  # predicted seconds of its own work + the batches on the cores
    share_s: float = 0.0  # predicted wait for queued work at admission (before wait_error)


@dataclass(eq=False)
class QueuedSequence:
    """One queued sequence and the future its request awaits."""

    ids: list[int]
    bucket: int
    deadline: float  # loop-clock time after which it must not start
    future: asyncio.Future[Any]
    enqueued: float = 0.0
    ticket: Ticket = field(default_factory=lambda: Ticket(0, 0.0))
    cost_s: float = 0.0  # predicted model seconds


PAD_MULTIPLE_TOKENS = 8  # a batch is padded to its longest sequence, rounded up to this


@dataclass
class Batch:
    bucket: int
    items: list[QueuedSequence]
    cut_at: float

    @property
    def length(self) -> int:
        """Tokens every sequence is padded to: the longest one's, rounded up to a multiple
        of ``PAD_MULTIPLE_TOKENS``, never beyond the bucket. The bucket groups similar
        lengths and bounds the batch; padding all the way to it cost 10-40 % more model
        time for nothing (no backend needs one fixed shape per bucket)."""
        longest = max((len(s.ids) for s in self.items), default=0)
        return min(self.bucket, -(-longest // PAD_MULTIPLE_TOKENS) * PAD_MULTIPLE_TOKENS)

    @property
    def padded_tokens(self) -> int:
        return self.length * len(self.items)

    @property
    def real_tokens(self) -> int:
        return sum(len(s.ids) for s in self.items)

    @property
    def cost_s(self) -> float:
        return sum(s.cost_s for s in self.items)


class TokenBudgetBatcher:
    def __init__(
        self,
        buckets: list[int],
        max_batch_tokens: int,
        max_batch_size: int,
        max_batch_wait_ms: float,
        max_queue_tokens: int,
        on_drop: Callable[[str, int], None] | None = None,
        max_queue_wait_s: float = float("inf"),
        core_workers: int = 1,
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
        self.max_queue_wait_s = max_queue_wait_s
        self.service = ServiceModel(self.buckets, self.capacity, core_workers)
        # bucket -> ticket -> its sequences of that bucket (insertion = arrival order)
        self._queues: dict[int, dict[Ticket, deque[QueuedSequence]]] = {b: {} for b in self.buckets}
        self._tickets: dict[Ticket, None] = {}  # requests with queued sequences
        self._order = itertools.count()
        self._vtime = 0.0  # tag of the request served last
        self._running_s = 0.0  # predicted seconds of batches cut and not yet done
        self._drain_since: float | None = None  # start of the current saturated window
        self._drained_s = 0.0  # predicted seconds finished since then
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

    @property
    def queued_requests(self) -> int:
        return len(self._tickets)

    def queued_in(self, bucket: int) -> int:
        """Sequences waiting in ``bucket``."""
        return sum(len(q) for q in self._queues[bucket].values())

    def set_max_batch_wait_ms(self, wait_ms: float) -> None:
        """Change how long a partly filled batch waits for company; applies at once, also to
        the batch being held back now (run-time tuning, tests)."""
        self.max_wait_s = wait_ms / 1000.0
        self._wakeup.set()

    def capacity(self, bucket: int) -> int:
        return max(1, min(self.max_batch_size, self.max_batch_tokens // bucket))

    def predicted_s(self, buckets: list[int]) -> float:
        """Predicted model seconds of sequences of these buckets."""
        return sum(self.service.seq_s(b) for b in buckets)

    def check(self, buckets: list[int], budget_s: float) -> tuple[float, float, float]:
        """Would a request of sequences of ``buckets`` be admitted now? Raise if not
        (``admission.check_admission``), else return its predicted seconds: (own work,
        batches on the cores, share of the queued work before ``wait_error``); ``submit``
        runs the same check."""
        k = self.service.slowdown
        e = self.service.wait_error  # what the queue model misses, measured
        own_s = k * self.predicted_s(buckets)
        queued = [k * t.remaining_s for t in self._tickets]
        check_admission(
            own_s,
            [e * q for q in queued],
            k * self._running_s,
            budget_s,
            self.max_queue_wait_s,
            self.service.tokens_per_s(),
            sum(buckets),
        )
        return own_s, k * self._running_s, queued_share_s(own_s, queued)

    def submit(self, seqs: list[tuple[list[int], int]], deadline: float) -> list[asyncio.Future]:
        """Queue (ids, bucket) pairs of one request atomically, or raise (admission)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        buckets = [b for _, b in seqs]
        own_s, running_s, share_s = self.check(buckets, deadline - now)
        cost = sum(buckets)
        if self._queued_tokens + cost > self.max_queue_tokens and self._queued_seqs > 0:
            raise Overloaded(
                f"The server queue is full ({self._queued_tokens} of {self.max_queue_tokens} "
                "tokens waiting, MODSERVE_MAX_QUEUE_TOKENS); retry after the Retry-After delay."
            )
        ticket = Ticket(
            next(self._order), self._vtime, arrived=now, own_s=own_s + running_s, share_s=share_s
        )
        futures = []
        for ids, bucket in seqs:
            fut: asyncio.Future[Any] = loop.create_future()
            s = QueuedSequence(ids, bucket, deadline, fut, now, ticket, self.service.seq_s(bucket))
            self._queues[bucket].setdefault(ticket, deque()).append(s)
            ticket.queued += 1
            ticket.remaining_s += s.cost_s
            futures.append(fut)
        if ticket.queued:
            self._tickets[ticket] = None
        self._queued_tokens += cost
        self._queued_seqs += len(seqs)
        self._wakeup.set()
        return futures

    # -- consumer side ----------------------------------------------------------------------
    def _take(self, bucket: int, ticket: Ticket) -> QueuedSequence:
        q = self._queues[bucket][ticket]
        s = q.popleft()
        if not q:
            del self._queues[bucket][ticket]
        self._forget(s)
        return s

    def _forget(self, s: QueuedSequence) -> None:
        """Bookkeeping for a sequence leaving the queue (batched or dropped)."""
        t = s.ticket
        t.queued -= 1
        t.remaining_s -= s.cost_s
        if t.queued == 0:
            self._tickets.pop(t, None)
        self._queued_tokens -= s.bucket
        self._queued_seqs -= 1

    def _prune(self, now: float) -> None:
        """Drop every queued sequence that is cancelled/answered or past its deadline."""
        dropped = {"cancelled": 0, "deadline": 0}
        for per_ticket in self._queues.values():
            for ticket in list(per_ticket):
                q = per_ticket[ticket]
                kept: deque[QueuedSequence] = deque()
                for s in q:
                    if s.future.done():
                        dropped["cancelled"] += 1
                    elif s.deadline <= now:
                        s.future.set_exception(
                            DeadlineExceeded(
                                "The request's deadline passed before it reached the model "
                                "(MODSERVE_REQUEST_TIMEOUT_S)."
                            )
                        )
                        dropped["deadline"] += 1
                    else:
                        kept.append(s)
                        continue
                    self._forget(s)
                if kept:
                    per_ticket[ticket] = kept
                else:
                    del per_ticket[ticket]
        for reason, n in dropped.items():
            if n:
                self._on_drop(reason, n)

    def _next_bucket(self) -> int | None:
        """A bucket of the most deserving request (smallest tag, then oldest); of its
        buckets, the one with the most sequences waiting (fullest batch)."""
        if not self._tickets:
            return None
        first = min(self._tickets, key=lambda t: (t.tag, t.order))
        mine = [b for b in self.buckets if first in self._queues[b]]
        return max(mine, key=lambda b: (len(self._queues[b]), -b))

    def _cut(self, bucket: int, now: float) -> Batch:
        """Fill a batch from ``bucket``, one sequence at a time from its request with the
        smallest tag (water-filling: requests sharing a batch advance together)."""
        per_ticket = self._queues[bucket]
        heap = [(t.tag, t.order, t) for t in per_ticket]
        heapq.heapify(heap)
        self._vtime = max(self._vtime, heap[0][0])
        items: list[QueuedSequence] = []
        cap = self.capacity(bucket)
        while heap and len(items) < cap:
            _, _, t = heapq.heappop(heap)
            s = self._take(bucket, t)
            t.running += 1
            t.tag += s.cost_s or bucket  # tokens stand in for seconds until measured
            items.append(s)
            if t in per_ticket:
                heapq.heappush(heap, (t.tag, t.order, t))
        batch = Batch(bucket, items, now)
        self._running_s += batch.cost_s
        return batch

    async def next_batch(self) -> Batch:
        """Wait for and cut the next batch (never empty)."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._prune(now)
            bucket = self._next_bucket()
            if bucket is None:
                self._drain_since = None  # ran dry: the next window starts under load
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            per_ticket = self._queues[bucket]
            waiting = sum(len(q) for q in per_ticket.values())
            waited = now - min(q[0].enqueued for q in per_ticket.values())
            if waiting >= self.capacity(bucket) or waited >= self.max_wait_s:
                return self._cut(bucket, now)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.max_wait_s - waited)

    def done(self, batch: Batch, seconds: float | None) -> None:
        """``batch`` left the model (``seconds`` of model time; None if it failed): its
        predicted time leaves the running total and the measurement feeds the service model."""
        self._running_s = max(0.0, self._running_s - batch.cost_s)
        if seconds is not None:
            self.service.observe(batch.bucket, len(batch.items), seconds)
        now = asyncio.get_running_loop().time()
        for s in batch.items:
            t = s.ticket
            t.running -= 1
            if t.running == 0 and t.queued == 0 and t.share_s >= MIN_SAMPLED_WAIT_S:
                self.service.observe_wait(t.share_s, max(0.0, now - t.arrived - t.own_s))
        if self._drain_since is None:
            if self._tickets:  # saturated from here on, until the queue runs dry
                self._drain_since, self._drained_s = now, 0.0
            return
        self._drained_s += batch.cost_s
        if now - self._drain_since >= DRAIN_WINDOW_S:
            self.service.observe_drain(self._drained_s, now - self._drain_since)
            self._drain_since, self._drained_s = now, 0.0

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
        """Every waiting future gets ``exc`` and the queue is emptied (shutdown, or the batch
        loop failed)."""
        for b in self.buckets:
            for ticket in list(self._queues[b]):
                while ticket in self._queues[b]:
                    s = self._take(b, ticket)
                    if not s.future.done():
                        s.future.set_exception(exc)
