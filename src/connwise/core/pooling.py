"""The pool policy: which connection goes to whom, when to open, check, recycle and close.

Theory of operation
-------------------
`PoolPolicy` owns the bookkeeping of a connection pool and none of its I/O. The shell (the asyncio
`connwise.Pool`, or the simulator) feeds it what happened — a caller wants a connection, a
connection came back, a connect or a check finished, time passed — and carries out the actions it
returns: `Connect`, `Check`, `Close`, `Assign` (hand connection c to waiter w), `Reject` (fail a
waiter because the pool drains) and `Leak` (report a connection held too long).

Capacity is counted by the core `Scheduler`: one slot per connection handed out, `max_size` slots
in all, reserved shares per class. Idle connections are kept in a LIFO stack so that hot
connections stay hot and the ones at the bottom age out through the idle timeout.

Growth has three sources, taken together: `min_size`, the warm target (`set_target(n, at)`, the
actuator that forecasting drives), and waiters that no idle connection can serve. Creation is
bounded by `max_connecting` concurrent connects; after a failed connect it backs off
exponentially with jitter and probes with one connect at a time, so a slow or dead backend sees
no connection storm. A waiter is never bound to a particular connect: whichever connection
becomes idle first — new or returned — goes to the best waiter.

A warm target is met *by* its time: the policy starts opening at `at - lead`, where the lead
covers the connects still needed at the observed connect latency, twice over, plus one second.

Maintenance (`maintain(now)`) retires connections past their jittered lifetime (up to
`lifetime_jitter` of it earlier, so that a pool opened at once does not expire at once), recycles
idle ones whose quality score fell below `quality_threshold`, trims connections idle longer than
`idle_timeout` down to `max(min_size, target)`, at most `trim_step` per pass, checks idle
connections at an interval that shrinks with their recent failures, and reports leaks once.
"""

from __future__ import annotations

import enum
import math
import numbers
import operator
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from connwise.core.classes import ClassTable
from connwise.core.lifecycle import (
    FINAL,
    TRANSITIONS,
    ConnectionRecord,
    LifecycleEvent,
    State,
    Trigger,
)
from connwise.core.scheduler import Scheduler, Waiter, WaitHistogram
from connwise.errors import ConfigError, IllegalTransition

# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """The pool's numbers; times in seconds. Validated by `validate()`."""

    min_size: int = 2
    max_size: int = 10
    max_waiters: int = 1024
    #: HikariCP's maxLifetime default: 30 minutes.
    max_lifetime: float | None = 1800.0
    #: Expire up to 10% early, so connections opened together do not expire together.
    lifetime_jitter: float = 0.1
    #: HikariCP's idleTimeout default: 10 minutes.
    idle_timeout: float | None = 600.0
    #: None disables leak detection (HikariCP's default is off; ours is on at 30 s).
    leak_threshold: float | None = 30.0
    #: psycopg_pool opens with 3 workers; 4 lets a pool of 50 warm in about 12 connect rounds.
    max_connecting: int = 4
    #: Healthy idle connections are checked this often; suspicious ones more often.
    check_interval: float = 30.0
    check_interval_floor: float = 1.0
    #: Recycle an idle connection whose quality score falls below this.
    quality_threshold: float = 0.3
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    #: Shrink gently: close at most this many idle connections per maintenance pass.
    trim_step: int = 2

    def validate(self, prefix: str = "pool") -> PoolLimits:
        def bad(key: str, value: object, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", value, problem, fix)

        for key in ("max_size", "min_size", "max_waiters", "max_connecting", "trim_step"):
            value = getattr(self, key)
            if not isinstance(value, numbers.Integral):
                raise bad(key, value, "it counts connections or callers", "use a whole number")
        if self.max_size < 1:
            raise bad("max_size", self.max_size, "a pool needs room for one connection",
                      "use max_size >= 1")
        if not 0 <= self.min_size <= self.max_size:
            raise bad("min_size", self.min_size, f"min_size must lie in 0..max_size "
                      f"({self.max_size})", "lower min_size or raise max_size")
        if self.max_waiters < 0:
            raise bad("max_waiters", self.max_waiters, "the bound cannot be negative",
                      "use 0 to refuse waiting or a positive number")
        for key in ("max_lifetime", "idle_timeout", "leak_threshold"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise bad(key, value, "the duration must be positive", "use seconds > 0 or None "
                          "to disable")
        if not 0 <= self.lifetime_jitter < 1:
            raise bad("lifetime_jitter", self.lifetime_jitter, "the jitter is a fraction",
                      "use a value in [0, 1)")
        if self.max_connecting < 1:
            raise bad("max_connecting", self.max_connecting, "at least one connect must be "
                      "allowed at a time", "use max_connecting >= 1")
        if self.check_interval <= 0 or not 0 < self.check_interval_floor <= self.check_interval:
            raise bad("check_interval", self.check_interval, "the interval must be positive and "
                      "at least check_interval_floor", "use e.g. 30 with a floor of 1")
        if not 0 <= self.quality_threshold < 1:
            raise bad("quality_threshold", self.quality_threshold, "the score lies in 0..1",
                      "use a value in [0, 1)")
        if not 0 < self.backoff_base <= self.backoff_cap:
            raise bad("backoff_base", self.backoff_base, "backoff must be positive and at most "
                      "backoff_cap", "use e.g. 0.5 and a cap of 30")
        if self.trim_step < 1:
            raise bad("trim_step", self.trim_step, "trimming must close something per pass",
                      "use trim_step >= 1")
        return self


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    conn_id: int


@dataclass(frozen=True, slots=True)
class Check:
    conn_id: int


@dataclass(frozen=True, slots=True)
class Close:
    conn_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Assign:
    conn_id: int
    waiter: Waiter


@dataclass(frozen=True, slots=True)
class Reject:
    waiter: Waiter
    reason: str


@dataclass(frozen=True, slots=True)
class Leak:
    conn_id: int
    held_for: float


Action = Connect | Check | Close | Assign | Reject | Leak


class PoolState(enum.Enum):
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


# Reading an enum member costs ~60 ns more than reading a global in Python 3.11 (the metaclass's
# attribute lookup); acquire, release and pump, run per request by a proxy, read these.
_OPEN = PoolState.OPEN
_IDLE, _IN_USE, _CHECKING = State.IDLE, State.IN_USE, State.CHECKING
_CONNECTING, _DRAINING = State.CONNECTING, State.DRAINING
_ACQUIRE, _RELEASE = Trigger.ACQUIRE, Trigger.RELEASE
#: The two transitions of a pool in steady use, read from the table once: `acquire_now` and
#: `release` apply them without `_move` (two calls, ~1,000 instructions per request of a proxy)
#: when no listener wants the event. Neither state is final: the record stays.
_TAKEN = TRANSITIONS[_IDLE, _ACQUIRE]
_RETURNED = TRANSITIONS[_IN_USE, _RELEASE]


COUNTERS = ("acquired", "created", "connect_failed", "closed", "recycled", "broken", "leaked",
            "timed_out", "refused", "rejected", "displaced", "checks", "checks_failed",
            "detached")


def _leak_due(acquired_at: float, threshold: float) -> float:
    """The first time at which `maintain` sees the leak: `now - acquired_at >= threshold` in
    floats, which `acquired_at + threshold` can miss by one rounding (and then spin)."""
    due = acquired_at + threshold
    while due - acquired_at < threshold:
        due = math.nextafter(due, math.inf)
    return due


class PoolPolicy:
    """Sans-I/O bookkeeping of one pool; see the module docstring."""

    def __init__(self, *, name: str, limits: PoolLimits, classes: ClassTable,
                 rng: random.Random | None = None,
                 listener: Callable[[LifecycleEvent], None] | None = None) -> None:
        self.name = name
        self.limits = limits.validate()
        self.classes = classes
        self.scheduler = Scheduler(classes, capacity=limits.max_size,
                                   max_waiters=limits.max_waiters, owner=f"pool {name!r}")
        self.state = PoolState.OPEN
        self.records: dict[int, ConnectionRecord] = {}
        self.counts = dict.fromkeys(State, 0)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.waits = {c.name: WaitHistogram() for c in classes}
        self.listener = listener
        self.last_error: str | None = None
        self._idle: list[int] = []
        self._rng = rng or random.Random()
        self._next_id = 0
        self._failures = 0
        self._next_connect_at = 0.0
        self._connect_latency: float | None = None
        self._target = 0
        self._next_target = 0
        self._target_at: float | None = None

    # -- bookkeeping helpers ------------------------------------------------------------------

    def _move(self, rec: ConnectionRecord, trigger: Trigger, reason: str, now: float) -> None:
        previous = rec.transition(trigger)
        counts = self.counts
        counts[previous] -= 1
        counts[rec.state] += 1
        if self.listener is not None:
            self.listener(rec.event(previous, trigger, reason, now))
        if rec.state in FINAL:
            del self.records[rec.id]

    def _take_idle(self, rec: ConnectionRecord, class_name: str, now: float) -> None:
        self._move(rec, _ACQUIRE, class_name, now)
        rec.class_name = class_name
        rec.acquired_at = now
        rec.leak_reported = False
        rec.quality.uses += 1
        self.counters["acquired"] += 1

    @property
    def open_connections(self) -> int:
        """Connections that are or will be usable: idle, checking, in use, connecting."""
        c = self.counts
        return c[_IDLE] + c[_CHECKING] + c[_IN_USE] + c[_CONNECTING]

    @property
    def idle(self) -> int:
        return self.counts[State.IDLE]

    # -- acquiring ----------------------------------------------------------------------------

    def acquire_now(self, class_name: str, now: float) -> int | None:
        """The fast path: an idle connection at once, if nobody waits and the class may take one."""
        if self.state is not _OPEN:
            return None
        idle = self._idle
        if not idle or not self.scheduler.try_admit(class_name):
            return None
        rec = self.records[idle.pop()]
        if self.listener is None and rec.state is _IDLE:
            # `_take_idle`, written out with `_move`'s bookkeeping of the table's transition: a
            # proxy takes a connection per request. (A listener gets its event from `_move`.)
            rec.state = _TAKEN
            counts = self.counts
            counts[_IDLE] -= 1
            counts[_TAKEN] += 1
            rec.class_name = class_name
            rec.acquired_at = now
            rec.leak_reported = False
            rec.quality.uses += 1
            self.counters["acquired"] += 1
        else:
            self._take_idle(rec, class_name, now)
        waits = self.waits[class_name]  # `observe(0.0)`, inlined as in `Scheduler.try_admit`
        waits.counts[0] += 1
        waits.total += 1
        return rec.id

    def submit(self, class_name: str, now: float, timeout: float | None = None,
               token: Any = None) -> Waiter:
        """Queue a caller; then call `dispatch` and `grow` (or `pump`) to serve it."""
        return self.scheduler.submit(class_name, now, timeout, token)

    def dispatch(self, now: float) -> list[Assign]:
        """Hand idle connections to the best eligible waiters."""
        assigned: list[Assign] = []
        idle = self._idle
        scheduler = self.scheduler
        while idle and scheduler.waiting:
            waiter = scheduler.grant(now)
            if waiter is None:
                break
            rec = self.records[idle.pop()]
            self._take_idle(rec, waiter.class_name, now)
            self.waits[waiter.class_name].observe(now - waiter.arrived)
            assigned.append(Assign(rec.id, waiter))
        return assigned

    def refuse(self, assign: Assign, now: float) -> list[Action]:
        """The waiter of `assign` gave up before it got the connection: pass it on."""
        rec = self.records[assign.conn_id]
        self.scheduler.refuse(assign.waiter)
        self.counters["refused"] += 1
        rec.quality.uses -= 1
        if rec.state is State.DRAINING:
            # Retired (drain, lifetime, reclaim) while it was being handed over: close it.
            self._move(rec, Trigger.RELEASE, "refused", now)
            rec.class_name = ""
            self.counters["closed"] += 1
            self._maybe_closed()
            return [Close(rec.id, "retired"), *self.pump(now)]
        self._move(rec, Trigger.RELEASE, "refused", now)
        rec.class_name = ""  # holds no slot any more (force_close relies on it)
        rec.idle_since = now
        self._idle.append(rec.id)
        return self.pump(now)

    def cancel(self, waiter: Waiter, *, timed_out: bool, now: float) -> bool:
        """Withdraw a waiter; False if it was granted already (it then holds a connection)."""
        if not self.scheduler.cancel(waiter):
            return False
        if timed_out:
            self.counters["timed_out"] += 1
            self.waits[waiter.class_name].observe(now - waiter.arrived)
        return True

    def expire(self, now: float) -> list[Waiter]:
        """Waiters whose deadline has passed (for shells that poll instead of arming timers)."""
        expired = self.scheduler.expire(now)
        for waiter in expired:
            self.counters["timed_out"] += 1
            self.waits[waiter.class_name].observe(now - waiter.arrived)
        return expired

    # -- returning ----------------------------------------------------------------------------

    def release(self, conn_id: int, now: float, *, broken: bool = False,
                failed: bool = False) -> list[Action]:
        """A holder gave a connection back. `broken`: it no longer works. `failed`: it raised a
        connection-level error but still works (counts against its quality)."""
        rec = self.records.get(conn_id)
        if rec is None and self.state is not _OPEN:
            return []
        if rec is None or rec.state not in (_IN_USE, _DRAINING) or not rec.class_name:
            # (A DRAINING record without a class was retired while connecting or checking.)
            state = rec.state.value if rec else "unknown"
            raise IllegalTransition(conn_id, self.name, state, "release")
        scheduler = self.scheduler
        q = scheduler._queues[rec.class_name]
        if q.in_use > 0:  # `scheduler.release`, written out (a call, ~400 instructions)
            q.in_use -= 1
            scheduler.in_use -= 1
        else:
            scheduler.release(rec.class_name)  # raises: the class holds no slot
        c = self.counts
        # `open_connections`, without the property's call; a release to idle leaves it as is.
        open_now = c[_IDLE] + c[_CHECKING] + c[_IN_USE] + c[_CONNECTING]
        limits = self.limits
        if (not broken and rec.state is _IN_USE and self.state is _OPEN and rec.expires_at > now
                and open_now + c[_DRAINING] <= limits.max_size):
            # The common release (the last branch of the chain below, tested first): back to
            # idle, with no list of actions built when `pump` would return none.
            if failed:
                rec.quality.record_failure(now)
            if self.listener is None:  # `_move`, written out as in `acquire_now`
                rec.state = _RETURNED
                c[_IN_USE] -= 1
                c[_RETURNED] += 1
            else:
                self._move(rec, _RELEASE, "released", now)
            rec.idle_since = now
            self._idle.append(conn_id)
            rec.class_name = ""  # holds no slot any more (force_close relies on it)
            # `pump`'s hot path, written out (the pool is open): nobody waits, no target is
            # scheduled, and the floor is met.
            floor, target = limits.min_size, self._target
            if (not scheduler.waiting and not scheduler._displaced and self._target_at is None
                    and open_now >= (target if target > floor else floor)):
                return []
            return self.pump(now)
        actions: list[Action] = []
        if broken:
            self.counters["broken"] += 1
            self._move(rec, Trigger.BREAK, "broken while held", now)
            actions.append(Close(conn_id, "broken"))
        elif rec.state is _DRAINING:
            self._move(rec, _RELEASE, "retired while held", now)
            actions.append(Close(conn_id, "retired"))
        elif self.state is not _OPEN:
            # RETIRE takes a held connection to DRAINING, not CLOSED: release it, then retire.
            self._move(rec, _RELEASE, "released", now)
            self._move(rec, Trigger.RETIRE, "pool draining", now)
            actions.append(Close(conn_id, "draining"))
        else:  # past its lifetime, or the pool is over max_size (a resize)
            reason = "max_lifetime" if rec.expires_at <= now else "resize"
            self.counters["recycled"] += 1
            self._move(rec, _RELEASE, "released", now)
            self._move(rec, Trigger.RETIRE, reason, now)
            actions.append(Close(conn_id, reason))
        rec.class_name = ""  # holds no slot any more (force_close relies on it)
        self.counters["closed"] += 1
        self._maybe_closed()
        actions.extend(self.pump(now))
        return actions

    def retire(self, conn_id: int, now: float, reason: str) -> list[Action]:
        """Close one connection on request (zombie reclaim, an operator): at once if idle, when
        its holder gives it back or its connect or check ends otherwise. A connection unknown or
        already draining is left alone."""
        rec = self.records.get(conn_id)
        if rec is None or rec.state is State.DRAINING:
            return []
        if rec.state is not State.IDLE:
            self._move(rec, Trigger.RETIRE, reason, now)
            return []
        self._idle.remove(conn_id)
        self.counters["closed"] += 1
        self._move(rec, Trigger.RETIRE, reason, now)
        return [Close(conn_id, reason), *self.pump(now)]

    def detach(self, conn_id: int, now: float) -> list[Action]:
        """A holder keeps a connection for good (a proxy's WebSocket relay, for the hours the
        session lasts): the pool forgets it without closing it, its slot is free, and the pool
        may open another in its place. The holder closes it. Raises `IllegalTransition` for a
        connection that is not held."""
        rec = self.records.get(conn_id)
        if rec is None or rec.state not in (_IN_USE, _DRAINING) or not rec.class_name:
            state = rec.state.value if rec else "unknown"
            raise IllegalTransition(conn_id, self.name, state, "detach")
        self.scheduler.release(rec.class_name)
        rec.class_name = ""
        self.counters["detached"] += 1
        self._move(rec, Trigger.CLOSE, "detached: its holder keeps it", now)
        self._maybe_closed()
        return self.pump(now)

    # -- connecting and checking --------------------------------------------------------------

    def connected(self, conn_id: int, now: float, latency: float) -> list[Action]:
        rec = self.records.get(conn_id)
        if rec is None:
            return [Close(conn_id, "pool closed")]
        # The backend answers: forget the backoff, including the delay set by connects that
        # failed beside this one, or waiters would wait out that delay for nothing.
        self._failures = 0
        self._next_connect_at = 0.0
        self.last_error = None
        self.counters["created"] += 1
        self._connect_latency = latency if self._connect_latency is None else (
            self._connect_latency + 0.3 * (latency - self._connect_latency))
        lifetime = self.limits.max_lifetime
        if lifetime is not None:
            rec.expires_at = now + lifetime * (1 - self._rng.random() * self.limits.lifetime_jitter)
        if rec.state is State.DRAINING:
            self._move(rec, Trigger.CONNECTED, "opened while draining", now)
            self.counters["closed"] += 1
            self._maybe_closed()
            return [Close(conn_id, "draining"), *self.pump(now)]
        # The CONNECTED event still carries the age since the connect began (the connect time,
        # which telemetry records); from here on, age counts from establishment.
        self._move(rec, Trigger.CONNECTED, f"connected in {latency * 1000:.1f} ms", now)
        rec.quality.created_at = now
        rec.quality.last_checked = now
        rec.idle_since = now
        self._idle.append(conn_id)
        return self.pump(now)

    def connect_failed(self, conn_id: int, now: float, error: str) -> list[Action]:
        rec = self.records.get(conn_id)
        if rec is None:
            return []
        self._failures += 1
        self.last_error = error
        self.counters["connect_failed"] += 1
        # The exponent stops at 1023: 2 ** 1024 does not fit a float (a backend down for hours
        # fails that often), and the cap is reached long before anyway.
        doublings = min(self._failures - 1, 1023)
        delay = min(self.limits.backoff_cap, self.limits.backoff_base * 2 ** doublings)
        self._next_connect_at = now + delay * (0.5 + 0.5 * self._rng.random())
        self._move(rec, Trigger.CONNECT_FAILED, error, now)
        self._maybe_closed()
        return self.pump(now)

    def check_done(self, conn_id: int, now: float, latency: float, ok: bool,
                   error: str = "") -> list[Action]:
        rec = self.records.get(conn_id)
        if rec is None:
            return [Close(conn_id, "pool closed")]
        self.counters["checks"] += 1
        if not ok:
            self.counters["checks_failed"] += 1
            self._move(rec, Trigger.BREAK, f"check failed: {error}", now)
            self.counters["closed"] += 1
            self._maybe_closed()
            return [Close(conn_id, "check_failed"), *self.pump(now)]
        rec.quality.record_check(now, latency)
        if rec.state is State.DRAINING:
            self._move(rec, Trigger.CHECK_OK, "checked while draining", now)
            self.counters["closed"] += 1
            self._maybe_closed()
            return [Close(conn_id, "draining"), *self.pump(now)]
        self._move(rec, Trigger.CHECK_OK, f"check {latency * 1000:.2f} ms", now)
        self._idle.append(conn_id)
        return self.pump(now)

    # -- targets and sizes --------------------------------------------------------------------

    def set_target(self, n: int, now: float, at: float | None = None) -> list[Action]:
        """Have `n` connections open by `at` (default: now). Validated like the constructor."""
        try:
            n = operator.index(n)  # an int, or an int-like such as numpy's; never a float
        except TypeError:
            raise ConfigError("target", n, "the warm target is a whole number of connections",
                              "round it, e.g. math.ceil(n)") from None
        if at is not None and not math.isfinite(at):
            raise ConfigError("target.at", at, "the time a target is due must be finite",
                              "pass a pool-clock time such as pool.now() + 60, or None for now")
        if n < 0 or n > self.limits.max_size:
            raise ConfigError("target", n, f"the warm target must lie in 0..max_size "
                              f"({self.limits.max_size})", "lower the target or resize() first")
        if at is None or at <= now:
            self._target = self._next_target = n
            self._target_at = None
        else:
            self._target = self.active_target(now)
            self._next_target = n
            self._target_at = at
        return self.pump(now)

    def active_target(self, now: float) -> int:
        if self._target_at is not None and now >= self._target_start(now):
            self._target = self._next_target
            self._target_at = None
        return self._target

    def _target_start(self, now: float) -> float:
        assert self._target_at is not None
        return self._target_at - self.target_lead(self._next_target)

    def target_lead(self, n: int) -> float:
        """Seconds before its time that a target of `n` starts opening connections."""
        deficit = max(0, n - self.open_connections)
        rounds = math.ceil(deficit / self.limits.max_connecting)
        latency = self._connect_latency if self._connect_latency is not None else 0.1
        return 2.0 * rounds * latency + 1.0

    @property
    def target(self) -> int:
        return self._target

    def resize(self, min_size: int, max_size: int, now: float) -> list[Action]:
        """Change the bounds. Growth serves waiters at once; shrinking is gradual."""
        self.limits = replace(self.limits, min_size=min_size, max_size=max_size).validate()
        self.scheduler.set_capacity(max_size)
        self._target = min(self._target, max_size)
        self._next_target = min(self._next_target, max_size)
        return self.pump(now)

    # -- growth and maintenance ---------------------------------------------------------------

    def floor(self, now: float) -> int:
        """The number of connections the pool keeps open: max(min_size, target)."""
        return max(self.limits.min_size, self.active_target(now))

    def pump(self, now: float) -> list[Action]:
        """Serve waiters from idle connections, then open what demand and targets need."""
        scheduler = self.scheduler
        if (not scheduler.waiting and not scheduler._displaced and self._target_at is None
                and self.state is _OPEN):
            # The hot path of a pool in steady use (every release): nobody waits and no target
            # is scheduled, so only a floor not yet met opens connections.
            counts = self.counts
            # max(min_size, target) without max(): its argument parsing costs ~1,300
            # instructions, per release of a connection, and a comparison ~100.
            floor, target = self.limits.min_size, self._target
            if (counts[_IDLE] + counts[_IN_USE] + counts[_CHECKING]
                    + counts[_CONNECTING]) >= (target if target > floor else floor):
                return []
        actions: list[Action] = []
        if self.scheduler._displaced:
            for waiter in self.scheduler.take_displaced():
                self.counters["displaced"] += 1
                actions.append(Reject(waiter, "displaced"))
        if self._idle and self.scheduler.waiting:
            actions.extend(self.dispatch(now))
        if self.state is not _OPEN:
            return actions
        limits = self.limits
        counts = self.counts
        connecting = counts[_CONNECTING]
        busy = counts[_IN_USE] + counts[_CHECKING]
        open_now = counts[_IDLE] + busy + connecting  # self.open_connections
        ceiling = limits.max_size - counts[_DRAINING]
        if open_now >= ceiling:
            # Full: no room whatever the demand (the hot path of a busy pool). Keep the one
            # side effect of `floor()`: a scheduled target still takes over on time.
            if self._target_at is not None:
                self.active_target(now)
            return actions
        wanted = max(self.floor(now), busy + self.scheduler.admissible_waiting())
        room = min(wanted, ceiling) - open_now
        if room <= 0 or now < self._next_connect_at:
            return actions
        slots = (1 if self._failures else limits.max_connecting) - connecting
        for _ in range(min(room, slots)):
            self._next_id += 1
            rec = ConnectionRecord(self._next_id, self.name, now)
            self.records[rec.id] = rec
            self.counts[_CONNECTING] += 1
            actions.append(Connect(rec.id))
        return actions

    def typical_check_latency(self) -> float | None:
        samples = sorted(r.quality.check_latency for r in self.records.values()
                         if r.quality.check_latency is not None)
        return samples[len(samples) // 2] if samples else None

    def maintain(self, now: float) -> list[Action]:
        """Periodic pass: leaks, lifetimes, quality, idle trimming, checks, then growth."""
        actions: list[Action] = []
        limits = self.limits
        leak = limits.leak_threshold
        typical = self.typical_check_latency()
        floor = self.floor(now)
        excess = self.open_connections - floor
        over_max = self.open_connections - limits.max_size
        trimmed = 0
        checking = self.counts[State.CHECKING]
        keep: list[int] = []
        # Held connections past their lifetime retire first, and recycling is decided for all
        # idle connections next, so that trimming counts every connection this pass takes out
        # of service and never takes the pool below its floor.
        for rec in list(self.records.values()):
            # Held: IN_USE, or DRAINING with its class still set since it was retired while
            # held (its lifetime ended, a drain): a holder can leak that one just the same.
            if rec.class_name:
                if leak is not None and not rec.leak_reported and now - rec.acquired_at >= leak:
                    rec.leak_reported = True
                    self.counters["leaked"] += 1
                    actions.append(Leak(rec.id, now - rec.acquired_at))
                if rec.state is State.IN_USE and rec.expires_at <= now:
                    self._move(rec, Trigger.RETIRE, "max_lifetime while held", now)
                    excess -= 1
                    over_max -= 1
        recycle: dict[int, str] = {}
        for conn_id in self._idle:
            rec = self.records[conn_id]
            if rec.expires_at <= now:
                recycle[conn_id] = "max_lifetime"
            elif rec.quality.score(now, typical) < limits.quality_threshold:
                recycle[conn_id] = "low_quality"
        excess -= len(recycle)
        over_max -= len(recycle)
        for conn_id in self._idle:
            rec = self.records[conn_id]
            quality = rec.quality
            reason = recycle.get(conn_id, "")
            if reason:
                self.counters["recycled"] += 1
            elif trimmed < limits.trim_step and (over_max > 0 or (
                    excess > 0 and limits.idle_timeout is not None
                    and now - rec.idle_since >= limits.idle_timeout)):
                reason = "resize" if over_max > 0 else "idle_timeout"
                trimmed += 1
                excess -= 1
                over_max -= 1
            if reason:
                self.counters["closed"] += 1
                self._move(rec, Trigger.RETIRE, reason, now)
                actions.append(Close(conn_id, reason))
                continue
            due = max(quality.last_checked, rec.idle_since) + quality.check_interval(
                now, limits.check_interval, limits.check_interval_floor)
            if due <= now and checking < limits.max_connecting:
                checking += 1
                self._move(rec, Trigger.CHECK, "check due", now)
                actions.append(Check(conn_id))
                continue
            keep.append(conn_id)
        self._idle[:] = keep
        self._maybe_closed()
        actions.extend(self.pump(now))
        return actions

    def next_wakeup(self, now: float) -> float:
        """The latest time by which `maintain` should run again."""
        limits = self.limits
        soonest = now + limits.check_interval
        if self._target_at is not None:
            soonest = min(soonest, self._target_start(now))
        if self._failures and self._next_connect_at > now:
            soonest = min(soonest, self._next_connect_at)
        # Idle connections past idle_timeout only matter above the floor: at it, nothing is
        # trimmed, and waking for them would wake at once, forever. Likewise a retired
        # (DRAINING) connection's expiry: maintain has nothing more to do about it.
        trimmable = self.open_connections > max(limits.min_size, self._target)
        for rec in self.records.values():
            if rec.state is not State.DRAINING:
                soonest = min(soonest, rec.expires_at)
            if rec.class_name:  # held (see maintain)
                if limits.leak_threshold is not None and not rec.leak_reported:
                    soonest = min(soonest, _leak_due(rec.acquired_at, limits.leak_threshold))
            elif rec.state is State.IDLE and limits.idle_timeout is not None and trimmable:
                soonest = min(soonest, rec.idle_since + limits.idle_timeout)
        return max(soonest, now)

    # -- draining -----------------------------------------------------------------------------

    def drain(self, now: float) -> list[Action]:
        """Hand out nothing new; close idle connections now and held ones when they return."""
        if self.state is not PoolState.OPEN:
            return []
        self.state = PoolState.DRAINING
        actions: list[Action] = []
        for waiter in self.scheduler.waiters():
            self.scheduler.cancel(waiter)
            self.counters["rejected"] += 1
            actions.append(Reject(waiter, "draining"))
        for conn_id in self._idle:
            self._move(self.records[conn_id], Trigger.RETIRE, "pool draining", now)
            self.counters["closed"] += 1
            actions.append(Close(conn_id, "draining"))
        self._idle.clear()
        for rec in list(self.records.values()):
            if rec.state in (State.IN_USE, State.CHECKING, State.CONNECTING):
                self._move(rec, Trigger.RETIRE, "pool draining", now)
        self._maybe_closed()
        return actions

    def force_close(self, now: float, reason: str = "drain_timeout") -> list[Action]:
        """Close every connection still open, held ones included."""
        actions = self.drain(now) if self.state is PoolState.OPEN else []
        for rec in list(self.records.values()):
            if rec.class_name:  # held: IN_USE, or DRAINING since it was retired while held
                self.scheduler.release(rec.class_name)
                rec.class_name = ""
            self._move(rec, Trigger.CLOSE, reason, now)
            self.counters["closed"] += 1
            actions.append(Close(rec.id, reason))
        self._idle.clear()
        self._maybe_closed()
        return actions

    def _maybe_closed(self) -> None:
        if self.state is PoolState.DRAINING and not self.records:
            self.state = PoolState.CLOSED

    # -- observation --------------------------------------------------------------------------

    def stats(self, now: float) -> dict[str, Any]:
        counts = self.counts
        return {
            "name": self.name,
            "state": self.state.value,
            "min_size": self.limits.min_size,
            "max_size": self.limits.max_size,
            "target": self.active_target(now),
            "connections": {s.value: counts[s] for s in State if s not in FINAL},
            "waiting": self.scheduler.waiting_by_class(),
            "in_use_by_class": self.scheduler.in_use_by_class(),
            "reserved": self.scheduler.reserved_by_class(),
            "counters": dict(self.counters),
            "wait_seconds": {name: h.snapshot() for name, h in self.waits.items()},
            "connect_latency": self._connect_latency,
            "last_error": self.last_error,
        }

    def describe(self) -> str:
        c = self.counts
        return (f"{self.state.value}, in use {c[State.IN_USE]}, idle {c[State.IDLE]}, "
                f"connecting {c[State.CONNECTING]}, waiting {self.scheduler.waiting}, "
                f"max {self.limits.max_size}")

    def __repr__(self) -> str:
        c = self.counts
        return (f"<PoolPolicy {self.name} [in use {c[State.IN_USE]}, idle {c[State.IDLE]}, "
                f"warming {c[State.CONNECTING]} | waiting {self.scheduler.waiting}]>")
