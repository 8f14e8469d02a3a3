"""Planner (forecast quantile -> WarmPlan) and applier (plan -> set_target) on a virtual clock,
with the Prometheus gauges on a registry of the test's own."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connwise.core.clock import VirtualClock
from connwise.core.plan import WarmPlan, WarmStep
from connwise.errors import ConfigError
from connwise.forecast.applier import PlanApplier
from connwise.forecast.base import Forecast
from connwise.forecast.planner import PlannerConfig, plan
from connwise.forecast.prom import ForecastMetrics, horizon_label

T0 = 1_700_000_000.0


def _forecast(mean: list[float], width: float = 10.0) -> Forecast:
    m = np.asarray(mean, dtype=float)
    return Forecast("api", T0, 60, m, {80: (m - width, m + width)}, "test")


def test_planner_plans_the_chosen_quantile_with_lead_and_ramp() -> None:
    demand = [10.0] * 30
    demand[20:23] = [110.0, 110.0, 110.0]
    # arrivals per minute, held 60 s -> concurrency = demand; q=0.9 adds the 80% half-width
    config = PlannerConfig(quantile=0.9, hold_time=60, lead=300, max_ramp=0.5)
    warm = plan({"api": _forecast(demand)}, config, current={"api": 20})
    targets = [s.target for s in warm.steps["api"]]
    assert targets[0] == 20  # 10 + 10
    assert targets[15:23] == [120] * 8  # warm 5 minutes (5 periods) before the peak
    assert targets[12:15] == [30, 60, 90]  # ...reached at 30 per minute from further back
    assert targets[23:] == [20] * 7
    assert warm.quantile == 0.9 and warm.meta["mode"] == "apply"
    median = plan({"api": _forecast(demand)}, PlannerConfig(quantile=0.5, hold_time=60, lead=0))
    assert median.target_at(T0 + 20 * 60) == 110


def test_planner_config_is_validated_before_forecasting() -> None:
    with pytest.raises(ConfigError, match=r"planner.quantile"):
        PlannerConfig(quantile=0.3).validate()
    with pytest.raises(ConfigError, match=r"planner.kind"):
        PlannerConfig(kind="bytes").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"planner.lead"):
        PlannerConfig(lead=-1).validate()


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_planner_refuses_a_non_finite_forecast(bad: float) -> None:
    forecast = Forecast("api", T0, 60, np.array([5.0, bad, 5.0]), {}, "broken")
    with pytest.raises(ConfigError, match=r"forecasts\['api'\].*period 1 .*not a finite"):
        plan({"api": forecast}, PlannerConfig(quantile=0.5))


class FakePool:
    """A pool's actuator surface on a virtual clock, recording set_target calls."""

    def __init__(self, clock: VirtualClock, max_size: int = 100) -> None:
        self.clock = clock
        self.calls: list[tuple[float, int]] = []
        self.in_use = 0
        self.max_size = max_size

    def now(self) -> float:
        return self.clock.now()

    def set_target(self, n: int, at: float | None = None) -> None:
        self.calls.append((self.clock.now(), n))

    def stats(self) -> dict[str, Any]:
        return {"connections": {"in_use": self.in_use}, "waiting": {"critical": 0},
                "max_size": self.max_size}


def _run(applier: PlanApplier, clock: VirtualClock, until: float) -> None:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    applier._sleep = sleep
    asyncio.run(applier.run(until=until))


def test_applier_sets_targets_at_the_plan_steps_and_publishes_gauges() -> None:
    clock = VirtualClock(500.0)
    pool = FakePool(clock)
    pool.in_use = 3
    warm = WarmPlan({"api": [WarmStep(T0, 4), WarmStep(T0 + 60, 12), WarmStep(T0 + 120, 2)]},
                    end=T0 + 180, quantile=0.9)
    registry = CollectorRegistry()
    metrics = ForecastMetrics(registry, horizons=(60, 120))
    applier = PlanApplier(pool, warm, tick=15.0, offset=500.0 - T0, metrics=metrics,
                          forecast=_forecast([4.0, 12.0, 2.0]))
    applier.step()
    assert registry.get_sample_value("connwise_forecast_demand",
                                     {"segment": "api", "horizon": "1m"}) == 22.0  # 12 + 10
    _run(applier, clock, until=700.0)
    # scale out at the steps; after the peak only down to the observed 3 in use
    assert pool.calls == [(500.0, 4), (560.0, 12), (620.0, 3)]
    assert registry.get_sample_value("connwise_warm_target", {"group": "api"}) == 3.0
    # The last decision a minute ahead could see was at T0 + 60: the q0.9 of the period at
    # T0 + 120 (mean 2 + half-width 10); past the forecast's end the gauge keeps its value.
    assert registry.get_sample_value("connwise_forecast_demand",
                                     {"segment": "api", "horizon": "1m"}) == 12.0
    assert registry.get_sample_value("connwise_forecast_demand",
                                     {"segment": "api", "horizon": "2m"}) == 12.0
    assert applier.history[0] == (500.0, 4)
    assert all(b - a <= 15.0 + 1e-9 for (a, _), (b, _) in zip(applier.history,
                                                              applier.history[1:],
                                                              strict=False))


def test_forecast_only_mode_computes_but_never_sets() -> None:
    clock = VirtualClock(0.0)
    pool = FakePool(clock)
    warm = WarmPlan({"api": [WarmStep(0.0, 4), WarmStep(60.0, 12)]}, end=120.0,
                    meta={"mode": "forecast_only"})
    registry = CollectorRegistry()
    applier = PlanApplier(pool, warm, offset=0.0, metrics=ForecastMetrics(registry))
    assert applier.forecast_only
    _run(applier, clock, until=90.0)
    assert pool.calls == []
    assert [t for _, t in applier.history][-1] == 12
    assert registry.get_sample_value("connwise_warm_target", {"group": "api"}) == 12.0


def test_targets_above_the_pool_size_are_clamped() -> None:
    clock = VirtualClock(0.0)
    pool = FakePool(clock, max_size=8)
    applier = PlanApplier(pool, WarmPlan({"api": [WarmStep(0.0, 50)]}, end=60.0), offset=0.0)
    applier.step()
    assert pool.calls == [(0.0, 8)]


def test_a_clamped_target_is_set_in_full_once_the_pool_may_hold_it() -> None:
    clock = VirtualClock(0.0)
    pool = FakePool(clock, max_size=8)
    applier = PlanApplier(pool, WarmPlan({"api": [WarmStep(0.0, 50)]}, end=600.0), offset=0.0)
    applier.step()
    pool.max_size = 80  # the pool was resized
    clock.advance(15.0)
    applier.step()
    assert pool.calls == [(0.0, 8), (15.0, 50)]


class RefusingPool(FakePool):
    """Refuses the first `refusals` set_target calls, as a pool does while it is closing or
    being resized."""

    def __init__(self, clock: VirtualClock, refusals: int) -> None:
        super().__init__(clock)
        self.refusals = refusals

    def set_target(self, n: int, at: float | None = None) -> None:
        if self.refusals:
            self.refusals -= 1
            raise ConfigError("target", n, "refused", "try later")
        super().set_target(n, at)


def test_a_refused_target_is_set_again_at_the_next_decision() -> None:
    clock = VirtualClock(0.0)
    pool = RefusingPool(clock, refusals=1)
    applier = PlanApplier(pool, WarmPlan({"api": [WarmStep(0.0, 5)]}, end=600.0), offset=0.0)
    applier.step()
    clock.advance(15.0)
    applier.step()
    assert pool.calls == [(15.0, 5)]


def test_metrics_use_the_registry_given_and_label_horizons() -> None:
    assert [horizon_label(s) for s in (90, 600, 3600, 7200)] == ["90s", "10m", "1h", "2h"]
    one, two = CollectorRegistry(), CollectorRegistry()
    ForecastMetrics(one).publish_target("a", 5)
    ForecastMetrics(two).publish_target("a", 7)  # no clash: separate registries
    assert one.get_sample_value("connwise_warm_target", {"group": "a"}) == 5.0
    assert two.get_sample_value("connwise_warm_target", {"group": "a"}) == 7.0
    with pytest.raises(ConfigError, match=r"metrics.horizons"):
        ForecastMetrics(CollectorRegistry(), horizons=(0,))
