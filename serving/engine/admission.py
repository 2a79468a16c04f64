"""Admission by predicted wait: answer 429 in milliseconds instead of a 504 after the deadline.

The server knows what its queue will cost. ``ServiceModel`` keeps, per length bucket, the
measured time of a full batch (seeded at warm-up, then an EWMA over real batches that are at
least half full), so one queued sequence costs ``batch_s / (capacity x core workers)``
seconds of this machine's model time: whatever the hardware, CPU or GPU, fp32 or int8. What
batch times miss (request handling and tokenizing on the same cores, other processes) is
measured too: while the queue never runs dry, the wall time it takes to drain a predicted
second of work (``slowdown``, >= 1) scales every prediction below.

The batcher serves requests fairly (``serving/engine/batcher.py``), so a new request shares
the model with the ones already queued: it waits for at most ``min(remaining_j, own)`` of
each queued request ``j`` (processor sharing), plus the batches already cut.
``check_admission`` then decides, before anything is queued:

* the request alone needs more model time than its deadline allows -> ``RequestTooExpensive``
  (413: it can never succeed; split it), whatever the load;
* the predicted wait for others exceeds ``MODSERVE_MAX_QUEUE_WAIT_S``, or wait + own time
  exceeds the deadline -> ``Overloaded`` (429) with a Retry-After of the predicted excess.

Predicted waits are checked against the waits requests then really had (``wait_error``:
batch boundaries, length buckets and the scheduler's order are not in the model), so the
bound holds as measured, not only as modelled.
* otherwise it is admitted. An idle server admits every request that fits its deadline.

``TokenizerGate`` does the same for the tokenizer thread, before a request is tokenized:
small requests are tokenized at once on the event loop (microseconds), large ones queue for
the tokenizer thread only while its predicted backlog stays under the same wait bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from serving.errors import Overloaded, RequestTooExpensive

EWMA_ALPHA = 0.2  # weight of the newest batch in the per-bucket batch time
MAX_SLOWDOWN = 10.0  # the most the measured drain rate may lag the model-time estimate
MIN_WAIT_ERROR = 0.5  # predictions may be halved at most when requests wait less
WAIT_SAMPLE = 20  # finished requests (that had to wait) per update of wait_error
INLINE_TOKENIZE_CHARS = 8192  # requests up to this many characters skip the tokenizer queue
TOKENIZE_CHARS_PER_S = 2_000_000.0  # tokenizer speed before the first measurement


class ServiceModel:
    """Predicted model seconds per queued sequence, per length bucket."""

    def __init__(self, buckets: list[int], capacity: Callable[[int], int], workers: int) -> None:
        self.buckets = sorted(buckets)
        self.capacity = capacity
        self.workers = max(1, workers)
        self._batch_s: dict[int, float] = {}
        # Wall seconds per predicted model second while the queue never ran dry: what the
        # batch times miss (request handling, tokenizing, other processes on the cores).
        self.slowdown = 1.0
        # Measured / predicted time that finished requests waited for queued work: what the
        # queue model misses (batch boundaries, buckets, the scheduler's order). It scales
        # the queued share of a prediction (the batches on the cores are timed directly).
        self.wait_error = 1.0
        self._waits = [0.0, 0.0, 0]  # predicted, measured, requests since the last update

    def observe(self, bucket: int, n: int, seconds: float) -> None:
        """A batch of ``n`` sequences of ``bucket`` took ``seconds``. Batches under half full
        say little about throughput under load (fixed overheads dominate) and are skipped
        once the bucket has a measurement."""
        cap = self.capacity(bucket)
        full_s = seconds * cap / max(1, n)
        old = self._batch_s.get(bucket)
        if old is None:
            self._batch_s[bucket] = full_s
        elif 2 * n >= cap:
            self._batch_s[bucket] = (1 - EWMA_ALPHA) * old + EWMA_ALPHA * full_s

    def observe_drain(self, predicted_s: float, wall_s: float) -> None:
        """``predicted_s`` of queued work was done in ``wall_s`` of saturated operation."""
        if predicted_s > 0:
            ratio = min(MAX_SLOWDOWN, max(1.0, wall_s / predicted_s))
            self.slowdown = (1 - EWMA_ALPHA) * self.slowdown + EWMA_ALPHA * ratio

    def observe_wait(self, predicted_s: float, measured_s: float) -> None:
        """A finished request was predicted to wait ``predicted_s`` and waited
        ``measured_s``; every ``WAIT_SAMPLE`` such requests move ``wait_error``."""
        w = self._waits
        w[0] += predicted_s
        w[1] += measured_s
        w[2] += 1
        if w[2] >= WAIT_SAMPLE and w[0] > 0:
            ratio = min(MAX_SLOWDOWN, max(MIN_WAIT_ERROR, w[1] / w[0]))
            self.wait_error = (1 - EWMA_ALPHA) * self.wait_error + EWMA_ALPHA * ratio
            self._waits = [0.0, 0.0, 0]

    def seq_s(self, bucket: int) -> float:
        """Seconds of model time one sequence of ``bucket`` costs under load (0 = unknown:
        nothing measured yet, so nothing is refused)."""
        t = self._batch_s.get(bucket)
        if t is None:  # scale from the nearest measured bucket (cost ~ tokens)
            known = [b for b in self.buckets if b in self._batch_s]
            if not known:
                return 0.0
            near = min(known, key=lambda b: abs(b - bucket))
            return self.seq_s(near) * bucket / near
        return t / (self.capacity(bucket) * self.workers)

    def tokens_per_s(self) -> float:
        """Throughput at full batches of the largest measured bucket (for messages)."""
        known = [b for b in self.buckets if b in self._batch_s]
        if not known:
            return 0.0
        b = known[-1]
        return b / self.seq_s(b)


def check_admission(
    own_s: float,
    queued_s: Iterable[float],
    running_s: float,
    budget_s: float,
    max_wait_s: float,
    model_tokens_per_s: float = 0.0,
    own_tokens: int = 0,
) -> None:
    """Raise ``RequestTooExpensive`` or ``Overloaded`` (see the module doc), else return.

    ``own_s``: the request's predicted model seconds; ``queued_s``: each queued request's
    remaining predicted seconds; ``running_s``: batches cut and not finished;
    ``budget_s``: seconds to the request's deadline."""
    if own_s > 0 and own_s > budget_s:
        rate = f" at this server's measured {model_tokens_per_s:,.0f} tokens/s" * bool(
            model_tokens_per_s
        )
        raise RequestTooExpensive(
            f"This request needs about {own_s:.1f} s of model time ({own_tokens} padded "
            f"tokens{rate}), more than its deadline of {budget_s:.1f} s "
            "(MODSERVE_REQUEST_TIMEOUT_S) allows even on an idle server. Send fewer or "
            "shorter inputs per request.",
            param="input",
        )
    queued = list(queued_s)
    if not queued and running_s <= 0:
        return  # idle: whatever fits the deadline
    wait_s = predicted_wait_s(own_s, queued, running_s)
    if wait_s > max_wait_s or wait_s + own_s > budget_s:
        retry = retry_after_s(wait_s, max_wait_s)
        raise Overloaded(
            f"The server is busy: this request would wait about {wait_s:.1f} s for the model "
            f"(limit {max_wait_s:g} s, MODSERVE_MAX_QUEUE_WAIT_S); retry after {retry} s.",
            retry_after_s=retry,
        )


def retry_after_s(wait_s: float, max_wait_s: float) -> int:
    """Whole seconds until a predicted wait of ``wait_s`` is back under the bound (>= 1)."""
    return max(1, math.ceil(round(wait_s - max_wait_s, 3)))


def predicted_wait_s(own_s: float, queued_s: Iterable[float], running_s: float) -> float:
    """Fair sharing: the batches on the cores, then ``min(remaining_j, own)`` of each
    queued request ``j``."""
    return running_s + queued_share_s(own_s, queued_s)


def queued_share_s(own_s: float, queued_s: Iterable[float]) -> float:
    """``min(remaining_j, own)`` summed over the queued requests ``j``."""
    return sum(min(r, own_s) for r in queued_s)


class TokenizerGate:
    """Bounds the tokenizer thread's backlog in predicted seconds (see the module doc)."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self.chars_per_s = TOKENIZE_CHARS_PER_S
        self.backlog_chars = 0

    @staticmethod
    def inline(chars: int) -> bool:
        """Small enough to tokenize on the event loop without queueing."""
        return chars <= INLINE_TOKENIZE_CHARS

    def enter(self, chars: int) -> None:
        """Reserve the tokenizer for ``chars`` characters or raise ``Overloaded``."""
        wait_s = self.backlog_chars / self.chars_per_s
        if self.backlog_chars and wait_s > self.max_wait_s:
            retry = retry_after_s(wait_s, self.max_wait_s)
            raise Overloaded(
                f"The tokenizer is busy with about {wait_s:.1f} s of queued text (limit "
                f"{self.max_wait_s:g} s, MODSERVE_MAX_QUEUE_WAIT_S); retry after {retry} s.",
                retry_after_s=retry,
            )
        self.backlog_chars += chars

    def leave(self, chars: int, seconds: float | None) -> None:
        """``chars`` are done (``seconds`` of tokenizer time, None if it never ran)."""
        self.backlog_chars -= chars
        if seconds and chars >= INLINE_TOKENIZE_CHARS:
            rate = chars / seconds
            self.chars_per_s = (1 - EWMA_ALPHA) * self.chars_per_s + EWMA_ALPHA * rate
