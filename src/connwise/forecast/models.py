"""The models: statsforecast's classics, M4's Naive2 benchmark, and a LightGBM model with
calendar and event features.

statsforecast does the statistics (we do not re-implement ETS, ARIMA or MSTL); this module only
chooses season lengths from the series' resolution and keeps the fits fast:

- ``snaive_daily`` / ``snaive_weekly``: `SeasonalNaive` with the day's or the week's periods.
- ``mstl_ets``: `MSTL` over the daily and weekly seasons that the history shows twice, with an
  `AutoETS` (no seasonal component) forecasting the trend.
- ``auto_arima``: `AutoARIMA` with the daily season when it is at most `ARIMA_MAX_SEASON`
  periods (hourly .. 30-minute data); for finer grids a seasonal ARIMA is intractable, so the
  seasons are taken out by `MSTL` and a non-seasonal `AutoARIMA` forecasts the rest. The fit
  uses the last `max_window` periods (3 weeks by default): the order search costs time linear
  in the window, and old data adds little to a 1..2 day forecast. `arima` passes order limits
  (``max_p``, ``max_q``, ``max_P``, ``max_Q``...) to `AutoARIMA`: on M4 Hourly, limits of 3 and 1
  cut the search time by 2.5 without losing accuracy.
- ``mstl_arima``: `MSTL` as in ``mstl_ets``, with a non-seasonal `AutoARIMA` forecasting the
  deseasonalised series: four times cheaper than a seasonal ARIMA, and as accurate or better
  on hourly demand.
- ``naive2``: M4's Naive2 (classical multiplicative decomposition when a 90% autocorrelation
  test finds the season, then the last value). statsforecast has no Naive2 and OWA needs it.
- ``lightgbm``: see `connwise.forecast.gbm`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from statsforecast import StatsForecast
from statsforecast.models import MSTL, AutoARIMA, AutoETS, SeasonalNaive

from connwise.errors import ConfigError
from connwise.forecast.base import Forecast, Model
from connwise.forecast.events import EventCalendar
from connwise.forecast.gbm import LightGBMModel
from connwise.forecast.series import DemandSeries, season_lengths

#: Largest season a seasonal ARIMA is fitted with (30-minute data has 48 periods a day).
ARIMA_MAX_SEASON = 48


def _first_step(panel: Sequence[DemandSeries]) -> int:
    if not panel:
        raise ConfigError("panel", [], "there is no series to fit", "give at least one series")
    steps = {s.step for s in panel}
    if len(steps) > 1:
        raise ConfigError("panel", sorted(steps), "the series have different resolutions",
                          "fit series of one resolution together")
    return steps.pop()


class StatsModel:
    """One of statsforecast's models, chosen and sized by name (see the module docstring)."""

    native_intervals = True
    KINDS = ("snaive_daily", "snaive_weekly", "mstl_ets", "mstl_arima", "auto_arima")

    def __init__(self, name: str, *, max_window: int | None = None, n_jobs: int = 1,
                 approximation: bool = True, arima: dict[str, Any] | None = None) -> None:
        if name not in self.KINDS:
            raise ConfigError("model", name, "unknown statsforecast model",
                              f"use one of {', '.join(self.KINDS)}")
        self.name = name
        self.max_window = max_window
        self.n_jobs = n_jobs
        self.approximation = approximation
        self.arima = dict(arima or {})
        self._fitted: list[tuple[StatsForecast, list[DemandSeries]]] = []

    def params(self) -> dict[str, Any]:
        return {"max_window": self.max_window, "n_jobs": self.n_jobs,
                "approximation": self.approximation, "arima": self.arima}

    def _window(self, series: DemandSeries) -> int | None:
        if self.max_window is not None:
            return self.max_window
        if self.name == "auto_arima":
            return 21 * series.daily
        return None

    def _build(self, series: DemandSeries) -> Any:
        daily = series.daily
        seasons = season_lengths(series)
        if self.name == "snaive_daily":
            return SeasonalNaive(season_length=daily, alias=self.name)
        if self.name == "snaive_weekly":
            if len(series) < series.weekly:
                raise ConfigError(f"series[{series.segment!r}]", f"{len(series)} periods",
                                  "snaive_weekly needs at least one week of history",
                                  "give more history or drop snaive_weekly from the models")
            return SeasonalNaive(season_length=series.weekly, alias=self.name)
        if self.name == "mstl_ets":
            if not seasons:
                return AutoETS(model="ZZN", alias=self.name)
            return MSTL(season_length=seasons, trend_forecaster=AutoETS(model="ZZN"),
                        alias=self.name)
        try:
            if self.name == "auto_arima" and daily <= ARIMA_MAX_SEASON and daily in seasons:
                return AutoARIMA(season_length=daily, approximation=self.approximation,
                                 alias=self.name, **self.arima)
            if seasons:  # mstl_arima, and auto_arima on grids finer than 30 minutes
                return MSTL(season_length=seasons, trend_forecaster=AutoARIMA(
                    approximation=self.approximation, **self.arima), alias=self.name)
            return AutoARIMA(approximation=self.approximation, alias=self.name, **self.arima)
        except TypeError as exc:
            raise ConfigError(f"{self.name}.arima", self.arima, f"AutoARIMA refused these "
                              f"parameters ({exc})", "use AutoARIMA's keyword arguments, e.g. "
                              "max_p") from None

    def fit(self, panel: Sequence[DemandSeries], events: EventCalendar | None = None) -> None:
        """Fit each series (the same model configuration is fitted in one statsforecast call);
        the calendar is not used by these models."""
        _first_step(panel)
        groups: dict[str, tuple[Any, list[DemandSeries]]] = {}
        for series in panel:
            window = self._window(series)
            used = series.tail(window) if window else series
            model = self._build(used)
            key = repr(model) + repr(getattr(model, "season_length", ""))
            groups.setdefault(key, (model, []))[1].append(used)
        self._fitted = []
        for model, members in groups.values():
            frame = pd.concat([pd.DataFrame({"unique_id": s.segment, "ds": np.arange(len(s)),
                                             "y": s.values}) for s in members])
            engine = StatsForecast(models=[model], freq=1, n_jobs=self.n_jobs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                engine.fit(frame)
            self._fitted.append((engine, members))

    def predict(self, h: int, levels: Sequence[int] = ()) -> dict[str, Forecast]:
        if not self._fitted:
            raise ConfigError("model", self.name, "the model is not fitted", "call fit() first")
        out: dict[str, Forecast] = {}
        for engine, members in self._fitted:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frame = engine.predict(h=h, level=list(levels) or None)
            for series in members:
                rows = frame[frame["unique_id"] == series.segment]
                bands = {int(lv): (rows[f"{self.name}-lo-{lv}"].to_numpy(float),
                                   rows[f"{self.name}-hi-{lv}"].to_numpy(float))
                         for lv in levels}
                mean = rows[self.name].to_numpy(float)
                out[series.segment] = Forecast(series.segment, series.end, series.step,
                                               _finite(mean, series), bands, self.name)
        return out


def _finite(mean: np.ndarray, series: DemandSeries) -> np.ndarray:
    """A model that blew up (NaN, inf) falls back to the last day, so one bad fit cannot
    poison an ensemble or a plan."""
    if np.all(np.isfinite(mean)):
        return mean
    season = min(series.daily, len(series))
    fallback = np.resize(series.values[-season:], len(mean))
    return np.where(np.isfinite(mean), mean, fallback)


def seasonality_test(values: np.ndarray, season: int) -> bool:
    """M4's 90% test: is the autocorrelation at lag `season` significant?"""
    y = np.asarray(values, dtype=float)
    n = len(y)
    if season <= 1 or n < 3 * season:
        return False
    x = y - y.mean()
    denominator = float(np.dot(x, x))
    if denominator == 0:
        return False
    acf = np.array([np.dot(x[:-k], x[k:]) / denominator for k in range(1, season + 1)])
    limit = 1.645 / np.sqrt(n) * np.sqrt(1 + 2 * np.sum(acf[:-1] ** 2))
    return bool(abs(acf[-1]) > limit)


def seasonal_indices(values: np.ndarray, season: int) -> np.ndarray:
    """Classical multiplicative decomposition's seasonal indices (R's `decompose`), one per
    position of the cycle, position 0 being the series' first period; they average 1."""
    y = np.asarray(values, dtype=float)
    if season % 2 == 0:
        weights = np.r_[0.5, np.ones(season - 1), 0.5] / season
    else:
        weights = np.ones(season) / season
    trend = np.convolve(y, weights, mode="valid")
    offset = (len(weights) - 1) // 2
    ratio = y[offset:offset + len(trend)] / trend
    positions = (np.arange(len(trend)) + offset) % season
    figure = np.array([ratio[positions == p].mean() for p in range(season)])
    indices: np.ndarray = figure / figure.mean()
    return indices


class Naive2:
    """M4's Naive2: the last value of the seasonally adjusted series, re-seasonalised."""

    name = "naive2"
    native_intervals = False

    def __init__(self) -> None:
        self._panel: list[DemandSeries] = []

    def params(self) -> dict[str, Any]:
        return {}

    def fit(self, panel: Sequence[DemandSeries], events: EventCalendar | None = None) -> None:
        _first_step(panel)
        self._panel = list(panel)

    def predict(self, h: int, levels: Sequence[int] = ()) -> dict[str, Forecast]:
        out = {}
        for series in self._panel:
            y = series.values
            season = series.daily
            if seasonality_test(y, season) and np.all(y > 0):
                index = seasonal_indices(y, season)
                last = y[-1] / index[(len(y) - 1) % season]
                mean = last * index[(len(y) + np.arange(h)) % season]
            else:
                mean = np.full(h, y[-1])
            out[series.segment] = Forecast(series.segment, series.end, series.step, mean, {},
                                           self.name)
        return out


def _lightgbm(**params: Any) -> Model:
    return LightGBMModel(**params)


#: Every model by name: what `--models` and the registry accept.
MODEL_FACTORIES: dict[str, Callable[..., Model]] = {
    **{kind: (lambda kind=kind, **p: StatsModel(kind, **p))
       for kind in StatsModel.KINDS},
    "naive2": lambda **p: Naive2(),
    "lightgbm": _lightgbm,
}

#: The default set of the ensemble.
DEFAULT_MODELS = ("snaive_daily", "snaive_weekly", "mstl_ets", "auto_arima", "lightgbm")


def make_model(name: str, **params: Any) -> Model:
    """The model called `name`; raises `ConfigError` listing the known names."""
    factory = MODEL_FACTORIES.get(name)
    if factory is None:
        raise ConfigError("model", name, "there is no such model",
                          f"use one of {', '.join(MODEL_FACTORIES)}")
    return factory(**params)


def parse_models(text: str | Sequence[str]) -> list[str]:
    """A model list from ``"a,b"`` or a sequence, validated (unknown names, duplicates)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise ConfigError("models", text, "no model named", f"use some of "
                          f"{', '.join(MODEL_FACTORIES)}")
    for name in names:
        if name not in MODEL_FACTORIES:
            raise ConfigError("models", name, "there is no such model",
                              f"use some of {', '.join(MODEL_FACTORIES)}")
    if len(set(names)) != len(names):
        raise ConfigError("models", text, "a model is named twice", "name each model once")
    return names
