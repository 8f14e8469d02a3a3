"""The one clock of connwise.

Policies never read time themselves: shells pass `now` in seconds from a `Clock`. Production uses
`MonotonicClock`; tests and the simulator use `VirtualClock` and advance it by hand, so that a
policy's behaviour over an hour is checked in microseconds and without sleeps.
"""

from __future__ import annotations

import time
from typing import Protocol

from connwise.errors import ConfigError


class Clock(Protocol):
    """A source of monotonic time in seconds."""

    def now(self) -> float: ...


class MonotonicClock:
    """Real time from `time.monotonic()`: immune to wall-clock jumps."""

    __slots__ = ()

    #: `time.monotonic` itself rather than a method calling it: reading `clock.now` then gives
    #: the same object every time (no bound method per holder: the gateway keeps one per
    #: relay half, thousands of them) and a call costs no Python frame (the relay reads the
    #: clock per chunk).
    now = staticmethod(time.monotonic)


class VirtualClock:
    """Time that moves only when told to: the clock of tests and of the simulator."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` (>= 0) and return the new time."""
        if seconds < 0:
            raise ConfigError("seconds", seconds, "a virtual clock cannot go backwards",
                              "pass a duration >= 0")
        self._now += seconds
        return self._now

    def set(self, when: float) -> None:
        """Jump to `when`, which must not lie before the current time."""
        if when < self._now:
            raise ConfigError("when", when, f"the virtual clock is already at {self._now}",
                              "pass a time >= now")
        self._now = when

    def __repr__(self) -> str:
        return f"<VirtualClock t={self._now:.6f}>"
