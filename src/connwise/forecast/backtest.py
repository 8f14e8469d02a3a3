"""Rolling-origin backtests: how each model (and the ensemble) would have done, window by window.

Window k of n ends where the series ends minus ``(n - 1 - k) * step_size`` periods; the model is
fitted on everything before the window and forecasts its `h` periods. The last window thus
ends with the data, so the scores are about the most recent behaviour — the figure that decides
the ensemble's weights and a challenger's promotion.

The ensemble is scored the way it would have run: its weights in window k come only from the
errors of windows before k (equal weights in the first), and so do the conformal intervals of
the ensemble and of models without intervals of their own; windows with nothing to calibrate
from have no bands and are left out of the coverage figure. Naive2 always runs beside the
models, because OWA is relative to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connwise.errors import ConfigError
from connwise.forecast import metrics
from connwise.forecast.base import Forecast
from connwise.forecast.ensemble import ENSEMBLE, combine, inverse_error_weights
from connwise.forecast.events import EventCalendar
from connwise.forecast.intervals import bands_from_widths, conformal_widths, validate_levels
from connwise.forecast.models import make_model
from connwise.forecast.series import DemandSeries

REFERENCE = "naive2"

#: Called after each fitted model: (done, total, what).
Progress = Callable[[int, int, str], None]


@dataclass
class WindowResult:
    """One series in one window: the actuals, the MASE scale and every model's forecast."""

    window: int
    segment: str
    origin: int
    actual: np.ndarray
    scale: float
    forecasts: dict[str, Forecast] = field(default_factory=dict)


@dataclass(frozen=True)
class Scores:
    """A model's backtest figures; see `connwise.forecast.metrics` for the definitions."""

    smape: float
    mase: float
    owa: float
    coverage: float
    accuracy: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"smape": self.smape, "mase": self.mase, "owa": self.owa,
                "coverage": self.coverage, "accuracy": self.accuracy, "n": self.n}


@dataclass
class Backtest:
    """All windows of a backtest, and the figures derived from them."""

    h: int
    windows: int
    models: list[str]
    levels: list[int]
    results: list[WindowResult]
    weight_power: float = 1.0
    metric: str = "mase"
    combination: str = "mean"

    def errors(self, model: str, window: int | None = None) -> float:
        """Mean error (the weighting `metric`) of `model` over one window or all of them."""
        values = [_error(r, model, self.metric) for r in self.results
                  if model in r.forecasts and (window is None or r.window == window)]
        return metrics.mean_ignoring_nan(values)

    def scaled_errors(self, model: str, windows: Sequence[int] | None = None) -> np.ndarray:
        """|actual - forecast| / scale, one row per (series, window): conformal calibration."""
        rows = [np.abs(r.actual - r.forecasts[model].mean) / _safe_scale(r)
                for r in self.results if model in r.forecasts
                and (windows is None or r.window in windows)]
        return np.vstack(rows) if rows else np.empty((0, self.h))

    def scores(self, level: int | None = None) -> dict[str, Scores]:
        """Figures per model (and for the ensemble), at the interval `level` (default: 80 if
        it was requested, else the first requested level) for coverage."""
        if level is None:
            level = 80 if 80 in self.levels else (self.levels[0] if self.levels else None)
        names = [*self.models, ENSEMBLE] if len(self.models) > 1 else list(self.models)
        if REFERENCE not in names:
            names.append(REFERENCE)
        raw: dict[str, tuple[float, float, float, float, int]] = {}
        for name in names:
            rows = [r for r in self.results if name in r.forecasts]
            if not rows:
                continue
            smapes = [metrics.smape(r.actual, r.forecasts[name].mean) for r in rows]
            mases = [float(np.mean(np.abs(r.actual - r.forecasts[name].mean))) / r.scale
                     if r.scale > 0 else math.nan for r in rows]
            covered = [metrics.coverage(r.actual, *r.forecasts[name].bands[level])
                       for r in rows if level is not None and level in r.forecasts[name].bands]
            hits = [metrics.accuracy(r.actual, r.forecasts[name].mean) for r in rows]
            raw[name] = (float(np.mean(smapes)), metrics.mean_ignoring_nan(mases),
                         metrics.mean_ignoring_nan(covered), float(np.mean(hits)), len(rows))
        ref = raw.get(REFERENCE)
        out = {}
        for name, (s, m, cov, acc, n) in raw.items():
            o = metrics.owa(s, m, ref[0], ref[1]) if ref and ref[0] > 0 and ref[1] > 0 \
                else math.nan
            out[name] = Scores(s, m, o, cov, acc, n)
        return out

    def weights(self, *, last: int | None = None) -> dict[str, float]:
        """Ensemble weights from the errors of the last `last` windows (default: all)."""
        windows = sorted({r.window for r in self.results})
        used = windows[-last:] if last else windows
        errors = {m: metrics.mean_ignoring_nan([self.errors(m, w) for w in used])
                  for m in self.models}
        return inverse_error_weights(errors, self.weight_power)


def _safe_scale(r: WindowResult) -> float:
    return r.scale if r.scale > 0 and not math.isnan(r.scale) else max(
        1e-9, float(np.mean(np.abs(r.actual))) or 1.0)


def _error(r: WindowResult, model: str, metric: str) -> float:
    forecast = r.forecasts[model].mean
    if metric == "smape":
        return metrics.smape(r.actual, forecast)
    return float(np.mean(np.abs(r.actual - forecast))) / _safe_scale(r)


def origins(length: int, h: int, windows: int, step_size: int) -> list[int]:
    """The training lengths of the windows, oldest first."""
    return [length - h - (windows - 1 - k) * step_size for k in range(windows)]


def rolling_origin(panel: Sequence[DemandSeries], models: Sequence[str], *, h: int,
                   windows: int = 3, step_size: int | None = None,
                   events: EventCalendar | None = None, levels: Sequence[int] = (80,),
                   model_params: Mapping[str, Mapping[str, Any]] | None = None,
                   min_train: int | None = None, weight_power: float = 1.0,
                   metric: str = "mase", combination: str = "mean",
                   progress: Progress | None = None) -> Backtest:
    """Backtest `models` on `panel` over `windows` windows of `h` periods (see the module
    docstring). Raises `ConfigError` when the history is too short for the windows asked."""
    if h < 1:
        raise ConfigError("horizon", h, "the horizon must be at least one period", "use >= 1")
    if windows < 1:
        raise ConfigError("windows", windows, "a backtest needs a window", "use >= 1")
    if metric not in ("mase", "smape"):
        raise ConfigError("metric", metric, "unknown error metric", "use mase or smape")
    if not panel:
        raise ConfigError("panel", [], "there is no series to backtest", "give one at least")
    step = step_size or h
    levels = validate_levels(levels)
    names = list(dict.fromkeys(models))
    run = names if REFERENCE in names else [*names, REFERENCE]
    params = model_params or {}
    results: list[WindowResult] = []
    total = windows * len(run)
    done = 0
    for k in range(windows):
        train: list[DemandSeries] = []
        rows: list[WindowResult] = []
        for series in panel:
            origin = origins(len(series), h, windows, step)[k]
            needed = min_train if min_train is not None else 2 * series.daily
            if origin < needed:
                raise ConfigError("history", f"{len(series)} periods", f"segment "
                                  f"{series.segment!r} is too short for {windows} backtest "
                                  f"windows of {h} periods (window {k + 1} would train on "
                                  f"{origin} periods, fewer than {needed})",
                                  "give more history, or fewer or shorter windows")
            train.append(series.head(origin))
            season = series.daily
            rows.append(WindowResult(k, series.segment, origin,
                                     series.values[origin:origin + h],
                                     metrics.mase_scale(series.values[:origin], season)))
        for name in run:
            model = make_model(name, **dict(params.get(name, {})))
            model.fit(train, events)
            forecasts = model.predict(h, levels if model.native_intervals else ())
            for row in rows:
                row.forecasts[name] = forecasts[row.segment]
            done += 1
            if progress is not None:
                progress(done, total, f"window {k + 1}/{windows}: {name}")
        results.extend(rows)
    backtest = Backtest(h, windows, names, levels, results, weight_power, metric, combination)
    _add_online_ensemble_and_bands(backtest)
    return backtest


def _add_online_ensemble_and_bands(backtest: Backtest) -> None:
    """Ensemble forecasts and conformal bands for window k from windows before k only."""
    for k in range(backtest.windows):
        earlier = list(range(k))
        rows = [r for r in backtest.results if r.window == k]
        if len(backtest.models) > 1:
            if earlier:
                errors = {m: metrics.mean_ignoring_nan([backtest.errors(m, w) for w in earlier])
                          for m in backtest.models}
                weights = inverse_error_weights(errors, backtest.weight_power)
            else:
                weights = {m: 1.0 / len(backtest.models) for m in backtest.models}
            for row in rows:
                row.forecasts[ENSEMBLE] = combine(
                    {m: row.forecasts[m] for m in backtest.models}, weights,
                    backtest.combination)
        if not earlier:
            continue
        for name in {*backtest.models, ENSEMBLE}:
            if not rows or name not in rows[0].forecasts or rows[0].forecasts[name].bands:
                continue
            widths = conformal_widths(backtest.scaled_errors(name, earlier), backtest.levels)
            for row in rows:
                f = row.forecasts[name]
                row.forecasts[name] = Forecast(f.segment, f.start, f.step, f.mean,
                                               bands_from_widths(f.mean, widths, _safe_scale(row)),
                                               f.model)
