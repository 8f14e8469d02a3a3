"""Forecast accuracy measures, exactly as the M4 competition defines them, plus two of ours.

- **sMAPE** (M4): ``200/h * sum |y - f| / (|y| + |f|)``, in percent, 0..200. A period where both
  the actual and the forecast are 0 counts as 0 (a perfect forecast), not as 0/0.
- **MASE** (M4): mean absolute error over the horizon, divided by the in-sample mean absolute
  error of the seasonal naive forecast, ``mean |y_t - y_{t-m}|`` (m = season length; M4 uses
  24 for hourly data). A series without variation has no scale; its MASE is undefined (NaN) and
  `mean_ignoring_nan` leaves it out.
- **OWA** (M4): ``(sMAPE / sMAPE_Naive2 + MASE / MASE_Naive2) / 2`` over a whole set of series —
  below 1 beats Naive2. For M4 Hourly, Naive2 scores 18.383 and 2.395.
- **coverage**: the share of actuals inside the prediction interval [lo, hi].
- **accuracy** (the issue's figure): the share of periods whose forecast lies within 20% of the
  actual, ``|f - y| <= 0.2 * |y|``. A period whose actual is 0 counts as accurate only when the
  forecast is 0 too (no relative band exists around 0).

Every function takes NumPy arrays and returns plain floats.
"""

from __future__ import annotations

import math

import numpy as np

#: M4 Hourly's Naive2 benchmark (the official Evaluation and Ranks workbook).
M4_HOURLY_NAIVE2 = {"smape": 18.383, "mase": 2.395}


def smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """M4 sMAPE in percent (0..200); both zero counts as a perfect period."""
    y = np.asarray(actual, dtype=float)
    f = np.asarray(forecast, dtype=float)
    denominator = np.abs(y) + np.abs(f)
    ratio = np.divide(np.abs(y - f), denominator, out=np.zeros_like(y), where=denominator > 0)
    return float(200.0 * ratio.mean())


def mase_scale(insample: np.ndarray, season: int) -> float:
    """The MASE denominator: in-sample mean absolute seasonal difference (NaN if undefined).

    A series shorter than one season and a bit falls back to lag 1, as M4's code does for
    series shorter than their frequency."""
    y = np.asarray(insample, dtype=float)
    m = season if len(y) > season else 1
    if len(y) <= m:
        return math.nan
    scale = float(np.mean(np.abs(y[m:] - y[:-m])))
    return scale if scale > 0 else math.nan


def mase(actual: np.ndarray, forecast: np.ndarray, insample: np.ndarray, season: int) -> float:
    """M4 MASE: MAE over the horizon / `mase_scale(insample, season)`."""
    scale = mase_scale(insample, season)
    mae = float(np.mean(np.abs(np.asarray(actual, float) - np.asarray(forecast, float))))
    return mae / scale if not math.isnan(scale) else math.nan


def owa(smape_value: float, mase_value: float, naive2_smape: float, naive2_mase: float) -> float:
    """M4 OWA: the mean of sMAPE and MASE relative to Naive2's (computed over the same set)."""
    return 0.5 * (smape_value / naive2_smape + mase_value / naive2_mase)


def coverage(actual: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of actuals inside [lo, hi]."""
    y = np.asarray(actual, dtype=float)
    return float(np.mean((y >= np.asarray(lo, float)) & (y <= np.asarray(hi, float))))


def accuracy(actual: np.ndarray, forecast: np.ndarray, tolerance: float = 0.2) -> float:
    """Share of periods with ``|f - y| <= tolerance * |y|`` (an actual of 0 needs f == 0)."""
    y = np.asarray(actual, dtype=float)
    f = np.asarray(forecast, dtype=float)
    return float(np.mean(np.abs(f - y) <= tolerance * np.abs(y) + 1e-12))


def mean_ignoring_nan(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan
