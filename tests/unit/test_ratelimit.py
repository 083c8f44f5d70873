from __future__ import annotations

import math

import pytest

from ingress.ratelimit import RateLimiter
from ledger import limits


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_burst_then_refusal_with_retry_after(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert [limiter.take("m1", 1.0, 5) for _ in range(5)] == [None] * 5
    # Empty: one token comes back after 1 s at 1 token/s.
    assert limiter.take("m1", 1.0, 5) == 1.0


def test_retry_after_is_rounded_up_to_whole_seconds(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert limiter.take("m1", 0.4, 1) is None
    assert limiter.take("m1", 0.4, 1) == 3.0  # 2.5 s to the next token
    clock.advance(2.0)
    assert limiter.take("m1", 0.4, 1) == 1.0  # 0.5 s left: never below 1
    clock.advance(0.5)
    assert limiter.take("m1", 0.4, 1) is None


def test_fast_refill_still_says_one_second(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert limiter.take("m1", 100.0, 1) is None
    assert limiter.take("m1", 100.0, 1) == 1.0


def test_exact_waits_are_not_rounded_past_the_integer(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    rate = 1 / 49  # 49 s per token, though 1 / (1 / 49) is 49.00000000000001
    assert limiter.take("m1", rate, 1) is None
    assert limiter.take("m1", rate, 1) == 49.0


def test_waiting_retry_after_finds_a_token(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    for rate in (0.3, 0.7, 1.0, 2.5, 7.0):
        merchant = f"m{rate}"
        while (wait := limiter.take(merchant, rate, 2)) is None:
            pass
        clock.advance(wait)
        assert limiter.take(merchant, rate, 2) is None, rate


def test_refill_over_time(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    for _ in range(10):
        assert limiter.take("m1", 2.0, 10) is None
    assert limiter.take("m1", 2.0, 10) is not None
    clock.advance(1.0)  # two tokens back
    assert limiter.take("m1", 2.0, 10) is None
    assert limiter.take("m1", 2.0, 10) is None
    assert limiter.take("m1", 2.0, 10) is not None
    clock.advance(3600.0)  # refills to the burst, no further
    assert [limiter.take("m1", 2.0, 10) for _ in range(10)] == [None] * 10
    assert limiter.take("m1", 2.0, 10) is not None


def test_refusals_do_not_cost_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert limiter.take("m1", 1.0, 1) is None
    for _ in range(100):
        assert limiter.take("m1", 1.0, 1) == 1.0
    clock.advance(1.0)
    assert limiter.take("m1", 1.0, 1) is None


def test_merchants_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert limiter.take("m1", 1.0, 1) is None
    assert limiter.take("m1", 1.0, 1) is not None
    assert limiter.take("m2", 1.0, 1) is None


def test_override_applies_at_once(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert [limiter.take("m1", 1.0, 2) for _ in range(3)] == [None, None, 1.0]
    # The merchant's record now grants a bigger bucket and a faster refill.
    clock.advance(0.1)
    assert limiter.take("m1", 10.0, 20) is None  # 0.1 s * 10/s = one token
    assert limiter.take("m1", 10.0, 20) == 1.0


def test_smaller_burst_caps_saved_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert limiter.take("m1", 1.0, 100) is None  # 99 left
    assert [limiter.take("m1", 1.0, 2) for _ in range(3)] == [None, None, 1.0]


def test_clock_stepping_back_does_not_drain_or_fill(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert limiter.take("m1", 1.0, 1) is None
    clock.advance(-50.0)
    assert limiter.take("m1", 1.0, 1) == 1.0
    clock.advance(1.0)
    assert limiter.take("m1", 1.0, 1) is None


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, 5), (-1.0, 5), (math.nan, 5), (1.0, 0), (1.0, -3), (1.0, math.nan)]
)
def test_nonsense_arguments_raise_nothing(clock: FakeClock, rate: float, burst: float) -> None:
    limiter = RateLimiter(clock=clock)
    results = [limiter.take("m1", rate, burst) for _ in range(10)]
    assert results[0] is None
    refusals = [r for r in results if r is not None]
    assert refusals
    assert all(r >= 1 and math.isfinite(r) and r == int(r) for r in refusals)


def test_infinite_arguments_raise_nothing(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert limiter.take("m1", math.inf, math.inf) is None


def test_idle_buckets_are_evicted(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    for merchant in ("a", "b", "c"):
        assert limiter.take(merchant, 1.0, 10) is None
    assert len(limiter) == 3
    clock.advance(0.5)  # not full yet: 9.5 of 10
    assert limiter.take("d", 1.0, 10) is None
    assert len(limiter) == 4
    clock.advance(0.6)  # a, b and c are full again, d is not
    assert limiter.take("e", 1.0, 10) is None
    assert len(limiter) == 2


def test_eviction_of_a_full_bucket_changes_nothing(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock)
    assert [limiter.take("a", 1.0, 3) for _ in range(4)] == [None, None, None, 1.0]
    clock.advance(3.0)
    assert limiter.take("b", 1.0, 3) is None  # evicts a
    assert len(limiter) == 1
    assert [limiter.take("a", 1.0, 3) for _ in range(4)] == [None, None, None, 1.0]


def test_number_of_buckets_is_bounded(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, merchants_max=3)
    for index in range(1_000):
        limiter.take(f"m{index}", 1.0, 5)
        assert len(limiter) <= 3
    assert len(limiter) == 3


def test_least_recently_used_bucket_goes_first(clock: FakeClock) -> None:
    limiter = RateLimiter(clock=clock, merchants_max=2)
    assert [limiter.take("a", 0.001, 1) for _ in range(2)] == [None, 1000.0]
    assert limiter.take("b", 0.001, 1) is None
    assert limiter.take("a", 0.001, 1) is not None  # a is now the most recent
    assert limiter.take("c", 0.001, 1) is None  # evicts b, not a
    assert limiter.take("a", 0.001, 1) is not None
    assert limiter.take("b", 0.001, 1) is None  # b started over (and evicted c)


def test_default_bound_is_the_named_limit() -> None:
    limiter = RateLimiter()
    assert limiter._merchants_max == limits.RATE_LIMIT_MERCHANTS_MAX


def test_merchants_max_must_be_positive() -> None:
    with pytest.raises(ValueError, match="merchants_max"):
        RateLimiter(merchants_max=0)


def test_default_clock_is_monotonic_and_works() -> None:
    limiter = RateLimiter()
    assert limiter.take("m1", 1.0, 1) is None
    assert limiter.take("m1", 1.0, 1) == 1.0
