"""A LightGBM model of demand with lags, rolling means, calendar and event features.

Theory of operation
-------------------
One gradient-boosted tree model is fitted across every series of the panel (a *global* model,
as the strongest M4 and M5 entries used): each series is divided by its own scale (its mean over
the last week of training data), so that series of different sizes teach one shape. A row is
one period; its features are what was known before it:

- lags: the last ``min(day, 24)`` periods, and the same time 1..7 days back;
- rolling means of the last 3 periods, the last day and the last week; the change over a day;
- calendar: the period's slot in the day and the day of the week;
- events: per event *type*, whether one is on, hours since it started, and its expected size
  (`EventCalendar.features`). Because types are separate, a launch (a spike that is over in
  hours) and a sale (a lift that holds for days) are learned apart.

Forecasting is recursive: the model predicts the next period for every series at once, the
prediction becomes the newest lag, and so on to the horizon. Event features of future periods
come from the calendar, which is why planned events shape the forecast before they start.

The model has no intervals of its own; `Forecaster` calibrates conformal ones for it.
The fitted booster is saved in LightGBM's own text format (see `connwise.forecast.registry`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightgbm as lgb
import numpy as np

from connwise.errors import ConfigError
from connwise.forecast.base import Forecast
from connwise.forecast.events import EventCalendar
from connwise.forecast.series import DemandSeries

#: LightGBM's own defaults, but slower learning with more trees: steadier on short panels.
#: `min_data_in_leaf` (LightGBM: 20) shrinks on small data sets (see `fit`), or a calendar's
#: few event hours could never get a leaf of their own.
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "l2", "learning_rate": 0.05, "num_leaves": 31,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "verbosity": -1,
}


def default_lags(daily: int) -> list[int]:
    lags = set(range(1, min(daily, 24) + 1))
    lags.update(k * daily for k in range(1, 8))
    return sorted(lags)


class LightGBMModel:
    """See the module docstring. `max_history` bounds the training rows per series.

    `n_jobs` is LightGBM's thread count; the default of 1 is deliberate: on a machine shared
    with other work (a pool, a gateway), OpenMP threads spin against it and training gets
    slower, not faster (3.5 times slower with two threads on a busy 2-core machine).
    """

    name = "lightgbm"
    native_intervals = False

    def __init__(self, *, lags: Sequence[int] | None = None, rounds: int = 300,
                 max_history: int | None = None, seed: int = 7, n_jobs: int = 1,
                 difference: bool = False, params: dict[str, Any] | None = None) -> None:
        if rounds < 1:
            raise ConfigError("lightgbm.rounds", rounds, "boosting needs at least one round",
                              "use e.g. 300")
        if lags is not None and (not lags or min(lags) < 1):
            raise ConfigError("lightgbm.lags", list(lags), "lags are periods back, >= 1",
                              "use e.g. [1, 2, 24, 168]")
        self.lags = sorted(set(lags)) if lags is not None else None
        self.rounds = rounds
        self.max_history = max_history
        self.seed = seed
        self.n_jobs = n_jobs
        self.difference = difference
        self.extra = dict(params or {})
        self.booster: lgb.Booster | None = None
        self.event_types: list[str] = []
        self._panel: list[DemandSeries] = []
        self._events = EventCalendar()
        self._used_lags: list[int] = []

    def params(self) -> dict[str, Any]:
        return {"lags": self.lags, "rounds": self.rounds, "max_history": self.max_history,
                "seed": self.seed, "n_jobs": self.n_jobs, "difference": self.difference,
                "params": self.extra}

    # -- features -------------------------------------------------------------------------

    def _lags_for(self, series: DemandSeries) -> list[int]:
        return self.lags if self.lags is not None else default_lags(series.daily)

    def feature_names(self) -> list[str]:
        names = [f"lag{lag}" for lag in self._used_lags]
        names += ["mean3", "mean_day", "mean_week", "day_change", "slot", "weekday"]
        for kind in self.event_types:
            names += [f"ev_{kind}", f"ev_{kind}_age", f"ev_{kind}_size"]
        return names

    def _features(self, z: np.ndarray, series: DemandSeries, first: int,
                  last: int) -> np.ndarray:
        """Rows for periods first..last-1 of `z` (the scaled series, extended by predictions)."""
        rows = np.arange(first, last)
        daily, weekly = series.daily, series.weekly
        cumsum = np.r_[0.0, np.cumsum(z)]

        def mean_back(width: int) -> np.ndarray:
            lo = np.maximum(rows - width, 0)
            mean: np.ndarray = (cumsum[rows] - cumsum[lo]) / np.maximum(rows - lo, 1)
            return mean

        columns = [z[rows - lag] if lag <= first else np.where(rows - lag >= 0,
                                                                z[np.maximum(rows - lag, 0)],
                                                                np.nan)
                   for lag in self._used_lags]
        day_back = np.where(rows - 1 - daily >= 0, z[np.maximum(rows - 1 - daily, 0)], np.nan)
        columns += [mean_back(3), mean_back(daily), mean_back(weekly), z[rows - 1] - day_back]
        times = series.start + rows * float(series.step)
        columns.append(np.floor((times % 86400) / series.step))
        columns.append(np.floor(times / 86400 + 4) % 7)  # 1970-01-01 was a Thursday
        if self.event_types:
            events = self._events.features(times, series.step, self.event_types)
            for kind in self.event_types:
                columns += [events[f"ev_{kind}"], events[f"ev_{kind}_age"],
                            events[f"ev_{kind}_size"]]
        return np.column_stack(columns)

    @staticmethod
    def _scale(values: np.ndarray, weekly: int) -> tuple[float, float]:
        """(location, scale) of the last week: the series is standardised by them, so that a
        flat series with small daily swings and a spiky one teach the model the same units."""
        recent = values[-weekly:]
        loc = float(np.mean(recent)) if len(recent) else 0.0
        scale = float(np.std(recent)) if len(recent) > 1 else 0.0
        if not scale > 0:
            scale = abs(loc) if loc else 1.0
        return loc, scale

    # -- fitting and forecasting ------------------------------------------------------------

    def fit(self, panel: Sequence[DemandSeries], events: EventCalendar | None = None) -> None:
        if not panel:
            raise ConfigError("panel", [], "there is no series to fit", "give one at least")
        self._panel = list(panel)
        self._events = events or EventCalendar()
        self.event_types = self._events.types
        lags = self._lags_for(panel[0])
        shortest = min(len(s) for s in panel)
        self._used_lags = [lag for lag in lags if lag < shortest // 2] or [1]
        blocks, targets = [], []
        for series in panel:
            loc, scale = self._scale(series.values, series.weekly)
            z = (series.values - loc) / scale
            first = max(self._used_lags)
            if self.max_history is not None:
                first = max(first, len(z) - self.max_history)
            if self.difference:
                first = max(first, series.daily)
            blocks.append(self._features(z, series, first, len(z)))
            targets.append(z[first:] - z[first - series.daily:len(z) - series.daily]
                           if self.difference else z[first:])
        data = lgb.Dataset(np.vstack(blocks), np.concatenate(targets),
                           feature_name=self.feature_names(), free_raw_data=True)
        rows = sum(len(t) for t in targets)
        params = {**DEFAULT_PARAMS, "min_data_in_leaf": min(20, max(3, rows // 200)),
                  "seed": self.seed, "num_threads": self.n_jobs, **self.extra}
        self.booster = lgb.train(params, data, num_boost_round=self.rounds)

    def predict(self, h: int, levels: Sequence[int] = ()) -> dict[str, Forecast]:
        if self.booster is None:
            raise ConfigError("model", self.name, "the model is not fitted", "call fit() first")
        scales = [self._scale(s.values, s.weekly) for s in self._panel]
        paths = [np.r_[(s.values - loc) / c, np.zeros(h)]
                 for s, (loc, c) in zip(self._panel, scales, strict=True)]
        for k in range(h):
            rows = np.vstack([self._features(z, s, len(s) + k, len(s) + k + 1)
                              for z, s in zip(paths, self._panel, strict=True)])
            # One thread: a few hundred rows per call, where OpenMP start-up costs more than it
            # saves (and a busy machine makes spinning threads far slower).
            predicted = self.booster.predict(rows, num_threads=1)
            for z, s, value, (loc, c) in zip(paths, self._panel, predicted, scales,
                                             strict=True):
                level = float(value) + (z[len(s) + k - s.daily] if self.difference else 0.0)
                z[len(s) + k] = max(-loc / c, level)  # demand is never negative
        return {s.segment: Forecast(s.segment, s.end, s.step,
                                    np.maximum(z[len(s):] * c + loc, 0.0), {}, self.name)
                for z, s, (loc, c) in zip(paths, self._panel, scales, strict=True)}

    # -- persistence ------------------------------------------------------------------------

    def booster_text(self) -> str:
        """The booster in LightGBM's text format: data, not code, so loading it is safe."""
        if self.booster is None:
            raise ConfigError("model", self.name, "the model is not fitted", "call fit() first")
        return str(self.booster.model_to_string())

    def restore(self, text: str, panel: Sequence[DemandSeries], events: EventCalendar | None,
                event_types: Sequence[str], used_lags: Sequence[int]) -> None:
        """Load a saved booster and the data window it forecasts from (no refit)."""
        self.booster = lgb.Booster(model_str=text)
        self._panel = list(panel)
        self._events = events or EventCalendar()
        self.event_types = list(event_types)
        self._used_lags = list(used_lags)

    @property
    def used_lags(self) -> list[int]:
        return list(self._used_lags)
