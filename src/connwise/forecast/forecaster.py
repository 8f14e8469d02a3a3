"""`Forecaster`: the champion object — models, ensemble weights and calibrated intervals.

`fit` does three things, in this order:

1. a rolling-origin backtest of every model over the last `windows` windows (on a sample of
   the panel when `calibration_sample` is set: a big panel needs only a few hundred series to
   weigh models and calibrate intervals);
2. ensemble weights from those errors (`connwise.forecast.ensemble`), and conformal
   half-widths from the ensemble's and each model's errors (`connwise.forecast.intervals`);
   with ``members="auto"``, the ensemble's members too: the subset of models (two at least)
   whose combination erred least over the backtest, the others weighted 0 — pooling rather
   than combining everything, because a weak member drags a combination down even at a small
   weight (Kourentzes, Barrow and Petropoulos, "Another look at forecast selection and
   combination: evidence from forecast pooling", IJPE 2019);
3. every model fitted on the whole history.

`predict` then returns, per segment, the ensemble forecast (or one model's, by name) with bands
at every configured level: conformal by default, or the model's own (``intervals="native"``)
where it has them. With a single model there is no ensemble: the forecast is that model's.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from connwise.errors import ConfigError
from connwise.forecast import metrics
from connwise.forecast.backtest import Backtest, Progress, Scores, rolling_origin
from connwise.forecast.base import Forecast, Model
from connwise.forecast.ensemble import ENSEMBLE, combine
from connwise.forecast.events import EventCalendar
from connwise.forecast.gbm import LightGBMModel
from connwise.forecast.intervals import bands_from_widths, conformal_widths, validate_levels
from connwise.forecast.models import DEFAULT_MODELS, make_model, parse_models
from connwise.forecast.series import DemandSeries


@dataclass
class ForecasterConfig:
    """What a `Forecaster` fits; every field is a registry metadata key (the CLI sets the
    common ones).

    `horizon` is in periods (None: one day of periods). `windows` backtest windows of `horizon`
    periods weigh the models; `weight_power` and `metric` shape the weights, and `combination`
    makes the ensemble their weighted mean or weighted median, or (``auto``) whichever of the
    two erred less over the backtest windows (see `connwise.forecast.ensemble`). `members`
    ``all`` combines every model; ``auto`` keeps the subset that erred least. `levels` are
    the interval levels kept, `intervals` their method. `model_params` passes constructor
    parameters per model name.
    """

    models: Sequence[str] = DEFAULT_MODELS
    horizon: int | None = None
    windows: int = 2
    levels: Sequence[int] = (50, 80, 95)
    intervals: Literal["conformal", "native"] = "conformal"
    weight_power: float = 1.0
    metric: Literal["mase", "smape"] = "mase"
    combination: Literal["mean", "median", "auto"] = "mean"
    members: Literal["all", "auto"] = "all"
    calibration_sample: int | None = None
    seed: int = 0
    model_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def validate(self) -> ForecasterConfig:
        self.models = parse_models(self.models)
        self.levels = validate_levels(self.levels)
        if self.horizon is not None and self.horizon < 1:
            raise ConfigError("forecast.horizon", self.horizon, "the horizon is at least one "
                              "period", "use e.g. 60 for an hour of minutes")
        if self.windows < 1:
            raise ConfigError("forecast.windows", self.windows, "weights need a backtest "
                              "window", "use 1 or more (2 or 3 is typical)")
        if self.combination not in ("mean", "median", "auto"):
            raise ConfigError("forecast.combination", self.combination, "unknown combination",
                              "use mean, median or auto")
        if self.members not in ("all", "auto"):
            raise ConfigError("forecast.members", self.members, "unknown member choice",
                              "use all (every model) or auto (the subset that erred least)")
        if self.intervals not in ("conformal", "native"):
            raise ConfigError("forecast.intervals", self.intervals, "unknown interval method",
                              "use conformal or native")
        for name in self.model_params:
            if name not in self.models:
                raise ConfigError(f"forecast.model_params.{name}", dict(self.model_params[name]),
                                  "parameters for a model that is not in the models list",
                                  "add the model or drop its parameters")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"models": list(self.models), "horizon": self.horizon, "windows": self.windows,
                "levels": list(self.levels), "intervals": self.intervals,
                "weight_power": self.weight_power, "metric": self.metric,
                "combination": self.combination, "members": self.members,
                "calibration_sample": self.calibration_sample, "seed": self.seed,
                "model_params": {k: dict(v) for k, v in self.model_params.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ForecasterConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError("forecast", sorted(unknown), "unknown configuration keys",
                              f"use only {', '.join(sorted(known))}")
        return cls(**dict(data)).validate()


class Forecaster:
    """See the module docstring."""

    def __init__(self, config: ForecasterConfig | None = None) -> None:
        self.config = (config or ForecasterConfig()).validate()
        self.models: dict[str, Model] = {}
        self.weights: dict[str, float] = {}
        self.widths: dict[str, dict[int, np.ndarray]] = {}
        self.scores: dict[str, Scores] = {}
        self.backtest: Backtest | None = None
        #: The combination in use: the configured one, or the one "auto" chose in `fit`.
        self.combination: str = "mean" if self.config.combination == "auto" else \
            self.config.combination
        self.panel: list[DemandSeries] = []
        self.events: EventCalendar | None = None

    @property
    def horizon(self) -> int:
        if self.config.horizon is not None:
            return self.config.horizon
        return self.panel[0].daily if self.panel else 24

    @property
    def names(self) -> list[str]:
        return list(self.config.models)

    def fit(self, panel: Sequence[DemandSeries], events: EventCalendar | None = None, *,
            progress: Progress | None = None) -> Forecaster:
        """Backtest, weigh, calibrate, then fit on everything; see the module docstring."""
        if not panel:
            raise ConfigError("panel", [], "there is no series to fit", "give one at least")
        self.panel = list(panel)
        self.events = events
        cfg = self.config
        sample = self.panel
        if cfg.calibration_sample is not None and cfg.calibration_sample < len(panel):
            sample = random.Random(cfg.seed).sample(self.panel, cfg.calibration_sample)
        reference = 0 if "naive2" in cfg.models else 1  # the backtest adds OWA's reference
        total_steps = cfg.windows * (len(cfg.models) + reference) + len(cfg.models)

        def backtest_progress(done: int, total: int, what: str) -> None:
            if progress is not None:
                progress(done, total_steps, what)

        self.backtest = rolling_origin(sample, cfg.models, h=self.horizon, windows=cfg.windows,
                                       events=events, levels=cfg.levels,
                                       model_params=cfg.model_params,
                                       weight_power=cfg.weight_power, metric=cfg.metric,
                                       combination="mean" if cfg.combination == "auto"
                                       else cfg.combination,
                                       progress=backtest_progress)
        self.scores = self.backtest.scores()
        self.weights = self.backtest.weights()
        for name in self.names:
            self.widths[name] = conformal_widths(self.backtest.scaled_errors(name), cfg.levels)
        if len(self.names) > 1:
            self.weights, self.combination, errors = self._choose_ensemble()
            self.widths[ENSEMBLE] = conformal_widths(errors, cfg.levels)
        done = total_steps - len(cfg.models)
        self.models = {}
        for name in self.names:
            model = make_model(name, **dict(cfg.model_params.get(name, {})))
            model.fit(self.panel, events)
            self.models[name] = model
            done += 1
            if progress is not None:
                progress(done, total_steps, f"fit {name}")
        return self

    def _choose_ensemble(self) -> tuple[dict[str, float], str, np.ndarray]:
        """The weights, the combination and its scaled backtest errors: among the configured
        combinations and member pools, the one whose mean error is lowest. Candidates are
        tried from the whole set down to pairs and only a strictly lower error wins, so a tie
        keeps more members."""
        cfg = self.config
        methods = ("mean", "median") if cfg.combination == "auto" else (cfg.combination,)
        pools: list[tuple[str, ...]] = [tuple(self.names)]
        if cfg.members == "auto":
            pools += [pool for size in range(len(self.names) - 1, 1, -1)
                      for pool in itertools.combinations(self.names, size)]
        best: tuple[float, dict[str, float], str, np.ndarray] | None = None
        for pool in pools:
            total = sum(self.weights[m] for m in pool)
            if not total > 0:
                continue
            weights = {m: self.weights[m] / total if m in pool else 0.0 for m in self.names}
            for method in methods:
                errors = self._ensemble_errors(method, weights)
                mean = float(np.mean(errors))
                if best is None or mean < best[0]:
                    best = (mean, weights, method, errors)
        assert best is not None, "the whole set always has a positive weight"
        return best[1], best[2], best[3]

    def _ensemble_errors(self, method: str,
                         weights: Mapping[str, float] | None = None) -> np.ndarray:
        """Scaled absolute errors of the ensemble over the backtest, with `weights` (by
        default the final ones)."""
        assert self.backtest is not None
        rows = []
        for r in self.backtest.results:
            f = combine({m: r.forecasts[m] for m in self.names},
                        self.weights if weights is None else weights, method)
            rows.append(np.abs(r.actual - f.mean) / _scale_of(r.scale, r.actual))
        return np.vstack(rows)

    def update(self, panel: Sequence[DemandSeries]) -> Forecaster:
        """Forecast from newer history without re-weighing: statsforecast models refit on
        `panel` (seconds), LightGBM keeps its trees and reads the new lags. Segments must be
        the ones fitted; use `fit` to change them."""
        known = {s.segment for s in self.panel}
        new = {s.segment for s in panel}
        if new != known:
            raise ConfigError("segments", sorted(new), f"the forecaster was fitted on "
                              f"{sorted(known)}", "fit a new forecaster for other segments")
        fitted = {s.step for s in self.panel}
        for series in panel:
            # The seasons, lags and calendar slots were learned on the fitted resolution.
            if series.step not in fitted:
                raise ConfigError(f"series[{series.segment!r}].step", series.step, f"the "
                                  f"forecaster was fitted on {min(fitted)}-second periods",
                                  "resample the history to that resolution, or fit anew")
        self.panel = list(panel)
        for model in self.models.values():
            if isinstance(model, LightGBMModel):
                model.restore(model.booster_text(), self.panel, self.events,
                              model.event_types, model.used_lags)
            else:
                model.fit(self.panel, self.events)
        return self

    def predict(self, h: int | None = None, *, model: str | None = None) -> dict[str, Forecast]:
        """Per segment, the forecast of the ensemble (or of `model`) for `h` periods
        (default: the configured horizon), with bands at every configured level."""
        if not self.models:
            raise ConfigError("forecaster", "unfitted", "the forecaster is not fitted",
                              "call fit() or load one from the registry")
        if h is not None and h < 1:
            raise ConfigError("forecast.horizon", h, "the horizon is at least one period",
                              "use e.g. 60 for an hour of minutes")
        h = self.horizon if h is None else h
        which = model or (ENSEMBLE if len(self.names) > 1 else self.names[0])
        if which != ENSEMBLE and which not in self.models:
            raise ConfigError("model", which, "the forecaster has no such model",
                              f"use one of {', '.join([*self.names, ENSEMBLE])}")
        native = self.config.intervals == "native"
        per_model = {name: m.predict(h, self.config.levels if native and m.native_intervals
                                     else ()) for name, m in self.models.items()
                     if which in (ENSEMBLE, name)}
        out = {}
        for series in self.panel:
            if which == ENSEMBLE:
                f = combine({m: per_model[m][series.segment] for m in self.names}, self.weights,
                            self.combination)
            else:
                f = per_model[which][series.segment]
            if not f.bands:
                scale = _scale_of(metrics.mase_scale(series.values, series.daily), series.values)
                f = Forecast(f.segment, f.start, f.step, f.mean,
                             bands_from_widths(f.mean, self.widths[which], scale), f.model)
            out[series.segment] = f
        return out

    def summary(self) -> dict[str, Any]:
        """JSON-ready: configuration, weights and backtest scores."""
        return {"config": self.config.to_dict(), "weights": self.weights,
                "combination": self.combination,
                "scores": {k: v.to_dict() for k, v in self.scores.items()}}


def _scale_of(scale: float, values: np.ndarray) -> float:
    if scale > 0 and np.isfinite(scale):
        return float(scale)
    level = float(np.mean(np.abs(values))) if len(values) else 0.0
    return level if level > 0 else 1.0
