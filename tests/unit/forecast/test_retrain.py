"""Drift triggers a retraining: a new registry version, a challenger, counted in Prometheus."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prometheus_client import CollectorRegistry
from tests.unit.forecast.synth import seasonal

from connwise.forecast.drift import DriftMonitor
from connwise.forecast.forecaster import Forecaster, ForecasterConfig
from connwise.forecast.prom import ForecastMetrics
from connwise.forecast.registry import Registry
from connwise.forecast.retrain import Retrainer
from connwise.forecast.series import CsvSource


def test_three_misses_retrain_into_a_challenger(tmp_path: Path) -> None:
    series = seasonal(days=10)
    history = tmp_path / "history.csv"
    pd.DataFrame({"timestamp": series.times(), "segment": "api",
                  "value": series.values}).to_csv(history, index=False)
    registry = Registry(tmp_path / "registry")
    config = ForecasterConfig(models=["snaive_daily"], windows=1)
    metrics = ForecastMetrics(CollectorRegistry())
    retrainer = Retrainer(CsvSource(history), registry, "api", config, metrics=metrics)
    registry.save("api", Forecaster(config).fit([series]))  # the champion before the drift
    monitor = DriftMonitor(segment="api", on_trigger=retrainer)
    for actual in (50.0, 200.0, 210.0):
        monitor.observe(actual, 100.0)
    assert monitor.triggers == 1
    assert retrainer.versions == [2]
    assert registry.versions("api") == [1, 2]
    assert registry.champion("api") == 1  # a challenger until shadow evaluation promotes it
    assert metrics.registry.get_sample_value("connwise_forecast_drift_triggers_total",
                                             {"segment": "api"}) == 1.0
