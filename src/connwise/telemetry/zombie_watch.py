"""Live zombie and leak watch for a `connwise.Pool`: report by default, reclaim on request.

Every pool runs one unless built with `zombies=None` (`ZombieSettings`). The watch uses the
pool's public API and its policy's records, nothing more: the pool's own bookkeeping is untouched.
Every `interval` seconds it scans for connections idle past `k x p99` of the pool's healthy idle
gaps (gaps that ended in reuse). Each finding is logged once, counted in
`connwise_zombies_total` and passed to the watch's subscribers as a `ZombieFinding`; a reported
zombie used again is a `ZombieForgiven`, one reclaim closes a `ZombieReclaimed` (the events of
the gateway's watch too). Subscribers are called inline, like the pool's own: they must be
quick, and one that raises is logged and skipped. It has two feeds:

* `scan` (the pool's default) costs nothing on acquire and release: the scan reads each
  connection's `idle_since` and `acquired_at` from the policy, and learns the gap of every hold
  that began since the previous scan (`acquired_at - idle_since`, exact while the connection is
  held). Holds that begin and end between two scans are not sampled; as short holds are as
  likely after a long gap as after a short one, the sample stays representative, it only grows
  more slowly. Leaks come from the policy's own leak flag; failed checks are the pool's to count
  (`pool_operations{op="checks_failed"}`).
* `events` subscribes to the pool's lifecycle events and feeds a core `ZombieTracker` (idle when
  a connection is opened or given back, busy when acquired): it sees every gap, and also turns
  failed keep-alive checks into half-open findings, but lifecycle events roughly double the cost
  of an acquire and release (measured with an in-memory driver), so it is opt-in. Leaks come
  from the pool's own `LeakEvent` (with the acquirer's stack).

With `reclaim=True`, a zombie still idle `grace` seconds after it was reported is closed through
`Pool.retire`, never below the pool's floor (`max(min_size, target)`: those connections are kept
warm on purpose, so closing them would only make the pool open them again).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from connwise.core.lifecycle import FINAL, LeakEvent, LifecycleEvent, State, Trigger
from connwise.core.pooling import PoolState
from connwise.core.zombies import (
    POOL_FLOOR,
    Thresholds,
    Verdict,
    ZombieEvent,
    ZombieFinding,
    ZombieForgiven,
    ZombieReclaimed,
    ZombieRules,
    ZombieTracker,
    judge,
)
from connwise.errors import ConfigError

if TYPE_CHECKING:
    from connwise.telemetry.metrics import TelemetryMetrics

log = logging.getLogger("connwise.telemetry")

EventCallback = Callable[[ZombieEvent], None]
Feed = Literal["scan", "events"]


#: The core's rules with the pool's floor of 30 s (`POOL_FLOOR`, which says why; the report
#: judges pool records by the same floor).
POOL_RULES = ZombieRules(floor=POOL_FLOOR)


@dataclass(frozen=True, slots=True)
class ZombieSettings:
    """How a pool watches itself: `Pool(zombies=ZombieSettings(...))`; `zombies=None` turns
    the watch off. The defaults report and never close."""

    #: Close zombies `grace` seconds after reporting them (never below the pool's floor).
    reclaim: bool = False
    #: Time a reported zombie has to serve again before reclaim closes it; 30 s is the pool's
    #: own default leak threshold: the same patience for a connection that looks forgotten.
    grace: float = 30.0
    #: Seconds between scans: O(connections) each, no work on acquire and release.
    interval: float = 1.0
    rules: ZombieRules = field(default_factory=lambda: POOL_RULES)
    feed: Feed = "scan"


class ZombieWatch:
    """Watches one pool; see the module docstring. Start it on the pool's event loop."""

    def __init__(self, pool: Any, *, rules: ZombieRules | None = None, reclaim: bool = False,
                 grace: float = 30.0, interval: float = 1.0,
                 metrics: TelemetryMetrics | None = None, segment: str | None = None,
                 feed: Feed = "events") -> None:
        if feed not in ("scan", "events"):
            raise ConfigError("zombies.feed", feed, "unknown feed",
                              "use 'scan' (no cost per acquire) or 'events' (every gap)")
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
        self.feed = feed
        self.findings = 0
        self.reclaimed = 0
        self.running = False
        self._subscribers: list[EventCallback] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Scan feed: connections reported and not yet forgiven, with the idle start (or, for a
        #: leak, the acquire) they were reported for and their finding.
        self._flags: dict[Hashable, tuple[float, ZombieFinding]] = {}
        self._last_scan = 0.0

    @classmethod
    def from_settings(cls, pool: Any, settings: ZombieSettings,
                      metrics: TelemetryMetrics | None = None) -> ZombieWatch:
        return cls(pool, rules=settings.rules, reclaim=settings.reclaim, grace=settings.grace,
                   interval=settings.interval, metrics=metrics, feed=settings.feed)

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> ZombieWatch:
        """Scan every `interval` seconds from now on (and, with the `events` feed, subscribe)."""
        if not self.running:
            self.running = True
            self._last_scan = self.pool.now()
            if self.feed == "events":
                self._unsubscribe = self.pool.subscribe(self.on_event)
            self._arm()
        return self

    def stop(self) -> None:
        """Stop scanning; also happens by itself once the pool is closed."""
        self.running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call `callback` with every event: a `ZombieFinding` when a connection is reported
        (zombie, half-open, leak), a `ZombieForgiven` when a reported zombie is used again, a
        `ZombieReclaimed` when reclaim closes one. Returns an unsubscribe function. Callbacks
        run inline, in the scan or the pool's bookkeeping, and must be quick; one that raises is
        logged and skipped."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _arm(self) -> None:
        """Weakly, like the pool's maintenance timer: a forgotten pool is not kept alive (and
        scanned forever) by its own watch."""
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.interval, _tick, weakref.ref(self))

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
            forgiven = tracker.busy(key, event.at)
            if forgiven is not None:
                self._publish(ZombieForgiven(forgiven, event.at))
        elif to_state is State.IDLE:
            tracker.idle(key, self.segment, event.at)

    # -- scanning ------------------------------------------------------------------------------

    def scan(self) -> list[ZombieFinding]:
        """One pass at the pool's `now`: report new findings, reclaim what is due."""
        now = self.pool.now()
        found = self.tracker.scan(now) if self.feed == "events" else self._scan_records(now)
        for finding in found:
            self._emit(finding)
        if self.reclaim:
            self._reclaim(now)
        return found

    def _scan_records(self, now: float) -> list[ZombieFinding]:
        """The scan feed: learn from holds begun since the last scan, judge idle connections
        by the policy's own `idle_since`, pass on leaks the policy flagged."""
        policy = self.pool.policy
        records = policy.records
        thresholds = self.tracker.thresholds
        segment = self.segment
        flags = self._flags
        last, self._last_scan = self._last_scan, now
        found: list[ZombieFinding] = []
        forgiven: list[ZombieForgiven] = []
        idle = []
        for rec in records.values():
            state = rec.state
            # Held: IN_USE, or DRAINING with its class still set (retired while held, e.g. past
            # its lifetime): a holder can leak that one just the same, and the policy flags it.
            if state is State.IN_USE or (state is State.DRAINING and rec.class_name):
                if rec.acquired_at > last:
                    thresholds.observe(segment, rec.acquired_at - rec.idle_since)  # <0: ignored
                flag = flags.get(rec.id)
                if flag is not None:
                    if flag[0] == rec.acquired_at:
                        continue
                    del flags[rec.id]  # served again: forgiven
                    if flag[1].verdict is Verdict.ZOMBIE:
                        forgiven.append(ZombieForgiven(flag[1], now))
                if rec.leak_reported:
                    leak = ZombieFinding(rec.id, self.pool.name, segment, Verdict.LEAK,
                                         now - rec.acquired_at,
                                         policy.limits.leak_threshold or 0.0, now)
                    flags[rec.id] = (rec.acquired_at, leak)
                    found.append(leak)
            elif state is State.IDLE or state is State.CHECKING:
                idle.append(rec)
        threshold = thresholds.threshold(segment)
        for rec in idle:
            flag = flags.get(rec.id)
            if flag is not None:
                if flag[0] == rec.idle_since:
                    continue  # reported for this idle stretch already
                del flags[rec.id]  # used (or given back) since: forgiven
                if flag[1].verdict is Verdict.ZOMBIE:
                    forgiven.append(ZombieForgiven(flag[1], now))
            idle_for = now - rec.idle_since
            if judge(idle_for=idle_for, threshold=threshold) is Verdict.ZOMBIE:
                zombie = ZombieFinding(rec.id, self.pool.name, segment, Verdict.ZOMBIE,
                                       idle_for, threshold, now)
                flags[rec.id] = (rec.idle_since, zombie)
                found.append(zombie)
        if len(flags) > len(found):
            for key in [k for k in flags if k not in records]:
                del flags[key]
        for event in forgiven:
            self._publish(event)
        return found

    def flagged(self) -> list[Hashable]:
        """Connections reported and not yet forgiven (served again) or closed."""
        if self.feed == "scan":
            return list(self._flags)
        return self.tracker.flagged()

    def _due(self, now: float) -> list[ZombieFinding]:
        if self.feed == "events":
            tracker = self.tracker
            return [finding for key in tracker.reclaimable(now, self.grace)
                    if (finding := tracker.finding(key)) is not None]
        records = self.pool.policy.records
        due: list[ZombieFinding] = []
        for key, (since, finding) in self._flags.items():
            rec = records.get(key)
            if (finding.verdict is Verdict.ZOMBIE and now - finding.at >= self.grace
                    and rec is not None and rec.state is State.IDLE
                    and rec.idle_since == since):
                due.append(finding)
        return due

    def _reclaim(self, now: float) -> None:
        due = self._due(now)
        if not due:
            return
        stats = self.pool.stats()
        connections = stats["connections"]
        open_now = sum(connections[s.value] for s in (State.IDLE, State.CHECKING,
                                                      State.IN_USE, State.CONNECTING))
        room = open_now - max(stats["min_size"], stats["target"])
        for finding in due[:max(0, room)]:
            key = finding.key
            self.tracker.forget(key)
            self._flags.pop(key, None)
            self.pool.retire(key, "zombie")
            self.reclaimed += 1
            if self.metrics is not None:
                self.metrics.zombie_reclaimed(self.pool.name)
            log.info("pool %s: closed zombie connection %s after a grace of %.0f s",
                     self.pool.name, key, self.grace)
            self._publish(ZombieReclaimed(finding, self.grace, now))

    def _emit(self, finding: ZombieFinding) -> None:
        self.findings += 1
        if self.metrics is not None:
            self.metrics.zombie(finding)
        if finding.verdict is Verdict.ZOMBIE:
            # Information, not a warning: in a bursty pool, connections past the learned
            # threshold are routine in every trough; the metric is where they add up.
            log.info("pool %s: connection %s has been idle %.1f s, past the zombie threshold "
                     "of its segment %r (%.1f s)%s", finding.owner, finding.key,
                     finding.seconds, finding.segment, finding.threshold,
                     f"; closing it in {self.grace:.0f} s unless it is used" if self.reclaim
                     else "")
        elif finding.verdict is Verdict.HALF_OPEN:
            log.warning("pool %s: connection %s failed its check: the peer was gone "
                        "(half-open); the pool closed it", finding.owner, finding.key)
        self._publish(finding)

    def _publish(self, event: ZombieEvent) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("zombie watch of pool %s: subscriber %r failed", self.pool.name,
                              callback)


def _tick(ref: weakref.ReferenceType[ZombieWatch]) -> None:
    watch = ref()
    if watch is None or not watch.running:
        return
    watch._timer = None
    if watch.pool.policy.state is PoolState.CLOSED:
        watch.stop()
        return
    try:
        watch.scan()
    except Exception:
        log.exception("zombie watch of pool %s: scan failed; continuing", watch.pool.name)
    if watch.running:
        watch._arm()
