"""The quality record: decaying failures, latency EWMA, score and adaptive check interval."""

from __future__ import annotations

import pytest

from connwise.core.quality import FAILURE_HALF_LIFE, LATENCY_ALPHA, SLOW_FACTOR, Quality


def test_failures_halve_every_half_life() -> None:
    q = Quality(created_at=0.0)
    assert q.recent_failures(100.0) == 0.0
    q.record_failure(10.0)
    assert q.recent_failures(10.0) == 1.0
    assert q.recent_failures(10.0 + FAILURE_HALF_LIFE) == pytest.approx(0.5)
    assert q.recent_failures(10.0 + 2 * FAILURE_HALF_LIFE) == pytest.approx(0.25)


def test_failures_accumulate_on_their_decayed_weight() -> None:
    q = Quality(created_at=0.0)
    q.record_failure(0.0)
    q.record_failure(0.0)
    assert q.recent_failures(0.0) == 2.0
    q.record_failure(FAILURE_HALF_LIFE)
    assert q.recent_failures(FAILURE_HALF_LIFE) == pytest.approx(2.0)  # 2 * 0.5 + 1


def test_score_halves_per_recent_failure() -> None:
    q = Quality(created_at=0.0)
    assert q.score(0.0, None) == 1.0
    q.record_failure(0.0)
    assert q.score(0.0, None) == pytest.approx(0.5)
    q.record_failure(0.0)
    assert q.score(0.0, None) == pytest.approx(0.25)


def test_latency_is_an_ewma() -> None:
    q = Quality(created_at=0.0)
    q.record_check(1.0, 0.010)
    assert q.check_latency == 0.010
    assert (q.checks, q.last_checked) == (1, 1.0)
    q.record_check(2.0, 0.020)
    assert q.check_latency == pytest.approx(0.010 + LATENCY_ALPHA * 0.010)
    assert (q.checks, q.last_checked) == (2, 2.0)


@pytest.mark.parametrize(("slowness", "expected"), [
    (0.5, 1.0), (1.0, 1.0), (SLOW_FACTOR, 0.5), (SLOW_FACTOR ** 2, 0.25), (2.0, 0.5 ** 0.5),
])
def test_slow_checks_lower_the_score(slowness: float, expected: float) -> None:
    q = Quality(created_at=0.0)
    q.record_check(0.0, 0.01 * slowness)
    assert q.score(0.0, 0.01) == pytest.approx(expected)
    assert q.score(0.0, None) == 1.0
    assert q.score(0.0, 0.0) == 1.0


def test_check_interval_halves_per_failure_down_to_the_floor() -> None:
    q = Quality(created_at=0.0)
    assert q.check_interval(0.0, 30.0, 1.0) == 30.0
    q.record_failure(0.0)
    assert q.check_interval(0.0, 30.0, 1.0) == pytest.approx(15.0)
    for _ in range(9):
        q.record_failure(0.0)
    assert q.check_interval(0.0, 30.0, 1.0) == 1.0


def test_snapshot_and_age() -> None:
    q = Quality(created_at=5.0)
    q.uses = 3
    q.record_failure(5.0)
    assert q.age(7.5) == 2.5
    assert q.snapshot(7.5) == {"age": 2.5, "uses": 3, "recent_failures": pytest.approx(0.9942,
                                                                                        abs=1e-4),
                               "checks": 0, "check_latency": None}
