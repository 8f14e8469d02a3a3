"""Metrics and the rolling-origin backtest against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connwise.errors import ConfigError
from connwise.forecast import metrics
from connwise.forecast.backtest import origins, rolling_origin
from connwise.forecast.base import Forecast
from connwise.forecast.ensemble import combine, inverse_error_weights
from connwise.forecast.intervals import conformal_widths
from connwise.forecast.series import from_values


def test_smape_is_m4s_definition_times_200() -> None:
    # 200/2 * (|10-12|/(10+12) + |20-15|/(20+15)) = 100 * (2/22 + 5/35)
    assert metrics.smape(np.array([10.0, 20.0]), np.array([12.0, 15.0])) == pytest.approx(
        100 * (2 / 22 + 5 / 35))
    assert metrics.smape(np.array([0.0, 4.0]), np.array([0.0, 4.0])) == 0.0


def test_mase_uses_the_in_sample_seasonal_naive_error() -> None:
    insample = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # |y_t - y_{t-2}| = 2 everywhere
    assert metrics.mase_scale(insample, 2) == 2.0
    # MAE 3.5 / scale 2
    assert metrics.mase(np.array([10.0, 20.0]), np.array([12.0, 15.0]), insample, 2) == 1.75
    assert math.isnan(metrics.mase_scale(np.array([5.0, 5.0, 5.0]), 1))


def test_owa_coverage_and_accuracy() -> None:
    assert metrics.owa(9.0, 1.2, 18.0, 2.4) == 0.5
    y = np.array([10.0, 20.0, 30.0, 0.0])
    assert metrics.coverage(y, y - 1, y + 1) == 1.0
    assert metrics.coverage(y, y + 1, y + 2) == 0.0
    # within 20%: 12 vs 10 (exactly 20%) yes, 15 vs 20 no, 30 vs 30 yes, 0.1 vs 0 no
    assert metrics.accuracy(y, np.array([12.0, 15.0, 30.0, 0.1])) == 0.5


def test_rolling_origin_backtest_by_hand() -> None:
    # Too short for a daily season, so Naive2 is the last value.
    series = from_values([10, 12, 14, 16, 18, 20, 22, 24], step=3600)
    assert origins(8, 2, 2, 2) == [4, 6]
    result = rolling_origin([series], ["naive2"], h=2, windows=2, min_train=3)
    w0, w1 = result.results
    assert (w0.origin, w1.origin) == (4, 6)
    assert w0.forecasts["naive2"].mean.tolist() == [16.0, 16.0]
    assert w1.forecasts["naive2"].mean.tolist() == [20.0, 20.0]
    scores = result.scores()["naive2"]
    expected_smape = (100 * (2 / 34 + 4 / 36) + 100 * (2 / 42 + 4 / 44)) / 2
    assert scores.smape == pytest.approx(expected_smape)
    # Each window: MAE 3, in-sample lag-1 scale 2 -> 1.5
    assert scores.mase == pytest.approx(1.5)
    assert scores.owa == pytest.approx(1.0)
    assert scores.accuracy == 1.0  # 2 <= 3.6, 4 <= 4.0, 2 <= 4.4, 4 <= 4.8
    assert scores.n == 2


def test_backtest_refuses_too_short_history() -> None:
    series = from_values(np.arange(30.0), step=3600)
    with pytest.raises(ConfigError, match="too short for 3 backtest windows of 24"):
        rolling_origin([series], ["naive2"], h=24, windows=3)


def test_inverse_error_weights() -> None:
    weights = inverse_error_weights({"a": 1.0, "b": 3.0, "c": math.nan})
    assert weights == pytest.approx({"a": 0.75, "b": 0.25, "c": 0.0})
    squared = inverse_error_weights({"a": 1.0, "b": 3.0}, power=2)
    assert squared == pytest.approx({"a": 0.9, "b": 0.1})
    assert inverse_error_weights({"a": math.nan, "b": math.nan}) == {"a": 0.5, "b": 0.5}


def test_combine_weighted_mean_and_median() -> None:
    def f(values: list[float]) -> Forecast:
        return Forecast("a", 0.0, 60, np.array(values))

    members = {"a": f([1, 10]), "b": f([2, 20]), "c": f([100, 30])}
    weights = {"a": 0.3, "b": 0.3, "c": 0.4}
    assert combine(members, weights).mean.tolist() == pytest.approx([40.9, 21.0])
    # sorted by value, the cumulative weight reaches 0.5 at the second member
    assert combine(members, weights, "median").mean.tolist() == [2.0, 20.0]
    assert combine(members, {"a": 1.0}).mean.tolist() == [1.0, 10.0]
    with pytest.raises(ConfigError, match="unknown combination"):
        combine(members, weights, "max")


def test_conformal_width_is_the_corrected_empirical_quantile() -> None:
    errors = np.arange(1.0, 10.0).reshape(9, 1)  # nine errors 1..9 at one step
    # rank ceil((9 + 1) * 0.8) = 8 -> the 8th smallest error
    assert conformal_widths(errors, [80])[80].tolist() == [8.0]
    assert conformal_widths(errors, [95])[95].tolist() == [9.0]
    with pytest.raises(ConfigError, match="levels"):
        conformal_widths(errors, [100])
