"""Demand forecasting and the planner that pre-warms connections ahead of peaks.

History comes from a `DemandSource` (`CsvSource`, or the telemetry store's `StoreSource`); models
(`connwise.forecast.models`, `connwise.forecast.gbm`) are weighed into an ensemble by a
rolling-origin backtest (`Forecaster`), watched by a drift monitor and challenged in shadow
mode; the planner turns a forecast quantile into a core `WarmPlan` and the applier drives
`Pool.set_target` with it. See docs/forecast.md.

The names below are imported on first use (PEP 562): pandas, statsforecast and LightGBM cost
seconds to import, and the main CLI imports this package just to list its commands.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connwise.forecast.base import Forecast, level_for
    from connwise.forecast.events import Event, EventCalendar
    from connwise.forecast.forecaster import Forecaster, ForecasterConfig
    from connwise.forecast.series import CsvSource, DemandSeries, DemandSource, from_values

_LAZY = {
    "Forecast": "base", "level_for": "base", "Event": "events", "EventCalendar": "events",
    "Forecaster": "forecaster", "ForecasterConfig": "forecaster", "CsvSource": "series",
    "DemandSeries": "series", "DemandSource": "series", "from_values": "series",
}

__all__ = [
    "CsvSource",
    "DemandSeries",
    "DemandSource",
    "Event",
    "EventCalendar",
    "Forecast",
    "Forecaster",
    "ForecasterConfig",
    "from_values",
    "level_for",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'connwise.forecast' has no attribute {name!r}")
    return getattr(importlib.import_module(f"connwise.forecast.{module}"), name)
