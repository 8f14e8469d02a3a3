"""Every model fits and forecasts a generated seasonal series sensibly; the ensemble and its
conformal intervals behave."""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import pytest
from tests.unit.forecast.synth import daily_shape, seasonal

from connwise.errors import ConfigError
from connwise.forecast import metrics
from connwise.forecast.forecaster import Forecaster, ForecasterConfig
from connwise.forecast.models import (
    Naive2,
    StatsModel,
    make_model,
    parse_models,
    seasonal_indices,
    seasonality_test,
)

SERIES = seasonal(days=15, noise=2.0, seed=5)
TRAIN, ACTUAL = SERIES.head(len(SERIES) - 24), SERIES.values[-24:]
#: The noise-free truth of the held-out day: a model can do no better than this on average.
TRUTH = daily_shape(np.arange(len(SERIES) - 24, len(SERIES), dtype=float))


#: A flat forecast at the mean scores about 45 here; noise alone costs a naive model about 10
#: (it repeats one noisy day), a model that averages the noise out about 5.
@pytest.mark.parametrize(("name", "bound"), [
    ("snaive_daily", 12.0), ("snaive_weekly", 12.0), ("mstl_ets", 8.0), ("mstl_arima", 8.0),
    ("auto_arima", 8.0), ("lightgbm", 8.0), ("naive2", 15.0),
])
def test_each_model_forecasts_a_seasonal_series(name: str, bound: float) -> None:
    model = make_model(name)
    model.fit([TRAIN])
    forecast = model.predict(24)["api"]
    assert len(forecast.mean) == 24
    assert forecast.start == TRAIN.end and forecast.step == 3600
    assert metrics.smape(ACTUAL, forecast.mean) < bound, forecast.mean
    assert metrics.smape(ACTUAL, np.full(24, TRAIN.values.mean())) > 3 * bound
    # the shape is learned: the afternoon peak is forecast well above the night
    assert forecast.mean[14] > 2.5 * forecast.mean[2]
    if model.native_intervals:
        banded = model.predict(24, [80])["api"]
        lo, hi = banded.bands[80]
        assert np.all(lo <= banded.mean) and np.all(banded.mean <= hi)


def test_flat_series_without_season_still_forecasts() -> None:
    from connwise.forecast.series import from_values

    flat = from_values(np.full(40, 7.0), step=3600)
    for name in ("mstl_ets", "auto_arima", "naive2"):
        model = make_model(name)
        model.fit([flat])
        assert np.allclose(model.predict(5)["default"].mean, 7.0, atol=0.5)


def test_unknown_and_misconfigured_models_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="'prophet': there is no such model; use one of"):
        make_model("prophet")
    with pytest.raises(ConfigError, match="named twice"):
        parse_models("naive2,naive2")
    with pytest.raises(ConfigError, match="snaive_weekly needs at least one week"):
        StatsModel("snaive_weekly").fit([SERIES.head(100)])
    with pytest.raises(ConfigError, match="not fitted"):
        StatsModel("mstl_ets").predict(3)
    with pytest.raises(ConfigError, match="AutoARIMA refused these parameters"):
        StatsModel("auto_arima", arima={"max_pq": 3}).fit([TRAIN])


def test_naive2_seasonality_test_and_indices() -> None:
    hours = np.arange(24 * 10, dtype=float)
    strong = daily_shape(hours)
    assert seasonality_test(strong, 24)
    # White noise: a 90% test flags about one series in ten.
    flagged = [seasonality_test(np.random.default_rng(seed).normal(50, 1, 240), 24)
               for seed in range(40)]
    assert sum(flagged) <= 8
    index = seasonal_indices(strong, 24)
    assert index.mean() == pytest.approx(1.0)
    assert index[14] > index[2]
    model = Naive2()
    model.fit([SERIES])
    assert model.predict(24)["api"].mean[14] > 2 * model.predict(24)["api"].mean[2]


def test_ensemble_weights_favour_the_better_model_and_intervals_cover() -> None:
    forecaster = Forecaster(ForecasterConfig(models=["snaive_daily", "naive2"], windows=3,
                                             levels=(80, 95)))
    steps: list[str] = []
    forecaster.fit([TRAIN], progress=lambda done, total, what: steps.append(what))
    assert steps[-1] == "fit naive2" and len(steps) == 3 * 2 + 2
    assert set(forecaster.weights) == {"snaive_daily", "naive2"}
    assert sum(forecaster.weights.values()) == pytest.approx(1.0)
    better = min(forecaster.scores, key=lambda m: forecaster.scores[m].mase
                 if m in forecaster.weights else np.inf)
    assert forecaster.weights[better] > 0.5
    forecast = forecaster.predict(24)["api"]
    assert forecast.model == "ensemble"
    lo80, hi80 = forecast.bands[80]
    lo95, hi95 = forecast.bands[95]
    assert np.all(lo95 <= lo80) and np.all(hi80 <= hi95)
    assert metrics.coverage(TRUTH, lo95, hi95) >= 0.9
    assert np.all(forecast.quantile(0.9) == hi80)
    with pytest.raises(ConfigError, match="no 60% interval"):
        forecast.quantile(0.8)


def test_auto_combination_picks_the_method_that_erred_less() -> None:
    forecaster = Forecaster(ForecasterConfig(models=["snaive_daily", "snaive_weekly", "naive2"],
                                             windows=2, combination="auto"))
    forecaster.fit([TRAIN])
    errors = {m: float(np.mean(forecaster._ensemble_errors(m))) for m in ("mean", "median")}
    assert forecaster.combination == min(errors, key=lambda m: errors[m])
    assert forecaster.summary()["combination"] == forecaster.combination


def test_auto_members_keep_the_subset_that_erred_least() -> None:
    """Pooling picks, among every subset of two or more models and both combinations, the one
    with the lowest backtest error (here it leaves a model out); its forecast is what fitting
    only those members gives."""
    names = ["snaive_daily", "snaive_weekly", "mstl_ets", "naive2"]
    pooled = Forecaster(ForecasterConfig(models=names, windows=2, members="auto",
                                         combination="auto")).fit([TRAIN])
    everything = Forecaster(ForecasterConfig(models=names, windows=2,
                                             combination="auto")).fit([TRAIN])
    assert all(w > 0 for w in everything.weights.values())
    members = [m for m in names if pooled.weights[m] > 0]
    assert 2 <= len(members) < len(names)
    assert sum(pooled.weights.values()) == pytest.approx(1.0)

    def error(pool: tuple[str, ...], method: str) -> float:
        total = sum(everything.weights[m] for m in pool)
        weights = {m: everything.weights[m] / total if m in pool else 0.0 for m in names}
        return float(np.mean(pooled._ensemble_errors(method, weights)))

    candidates = {(pool, method): error(pool, method) for size in range(2, len(names) + 1)
                  for pool in itertools.combinations(names, size)
                  for method in ("mean", "median")}
    assert min(candidates, key=lambda c: candidates[c]) == (tuple(members), pooled.combination)
    assert candidates[(tuple(members), pooled.combination)] < min(
        candidates[(tuple(names), "mean")], candidates[(tuple(names), "median")])
    method: Literal["mean", "median"] = "median" if pooled.combination == "median" else "mean"
    only_members = Forecaster(ForecasterConfig(models=members, windows=2,
                                               combination=method)).fit([TRAIN])
    assert np.allclose(pooled.predict(24)["api"].mean, only_members.predict(24)["api"].mean)
    assert pooled.summary()["config"]["members"] == "auto"
    with pytest.raises(ConfigError, match="unknown member choice"):
        ForecasterConfig(members="best").validate()  # type: ignore[arg-type]
