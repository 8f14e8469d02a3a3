"""The core WarmPlan: Little's law, lead time, ramp limit, step lookup, scale-in on observed."""

from __future__ import annotations

from itertools import pairwise

import pytest

from connwise.core.plan import (
    PlanSettings,
    WarmController,
    WarmPlan,
    WarmStep,
    build_plan,
    build_steps,
    required_connections,
)
from connwise.errors import ConfigError


def test_littles_law_arrivals_times_hold_time() -> None:
    # 120 connections opened per minute = 2/s; held 30 s on average -> 60 at once.
    settings = PlanSettings(step=60, hold_time=30, lead=0)
    assert required_connections([120, 121, 0, -5], settings) == [60, 61, 0, 0]


def test_concurrency_kind_passes_through_with_headroom_and_bounds() -> None:
    settings = PlanSettings(step=60, kind="concurrency", headroom=1.5, min_target=2,
                            max_target=10, lead=0)
    assert required_connections([1, 4, 100], settings) == [2, 6, 10]


def test_lead_time_warms_exactly_lead_before_the_peak() -> None:
    demand = [0.0] * 30
    demand[20] = 60.0  # one busy minute at period 20
    settings = PlanSettings(step=60, hold_time=60, lead=600)  # 10 periods of lead
    steps = build_steps(1000.0, demand, settings)
    targets = [s.target for s in steps]
    assert targets[:10] == [0] * 10
    assert targets[10:21] == [60] * 11  # from 10 minutes before the peak through the peak
    assert targets[21:] == [0] * 9
    assert steps[10].at == 1000.0 + 10 * 60


def test_ramp_limit_starts_climbing_early_and_never_exceeds_the_rate() -> None:
    demand = [0.0] * 25
    demand[20] = 100.0
    settings = PlanSettings(step=60, hold_time=60, lead=0, max_ramp=0.5)  # 30 per minute
    targets = [s.target for s in build_steps(0.0, demand, settings)]
    assert targets[16:21] == [0, 10, 40, 70, 100]
    assert all(b - a <= 30 for a, b in pairwise(targets))
    assert not any(s.short for s in build_steps(0.0, demand, settings))


def test_ramp_from_the_current_size_marks_unreachable_steps_short() -> None:
    settings = PlanSettings(step=60, hold_time=60, lead=0, max_ramp=0.5)
    steps = build_steps(0.0, [100.0, 100.0, 100.0, 100.0, 100.0], settings, current=10)
    assert [s.target for s in steps] == [40, 70, 100, 100, 100]
    assert [s.short for s in steps] == [True, True, False, False, False]


def test_a_negative_current_size_is_refused_by_name() -> None:
    settings = PlanSettings(step=60, lead=0, max_ramp=0.001)
    with pytest.raises(ConfigError, match=r"^current = -5: "):
        build_steps(0.0, [10.0, 10.0], settings, current=-5)


def test_target_at_is_a_step_lookup_and_zero_outside_the_plan() -> None:
    plan = WarmPlan({"db": [WarmStep(100.0, 3), WarmStep(160.0, 7), WarmStep(220.0, 2)]},
                    end=280.0)
    assert plan.target_at(99.9) == 0
    assert plan.target_at(100.0) == 3
    assert plan.target_at(159.99) == 3
    assert plan.target_at(160.0, "db") == 7
    assert plan.target_at(279.0) == 2
    assert plan.target_at(280.0) == 0
    assert plan.next_change(100.0) == 160.0
    assert plan.next_change(230.0) == 280.0
    assert plan.next_change(300.0) is None
    assert plan.peak() == 7


def test_plan_validation_names_the_group_and_step() -> None:
    with pytest.raises(ConfigError, match=r"plan.steps\['db'\]\[1\].at"):
        WarmPlan({"db": [WarmStep(100.0, 3), WarmStep(100.0, 4)]}, end=200.0)
    with pytest.raises(ConfigError, match="cannot be negative"):
        WarmPlan({"db": [WarmStep(100.0, -1)]}, end=200.0)
    with pytest.raises(ConfigError, match="ends before the last step"):
        WarmPlan({"db": [WarmStep(100.0, 1)]}, end=50.0)
    with pytest.raises(ConfigError, match="no such group"):
        WarmPlan({"db": [WarmStep(100.0, 1)]}, end=200.0).target_at(100.0, "cache")
    with pytest.raises(ConfigError, match=r"planner.hold_time"):
        build_steps(0.0, [1.0], PlanSettings(step=60, hold_time=0))
    with pytest.raises(ConfigError, match=r"planner.max_ramp"):
        PlanSettings(step=60, max_ramp=0).validate()


def test_round_trip_and_shift() -> None:
    plan = build_plan({"a": (0.0, [60.0, 120.0]), "b": (0.0, [0.0, 30.0])},
                      PlanSettings(step=60, hold_time=60, lead=0), quantile=0.9,
                      meta={"mode": "forecast_only"})
    again = WarmPlan.from_dict(plan.to_dict())
    assert again == plan
    moved = plan.shifted(1000.0)
    assert moved.target_at(1060.0, "a") == 120 and moved.end == plan.end + 1000.0
    with pytest.raises(ConfigError, match="malformed"):
        WarmPlan.from_dict({"steps": {"a": [{"target": 1}]}, "end": 5})


def _peak_plan() -> WarmPlan:
    # 10 connections, then a peak of 50, then back to 5.
    return WarmPlan({"g": [WarmStep(0.0, 10), WarmStep(60.0, 50), WarmStep(120.0, 5)]},
                    end=600.0)


def test_controller_scales_out_on_the_plan_and_in_only_on_observed_demand() -> None:
    controller = WarmController(_peak_plan())
    assert controller.decide(0.0) == 10
    assert controller.decide(60.0) == 50
    # The plan says 5 now, but nothing is observed: never scale in on the forecast alone.
    assert controller.decide(120.0, None) == 50
    # Observed 30 in use: scale in to what is observed, not to the plan.
    assert controller.decide(130.0, 30.0) == 30
    # Observed demand fell below the plan: the plan's 5 is the floor.
    assert controller.decide(140.0, 2.0) == 5
    # After the plan ends it asks for nothing; observed demand still holds connections.
    assert controller.decide(700.0, 3.0) == 3


def test_controller_ramp_limit_holds_for_frequent_and_rare_calls() -> None:
    plan = WarmPlan({"g": [WarmStep(0.0, 0), WarmStep(10.0, 100)]}, end=1000.0)
    frequent = WarmController(plan, max_ramp=0.5)
    seen = [frequent.decide(float(t)) for t in range(0, 31)]
    # Credit accrues from the last call before the rise (t=9): one connection per 2 s.
    assert seen[9:14] == [0, 0, 1, 1, 2]
    assert seen[30] == 10  # 0.5 per second for 21 s, floored
    assert all(b - a <= 1 for a, b in pairwise(seen))
    rare = WarmController(plan, max_ramp=0.5)
    rare.decide(0.0)
    assert rare.decide(10.0) == 5  # credit since the last call: 10 s * 0.5
    assert rare.decide(70.0) == 35
