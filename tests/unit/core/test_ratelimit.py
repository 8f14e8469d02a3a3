"""TokenBucket: pauses that repay the debt exactly, bursts, rate changes, validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connwise.core.clock import VirtualClock
from connwise.core.ratelimit import TokenBucket
from connwise.errors import ConfigError


def test_a_full_bucket_covers_a_burst_without_pause() -> None:
    bucket = TokenBucket(rate=100.0, burst=50.0, now=0.0)
    assert bucket.take(30, 0.0) == 0.0
    assert bucket.take(20, 0.0) == 0.0
    assert bucket.tokens(0.0) == 0.0


@pytest.mark.parametrize(("amounts", "expected_pause"), [
    ([60], 0.1),             # 10 over a burst of 50 at 100/s
    ([50, 100], 1.0),        # the whole second take is debt
    ([25, 25, 25], 0.25),
])
def test_debt_is_allowed_and_the_pause_repays_it_exactly(amounts: list[int],
                                                          expected_pause: float) -> None:
    bucket = TokenBucket(rate=100.0, burst=50.0, now=0.0)
    pause = 0.0
    for amount in amounts:
        pause = bucket.take(amount, 0.0)
    assert pause == pytest.approx(expected_pause)
    assert bucket.delay(0.0) == pytest.approx(expected_pause)
    # After exactly that pause the debt is repaid: the next byte-free take is covered.
    assert bucket.take(0, expected_pause) == 0.0
    assert bucket.tokens(expected_pause) == pytest.approx(0.0)


def test_a_relay_that_obeys_the_pauses_moves_at_the_rate() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=1000.0, burst=100.0, now=clock.now())
    sent = 0
    while clock.now() < 10.0:
        pause = bucket.take(250, clock.now())
        sent += 250
        clock.advance(pause if pause > 0 else 0.001)
    # 10 s at 1000 B/s plus the initial burst, within one chunk.
    assert sent == pytest.approx(10_000 + 100, abs=250)


def test_refill_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=20.0, now=0.0)
    bucket.take(20, 0.0)
    assert bucket.tokens(1000.0) == 20.0
    assert bucket.take(25, 1000.0) == pytest.approx(0.5)


def test_time_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=10.0, burst=10.0, now=5.0)
    bucket.take(10, 5.0)
    assert bucket.take(10, 4.0) == pytest.approx(1.0)
    assert bucket.tokens(4.0) == pytest.approx(-10.0)


def test_set_rate_credits_the_past_at_the_old_rate_and_repays_debt_at_the_new() -> None:
    bucket = TokenBucket(rate=10.0, burst=100.0, now=0.0)
    bucket.take(120, 0.0)                      # 20 in debt
    bucket.set_rate(100.0, 1.0)                # 10 earned at the old rate: 10 in debt
    assert bucket.tokens(1.0) == pytest.approx(-10.0)
    assert bucket.delay(1.0) == pytest.approx(0.1)
    assert bucket.take(0, 1.1) == 0.0


def test_set_rate_can_change_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=100.0, now=0.0)
    bucket.set_rate(10.0, 0.0, burst=30.0)
    assert bucket.burst == 30.0
    assert bucket.tokens(0.0) == 30.0


def test_an_infinite_rate_means_unthrottled_and_lifting_forgives_debt() -> None:
    bucket = TokenBucket(rate=100.0, burst=10.0, now=0.0)
    assert bucket.take(1000, 0.0) > 0
    bucket.set_rate(math.inf, 0.0)
    assert bucket.take(10**9, 0.0) == 0.0
    assert bucket.delay(0.0) == 0.0
    bucket.set_rate(100.0, 1.0)                # a new cap starts from a full bucket
    assert bucket.tokens(1.0) == 10.0


@pytest.mark.parametrize(("rate", "burst", "key"), [
    (0.0, 10.0, "rate"), (-1.0, 10.0, "rate"), (math.nan, 10.0, "rate"),
    (10.0, 0.0, "burst"), (10.0, math.inf, "burst"), (10.0, math.nan, "burst"),
])
def test_invalid_rates_and_bursts_are_refused_with_the_key(rate: float, burst: float,
                                                            key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TokenBucket(rate=rate, burst=burst, now=0.0)
    assert info.value.key == key
    bucket = TokenBucket(rate=1.0, burst=1.0, now=0.0)
    with pytest.raises(ConfigError):
        bucket.set_rate(rate, 0.0, burst=burst)


def test_repr_shows_rate_and_burst() -> None:
    assert repr(TokenBucket(rate=5.0, burst=7.0, now=0.0)) == \
        "<TokenBucket rate=5/s burst=7 tokens=7.0>"


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 500)), max_size=40))
def test_pauses_never_let_the_average_exceed_rate_plus_burst(
        steps: list[tuple[float, int]]) -> None:
    rate, burst = 100.0, 50.0
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    now = 0.0
    taken = 0
    for gap, amount in steps:
        now += gap
        pause = bucket.take(amount, now)
        taken += amount
        now += pause
        # Having paused as told, the caller has not exceeded burst + rate x elapsed.
        assert taken <= burst + rate * now + 1e-6
