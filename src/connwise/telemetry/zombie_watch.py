"""Live zombie and leak watch for a `connwise.Pool`: report by default, reclaim on request.

The watch is a subscriber of the pool's events and a user of its public API, nothing more: the
pool's own bookkeeping is untouched. It feeds a core `ZombieTracker` (idle when a connection is
opened or given back, busy when acquired), learns the pool's healthy idle gaps, and every
`interval` seconds scans for connections idle past `k x p99` of those gaps. Each finding is logged
once, counted in `connwise_zombies_total` and passed to the watch's subscribers. Leaks come from
the pool's own `LeakEvent` (the pool already judges them, with the acquirer's stack) and
half-open connections from its failed checks (the pool closes those itself).

With `reclaim=True`, a zombie still idle `grace` seconds after it was reported is closed through
`Pool.retire`, never below the pool's floor (`max(min_size, target)`: those connections are kept
warm on purpose, so closing them would only make the pool open them again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from connwise.core.lifecycle import FINAL, LeakEvent, LifecycleEvent, State, Trigger
from connwise.core.zombies import (
    Thresholds,
    Verdict,
    ZombieFinding,
    ZombieRules,
    ZombieTracker,
)
from connwise.errors import ConfigError
from connwise.telemetry.metrics import TelemetryMetrics

log = logging.getLogger("connwise.telemetry")

FindingCallback = Callable[[ZombieFinding], None]


class ZombieWatch:
    """Watches one pool; see the module docstring. Start it on the pool's event loop."""

    def __init__(self, pool: Any, *, rules: ZombieRules | None = None, reclaim: bool = False,
                 grace: float = 30.0, interval: float = 1.0,
                 metrics: TelemetryMetrics | None = None, segment: str | None = None) -> None:
        if grace < 0:
            raise ConfigError("zombies.grace", grace, "the grace period cannot be negative",
                              "use seconds >= 0")
        if interval <= 0:
            raise ConfigError("zombies.interval", interval, "the scan interval must be "
                              "positive", "use seconds > 0, e.g. 1")
        rules = (rules or ZombieRules()).validate()
        self.pool = pool
        self.reclaim = reclaim
        self.grace = grace
        self.interval = interval
        self.metrics = metrics
        self.segment = segment or pool.name
        # Leaks are judged by the pool itself; the tracker only looks at idleness.
        self.tracker = ZombieTracker(pool.name, Thresholds(replace(rules, leak_threshold=None)),
                                     pooled=False)
        self.findings = 0
        self.reclaimed = 0
        self._subscribers: list[FindingCallback] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> ZombieWatch:
        """Subscribe to the pool and scan every `interval` seconds from now on."""
        if self._unsubscribe is None:
            self._unsubscribe = self.pool.subscribe(self.on_event)
            self._arm()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def subscribe(self, callback: FindingCallback) -> Callable[[], None]:
        """Call `callback` with every finding; returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        try:
            self.scan()
        except Exception:
            log.exception("zombie watch of pool %s: scan failed; continuing", self.pool.name)
        if self._unsubscribe is not None:
            self._arm()

    # -- events --------------------------------------------------------------------------------

    def on_event(self, event: LifecycleEvent | LeakEvent) -> None:
        """The pool's subscriber: keeps the tracker's view of which connection is idle."""
        if isinstance(event, LeakEvent):
            self._emit(ZombieFinding(event.conn_id, event.owner, self.segment, Verdict.LEAK,
                                     event.held_for, self.pool.policy.limits.leak_threshold or 0,
                                     event.at))
            return
        tracker, key = self.tracker, event.conn_id
        to_state = event.to_state
        if to_state in FINAL or to_state is State.DRAINING:
            if event.trigger is Trigger.BREAK and event.from_state is State.CHECKING:
                # A failed keep-alive check: the peer was gone (the pool closes it).
                self._emit(ZombieFinding(key, event.owner, self.segment, Verdict.HALF_OPEN,
                                         0.0, 0.0, event.at))
            tracker.forget(key)
        elif event.trigger is Trigger.ACQUIRE:
            tracker.busy(key, event.at)
        elif to_state is State.IDLE:
            tracker.idle(key, self.segment, event.at)

    # -- scanning ------------------------------------------------------------------------------

    def scan(self) -> list[ZombieFinding]:
        """One pass at the pool's `now`: report new findings, reclaim what is due."""
        now = self.pool.now()
        found = self.tracker.scan(now)
        for finding in found:
            self._emit(finding)
        if self.reclaim:
            self._reclaim(now)
        return found

    def _reclaim(self, now: float) -> None:
        due = self.tracker.reclaimable(now, self.grace)
        if not due:
            return
        stats = self.pool.stats()
        connections = stats["connections"]
        open_now = sum(connections[s.value] for s in (State.IDLE, State.CHECKING,
                                                      State.IN_USE, State.CONNECTING))
        room = open_now - max(stats["min_size"], stats["target"])
        for key in due[:max(0, room)]:
            self.tracker.forget(key)
            self.pool.retire(key, "zombie")
            self.reclaimed += 1
            if self.metrics is not None:
                self.metrics.zombie_reclaimed(self.pool.name)
            log.info("pool %s: closed zombie connection %s after a grace of %.0f s",
                     self.pool.name, key, self.grace)

    def _emit(self, finding: ZombieFinding) -> None:
        self.findings += 1
        if self.metrics is not None:
            self.metrics.zombie(finding)
        if finding.verdict is Verdict.ZOMBIE:
            log.warning("pool %s: connection %s has been idle %.1f s, past the zombie threshold "
                        "of its segment %r (%.1f s)%s", finding.owner, finding.key,
                        finding.seconds, finding.segment, finding.threshold,
                        f"; closing it in {self.grace:.0f} s unless it is used" if self.reclaim
                        else "")
        elif finding.verdict is Verdict.HALF_OPEN:
            log.warning("pool %s: connection %s failed its check: the peer was gone "
                        "(half-open); the pool closed it", finding.owner, finding.key)
        for callback in self._subscribers:
            try:
                callback(finding)
            except Exception:
                log.exception("zombie watch of pool %s: subscriber %r failed", finding.owner,
                              callback)
