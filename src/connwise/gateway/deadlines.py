"""One timer for many deadlines that fall in the order they were set.

A group's upstream connects each end at `connect_timeout` after they begin, so their deadlines
fall in the order the connects began: an insertion-ordered dict of callback -> deadline is
also ordered by deadline, and one timer armed for the first one serves them all (HAProxy and
nginx keep their timeouts in one ordered tree for the same reason). A callback whose work ended
first is discarded in O(1).

Why not `asyncio.timeout` per connect: each one made a Timeout object, a timer handle, a libuv
timer and a copy of the context, ~600 bytes for every connect in flight. A burst of thousands of
connects left that memory behind, freed but scattered in pymalloc's pools: measured in-process
over 9,500 idle relays, 75 bytes per relay of resident memory after the burst.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("connwise.gateway")


class FifoDeadlines:
    """Calls each added callback `delay` seconds (of the event loop's clock) after it was
    added, unless it was discarded first. Deadlines are kept in the order they were added,
    which is the order they fall because `delay` is fixed."""

    __slots__ = ("_due", "_timer", "delay")

    def __init__(self, delay: float) -> None:
        if not delay > 0:
            raise ValueError(f"delay={delay!r}: a deadline lies a positive time ahead")
        self.delay = delay
        self._due: dict[Callable[[], None], float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, callback: Callable[[], None]) -> None:
        """Call `callback` in `delay` seconds. A callback added again (equal, as a bound method
        of the same object is) moves to its new deadline."""
        loop = asyncio.get_running_loop()
        due = self._due
        due.pop(callback, None)
        due[callback] = loop.time() + self.delay
        if self._timer is None:
            self._timer = loop.call_at(due[next(iter(due))], self._fire)

    def discard(self, callback: Callable[[], None]) -> None:
        """Do not call `callback` (it may have been called already, or never added)."""
        self._due.pop(callback, None)

    def cancel(self) -> None:
        """Call nothing more."""
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._due
        passed = []
        for callback, deadline in due.items():
            if deadline > now:
                break
            passed.append(callback)
        for callback in passed:
            del due[callback]
        if due:
            self._timer = loop.call_at(due[next(iter(due))], self._fire)
        for callback in passed:
            try:
                callback()
            except Exception:  # the others are still due
                log.exception("a deadline's callback %r failed", callback)
