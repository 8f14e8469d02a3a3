"""Prometheus gauges that let KEDA or an HPA scale the backends ahead of demand.

- ``connwise_forecast_demand{segment, horizon}``: the forecast demand `horizon` ahead of now
  (``horizon`` is a label such as ``"10m"``), in the series' own unit per period;
- ``connwise_warm_target{group}``: the warm target the applier set (or, in forecast-only mode,
  would have set); `target_name` renames it where that name is taken (the gateway publishes
  the targets its pools hold as ``connwise_warm_target{group, backend}``, and the planner's as
  ``connwise_forecast_warm_target{group}``);
- ``connwise_forecast_drift_triggers_total{segment}`` and
  ``connwise_forecast_promotions_total{name}``: the feedback loop's counters.

Metrics are registered on the `CollectorRegistry` you pass, never on prometheus_client's global
one: two pools, or two tests, then never collide on a metric name, and the gateway's admin
listener exposes the registry it was given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from connwise.errors import ConfigError
from connwise.forecast.base import Forecast

#: Horizons published by default: the lead time (10 minutes) and the points around it.
DEFAULT_HORIZONS = (300, 600, 1800, 3600)


def horizon_label(seconds: float) -> str:
    """``600 -> "10m"``, ``3600 -> "1h"``, ``90 -> "90s"``."""
    seconds = int(seconds)
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


class ForecastMetrics:
    """The forecast gauges and counters, on `registry` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, *,
                 horizons: Sequence[float] = DEFAULT_HORIZONS,
                 target_name: str = "connwise_warm_target") -> None:
        if not horizons or min(horizons) <= 0:
            raise ConfigError("metrics.horizons", list(horizons), "horizons are positive "
                              "seconds ahead", "use e.g. [300, 600, 3600]")
        self.registry = registry
        self.horizons = list(horizons)
        self.demand = Gauge("connwise_forecast_demand", "Forecast demand at a horizon ahead.",
                            ["segment", "horizon"], registry=registry)
        self.warm_target = Gauge(target_name, "Warm connection target set by the forecast "
                                 "planner (forecast-only: that it would set).", ["group"],
                                 registry=registry)
        self.drift = Counter("connwise_forecast_drift_triggers", "Drift-triggered retrainings.",
                             ["segment"], registry=registry)
        self.promotions = Counter("connwise_forecast_promotions", "Challengers promoted.",
                                  ["name"], registry=registry)

    def publish_forecast(self, forecast: Forecast, now: float, quantile: float = 0.5) -> None:
        """Set the demand gauge of each horizon from `forecast` (times on the forecast's own
        timeline, like `now`); horizons past the forecast are left unset."""
        values = forecast.quantile(quantile)
        for horizon in self.horizons:
            index = math.floor((now + horizon - forecast.start) / forecast.step)
            if 0 <= index < len(values):
                self.demand.labels(forecast.segment, horizon_label(horizon)).set(
                    float(values[index]))

    def publish_target(self, group: str, target: int) -> None:
        self.warm_target.labels(group).set(target)
