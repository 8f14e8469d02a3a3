"""The ensemble: a weighted mean of the models' point forecasts, weighted by recent error.

Weights are proportional to ``error ** -power`` (the inverse error, power 1 by default; a
higher power leans harder on the best model), computed from the most recent backtest windows,
so a model that has started to miss loses its say without anyone deciding it. A model whose
error is unknown (NaN) or infinite gets no weight; if every error is unknown, the weights are
equal. Combining forecasts rather than picking the best one is the lesson of M4: every one of
its top entries was a combination.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from connwise.errors import ConfigError
from connwise.forecast.base import Forecast

ENSEMBLE = "ensemble"


def inverse_error_weights(errors: Mapping[str, float], power: float = 1.0) -> dict[str, float]:
    """Weights summing to 1, proportional to ``error ** -power``; see the module docstring."""
    if not errors:
        raise ConfigError("models", [], "an ensemble needs at least one model", "name some")
    if power < 0:
        raise ConfigError("weight_power", power, "a negative power favours the worst model",
                          "use 0 (equal weights) or more")
    usable = {m: e for m, e in errors.items() if not math.isnan(e) and math.isfinite(e)}
    if not usable:
        return {m: 1.0 / len(errors) for m in errors}
    floor = 1e-9
    raw = {m: max(e, floor) ** -power for m, e in usable.items()}
    total = sum(raw.values())
    return {m: raw.get(m, 0.0) / total for m in errors}


def combine(forecasts: Mapping[str, Forecast], weights: Mapping[str, float],
            method: str = "mean") -> Forecast:
    """The weighted mean (or weighted median) of the point forecasts; models missing from
    `weights` count 0. Bands are not combined: the ensemble gets conformal bands of its own.

    The weighted median, per period the forecast at which the cumulative weight of the sorted
    forecasts reaches half, ignores one model's wild miss where the mean would follow it part
    of the way: the robust choice when one member sometimes breaks down."""
    if method not in ("mean", "median"):
        raise ConfigError("combination", method, "unknown combination", "use mean or median")
    first = next(iter(forecasts.values()))
    names = [m for m in forecasts if weights.get(m, 0.0) > 0]
    if not names:
        raise ConfigError("weights", dict(weights), "no forecast has a positive weight",
                          "give at least one model weight")
    w = np.array([weights[m] for m in names], dtype=float)
    w /= w.sum()
    stack = np.vstack([forecasts[m].mean for m in names])
    if method == "mean":
        point = w @ stack
    else:
        order = np.argsort(stack, axis=0)
        ranked = np.take_along_axis(stack, order, axis=0)
        cumulative = np.cumsum(w[order], axis=0)
        index = np.argmax(cumulative >= 0.5 - 1e-12, axis=0)
        point = ranked[index, np.arange(stack.shape[1])]
    return Forecast(first.segment, first.start, first.step, point, {}, ENSEMBLE)
