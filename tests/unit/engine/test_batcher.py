"""Batcher behaviour, driven by events and futures (no sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from serving.engine.batcher import TokenBudgetBatcher
from serving.errors import DeadlineExceeded, Overloaded, RequestTooExpensive

BUCKETS = [16, 32, 64]
FOREVER = 3600.0


def make(
    max_batch_tokens: int = 64,
    max_batch_size: int = 100,
    wait_ms: float = 60_000,
    max_queue_tokens: int = 10_000,
    drops: list | None = None,
) -> TokenBudgetBatcher:
    on_drop = (lambda r, n: drops.append((r, n))) if drops is not None else None
    return TokenBudgetBatcher(
        BUCKETS, max_batch_tokens, max_batch_size, wait_ms, max_queue_tokens, on_drop=on_drop
    )


def seq(n_tokens: int, bucket: int) -> tuple[list[int], int]:
    return (list(range(n_tokens)), bucket)


def deadline() -> float:
    return asyncio.get_running_loop().time() + FOREVER


async def test_budget_counts_padding_and_cuts_full_batch_without_waiting():
    b = make(max_batch_tokens=64)  # bucket 16 -> 4 sequences per batch
    b.submit([seq(3, 16) for _ in range(5)], deadline())
    batch = await asyncio.wait_for(b.next_batch(), 5)  # full: no 60 s wait
    assert len(batch.items) == 4
    assert batch.bucket * len(batch.items) == 64 <= b.max_batch_tokens  # the budget: buckets
    assert batch.padded_tokens == 32  # run padded to the longest (3 -> 8), not to 16
    assert batch.real_tokens == 12
    assert b.queued_sequences == 1 and b.queued_tokens == 16


async def test_batch_size_cap():
    b = make(max_batch_tokens=10_000, max_batch_size=3)
    b.submit([seq(3, 16) for _ in range(7)], deadline())
    assert len((await b.next_batch()).items) == 3


async def test_groups_by_length_bucket():
    b = make(max_batch_tokens=64, wait_ms=0)
    b.submit([seq(10, 16), seq(60, 64), seq(12, 16), seq(50, 64)], deadline())
    first, second = await b.next_batch(), await b.next_batch()
    assert {first.bucket, second.bucket} == {16, 64}
    for batch in (first, second):
        assert all(s.bucket == batch.bucket for s in batch.items)
    assert sorted(len(batch.items) for batch in (first, second)) == [1, 2]


async def test_waits_for_company_until_full():
    b = make(max_batch_tokens=64)
    task = asyncio.create_task(b.next_batch())
    b.submit([seq(3, 16)], deadline())
    await asyncio.sleep(0)  # let the consumer see the first sequence and start waiting
    assert not task.done()
    b.submit([seq(3, 16) for _ in range(3)], deadline())
    batch = await asyncio.wait_for(task, 5)
    assert len(batch.items) == 4  # cut because it filled, long before the 60 s wait


async def test_timeout_flushes_partial_batch():
    b = make(wait_ms=5)
    b.submit([seq(3, 16)], deadline())
    batch = await asyncio.wait_for(b.next_batch(), 5)
    assert len(batch.items) == 1


async def test_cancelled_requests_are_dropped_before_the_model():
    drops: list = []
    b = make(wait_ms=0, drops=drops)
    gone, kept = b.submit([seq(3, 16), seq(4, 16)], deadline())
    gone.cancel()
    batch = await b.next_batch()
    assert [s.future for s in batch.items] == [kept]
    assert drops == [("cancelled", 1)]
    assert b.queued_tokens == 0


async def test_expired_deadline_fails_request_and_skips_model():
    drops: list = []
    b = make(wait_ms=0, drops=drops)
    loop = asyncio.get_running_loop()
    (late,) = b.submit([seq(3, 16)], loop.time() - 1)
    (ok,) = b.submit([seq(3, 32)], deadline())
    batch = await b.next_batch()
    assert [s.future for s in batch.items] == [ok]
    with pytest.raises(DeadlineExceeded):
        await late
    assert drops == [("deadline", 1)]


async def test_error_fans_out_to_every_request_of_the_batch():
    b = make(wait_ms=0)
    futures = b.submit([seq(3, 16) for _ in range(3)], deadline())
    batch = await b.next_batch()
    boom = RuntimeError("device fell over")
    b.fail(batch, boom)
    for f in futures:
        with pytest.raises(RuntimeError, match="device fell over"):
            await f


async def test_results_reach_their_own_request():
    b = make(wait_ms=0)
    futures = b.submit([seq(3, 16) for _ in range(3)], deadline())
    batch = await b.next_batch()
    b.complete(batch, ["a", "b", "c"])
    assert [await f for f in futures] == ["a", "b", "c"]


async def test_queue_bounded_in_tokens():
    b = make(max_queue_tokens=64)
    b.submit([seq(3, 16), seq(3, 16)], deadline())  # 32 tokens queued
    with pytest.raises(Overloaded):
        b.submit([seq(40, 64)], deadline())  # 32 + 64 > 64
    assert b.queued_tokens == 32  # the refused request left nothing behind


async def test_fail_all_answers_every_waiting_request():
    b = make()
    futures = b.submit([seq(3, 16), seq(30, 32)], deadline())
    b.fail_all(RuntimeError("shutdown"))
    for f in futures:
        with pytest.raises(RuntimeError):
            await f
    assert b.queued_sequences == 0


def test_rejects_budget_smaller_than_largest_bucket():
    with pytest.raises(ValueError, match="largest bucket"):
        TokenBudgetBatcher(BUCKETS, 32, 8, 1.0, 1000)


async def test_a_small_request_is_served_after_one_batch_of_a_large_one():
    b = make(max_batch_tokens=64, wait_ms=0)  # bucket 16: 4 per batch
    big = b.submit([seq(3, 16) for _ in range(40)], deadline())
    (small,) = b.submit([seq(20, 32)], deadline())
    first, second = await b.next_batch(), await b.next_batch()
    assert [s.future in big for s in first.items] == [True] * 4
    assert [s.future for s in second.items] == [small]  # not after the other 36


async def test_requests_sharing_a_bucket_share_each_batch():
    b = make(max_batch_tokens=64, wait_ms=0)
    a = b.submit([seq(3, 16) for _ in range(10)], deadline())
    c = b.submit([seq(3, 16) for _ in range(2)], deadline())
    batch = await b.next_batch()
    owners = ["a" if s.future in a else "c" if s.future in c else "?" for s in batch.items]
    assert sorted(owners) == ["a", "a", "c", "c"]


async def test_admission_by_predicted_wait():
    b = TokenBudgetBatcher(BUCKETS, 64, 100, 0, 10_000, max_queue_wait_s=1.0)
    b.service.observe(16, 4, 0.4)  # 4 sequences of 16 in 0.4 s: 0.1 s per sequence
    assert b.service.seq_s(16) == pytest.approx(0.1)
    loop = asyncio.get_running_loop()
    with pytest.raises(RequestTooExpensive, match="MODSERVE_REQUEST_TIMEOUT_S"):
        b.submit([seq(3, 16) for _ in range(40)], loop.time() + 3.0)  # 4 s > 3 s, even idle
    big = b.submit([seq(3, 16) for _ in range(25)], loop.time() + 30.0)  # 2.5 s, idle: in
    b.submit([seq(3, 16)], loop.time() + 30.0)  # waits min(2.5, 0.1) s: fair share, in
    with pytest.raises(Overloaded) as err:  # would share 2.6 s of queued work: over 1 s
        b.submit([seq(3, 16) for _ in range(20)], loop.time() + 30.0)
    assert err.value.retry_after(9) == 2  # predicted excess wait, rounded up
    batch = await b.next_batch()
    assert b.queued_sequences == 26 - len(batch.items)
    b.done(batch, 0.4)
    for f in big:
        f.cancel()


async def test_cancelled_request_gives_its_share_back():
    b = TokenBudgetBatcher(BUCKETS, 64, 100, 0, 10_000, max_queue_wait_s=1.0)
    b.service.observe(16, 4, 0.4)
    loop = asyncio.get_running_loop()
    first = b.submit([seq(3, 16) for _ in range(20)], loop.time() + 30.0)
    with pytest.raises(Overloaded):
        b.submit([seq(3, 16) for _ in range(20)], loop.time() + 30.0)
    for f in first:
        f.cancel()
    b._prune(loop.time())
    assert b.queued_requests == 0 and b.queued_tokens == 0
    b.submit([seq(3, 16) for _ in range(20)], loop.time() + 30.0)  # admitted now


def test_a_batch_is_padded_to_its_longest_sequence_in_multiples_of_8_within_its_bucket() -> None:
    from serving.engine.batcher import Batch, QueuedSequence

    async def main() -> list[tuple[int, int]]:
        fut = asyncio.get_running_loop().create_future()

        def batch(bucket: int, lengths: list[int]) -> Batch:
            items = [QueuedSequence([1] * n, bucket, 1e9, fut) for n in lengths]
            return Batch(bucket, items, 0.0)

        out = [(b.length, b.padded_tokens) for b in (
            batch(128, [65, 70, 73]),  # longest 73 -> 80, not 128
            batch(128, [120, 127]),  # 127 -> 128 (never beyond the bucket)
            batch(64, [40]),  # exactly a multiple of 8
            batch(16, [3, 9]),
        )]  # fmt: skip
        fut.cancel()
        return out

    assert asyncio.run(main()) == [(80, 240), (128, 256), (40, 40), (16, 32)]
