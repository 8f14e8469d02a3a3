"""The drift monitor: notice when the forecast has stopped describing demand, and say so once.

A period *misses* when ``|actual - forecast| / actual`` exceeds `threshold` (20% by default).
After `periods` consecutive misses (3 by default) the monitor triggers: it counts the trigger,
logs it as a warning naming the segment, the period and the errors, calls `on_trigger` (which
retrains), and starts counting afresh — a model that keeps missing triggers again after
another `periods` misses, not on every period. One good period resets the run: a single
outlier is noise, three in a row are drift.

An actual of 0 has no relative error: a forecast of 0 there is a hit, anything else a miss.
The monitor is plain Python with no clock: the caller passes each period's time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from connwise.errors import ConfigError

log = logging.getLogger("connwise.forecast.drift")


@dataclass(frozen=True, slots=True)
class DriftTrigger:
    """What a trigger reports: where, when, and the relative errors of the run."""

    segment: str
    at: float
    errors: tuple[float, ...]
    count: int


def relative_error(actual: float, forecast: float) -> float:
    """``|actual - forecast| / actual``; 0 or inf when the actual is 0 (see the module)."""
    if actual == 0:
        return 0.0 if forecast == 0 else math.inf
    return abs(actual - forecast) / abs(actual)


class DriftMonitor:
    """See the module docstring. `triggers` counts triggers; `consecutive` the current run."""

    def __init__(self, *, segment: str = "default", threshold: float = 0.2, periods: int = 3,
                 on_trigger: Callable[[DriftTrigger], object] | None = None) -> None:
        if not threshold > 0:
            raise ConfigError("drift.threshold", threshold, "the relative error threshold "
                              "must be positive", "use e.g. 0.2 for 20%")
        if periods < 1:
            raise ConfigError("drift.periods", periods, "a trigger needs at least one period",
                              "use e.g. 3")
        self.segment = segment
        self.threshold = threshold
        self.periods = periods
        self.on_trigger = on_trigger
        self.consecutive = 0
        self.triggers = 0
        self.observed = 0
        self.last: DriftTrigger | None = None
        self._run: list[float] = []

    def observe(self, actual: float, forecast: float, at: float = math.nan) -> bool:
        """Feed one period; True when this period triggers retraining."""
        if not (math.isfinite(actual) and math.isfinite(forecast)):
            raise ConfigError("drift.observe", (actual, forecast), "actual and forecast must "
                              "be finite numbers", "skip periods without data")
        self.observed += 1
        error = relative_error(actual, forecast)
        if error <= self.threshold:
            self.consecutive = 0
            self._run.clear()
            return False
        self.consecutive += 1
        self._run.append(error)
        if self.consecutive < self.periods:
            return False
        self.triggers += 1
        trigger = DriftTrigger(self.segment, at, tuple(self._run), self.triggers)
        self.last = trigger
        self.consecutive = 0
        self._run = []
        log.warning("forecast drift in segment %r at %s: %d consecutive periods off by more "
                    "than %.0f%% (%s); retraining (trigger #%d)", self.segment, at,
                    self.periods, self.threshold * 100,
                    ", ".join(f"{e:.0%}" if math.isfinite(e) else "inf" for e in trigger.errors),
                    self.triggers)
        if self.on_trigger is not None:
            self.on_trigger(trigger)
        return True
