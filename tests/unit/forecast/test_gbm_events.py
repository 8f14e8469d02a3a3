"""LightGBM learns event types apart: a launch is a short spike, a sale a sustained lift."""

from __future__ import annotations

import numpy as np
from tests.unit.forecast.synth import HOUR, T0, daily_shape, with_events

from connwise.forecast.gbm import LightGBMModel


def test_launch_is_a_short_spike_and_sale_a_sustained_lift() -> None:
    series, calendar, held_out = with_events(days=42)
    h = 5 * 24
    train = series.head(len(series) - h)
    model = LightGBMModel(rounds=300)
    model.fit([train], calendar)
    forecast = model.predict(h)["shop"]
    hours = (forecast.times() - T0) / HOUR
    ratio = forecast.mean / daily_shape(hours)

    launch = held_out["launch"]
    at_launch = (forecast.times() >= launch.start) & (forecast.times() < launch.end)
    assert at_launch.sum() == 2
    assert ratio[at_launch].min() > 2.5, ratio[at_launch]
    # The same hours a day later, with no event: back to normal — the spike did not linger.
    day_after = np.roll(at_launch, 24)
    assert ratio[day_after].max() < 1.4, ratio[day_after]

    sale = held_out["sale"]
    in_sale = (forecast.times() >= sale.start) & (forecast.times() < sale.end)
    third_day = in_sale & (forecast.times() >= sale.start + 48 * HOUR)
    assert in_sale.sum() > 48
    # Sustained: lifted on average over the sale, and still lifted on its third day.
    assert ratio[in_sale].mean() > 1.35, ratio[in_sale]
    assert ratio[third_day].mean() > 1.3, ratio[third_day]
    before = (forecast.times() < sale.start) & ~at_launch
    assert abs(ratio[before].mean() - 1.0) < 0.2


def test_without_the_calendar_the_events_are_not_foreseen() -> None:
    series, _, held_out = with_events(days=42)
    h = 5 * 24
    model = LightGBMModel(rounds=100)
    model.fit([series.head(len(series) - h)])
    forecast = model.predict(h)["shop"]
    launch = held_out["launch"]
    at_launch = (forecast.times() >= launch.start) & (forecast.times() < launch.end)
    hours = (forecast.times() - T0) / HOUR
    assert (forecast.mean / daily_shape(hours))[at_launch].max() < 2.0
    assert "ev_launch" not in model.feature_names()
