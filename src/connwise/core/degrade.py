"""The degradation ladder: what each class gives up, step by step, while capacity is contended.

Theory of operation
-------------------
Each priority class has a ladder of five levels, applied in order and cumulatively:

====  ========  =========================================================================
 0    none      full service
 1    throttle  the class's relays are capped at `throttle_rate` bytes/s per connection
                (a `TokenBucket` driving `pause_reading`; nginx `limit_rate` semantics)
 2    signal    requests carry `Connwise-Degrade: <level>` so the application can lower quality
                (bitrate, page weight) and finish sooner
 3    queue     new work of the class takes no fast path: it waits in the admission queue,
                where higher classes overtake it (up to the class's max wait)
 4    shed      new work is refused at once: HTTP 503 with `Retry-After`, TCP close,
                WebSocket close 1013 ("try again later")
====  ========  =========================================================================

The shell reads a class's decisions when it acts on a request: the signal when the request is
dispatched to a backend (after any wait in the queue, so requests that queued while the ladder
climbed carry it), the queue and shed steps when it arrives, through `takes_free_slot` and
`sheds` — the admission rule the gateway and the simulator share. At the shed level a request
still takes a slot that is free while nobody waits, and still queues while fewer than
`shed_backlog` x capacity requests wait (3 by default: a few service times of wait) or while the
class's pressure is below the shed step's exit threshold. Refusing
whatever finds no free slot makes the group a loss system (Erlang B): 10 slots offered 10
Erlangs turn away a fifth of the arrivals although the capacity suffices on average, because a
slot freed between two arrivals stays idle. The gateway at 3x overload
(`benchmarks/gateway_priority.py`) served 77% of the requests without a backlog, 85% with one
round of the capacity and 89% with three. Refusing, at the shed level, only the work predicted
to outwait its max wait (from the recent completion rate) was tried and dropped: the simulator
showed it serving fewer (47% against 62% at 3x load), because later arrivals of higher classes
overtake the queued work the prediction let in, which then times out; a short backlog waits a
few service times, far inside any max wait, whoever overtakes it. A backlog counted in
requests alone still refused far more than the overload's excess: at 3x (where degraded
answers let the capacity serve ~97% of the arrivals) the queue was held at 30, bursts of
Poisson arrivals past it were refused, 150-360 a second against a deficit of ~80, the 503s took
CPU from the requests served, and the pressure fell below the step's exit, so the ladder left
the step after `dwell_down`, the queue grew back and the ladder climbed again: 94% served.
Queueing whatever arrives while the pressure is below the step's exit (for `interactive` 1.25:
a queue a quarter full, or an oldest waiter a quarter into its max wait) keeps the queue at the
length at which the step holds, and refuses only the excess: 97% served, the ladder steady at
shed for the rest of the overload.

The input is a *pressure* per class, a number in 0..2 built from the admission signals
(`Contention.pressure`): the utilization of the capacity (0..1), plus, once callers wait, the
larger of the queue's fill ratio and the oldest wait as a fraction of its class's max wait
(0..1). So 0.85 means "85% of capacity busy", 1.0 "full", 1.5 "the oldest waiter has used
half of its max wait". `contention_from_scheduler` derives it from a `Scheduler`, counting for
class c the waiters of c and of every class above it: work that would be served before c's is
what c must make room for, so a lower class always sees at least the pressure of a higher one.

Hysteresis. A level is entered when the pressure reaches its `enter` threshold and left when
the pressure has stayed below its `exit` threshold (which is lower) for `dwell_down` seconds;
between two steps up at least `dwell_up` seconds pass. Each update moves a class by at most one
step, so the ladder is climbed and descended in order. The exit of `signal` sits far below its
enter (0.5 vs 1.0) on purpose: the signal itself cuts the work per request, so while it is on,
utilization understates demand — with a 5x cheaper degraded response, leaving at 0.5 avoids
undoing the signal just because it works.

Order between classes: the thresholds of a class are those of the lowest class plus
`class_offset` per rank position above it, and a class never stands on a higher level than any
class ranked below it, unless that class is held at its `max_level`. A class steps up to a level
only in an update after the class below it reached that level (or its `max_level`), and steps
down from a level only in an update after the class above it left it: the ladder of bulk moves
first and is undone last, so lower classes make room before a higher class gives anything up.
With the defaults, critical sheds only when its own oldest waiter has used 90% of its max wait
(pressure 1.9).

Defaults (for the lowest class; + 0.15 per rank above):

========  =====  ====  ==================================================================
level     enter  exit  why
========  =====  ====  ==================================================================
throttle  0.85   0.60  cheap and invisible to short requests; starts before the queue does
signal    1.00   0.50  capacity is full; see the exit above
queue     1.25   0.90  a queue has formed: the oldest waiter used a quarter of its max wait
shed      1.60   1.10  waiters would time out anyway: refuse early with a Retry-After
========  =====  ====  ==================================================================

`dwell_up` 0.05 s, `dwell_down` 5 s (scale up fast, scale down slowly, as Kubernetes' HPA does:
no scale-up stabilization by default, a 300 s scale-down window, here on a request time scale).
The gateway updates the ladder on admission events (a request queued, a slot released while
others wait), at most every 10 ms, besides its periodic tick: at 3x overload a queue of 1024
fills in half a second, so a ladder that took a second per step signalled after the queue was
full of requests bound for full-quality service. `throttle_rate`
1 MiB/s per connection (8 Mbit/s: a throttled download or video still moves), burst 256 KiB.
`retry_after` 5 s (HAProxy's and nginx's 503 carry none by default; 5 s spreads retries past a
typical spike without making a client give up).

Counters: for each class and step, how many times the class *entered* the step and how many
times the shell *applied* it (`record`): a throttled pause, a signalled request, a queued
request, a shed request or connection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connwise.core.classes import ClassTable
from connwise.core.scheduler import Scheduler
from connwise.errors import ConfigError

NONE, THROTTLE, SIGNAL, QUEUE, SHED = range(5)
LEVEL_NAMES: tuple[str, ...] = ("none", "throttle", "signal", "queue", "shed")
#: The request header of the signal step (HTTP/1.1 header names are case-insensitive).
SIGNAL_HEADER = "Connwise-Degrade"
#: The WebSocket close code of the shed step (RFC 6455 registry: "Try Again Later").
WS_TRY_AGAIN_LATER = 1013
#: Least seconds between two ladder updates driven by admission events (a request queued, a
#: slot freed while others wait), besides the shell's periodic tick: O(classes) each, so at most
#: 100 a second costs nothing measurable. The gateway and the simulator both use it.
LADDER_UPDATE_INTERVAL = 0.01


@dataclass(frozen=True, slots=True)
class Step:
    """Thresholds of one level: entered at `enter`, left below `exit` (exit < enter)."""

    enter: float
    exit: float


DEFAULT_STEPS: tuple[Step, ...] = (
    Step(0.85, 0.6),   # throttle
    Step(1.0, 0.5),    # signal
    Step(1.25, 0.9),   # queue
    Step(1.6, 1.1),    # shed
)


def _empty_overrides() -> dict[str, tuple[Step, ...]]:
    return {}


def _empty_max_levels() -> dict[str, int]:
    return {}


@dataclass(frozen=True, slots=True)
class DegradeConfig:
    """The ladder's knobs; the module docstring explains each default."""

    #: Thresholds of levels 1..4 for the lowest-ranked class.
    steps: tuple[Step, ...] = DEFAULT_STEPS
    #: Added to every threshold per rank position above the lowest class.
    class_offset: float = 0.15
    #: A class's own four steps, replacing the derived ones.
    overrides: Mapping[str, tuple[Step, ...]] = field(default_factory=_empty_overrides)
    #: The highest level a class may reach (e.g. {"critical": 3}: never shed critical).
    max_level: Mapping[str, int] = field(default_factory=_empty_max_levels)
    dwell_up: float = 0.05
    dwell_down: float = 5.0
    throttle_rate: float = 1024.0 * 1024.0
    #: At the shed step, arriving work still queues while fewer than `shed_backlog` x capacity
    #: requests wait (0: refuse whatever finds no free slot).
    shed_backlog: float = 3.0
    throttle_burst: float = 256.0 * 1024.0
    retry_after: int = 5

    def validate(self, prefix: str = "degrade",
                 classes: ClassTable | None = None) -> DegradeConfig:
        def bad(key: str, value: object, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", value, problem, fix)

        _check_steps(self.steps, f"{prefix}.steps")
        for name, steps in self.overrides.items():
            if classes is not None and name not in classes:
                raise bad(f"overrides.{name}", name, "no such priority class",
                          f"use one of {classes.names}")
            _check_steps(steps, f"{prefix}.overrides.{name}")
        for name, level in self.max_level.items():
            if classes is not None and name not in classes:
                raise bad(f"max_level.{name}", name, "no such priority class",
                          f"use one of {classes.names}")
            if not isinstance(level, int) or not NONE <= level <= SHED:
                raise bad(f"max_level.{name}", level, "a level lies in 0..4",
                          "use e.g. 3 to never shed the class")
        if not 0 <= self.class_offset < math.inf:
            raise bad("class_offset", self.class_offset, "the offset is a finite number >= 0",
                      "use e.g. 0.15")
        for key in ("dwell_up", "dwell_down"):
            value = getattr(self, key)
            if not 0 <= value < math.inf:
                raise bad(key, value, "a dwell time is a finite duration >= 0",
                          "use seconds, e.g. 1")
        if not 0 < self.throttle_rate < math.inf:
            raise bad("throttle_rate", self.throttle_rate, "the rate must be positive and "
                      "finite", "use bytes per second, e.g. 1048576")
        if not 0 < self.throttle_burst < math.inf:
            raise bad("throttle_burst", self.throttle_burst, "the burst must be positive and "
                      "finite", "use bytes, e.g. 262144")
        if not 0 <= self.shed_backlog < math.inf:
            raise bad("shed_backlog", self.shed_backlog, "the backlog is a finite number of "
                      "rounds of the capacity, >= 0", "use e.g. 3, or 0 to refuse at once")
        if not isinstance(self.retry_after, int) or self.retry_after < 0:
            raise bad("retry_after", self.retry_after, "Retry-After is whole seconds >= 0",
                      "use e.g. 5")
        return self


def _check_steps(steps: tuple[Step, ...], key: str) -> None:
    if len(steps) != SHED:
        raise ConfigError(key, len(steps), "the ladder has exactly four steps (throttle, "
                          "signal, queue, shed)", "give four {enter, exit} pairs")
    previous = -math.inf
    for i, step in enumerate(steps):
        where = f"{key}[{i}]"
        if not (0 <= step.exit < step.enter < math.inf):
            raise ConfigError(where, (step.enter, step.exit), "a step needs 0 <= exit < enter "
                              "(hysteresis)", "set exit below enter, e.g. enter 1.0, exit 0.8")
        if step.enter <= previous:
            raise ConfigError(f"{where}.enter", step.enter, "enter thresholds must rise from "
                              "one step to the next", "order the steps throttle, signal, "
                              "queue, shed with rising enter thresholds")
        previous = step.enter


# -- signals ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contention:
    """What a class sees of the capacity it draws on at one moment."""

    #: Busy share of the capacity (in_use / capacity), 0..1.
    utilization: float = 0.0
    #: Callers waiting that would be served before or with this class.
    waiting: int = 0
    #: The bound on waiting callers (0: unknown, the fill ratio is left out).
    queue_limit: int = 0
    #: Seconds the most urgent such waiter has waited, and the max wait of its class.
    oldest_wait: float = 0.0
    max_wait: float = 0.0

    def pressure(self) -> float:
        """utilization (0..1) + max(queue fill, oldest wait / max wait) (0..1)."""
        utilization = min(1.0, max(0.0, self.utilization))
        fill = self.waiting / self.queue_limit if self.queue_limit > 0 else 0.0
        wait = self.oldest_wait / self.max_wait if self.max_wait > 0 else 0.0
        return utilization + min(1.0, max(0.0, fill, wait))


def contention_from_scheduler(scheduler: Scheduler, now: float) -> dict[str, Contention]:
    """Per class, the contention it sees in `scheduler` at `now` (see the module doc).

    Costs O(classes) (each class's oldest waiter is the head of its FIFO), so the shell may call
    it on admission events, not only from a periodic tick.
    """
    classes = scheduler.classes
    waiting = scheduler.waiting_by_class()
    utilization = scheduler.in_use / scheduler.capacity
    result: dict[str, Contention] = {}
    total = 0
    worst = (-1.0, 0.0, 0.0)  # (ratio, oldest wait, max wait)
    for cls in classes:  # highest rank first: accumulate the classes above and this one
        total += waiting.get(cls.name, 0)
        arrived = scheduler.oldest_arrival(cls.name)
        if arrived is not None:
            waited = max(0.0, now - arrived)
            ratio = waited / cls.max_wait
            if ratio > worst[0]:
                worst = (ratio, waited, cls.max_wait)
        result[cls.name] = Contention(utilization=utilization, waiting=total,
                                      queue_limit=scheduler.max_waiters,
                                      oldest_wait=worst[1], max_wait=worst[2])
    return result


# -- the ladder -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LevelChange:
    """A class moved one step on its ladder."""

    class_name: str
    from_level: int
    to_level: int
    pressure: float
    at: float
    reason: str


class ClassDegrade:
    """One class's place on its ladder, and the decisions the shell reads on its hot path."""

    __slots__ = ("applied", "below_since", "changed_at", "enter", "entered", "exit", "header",
                 "level", "max_level", "name", "pressure", "retry_after", "throttle_rate")

    def __init__(self, name: str, steps: tuple[Step, ...], max_level: int,
                 retry_after: int) -> None:
        self.name = name
        # Index by level: enter[1] is the threshold to enter throttle; [0] is unused.
        self.enter = (math.inf, *(s.enter for s in steps))
        self.exit = (-math.inf, *(s.exit for s in steps))
        self.max_level = max_level
        self.retry_after = retry_after
        self.level = NONE
        self.pressure = 0.0
        self.changed_at = -math.inf
        self.below_since: float | None = None
        self.entered = [0] * (SHED + 1)
        self.applied = [0] * (SHED + 1)
        self.throttle_rate: float | None = None
        self.header = b""

    def __repr__(self) -> str:
        return (f"<ClassDegrade {self.name} level {self.level} ({LEVEL_NAMES[self.level]}), "
                f"pressure {self.pressure:.2f}>")


class _ByClass(dict[str, ClassDegrade]):
    """The ladder state of each class by name; an unknown name raises `UnknownClass` (naming
    the known classes), so the query methods, run per request, look a state up without a call
    to a helper that would translate the KeyError."""

    __slots__ = ("classes",)

    def __init__(self, states: list[ClassDegrade], classes: ClassTable) -> None:
        super().__init__((s.name, s) for s in states)
        self.classes = classes

    def __missing__(self, class_name: str) -> ClassDegrade:
        self.classes[class_name]  # raises UnknownClass naming the known classes
        raise KeyError(class_name)


class DegradeLadder:
    """The ladders of all classes; `update` moves them, the query methods read them."""

    __slots__ = ("_bottom_up", "_state", "classes", "config")

    def __init__(self, config: DegradeConfig, classes: ClassTable, *,
                 prefix: str = "degrade") -> None:
        config.validate(prefix, classes)
        self.config = config
        self.classes = classes
        bottom_up = sorted(classes, key=lambda c: c.rank)
        self._bottom_up: list[ClassDegrade] = []
        for position, cls in enumerate(bottom_up):
            steps = config.overrides.get(cls.name)
            if steps is None:
                offset = config.class_offset * position
                steps = tuple(Step(s.enter + offset, s.exit + offset) for s in config.steps)
            self._bottom_up.append(ClassDegrade(cls.name, steps,
                                                config.max_level.get(cls.name, SHED),
                                                config.retry_after))
        self._state = _ByClass(self._bottom_up, classes)

    # -- moving -------------------------------------------------------------------------------

    def update(self, signals: Mapping[str, Contention], now: float) -> list[LevelChange]:
        """Move each class at most one step given its contention at `now`."""
        return self.update_pressure({name: c.pressure() for name, c in signals.items()}, now)

    def update_pressure(self, pressures: Mapping[str, float], now: float) -> list[LevelChange]:
        """As `update`, from pressures directly; a class missing from `pressures` has 0."""
        config = self.config
        ladders = self._bottom_up
        wants: list[int] = []
        for state in ladders:
            pressure = float(pressures.get(state.name, 0.0))
            if math.isnan(pressure):
                pressure = 0.0
            state.pressure = pressure
            level = state.level
            want = 0
            if level < state.max_level and pressure >= state.enter[level + 1] and \
                    now - state.changed_at >= config.dwell_up:
                want = 1
            if level > NONE and pressure < state.exit[level]:
                if state.below_since is None:
                    state.below_since = now
                if now - state.below_since >= config.dwell_down:
                    want = -1
            else:
                state.below_since = None
            wants.append(want)
        changes: list[LevelChange] = []
        before = [state.level for state in ladders]
        # Up, lowest class first: a class climbs to a level only once the class below it held
        # that level before this update, or stood at its `max_level` (it goes no higher, so
        # waiting for it would cap every class above it at its limit).
        for i, state in enumerate(ladders):
            if wants[i] == 1 and (i == 0 or before[i - 1] > state.level
                                  or before[i - 1] >= ladders[i - 1].max_level):
                self._move(state, state.level + 1, now, changes,
                           f"pressure {state.pressure:.3f} >= "
                           f"{state.enter[state.level + 1]:g}")
        # Down, highest class first: a class descends from a level only once the class above
        # it had left that level before this update (and has not climbed back in it).
        top = len(ladders) - 1
        for i in range(top, -1, -1):
            state = ladders[i]
            if wants[i] == -1 and (i == top or max(before[i + 1], ladders[i + 1].level)
                                   < state.level):
                self._move(state, state.level - 1, now, changes,
                           f"pressure below {state.exit[state.level]:g} for "
                           f"{config.dwell_down:g} s")
        return changes

    def _move(self, state: ClassDegrade, level: int, now: float, changes: list[LevelChange],
              reason: str) -> None:
        previous = state.level
        state.level = level
        state.changed_at = now
        if level > previous:
            state.entered[level] += 1
            state.below_since = None
        else:
            state.below_since = now if state.pressure < state.exit[level] else None
        config = self.config
        state.throttle_rate = config.throttle_rate if level >= THROTTLE else None
        state.header = (f"{SIGNAL_HEADER}: {level}\r\n".encode("ascii")
                        if level >= SIGNAL else b"")
        changes.append(LevelChange(state.name, previous, level, state.pressure, now, reason))

    # -- decisions (hot path: dict lookup and an attribute read) --------------------------------

    def state(self, class_name: str) -> ClassDegrade:
        """The live ladder state of a class; the shell may keep it and read its attributes."""
        return self._state[class_name]

    def level(self, class_name: str) -> int:
        return self._state[class_name].level

    def throttle_rate(self, class_name: str) -> float | None:
        """Bytes/s per connection while the class is at `throttle` or above, else None."""
        return self._state[class_name].throttle_rate

    def signal_level(self, class_name: str) -> int:
        """The `Connwise-Degrade` value to send (the level), or 0 to send none."""
        level = self._state[class_name].level
        return level if level >= SIGNAL else 0

    def signal_header(self, class_name: str) -> bytes:
        """The precomputed header line (with CRLF) to add, or b""."""
        return self._state[class_name].header

    def should_queue(self, class_name: str) -> bool:
        return self._state[class_name].level >= QUEUE

    def should_shed(self, class_name: str) -> bool:
        return self._state[class_name].level >= SHED

    def retry_after(self, class_name: str) -> int:
        """Seconds for the `Retry-After` header of a shed request."""
        return self._state[class_name].retry_after

    def record(self, class_name: str, level: int) -> None:
        """Count one application of step `level` (1..4) to the class's traffic."""
        self._state[class_name].applied[level] += 1

    # -- admission --------------------------------------------------------------------------

    def takes_free_slot(self, class_name: str, scheduler: Scheduler) -> bool:
        """Whether an arriving request of the class may take a free slot at once: below the
        queue step always; at the shed step only when nobody waits (a free slot then serves it
        now, which no prediction can beat); at the queue step never."""
        level = self._state[class_name].level
        if level >= SHED:
            return not scheduler.waiting
        return level < QUEUE

    def sheds(self, class_name: str, scheduler: Scheduler) -> bool:
        """Whether an arriving request of the class that got no free slot is refused rather
        than queued: at the shed step, once `shed_backlog` rounds of the capacity wait and
        the class's pressure (of its last update) is at or above the step's exit threshold."""
        state = self._state[class_name]
        return (state.level >= SHED and state.pressure >= state.exit[SHED]
                and scheduler.waiting >= self.config.shed_backlog * scheduler.capacity)

    # -- observation --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {s.name: {"level": s.level, "step": LEVEL_NAMES[s.level],
                         "pressure": round(s.pressure, 6),
                         "entered": dict(zip(LEVEL_NAMES[1:], s.entered[1:], strict=True)),
                         "applied": dict(zip(LEVEL_NAMES[1:], s.applied[1:], strict=True))}
                for s in reversed(self._bottom_up)}

    def __repr__(self) -> str:
        levels = ", ".join(f"{s.name} {s.level}" for s in reversed(self._bottom_up))
        return f"<DegradeLadder [{levels}]>"
