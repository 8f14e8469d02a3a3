"""Backend health: one state machine per backend, and a group that caps ejections.

Theory of operation
-------------------
A backend's state is data: `HEALTH_TRANSITIONS` maps (state, event) to the next state, and an
event not in it raises `IllegalBackendTransition` (an `IllegalTransition`) naming the backend,
the state and the event. The table also generates the state diagram of the docs.

* **Active checks** (HAProxy's `rise`/`fall`): the shell runs a check every `interval` and
  reports each result. `fall` consecutive failures (default 3) make a backend `unhealthy`;
  `rise` consecutive successes (default 2) bring it back, through slow start.
* **Passive outlier ejection** (Envoy's outlier detection): `consecutive_failures` failed
  requests or connects in a row (default 5, Envoy's consecutive_5xx) *eject* the backend for
  `base_ejection_time * 2**k` seconds, capped at `max_ejection_time`, where k counts its
  earlier ejections (one is forgiven per `base_ejection_time` spent back in service). Envoy
  grows the time linearly (base x number of ejections); we double it, so a flapping backend
  is out of the way sooner, and cap it the same. A success resets the failure run, and so
  does a return to rotation.
* **The ejection cap**: within a `HealthGroup`, at most `max_ejection_percent` of the backends
  are ejected at once — `floor(percent / 100 * n)`, but at least one, since Envoy too ejects a
  host when none is ejected whatever the percentage (default 10%: in a group of fewer than 20
  backends, one at a time). An ejection over the cap is refused and counted; the failure run
  continues, so the backend is ejected at its next failure once there is room. Only outlier
  ejections count: a backend that fails its active checks is down on evidence, not suspicion.
  Nor is the last backend in rotation ejected: with nowhere else to send its requests, its
  ejection would fail them all until it ends, however soon the backend recovers (Envoy's
  panic threshold sends them to it then, ejected or not).
* **Slow start** (HAProxy `slowstart`, Envoy `slow_start_config`): a backend that comes back
  (checks passed, ejection over, undrained) first takes a weight that ramps linearly from
  `slow_start_min_weight` (0.1, Envoy's min_weight_percent) to 1 over `slow_start` seconds
  (default 10 s: a cold cache or JIT warms on a tenth of the traffic first). 0 disables it.
* **Drain**: an operator takes a backend out of rotation; checks go on being counted, and on
  undrain it ramps up again (HAProxy applies slowstart when a server leaves maintenance too).

Time-driven transitions (the end of an ejection, of a slow start) happen lazily, at the time
they were due, the next time the backend is asked anything with a `now` at or past it; the
query methods (`available`, `weight`) cost an attribute comparison when nothing is due.
Every transition is appended to a bounded log (`take_transitions`) for telemetry.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from connwise.errors import ConfigError, ConnwiseError, IllegalTransition


class HealthState(enum.Enum):
    # Hashed by identity, in C, as connwise.core.lifecycle.State: `available` looks the state
    # up in AVAILABLE for every request, and Enum's own __hash__ is Python code.
    __hash__ = object.__hash__

    HEALTHY = "healthy"
    SLOW_START = "slow_start"
    UNHEALTHY = "unhealthy"
    EJECTED = "ejected"
    DRAINING = "draining"


class HealthEvent(enum.Enum):
    __hash__ = object.__hash__  # see HealthState

    #: `fall` consecutive active checks failed.
    CHECKS_FAILED = "checks_failed"
    #: `rise` consecutive active checks passed, after they had failed.
    CHECKS_PASSED = "checks_passed"
    #: `consecutive_failures` failed requests in a row, and the group's cap allows it.
    EJECT = "eject"
    #: The ejection time is over.
    EJECTION_ENDED = "ejection_ended"
    #: The slow-start window is over.
    RAMPED = "ramped"
    DRAIN = "drain"
    UNDRAIN = "undrain"


H, E = HealthState, HealthEvent

HEALTH_TRANSITIONS: dict[tuple[HealthState, HealthEvent], HealthState] = {
    (H.HEALTHY, E.CHECKS_FAILED): H.UNHEALTHY,
    (H.HEALTHY, E.EJECT): H.EJECTED,
    (H.HEALTHY, E.DRAIN): H.DRAINING,
    (H.SLOW_START, E.RAMPED): H.HEALTHY,
    (H.SLOW_START, E.CHECKS_FAILED): H.UNHEALTHY,
    (H.SLOW_START, E.EJECT): H.EJECTED,
    (H.SLOW_START, E.DRAIN): H.DRAINING,
    (H.UNHEALTHY, E.CHECKS_PASSED): H.SLOW_START,
    (H.UNHEALTHY, E.DRAIN): H.DRAINING,
    (H.EJECTED, E.EJECTION_ENDED): H.SLOW_START,
    (H.EJECTED, E.CHECKS_FAILED): H.UNHEALTHY,
    (H.EJECTED, E.DRAIN): H.DRAINING,
    (H.DRAINING, E.CHECKS_FAILED): H.DRAINING,
    (H.DRAINING, E.CHECKS_PASSED): H.DRAINING,
    (H.DRAINING, E.UNDRAIN): H.SLOW_START,
}

#: States in which a backend takes new work.
AVAILABLE = frozenset({H.HEALTHY, H.SLOW_START})


class IllegalBackendTransition(IllegalTransition):
    """A backend was given an event its state does not take (a bookkeeping bug)."""

    def __init__(self, backend: str, state: str, event: str) -> None:
        ConnwiseError.__init__(
            self, f"backend {backend!r} is {state} and cannot take event {event!r}; this is a "
            "bug in the caller's bookkeeping, please report it with this message.")
        self.conn_id = 0
        self.owner = backend
        self.backend = backend
        self.state = state
        self.trigger = event


def state_diagram() -> str:
    """The transition table as a Mermaid state diagram, for the docs."""
    lines = ["stateDiagram-v2", f"    [*] --> {H.HEALTHY.value}"]
    for (source, event), target in HEALTH_TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {event.value}")
    return "\n".join(lines)


# -- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Active checks, outlier ejection and slow start; see the module doc for the defaults."""

    #: HAProxy's defaults: 2 successes to rise, 3 failures to fall.
    rise: int = 2
    fall: int = 3
    #: Seconds between active checks (HAProxy's `inter` is 2 s; 5 s keeps checks cheap) and
    #: the timeout of one check; carried out by the shell.
    interval: float = 5.0
    timeout: float = 2.0
    #: Envoy's consecutive_5xx default.
    consecutive_failures: int = 5
    #: Envoy's base_ejection_time and max_ejection_time defaults.
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    #: Envoy's max_ejection_percent default (and, as Envoy, at least one may be ejected).
    max_ejection_percent: float = 10.0
    slow_start: float = 10.0
    #: Envoy's slow_start_config min_weight_percent default, as a fraction.
    slow_start_min_weight: float = 0.1
    #: Transitions kept per backend for telemetry.
    log_size: int = 64

    def validate(self, prefix: str = "health") -> HealthConfig:
        def bad(key: str, value: object, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", value, problem, fix)

        for key in ("rise", "fall", "consecutive_failures", "log_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise bad(key, value, "the count must be a whole number >= 1", "use e.g. 3")
        for key in ("interval", "timeout", "base_ejection_time"):
            value = getattr(self, key)
            if not 0 < value < math.inf:
                raise bad(key, value, "the duration must be positive and finite",
                          "use seconds, e.g. 5")
        if not self.base_ejection_time <= self.max_ejection_time < math.inf:
            raise bad("max_ejection_time", self.max_ejection_time, "the cap must be finite and "
                      "at least base_ejection_time", "use e.g. 300")
        if not 0 <= self.max_ejection_percent <= 100:
            raise bad("max_ejection_percent", self.max_ejection_percent, "a percentage lies "
                      "in 0..100", "use e.g. 10")
        if not 0 <= self.slow_start < math.inf:
            raise bad("slow_start", self.slow_start, "the window is a finite duration >= 0",
                      "use seconds, e.g. 10, or 0 to disable")
        if not 0 < self.slow_start_min_weight <= 1:
            raise bad("slow_start_min_weight", self.slow_start_min_weight, "the weight lies in "
                      "(0, 1]", "use e.g. 0.1")
        return self


# -- one backend --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthTransition:
    backend: str
    from_state: HealthState
    to_state: HealthState
    event: HealthEvent
    at: float
    reason: str


class BackendHealth:
    """The health state machine of one backend."""

    __slots__ = ("_backoff", "_checks_down", "_deadline", "_fail_run", "_ok_run",
                 "_returned_at", "config", "consecutive_failures", "ejected_until", "ejections",
                 "ejections_refused", "failures", "log", "name", "since", "state", "successes")

    def __init__(self, name: str, config: HealthConfig, now: float) -> None:
        config.validate()
        self.name = name
        self.config = config
        self.state = H.HEALTHY
        self.since = now
        self.consecutive_failures = 0
        self.failures = 0
        self.successes = 0
        self.ejections = 0
        self.ejections_refused = 0
        self.ejected_until = 0.0
        self.log: deque[HealthTransition] = deque(maxlen=config.log_size)
        self._checks_down = False
        self._ok_run = 0
        self._fail_run = 0
        self._backoff = 0
        self._returned_at = now
        self._deadline = math.inf

    # -- the table ----------------------------------------------------------------------------

    def _fire(self, event: HealthEvent, at: float, reason: str) -> HealthTransition:
        previous = self.state
        try:
            target = HEALTH_TRANSITIONS[previous, event]
        except KeyError:
            raise IllegalBackendTransition(self.name, previous.value, event.value) from None
        transition = HealthTransition(self.name, previous, target, event, at, reason)
        if target is previous:
            return transition
        if previous in AVAILABLE and target in (H.UNHEALTHY, H.DRAINING):
            # Out of service but not ejected (`_eject` does this itself): keep what the time
            # in service forgave, as the return will restart the count.
            self._backoff = self._decayed_backoff(at)
        self.state = target
        self.since = at
        config = self.config
        if target is H.EJECTED:
            self._deadline = self.ejected_until
        elif target is H.SLOW_START:
            self._returned_at = at
            self._deadline = at + config.slow_start
            # Back in rotation: a new failure run. Failures while out of it (the tail of
            # requests in flight at an ejection) were acted on already.
            self.consecutive_failures = 0
        else:
            if previous is H.EJECTED:
                self._returned_at = at
            self._deadline = math.inf
        self.log.append(transition)
        return transition

    def _advance(self, now: float, out: list[HealthTransition] | None = None) -> None:
        """Fire the time-driven transitions due at or before `now`, at the time they were due."""
        while self._deadline <= now:
            at = self._deadline
            if self.state is H.EJECTED:
                t = self._fire(E.EJECTION_ENDED, at, "the ejection time is over")
            else:
                t = self._fire(E.RAMPED, at, "the slow-start window is over")
            if out is not None:
                out.append(t)

    # -- queries (hot path) -------------------------------------------------------------------

    def available(self, now: float) -> bool:
        """Whether the backend takes new work at `now`."""
        if self._deadline <= now:
            self._advance(now)
        return self.state in AVAILABLE

    def weight(self, now: float) -> float:
        """0 when unavailable, 1 when healthy, the slow-start ramp in between."""
        if self._deadline <= now:
            self._advance(now)
        state = self.state
        if state is H.HEALTHY:
            return 1.0
        if state is not H.SLOW_START:
            return 0.0
        config = self.config
        return max(config.slow_start_min_weight, min(1.0, (now - self.since) / config.slow_start))

    # -- passive results ----------------------------------------------------------------------

    def record_success(self, now: float) -> None:
        """A request or connect to the backend succeeded: the failure run ends."""
        self.successes += 1
        self.consecutive_failures = 0

    def record_failure(self, now: float, *, may_eject: bool = True) -> list[HealthTransition]:
        """A request or connect failed. Ejects the backend when the failure run reaches
        `consecutive_failures`, unless `may_eject` is False (the group's cap is reached)."""
        out: list[HealthTransition] = []
        self._advance(now, out)
        self.failures += 1
        self.consecutive_failures += 1
        if self.state in AVAILABLE and \
                self.consecutive_failures >= self.config.consecutive_failures:
            if may_eject:
                out.append(self._eject(now))
            else:
                self.ejections_refused += 1
        return out

    def _decayed_backoff(self, now: float) -> int:
        if self.state is H.EJECTED:
            return self._backoff
        forgiven = int((now - self._returned_at) // self.config.base_ejection_time)
        return max(0, self._backoff - forgiven)

    def ejection_time(self, now: float) -> float:
        """How long an ejection at `now` would last: base x 2**k, capped."""
        if self._deadline <= now:
            self._advance(now)
        config = self.config
        return min(config.max_ejection_time,
                   config.base_ejection_time * 2.0 ** self._decayed_backoff(now))

    def _eject(self, now: float) -> HealthTransition:
        duration = self.ejection_time(now)
        self._backoff = min(self._decayed_backoff(now) + 1, 62)
        self.ejections += 1
        self.ejected_until = now + duration
        failures = self.consecutive_failures
        self.consecutive_failures = 0
        return self._fire(E.EJECT, now, f"{failures} consecutive failures: ejected for "
                          f"{duration:g} s")

    # -- active checks ------------------------------------------------------------------------

    def record_check(self, ok: bool, now: float) -> list[HealthTransition]:
        """One active check's result; `rise`/`fall` consecutive results change the state."""
        out: list[HealthTransition] = []
        self._advance(now, out)
        config = self.config
        if ok:
            self._fail_run = 0
            self._ok_run += 1
            if self._checks_down and self._ok_run >= config.rise:
                self._checks_down = False
                changed = self._fire(E.CHECKS_PASSED, now,
                                     f"{self._ok_run} consecutive checks passed")
                if changed.to_state is not changed.from_state:
                    out.append(changed)
        else:
            self._ok_run = 0
            self._fail_run += 1
            if not self._checks_down and self._fail_run >= config.fall:
                self._checks_down = True
                changed = self._fire(E.CHECKS_FAILED, now,
                                     f"{self._fail_run} consecutive checks failed")
                if changed.to_state is not changed.from_state:
                    out.append(changed)
        self._advance(now, out)
        return out

    # -- operator -----------------------------------------------------------------------------

    def drain(self, now: float) -> list[HealthTransition]:
        out: list[HealthTransition] = []
        self._advance(now, out)
        out.append(self._fire(E.DRAIN, now, "drained by the operator"))
        return out

    def undrain(self, now: float) -> list[HealthTransition]:
        """Back into rotation through slow start; straight to unhealthy if checks fail."""
        out: list[HealthTransition] = []
        self._advance(now, out)
        out.append(self._fire(E.UNDRAIN, now, "undrained by the operator"))
        if self._checks_down:
            out.append(self._fire(E.CHECKS_FAILED, now, "its active checks are failing"))
        self._advance(now, out)
        return out

    def take_over(self, previous: BackendHealth, now: float, *,
                  checks: bool = True) -> list[HealthTransition]:
        """Go on from `previous`'s state and history: a reload rebuilt this backend's group, and
        must put no backend back into rotation that was down, ejected or drained, nor forget
        its ejections' backoff. This backend's configuration applies from now on: an ejection
        still ends when it was due to, and a slow start in progress ramps over the new
        window from when it began. Without active `checks` from now on, a backend down by
        its checks is up again (none would ever pass to bring it back)."""
        for slot in _TAKEN_OVER:
            setattr(self, slot, getattr(previous, slot))
        out: list[HealthTransition] = []
        if self.state is H.SLOW_START:
            self._deadline = self.since + self.config.slow_start
        self._advance(now, out)
        if not checks and self._checks_down:
            self._checks_down = False
            self._fail_run = 0
            changed = self._fire(E.CHECKS_PASSED, now, "its active checks are off")
            if changed.to_state is not changed.from_state:
                out.append(changed)
            self._advance(now, out)
        return out

    # -- observation --------------------------------------------------------------------------

    def take_transitions(self) -> list[HealthTransition]:
        """The transitions logged since the last call (at most `log_size`), oldest first."""
        taken = list(self.log)
        self.log.clear()
        return taken

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"name": self.name, "state": self.state.value, "since": self.since,
                "available": self.available(now), "weight": round(self.weight(now), 6),
                "consecutive_failures": self.consecutive_failures, "failures": self.failures,
                "successes": self.successes, "ejections": self.ejections,
                "ejections_refused": self.ejections_refused,
                "ejected_until": self.ejected_until if self.state is H.EJECTED else None,
                "checks_down": self._checks_down}

    def __repr__(self) -> str:
        return f"<BackendHealth {self.name} {self.state.value}>"


#: What `BackendHealth.take_over` carries from a backend's previous state machine: all of its
#: state but its name, configuration and the transitions its old owner logs.
_TAKEN_OVER = ("state", "since", "consecutive_failures", "failures", "successes", "ejections",
               "ejections_refused", "ejected_until", "_checks_down", "_ok_run", "_fail_run",
               "_backoff", "_returned_at", "_deadline")


# -- a group ------------------------------------------------------------------------------------


class HealthGroup:
    """The backends of one group, with the cap on how many are ejected at once."""

    __slots__ = ("backends", "config", "owner")

    def __init__(self, names: Iterable[str], config: HealthConfig, now: float, *,
                 owner: str = "group") -> None:
        config.validate()
        self.config = config
        self.owner = owner
        self.backends: dict[str, BackendHealth] = {}
        for name in names:
            self.add(name, now)

    def __getitem__(self, name: str) -> BackendHealth:
        try:
            return self.backends[name]
        except KeyError:
            raise ConfigError(f"{self.owner}.backends", name, "no such backend",
                              f"use one of {sorted(self.backends)}") from None

    def __len__(self) -> int:
        return len(self.backends)

    def add(self, name: str, now: float) -> BackendHealth:
        if name in self.backends:
            raise ConfigError(f"{self.owner}.backends", name, "the backend is listed twice",
                              "list each backend once")
        health = BackendHealth(name, self.config, now)
        self.backends[name] = health
        return health

    def remove(self, name: str) -> None:
        self.backends.pop(name, None)

    def max_ejected(self) -> int:
        """floor(max_ejection_percent% of the backends), but at least one (Envoy's rule)."""
        n = len(self.backends)
        return max(1, int(self.config.max_ejection_percent / 100.0 * n + 1e-9))

    def ejected(self, now: float) -> int:
        count = 0
        for health in self.backends.values():
            if health._deadline <= now:
                health._advance(now)
            if health.state is H.EJECTED:
                count += 1
        return count

    def record_failure(self, name: str, now: float) -> list[HealthTransition]:
        """A failure of `name`; ejects it if its run is long enough, the cap has room and
        another backend is in rotation (see the module doc)."""
        health = self[name]
        room = self.ejected(now) < self.max_ejected() and any(
            other is not health and other.available(now) for other in self.backends.values())
        return health.record_failure(now, may_eject=room)

    def record_success(self, name: str, now: float) -> None:
        self[name].record_success(now)

    def record_check(self, name: str, ok: bool, now: float) -> list[HealthTransition]:
        return self[name].record_check(ok, now)

    def drain(self, name: str, now: float) -> list[HealthTransition]:
        return self[name].drain(now)

    def undrain(self, name: str, now: float) -> list[HealthTransition]:
        return self[name].undrain(now)

    def available(self, now: float) -> list[str]:
        return [name for name, h in self.backends.items() if h.available(now)]

    def weights(self, now: float) -> dict[str, float]:
        return {name: h.weight(now) for name, h in self.backends.items()}

    def poll(self, now: float) -> list[HealthTransition]:
        """Fire every time-driven transition due by `now`; return them (for telemetry)."""
        out: list[HealthTransition] = []
        for health in self.backends.values():
            health._advance(now, out)
        return out

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"ejected": self.ejected(now), "max_ejected": self.max_ejected(),
                "backends": [h.snapshot(now) for h in self.backends.values()]}

    def __repr__(self) -> str:
        states = ", ".join(f"{n} {h.state.value}" for n, h in self.backends.items())
        return f"<HealthGroup {self.owner} [{states}]>"
