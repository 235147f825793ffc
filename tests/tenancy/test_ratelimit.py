"""Token bucket and concurrency cap, driven by an explicit clock (no sleeps)."""

from __future__ import annotations

import pytest

from kcloud.tenancy.ratelimit import ConcurrencyLimiter, KeyRateLimiter, TokenBucket, retry_after_header


def test_bucket_grants_the_burst_then_refuses_with_the_wait():
    bucket = TokenBucket(rate=2.0, burst=3, updated=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)
    assert bucket.take(100.5) == 0.0  # one token refilled after 1/rate
    assert bucket.take(100.5) == pytest.approx(0.5)


def test_bucket_never_holds_more_than_its_burst():
    bucket = TokenBucket(rate=10.0, burst=2, updated=0.0)
    granted = sum(bucket.take(1000.0) == 0.0 for _ in range(5))
    assert granted == 2


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 5), (1, 0)])
def test_bucket_refuses_nonsense_limits(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)


def test_key_limiter_keeps_a_bucket_per_key_and_rebuilds_on_change():
    limiter = KeyRateLimiter()
    assert limiter.take(1, 1.0, 1, now=0.0) == 0.0
    assert limiter.take(1, 1.0, 1, now=0.0) > 0
    assert limiter.take(2, 1.0, 1, now=0.0) == 0.0  # another key has its own bucket
    assert limiter.take(1, 5.0, 2, now=0.0) == 0.0  # new limits: a fresh bucket
    assert limiter.take(3, None, None) == 0.0  # no limit set


def test_concurrency_cap_per_tenant():
    caps = ConcurrencyLimiter()
    assert caps.try_enter(1, 2) and caps.try_enter(1, 2)
    assert not caps.try_enter(1, 2)
    assert caps.try_enter(2, 2)
    caps.leave(1)
    assert caps.in_flight(1) == 1
    assert caps.try_enter(1, 2)
    assert caps.try_enter(9, None)


def test_retry_after_is_whole_seconds_at_least_one():
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"
    assert retry_after_header(0) == "1"
