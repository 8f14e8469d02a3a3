"""The planner: a forecast quantile becomes a core `WarmPlan`.

The arithmetic (Little's law, lead time, ramp limit) lives in `connwise.core.plan`, so the pool
and the simulator share it; this module chooses what goes in. Each segment of the forecast is a
backend group of the plan. The demand planned for is the forecast's `quantile` (0.9 by
default: the upper edge of the 80% interval — plan for a busy day, not an average one), and
the mean hold time comes from telemetry (or the operator) as `hold_time` seconds. A forecast
whose quantile is not finite (NaN, inf: a model broke down) is refused.

`mode="forecast_only"` (AWS predictive scaling's ForecastOnly) is carried on the plan's
metadata: the applier then computes and publishes, and never sets a target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from connwise.core.plan import DEFAULT_LEAD, DemandKind, PlanSettings, WarmPlan, build_plan
from connwise.errors import ConfigError
from connwise.forecast.base import Forecast, level_for

Mode = Literal["apply", "forecast_only"]


@dataclass(frozen=True)
class PlannerConfig:
    """Planner settings; times in seconds, `max_ramp` in connections per second."""

    quantile: float = 0.9
    hold_time: float = 1.0
    kind: DemandKind = "arrivals"
    lead: float = DEFAULT_LEAD
    max_ramp: float | None = None
    headroom: float = 1.0
    min_target: int = 0
    max_target: int | None = None
    mode: Mode = "apply"

    def validate(self) -> PlannerConfig:
        level_for(self.quantile)
        if self.quantile < 0.5:
            raise ConfigError("planner.quantile", self.quantile, "planning below the median "
                              "under-provisions by design", "use 0.5 or more, e.g. 0.9")
        if self.mode not in ("apply", "forecast_only"):
            raise ConfigError("planner.mode", self.mode, "unknown mode",
                              "use apply or forecast_only")
        self.settings(60)  # validates the core settings early, before any forecasting
        return self

    def settings(self, step: int) -> PlanSettings:
        return PlanSettings(step=step, hold_time=self.hold_time, kind=self.kind,
                            lead=self.lead, max_ramp=self.max_ramp, headroom=self.headroom,
                            min_target=self.min_target, max_target=self.max_target).validate()


def plan(forecasts: Mapping[str, Forecast], config: PlannerConfig, *,
         current: Mapping[str, int] | None = None,
         meta: Mapping[str, Any] | None = None) -> WarmPlan:
    """A `WarmPlan` with one group per forecast segment, on the forecast's timeline (Unix
    seconds). `current` is each group's pool size now (where the ramp starts)."""
    config.validate()
    if not forecasts:
        raise ConfigError("forecasts", {}, "there is nothing to plan from",
                          "forecast at least one segment")
    steps = {f.step for f in forecasts.values()}
    if len(steps) > 1:
        raise ConfigError("forecasts", sorted(steps), "the segments have different "
                          "resolutions", "plan segments of one resolution together")
    settings = config.settings(steps.pop())
    groups = {}
    for segment, f in forecasts.items():
        demand = f.quantile(config.quantile)
        broken = np.flatnonzero(~np.isfinite(demand))
        if broken.size:
            # A model that broke down; planning 0 (or infinitely many) connections for it
            # would hide that, so the caller hears of it.
            i = int(broken[0])
            raise ConfigError(f"forecasts[{segment!r}]", float(demand[i]), f"the forecast's "
                              f"q{config.quantile:g} of period {i} (at "
                              f"{f.start + i * f.step:.0f}) is not a finite number",
                              "refit the forecaster, or plan from another model")
        groups[segment] = (f.start, demand.tolist())
    info = {"mode": config.mode, "hold_time": config.hold_time, "kind": config.kind,
            "headroom": config.headroom, **dict(meta or {})}
    return build_plan(groups, settings, current=current, quantile=config.quantile, meta=info)
