"""Token-bucket quotas on a fake clock: refusals, Retry-After, headers, isolation."""

from __future__ import annotations

import math

import pytest

from serving.gateway.policy import Quotas
from serving.gateway.quota import QuotaBook, estimated_tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refuse_then_refill() -> None:
    clock = Clock()
    book = QuotaBook(clock)
    owners = [("key:a", Quotas(requests_per_minute=3))]
    for left in (2, 1, 0):
        verdict = book.admit(owners)
        assert verdict.allowed and verdict.headers["x-ratelimit-remaining-requests"] == str(left)
        book.release(owners)
    refused = book.admit(owners)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(20.0)
    assert refused.reason == "requests_per_minute of key:a"
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-reset-requests"] == "60.000s"
    clock.now += 19.9
    assert not book.admit(owners).allowed
    clock.now += 0.2
    assert book.admit(owners).allowed


def test_tokens_per_minute_and_a_request_larger_than_the_limit() -> None:
    clock = Clock()
    book = QuotaBook(clock)
    owners = [("project:p", Quotas(tokens_per_minute=100))]
    assert estimated_tokens(["a" * 160, "", "abc"]) == 40 + 1 + 1
    assert book.admit(owners).allowed
    assert book.charge_tokens(owners, 80).allowed
    verdict = book.charge_tokens(owners, 40)
    assert not verdict.allowed and verdict.retry_after_s == pytest.approx(12.0)
    assert verdict.headers["x-ratelimit-remaining-tokens"] == "20"
    too_big = book.charge_tokens(owners, 101)
    assert not too_big.allowed and math.isinf(too_big.retry_after_s)
    assert "exceed the whole limit" in too_big.reason


def test_concurrency_slots_are_held_until_release() -> None:
    book = QuotaBook(Clock())
    owners = [("project:p", Quotas(max_concurrent_requests=2))]
    assert book.admit(owners).allowed and book.admit(owners).allowed
    refused = book.admit(owners)
    assert not refused.allowed and refused.reason == "max_concurrent_requests of project:p"
    book.release(owners)
    assert book.admit(owners).allowed


def test_a_refusal_by_one_owner_charges_none_and_owners_are_isolated() -> None:
    clock = Clock()
    book = QuotaBook(clock)
    project = ("project:p", Quotas(requests_per_minute=10))
    key_a = ("key:a", Quotas(requests_per_minute=1))
    key_b = ("key:b", Quotas(requests_per_minute=1))
    assert book.admit([project, key_a]).allowed
    assert not book.admit([project, key_a]).allowed  # key a is out; the project is not charged
    verdict = book.admit([project, key_b])
    assert verdict.allowed
    # the tightest owner's numbers: key b has 0 left, the project 8
    assert verdict.headers["x-ratelimit-remaining-requests"] == "0"
    assert book.admit([("project:q", Quotas(requests_per_minute=1))]).allowed  # other project


def test_no_quotas_means_no_headers_and_no_limit() -> None:
    book = QuotaBook(Clock())
    owners = [("project:p", Quotas())]
    for _ in range(1000):
        verdict = book.admit(owners)
        assert verdict.allowed and verdict.headers == {}
