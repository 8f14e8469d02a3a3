"""What every model returns, and what every model promises.

A `Forecast` is a point forecast with prediction intervals by level (80 means the 10%..90%
band). The planner asks it for a quantile: ``quantile(0.9)`` is the upper edge of the 80% band,
``quantile(0.5)`` the point forecast. Keeping levels symmetric means one set of intervals
serves every quantile a planner may choose, from a model's own intervals or from conformal
calibration alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from connwise.errors import ConfigError
from connwise.forecast.events import EventCalendar
from connwise.forecast.series import DemandSeries


def level_for(q: float) -> int:
    """The symmetric interval level whose edge is quantile `q` (0.9 -> 80, 0.05 -> 90)."""
    if not 0 < q < 1:
        raise ConfigError("quantile", q, "a quantile lies strictly between 0 and 1",
                          "use e.g. 0.9 to plan for the upper edge of the 80% interval")
    return round(abs(2 * q - 1) * 100)


@dataclass(frozen=True)
class Forecast:
    """`mean[i]` forecasts the period starting at `start + i * step` (Unix seconds);
    `bands[level] = (lo, hi)` are arrays of the same length."""

    segment: str
    start: float
    step: int
    mean: np.ndarray
    bands: Mapping[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    model: str = ""

    def __len__(self) -> int:
        return len(self.mean)

    def times(self) -> np.ndarray:
        return self.start + self.step * np.arange(len(self.mean), dtype=float)

    @property
    def levels(self) -> list[int]:
        return sorted(self.bands)

    def quantile(self, q: float) -> np.ndarray:
        """The forecast's `q` quantile per period (0.5: the point forecast), floored at 0."""
        level = level_for(q)
        out: np.ndarray
        if level == 0:
            out = np.maximum(self.mean, 0.0)
            return out
        if level not in self.bands:
            raise ConfigError("quantile", q, f"the forecast has no {level}% interval (it has "
                              f"{', '.join(map(str, self.levels)) or 'none'})",
                              "forecast with that level, or choose another quantile")
        lo, hi = self.bands[level]
        out = np.maximum(hi if q > 0.5 else lo, 0.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "start": self.start, "step": self.step,
                "model": self.model, "mean": self.mean.tolist(),
                "bands": {str(k): [lo.tolist(), hi.tolist()] for k, (lo, hi) in
                          self.bands.items()}}


class Model(Protocol):
    """A forecasting model over a panel of series (one per segment).

    `fit` learns from the panel (and the calendar, if the model reads one); `predict` forecasts
    `h` periods past each series' end, with the model's own intervals at `levels` where it has
    them (`native_intervals`), else with none — `Forecaster` then adds conformal ones.
    """

    name: str
    native_intervals: bool

    def fit(self, panel: Sequence[DemandSeries], events: EventCalendar | None = None) -> None: ...

    def predict(self, h: int, levels: Sequence[int] = ()) -> dict[str, Forecast]: ...

    def params(self) -> dict[str, Any]:
        """JSON-ready constructor parameters (what the registry stores to rebuild the model)."""
        ...
