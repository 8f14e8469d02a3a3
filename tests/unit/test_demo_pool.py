"""The pure parts of `connwise demo pool`: the seeded schedule, percentiles, and the closing
sentences, which must say so when connwise did not improve something."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from connwise.demo.figures import percentile
from connwise.demo.pool_demo import (
    Scenario,
    build_schedule,
    compare,
    findings,
)
from connwise.errors import ConfigError


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    scenario = Scenario(seed=11)
    assert build_schedule(scenario) == build_schedule(Scenario(seed=11))
    assert build_schedule(scenario) != build_schedule(Scenario(seed=12))


def test_schedule_is_ordered_inside_the_duration_with_the_classes_query_shapes() -> None:
    scenario = Scenario(duration=10.0)
    schedule = build_schedule(scenario)
    times = [r.at for r in schedule]
    assert times == sorted(times)
    assert times[0] > 0 and times[-1] < scenario.duration
    for request in schedule:
        if request.class_name == "critical":
            lo, hi = scenario.critical_query_ms
            assert len(request.queries_ms) == scenario.critical_queries
        else:
            assert request.class_name == "bulk"
            lo, hi = scenario.bulk_query_ms
            assert len(request.queries_ms) == scenario.bulk_queries
        assert all(lo <= ms <= hi for ms in request.queries_ms)


def test_spike_offers_its_concurrency_and_the_critical_share_holds() -> None:
    # Long enough that the seeded Poisson counts sit close to their means.
    scenario = Scenario(duration=60.0, seed=3)
    schedule = build_schedule(scenario)
    hold = scenario.mean_hold()

    def offered(start: float, end: float) -> float:
        count = sum(start <= r.at < end for r in schedule)
        return count / (end - start) * hold  # Little's law: concurrency = rate x hold

    assert offered(0, scenario.spike_start) == pytest.approx(scenario.baseline_concurrency,
                                                             rel=0.15)
    assert offered(scenario.spike_start, scenario.spike_end) == pytest.approx(
        scenario.spike_concurrency, rel=0.1)
    critical = sum(r.class_name == "critical" for r in schedule) / len(schedule)
    assert critical == pytest.approx(scenario.critical_share, abs=0.02)


def test_quick_shortens_the_run_unless_a_duration_is_given() -> None:
    assert Scenario.from_options(quick=True).duration == 3.0
    assert Scenario.from_options().duration == 6.0
    assert Scenario.from_options(quick=True, duration=4.0).duration == 4.0


@pytest.mark.parametrize(("options", "key"), [
    ({"duration": -1.0}, "duration"),
    ({"duration": 0.5}, "duration"),
    ({"duration": float("nan")}, "duration"),
    ({"handshake_ms": -1.0}, "handshake_ms"),
    ({"handshake_ms": 60_000.0}, "handshake_ms"),
])
def test_bad_options_name_their_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        Scenario.from_options(**options)
    assert error.value.key == key


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_compare_says_when_connwise_did_not_improve() -> None:
    assert compare(400.0, 2.0) == (-1, "200x lower")
    assert compare(400.0, 0.1) == (-1, "over 400x lower")
    assert compare(10.0, 7.0) == (-1, "30% lower")
    verdict, words = compare(10.0, 30.0)
    assert verdict == 1 and "3.0x higher" in words and "did not improve" in words
    verdict, words = compare(100.0, 105.0)
    assert verdict == 0 and "did not improve" in words
    verdict, words = compare(0.2, 0.9)  # both under a millisecond of each other: jitter
    assert verdict == 0
    assert compare(None, 3.0)[0] == 0


def _runs(critical_p99: tuple[float, float], bulk_p99: tuple[float, float],
          ready: tuple[int, int]) -> dict[str, dict[str, Any]]:
    run: dict[str, Any] = {
        "classes": {name: {"timeouts": 0, "wait_ms": {"p99": 0.0}}
                    for name in ("critical", "bulk")},
        "ready_at_spike": 0, "opened_during_spike": 0, "warm_target": 50,
    }
    runs = {"traditional": copy.deepcopy(run), "connwise": copy.deepcopy(run)}
    for i, policy in enumerate(("traditional", "connwise")):
        runs[policy]["classes"]["critical"]["wait_ms"]["p99"] = critical_p99[i]
        runs[policy]["classes"]["bulk"]["wait_ms"]["p99"] = bulk_p99[i]
        runs[policy]["ready_at_spike"] = ready[i]
    return runs


def test_findings_report_improvements_from_the_figures() -> None:
    critical, bulk, warm = findings(_runs((390.0, 0.5), (400.0, 40.0), (9, 48)))
    assert "0.5 ms at p99 with connwise against 390.0 ms" in critical and "lower" in critical
    assert "10x lower" in bulk
    assert "48 connections ready" in warm and "against 9" in warm


def test_findings_say_so_when_connwise_is_worse() -> None:
    critical, bulk, warm = findings(_runs((5.0, 50.0), (100.0, 100.0), (20, 20)))
    assert "did not improve" in critical and "higher" in critical
    assert "did not improve" in bulk and "about the same" in bulk
    assert warm.startswith("Pre-warming did not give connwise more ready connections")
