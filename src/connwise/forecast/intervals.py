"""Conformal prediction intervals: honest bands for any model, from its own backtest errors.

Split conformal prediction in its simplest useful form: the absolute errors a forecaster made
in rolling-origin backtest windows, at each step ahead, are the calibration set; the band at
level L around a new point forecast is ``mean +- q`` with q the ``ceil((n + 1) L) / n``
empirical quantile of those errors (the finite-sample correction that makes the coverage at
least L when errors are exchangeable). Errors are divided by each series' MASE scale before
they are pooled, so that a panel of series of different sizes shares one calibration set, and
they are pooled over neighbouring steps (+- a tenth of the horizon), because a few backtest
windows give too few errors per step alone. Widths are made non-decreasing in the step: the
future does not get more certain the further ahead it lies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from connwise.errors import ConfigError


def validate_levels(levels: Sequence[int]) -> list[int]:
    out = sorted({int(v) for v in levels})
    for level in out:
        if not 0 < level < 100:
            raise ConfigError("levels", level, "an interval level is a percentage in 1..99",
                              "use e.g. 80 or 95")
    return out


def conformal_widths(errors: np.ndarray, levels: Sequence[int]) -> dict[int, np.ndarray]:
    """Half-widths per step, in scaled units, from absolute scaled errors of shape
    (samples, h); NaN entries (steps a window did not reach) are ignored."""
    errors = np.atleast_2d(np.asarray(errors, dtype=float))
    h = errors.shape[1]
    spread = max(1, h // 10)
    out: dict[int, np.ndarray] = {}
    for level in validate_levels(levels):
        widths = np.zeros(h)
        for k in range(h):
            pool = errors[:, max(0, k - spread):k + spread + 1].ravel()
            pool = np.sort(pool[~np.isnan(pool)])
            if not len(pool):
                widths[k] = math.nan
                continue
            rank = min(len(pool), math.ceil((len(pool) + 1) * level / 100)) - 1
            widths[k] = pool[max(rank, 0)]
        out[level] = np.maximum.accumulate(np.nan_to_num(widths, nan=0.0))
    return out


def bands_from_widths(mean: np.ndarray, widths: dict[int, np.ndarray],
                      scale: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Bands around `mean` (length <= the calibrated horizon, longer reuses the last width),
    with the lower edge floored at 0: demand is never negative."""
    h = len(mean)
    out = {}
    for level, width in widths.items():
        w = np.resize(width, h) if len(width) >= h else np.r_[width, np.full(h - len(width),
                                                                            width[-1])]
        w = w[:h] * scale
        out[level] = (np.maximum(mean - w, 0.0), mean + w)
    return out
