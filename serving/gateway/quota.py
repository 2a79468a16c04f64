"""Quotas per key and per project: requests and input tokens per minute (token buckets) and
concurrent requests, with the answers OpenAI's API gives.

A bucket holds a minute's worth and refills continuously (``limit / 60`` per second): a
client may burst up to its per-minute limit, then proceeds at the steady rate. A request
is charged one request when it arrives and its estimated input tokens (characters / 4,
rounded up, per input: what OpenAI's limiter estimates before a model runs) once its body
is read. Over a limit: 429 with ``Retry-After`` (whole seconds until the bucket allows the
request) and the ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers, which
every answer of a limited key carries.

State lives in this process (one server, or one Ray ingress replica: with several replicas
each keeps its own buckets, so a key's effective limit is the limit x replicas; see README).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from serving.gateway.policy import Quotas

WINDOW_S = 60.0
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text


def estimated_tokens(texts: Iterable[str]) -> int:
    return sum(max(1, math.ceil(len(t) / CHARS_PER_TOKEN)) for t in texts)


class TokenBucket:
    """``capacity`` units that refill at ``capacity / WINDOW_S`` per second."""

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.rate_per_s = capacity / WINDOW_S
        self.clock = clock
        self.level = float(capacity)
        self.stamp = clock()

    def level_now(self) -> float:
        """Units available now (after refilling for the time since the last call)."""
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        return self.level

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0: now; inf: never, it exceeds the capacity)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level_now()) / self.rate_per_s)

    def take(self, amount: float) -> None:
        self.level_now()
        self.level -= amount

    def reset_s(self) -> float:
        """Seconds until the bucket is full again (OpenAI's ``x-ratelimit-reset-*``)."""
        return (self.capacity - self.level_now()) / self.rate_per_s


@dataclass
class Limiter:
    """The buckets and concurrency count of one key or one project."""

    quotas: Quotas
    clock: Callable[[], float] = time.monotonic
    requests: TokenBucket | None = field(init=False)
    tokens: TokenBucket | None = field(init=False)
    in_flight: int = 0

    def __post_init__(self) -> None:
        q = self.quotas
        self.requests = self._bucket(q.requests_per_minute)
        self.tokens = self._bucket(q.tokens_per_minute)

    def _bucket(self, per_minute: int | None) -> TokenBucket | None:
        return TokenBucket(per_minute, self.clock) if per_minute else None


@dataclass
class QuotaVerdict:
    """What a request may do, and the headers to send either way."""

    allowed: bool
    headers: dict[str, str]
    retry_after_s: float = 0.0
    reason: str = ""  # which limit refused: e.g. "requests_per_minute of key 3f2a..."


def _bucket_headers(kind: str, bucket: TokenBucket) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(bucket.capacity),
        f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(bucket.level_now()))),
        f"x-ratelimit-reset-{kind}": f"{bucket.reset_s():.3f}s",
    }


class QuotaBook:
    """Every limiter of this process, by owner (``key:<id>`` / ``project:<id>``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._limiters: dict[str, Limiter] = {}
        self._lock = threading.Lock()  # admissions come from the event loop and gRPC threads

    def _limiter(self, owner: str, quotas: Quotas) -> Limiter:
        lim = self._limiters.get(owner)
        if lim is None or lim.quotas != quotas:  # new owner, or the policy changed
            lim = self._limiters[owner] = Limiter(quotas, self.clock)
        return lim

    def _active(self, owners: list[tuple[str, Quotas]]) -> list[tuple[str, Limiter]]:
        """The limiters of the owners that have any quota (call with the lock held)."""
        return [(o, self._limiter(o, q)) for o, q in owners if not q.empty]

    def admit(self, owners: list[tuple[str, Quotas]]) -> QuotaVerdict:
        """Charge one request to every owner, or to none if any refuses.

        A refused request costs nothing; an admitted one holds a concurrency slot in each
        owner until ``release(owners)``. Headers come from the tightest owner (the one with
        the fewest requests left), as one answer can carry only one set.
        """
        with self._lock:
            limiters = self._active(owners)
            worst_wait, reason = 0.0, ""
            for owner, lim in limiters:
                waits = {"requests_per_minute": lim.requests.wait_s(1) if lim.requests else 0.0}
                cap = lim.quotas.max_concurrent_requests
                if cap is not None and lim.in_flight >= cap:
                    waits["max_concurrent_requests"] = 1.0
                name, wait = max(waits.items(), key=lambda kv: kv[1])
                if wait > worst_wait:
                    worst_wait, reason = wait, f"{name} of {owner}"
            headers = _all_headers(limiters)
            if worst_wait > 0:
                return QuotaVerdict(False, headers, worst_wait, reason)
            for _, lim in limiters:
                if lim.requests:
                    lim.requests.take(1)
                lim.in_flight += 1
            return QuotaVerdict(True, _all_headers(limiters))

    def charge_tokens(self, owners: list[tuple[str, Quotas]], tokens: int) -> QuotaVerdict:
        """After the body is read: charge ``tokens`` to every owner, or refuse (the request's
        concurrency slot is still held: release it)."""
        with self._lock:
            limiters = self._active(owners)
            for owner, lim in limiters:
                if lim.tokens is not None:
                    wait = lim.tokens.wait_s(tokens)
                    if wait > 0:
                        why = f"tokens_per_minute of {owner}"
                        if math.isinf(wait):
                            why += f": {tokens} tokens exceed the whole limit"
                        return QuotaVerdict(False, _all_headers(limiters), wait, why)
            for _, lim in limiters:
                if lim.tokens is not None:
                    lim.tokens.take(tokens)
            return QuotaVerdict(True, _all_headers(limiters))

    def release(self, owners: list[tuple[str, Quotas]]) -> None:
        with self._lock:
            for owner, quotas in owners:
                lim = self._limiters.get(owner)
                if lim is not None and not quotas.empty and lim.in_flight > 0:
                    lim.in_flight -= 1


def _all_headers(limiters: list[tuple[str, Limiter]]) -> dict[str, str]:
    out: dict[str, str] = {}
    with_requests = [lim.requests for _, lim in limiters if lim.requests]
    with_tokens = [lim.tokens for _, lim in limiters if lim.tokens]
    if with_requests:
        out.update(_bucket_headers("requests", min(with_requests, key=lambda b: b.level_now())))
    if with_tokens:
        out.update(_bucket_headers("tokens", min(with_tokens, key=lambda b: b.level_now())))
    return out
