"""Small generated demand series: daily seasonality, noise, spikes and calendar events."""

from __future__ import annotations

import numpy as np

from connwise.forecast.events import Event, EventCalendar
from connwise.forecast.series import DemandSeries, from_values

HOUR = 3600
#: 2024-01-01T00:00:00Z, a Monday.
T0 = 1_704_067_200.0


def daily_shape(hours: np.ndarray) -> np.ndarray:
    """Quiet nights, a morning ramp and an afternoon peak: 20 .. about 100."""
    h = hours % 24
    shape: np.ndarray = 20 + 60 * np.exp(-((h - 14) ** 2) / 18) + 20 * np.exp(-((h - 9) ** 2) / 4)
    return shape


def seasonal(days: int = 21, *, noise: float = 2.0, seed: int = 1, step: int = HOUR,
             segment: str = "api") -> DemandSeries:
    rng = np.random.default_rng(seed)
    per_hour = HOUR // step
    n = days * 24 * per_hour
    hours = np.arange(n) / per_hour
    values = daily_shape(hours) + rng.normal(0, noise, n)
    return from_values(np.maximum(values, 0), step=step, start=T0, segment=segment)


def with_events(days: int = 42, seed: int = 3) -> tuple[DemandSeries, EventCalendar,
                                                         dict[str, Event]]:
    """Hourly demand with launches (x4 for 2 hours) and sales (x1.6 for 3 days). The last five
    days (the part a test holds out) have one launch on their first day and one sale over
    their last three, apart from each other."""
    rng = np.random.default_rng(seed)
    n = days * 24
    hours = np.arange(n, dtype=float)
    values = daily_shape(hours) + rng.normal(0, 1.5, n)
    events = []
    # Launches at least 8 days apart: no lag of the model (up to 7 days) sees one from another.
    launch_days = [2, 10, 18, 26, days - 5]
    sale_days = [5, 13, 21, 29, days - 3]
    for d in launch_days:
        start = d * 24 + 10
        values[start:start + 2] *= 4.0
        events.append(Event("launch", T0 + start * HOUR, T0 + (start + 2) * HOUR, 4.0, "launch"))
    for d in sale_days:
        start = d * 24
        values[start:start + 72] *= 1.6
        events.append(Event("sale", T0 + start * HOUR, T0 + (start + 72) * HOUR, 1.6, "sale"))
    series = from_values(np.maximum(values, 0), step=HOUR, start=T0, segment="shop")
    named = {"launch": events[len(launch_days) - 1], "sale": events[-1]}
    return series, EventCalendar(events), named
