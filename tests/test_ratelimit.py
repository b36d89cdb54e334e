"""Token buckets and the per-peer limiter, driven by explicit time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.errors import ConfigError
from dtruntime.runtime.ratelimit import PeerRateLimiter, TokenBucket


def test_bucket_allows_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.allow(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not bucket.allow(0.05), "half a token is not enough"
    assert bucket.allow(0.1)
    assert not bucket.allow(0.1)


def test_bucket_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=100, burst=3, now=0.0)
    assert bucket.tokens(1000.0) == 3
    assert sum(bucket.allow(1000.0) for _ in range(10)) == 3


def test_time_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)
    assert not bucket.allow(10.5)
    assert bucket.allow(11.0)


def test_cost_larger_than_tokens_takes_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=4, now=0.0)
    assert not bucket.allow(0.0, cost=5)
    assert bucket.tokens(0.0) == 4


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5), (float("nan"), 1)])
def test_bad_bucket_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(rate, burst, 0.0)


def test_peers_are_limited_independently() -> None:
    limiter = PeerRateLimiter(rate=1, burst=2)
    assert [limiter.allow("flood", 0.0) for _ in range(5)] == [True, True, False, False, False]
    assert limiter.allow("quiet", 0.0)
    assert limiter.counters == {"allowed": 3, "limited": 3, "peers_evicted": 0}


def test_peer_table_evicts_least_recently_seen() -> None:
    limiter = PeerRateLimiter(rate=1, burst=1, max_peers=2)
    assert limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)
    assert not limiter.allow("a", 0.0)  # a is now the most recent
    assert limiter.allow("c", 0.0)  # evicts b
    assert len(limiter) == 2 and limiter.counters["peers_evicted"] == 1
    assert not limiter.allow("a", 0.0), "a kept its (empty) bucket"
    assert limiter.allow("b", 0.0), "b was forgotten and comes back full"


def test_forget_drops_a_peer() -> None:
    limiter = PeerRateLimiter(rate=1, burst=1)
    limiter.allow("a", 0.0)
    limiter.forget("a")
    limiter.forget("never-seen")
    assert len(limiter) == 0 and limiter.allow("a", 0.0)


def test_bad_limiter_parameters() -> None:
    with pytest.raises(ConfigError):
        PeerRateLimiter(rate=1, burst=1, max_peers=0)
    with pytest.raises(ConfigError):
        PeerRateLimiter(rate=0, burst=1)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 100),
    burst=st.integers(1, 20),
    steps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_allowed_never_exceeds_burst_plus_rate_times_elapsed(rate: float, burst: int, steps: list[float]) -> None:
    limiter = PeerRateLimiter(rate=rate, burst=burst)
    now = 0.0
    allowed = 0
    for step in steps:
        now += step
        allowed += limiter.allow("peer", now)
    assert allowed <= burst + rate * now + 1e-9
