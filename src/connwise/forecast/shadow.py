"""Shadow evaluation: challengers forecast beside the champion, and only evidence promotes.

Every evaluation window (a horizon's worth of periods whose actuals have arrived), each
forecaster's error is recorded: the champion's, which the planner acts on, and every
challenger's, which nobody acts on. A challenger is promoted when, over the last `windows`
windows in which both forecast, its mean error is below the champion's by at least `margin`
(relative: 0.05 means 5% lower). If several qualify, the one with the lowest error wins. After
a promotion the history starts again, so the new champion has to be beaten afresh, and a
challenger cannot ride on windows from before.

Errors are MASE-style by default (mean absolute error over the window divided by `scale`, the
series' seasonal-naive in-sample error), or sMAPE. The evaluator is plain Python: the caller
brings actuals and forecasts, and acts on the `Promotion` it returns (the registry logs it).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from connwise.errors import ConfigError
from connwise.forecast import metrics

log = logging.getLogger("connwise.forecast.shadow")


@dataclass(frozen=True)
class ShadowRules:
    """`windows` to compare over, the relative `margin` to beat by, and the `metric`."""

    windows: int = 3
    margin: float = 0.05
    metric: Literal["mase", "smape"] = "mase"

    def validate(self) -> ShadowRules:
        if self.windows < 1:
            raise ConfigError("shadow.windows", self.windows, "promotion needs evidence from "
                              "at least one window", "use e.g. 3")
        if not 0 <= self.margin < 1:
            raise ConfigError("shadow.margin", self.margin, "the margin is a fraction of the "
                              "champion's error", "use a value in [0, 1), e.g. 0.05")
        if self.metric not in ("mase", "smape"):
            raise ConfigError("shadow.metric", self.metric, "unknown metric", "use mase or smape")
        return self


@dataclass(frozen=True)
class Promotion:
    """A decision to promote `challenger` over `champion`, with the errors behind it."""

    challenger: str
    champion: str
    challenger_error: float
    champion_error: float
    windows: int

    def to_dict(self) -> dict[str, object]:
        return {"challenger": self.challenger, "champion": self.champion,
                "challenger_error": self.challenger_error,
                "champion_error": self.champion_error, "windows": self.windows}


@dataclass
class ShadowEvaluation:
    """See the module docstring."""

    champion: str
    challengers: list[str]
    rules: ShadowRules = field(default_factory=ShadowRules)

    def __post_init__(self) -> None:
        self.rules.validate()
        if self.champion in self.challengers:
            raise ConfigError("shadow.challengers", self.champion, "the champion cannot also "
                              "be a challenger", "list other forecasters as challengers")
        self._history: dict[str, deque[float | None]] = {}
        self._reset()
        self.promotions: list[Promotion] = []

    def _reset(self) -> None:
        size = self.rules.windows
        self._history = {name: deque(maxlen=size) for name in [self.champion, *self.challengers]}

    def error(self, actual: np.ndarray, forecast: np.ndarray, scale: float = 1.0) -> float:
        if self.rules.metric == "smape":
            return metrics.smape(actual, forecast)
        return float(np.mean(np.abs(np.asarray(actual) - np.asarray(forecast)))) / (
            scale if scale > 0 else 1.0)

    def record(self, actual: np.ndarray, forecasts: Mapping[str, np.ndarray],
               scale: float = 1.0) -> None:
        """One completed window: the actuals and each forecaster's forecast of them (a
        forecaster missing from `forecasts` did not forecast this window)."""
        if self.champion not in forecasts:
            raise ConfigError("shadow.record", sorted(forecasts), f"the champion "
                              f"{self.champion!r} has no forecast for this window",
                              "record only windows the champion forecast")
        # Checked before anything is recorded: a NaN error would block every promotion for
        # `windows` windows, and a forecast of another length would be broadcast silently.
        y = np.asarray(actual, dtype=float)
        if not y.size:
            raise ConfigError("shadow.record", [], "the window has no actuals",
                              "record a window once its actuals have arrived")
        if not np.all(np.isfinite(y)):
            raise ConfigError("shadow.record", "actuals", "the actuals are not finite numbers",
                              "record only periods with data")
        for name, given in forecasts.items():
            f = np.asarray(given, dtype=float)
            if f.shape != y.shape:
                raise ConfigError(f"shadow.record[{name!r}]", f"{f.size} periods", f"the "
                                  f"forecast does not cover the window's {y.size} actuals",
                                  "pass each forecaster's forecast of exactly these periods")
            if not np.all(np.isfinite(f)):
                raise ConfigError(f"shadow.record[{name!r}]", "forecast", "the forecast is not "
                                  "finite numbers", "leave a forecaster that broke down out of "
                                  "this window")
        for name, history in self._history.items():
            forecast = forecasts.get(name)
            history.append(None if forecast is None else self.error(y, forecast, scale))

    def decide(self) -> Promotion | None:
        """The promotion the evidence supports now, or None; a promotion takes effect at once
        (the winner becomes champion, the old champion a challenger)."""
        rules = self.rules
        champion_errors = list(self._history[self.champion])
        best: Promotion | None = None
        for name in self.challengers:
            pairs = [(c, e) for c, e in zip(champion_errors, self._history[name], strict=True)
                     if c is not None and e is not None]
            if len(pairs) < rules.windows:
                continue
            champ = float(np.mean([c for c, _ in pairs]))
            mine = float(np.mean([e for _, e in pairs]))
            if mine <= champ * (1 - rules.margin) and (best is None
                                                       or mine < best.challenger_error):
                best = Promotion(name, self.champion, mine, champ, len(pairs))
        if best is None:
            return None
        log.warning("shadow evaluation: promoting %r over %r (error %.4f vs %.4f over %d "
                    "windows, margin %.0f%%)", best.challenger, best.champion,
                    best.challenger_error, best.champion_error, best.windows,
                    rules.margin * 100)
        self.challengers = [c for c in self.challengers if c != best.challenger]
        self.challengers.append(self.champion)
        self.champion = best.challenger
        self.promotions.append(best)
        self._reset()
        return best
