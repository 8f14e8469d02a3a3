"""`WarmPlan`: how many warm connections each backend group should hold, over time.

Theory of operation
-------------------
A forecast says how much demand is coming; a pool needs to know how many connections to hold
open, and from when. This module is the pure arithmetic between the two, with no clock reads,
no I/O and no numerics library, so that the planner, the applier and the simulator share it.

1. **Little's law.** The concurrency a group needs is the arrival rate times the mean hold time:
   ``L = lambda * W``. A forecast of connections opened (or requests) per period of ``step``
   seconds is a rate of ``demand / step`` per second; with a mean hold of ``W`` seconds the group
   needs ``ceil(demand / step * W * headroom)`` connections. A forecast that already counts
   concurrent connections is used as it is (times the headroom).
2. **Lead time.** Connections must be warm ``lead`` seconds before the demand arrives (default
   10 minutes: the issue asks for 5 to 10, and AWS predictive scaling's default
   SchedulingBufferTime is 5 minutes; we take the safer end). The target of a plan slot is the
   largest need of any period that starts within ``lead`` seconds after the slot.
3. **Ramp limit.** The target never rises faster than ``max_ramp`` connections per second, so a
   backend never sees a connection storm. Where a peak needs a steeper rise, the ramp starts
   earlier (a backward pass); where even that cannot reach the need from the current number of
   connections, the slot is marked *short*.
4. **Scale out on the forecast, scale in on observed demand** (as AWS predictive scaling does:
   its forecasts only ever add capacity). A plan may ask for fewer connections after a peak, but
   `WarmController` only lowers the pool's target as far as the demand it *observes* allows;
   without observations it never scales in at all.

Times are seconds on the timeline the plan was built on (the planner uses Unix time); rebase a
plan onto a pool's clock with `WarmPlan.shifted`.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from connwise.errors import ConfigError

#: What a demand figure counts: arrivals per period (connections opened, requests), or the
#: number of connections open at once.
DemandKind = Literal["arrivals", "concurrency"]

#: The issue's default lead time: warm 10 minutes before the peak.
DEFAULT_LEAD = 600.0


@dataclass(frozen=True, slots=True)
class WarmStep:
    """From `at` until the next step (or the plan's end): hold `target` warm connections.

    `required` is what the demand alone asks for at that time, before the ramp limit; `short`
    is True when the ramp limit cannot reach `required` in time from where the pool started.
    """

    at: float
    target: int
    required: int = 0
    short: bool = False


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """The knobs of `build_steps`; validated by `validate()`.

    `max_ramp` is in connections per second (None: unlimited); `headroom` multiplies the need
    (1.0 holds exactly the forecast); `min_target`/`max_target` clamp every step.
    """

    step: float
    hold_time: float = 1.0
    kind: DemandKind = "arrivals"
    lead: float = DEFAULT_LEAD
    max_ramp: float | None = None
    headroom: float = 1.0
    min_target: int = 0
    max_target: int | None = None

    def validate(self, prefix: str = "planner") -> PlanSettings:
        def bad(key: str, value: object, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", value, problem, fix)

        if not self.step > 0:
            raise bad("step", self.step, "a plan slot must last some time",
                      "use the series resolution in seconds, e.g. 60")
        # Each bound also refuses inf (and NaN): an infinite time or multiplier would make
        # every target infinite, which no pool can hold.
        if not 0 < self.hold_time < math.inf:
            raise bad("hold_time", self.hold_time, "Little's law needs a positive, finite mean "
                      "hold time", "measure the mean seconds a connection is held and pass it")
        if self.kind not in ("arrivals", "concurrency"):
            raise bad("kind", self.kind, "unknown demand kind",
                      "use 'arrivals' (opened per period) or 'concurrency'")
        if not 0 <= self.lead < math.inf:
            raise bad("lead", self.lead, "the lead time must be finite and not negative",
                      "use seconds >= 0, e.g. 600")
        if self.max_ramp is not None and not 0 < self.max_ramp < math.inf:
            raise bad("max_ramp", self.max_ramp, "a ramp limit must allow some finite growth",
                      "use connections per second > 0, or None for no limit")
        if not 1.0 <= self.headroom < math.inf:
            raise bad("headroom", self.headroom, "headroom must be finite, and below 1 it plans "
                      "fewer connections than the forecast needs", "use 1.0 or more, e.g. 1.2")
        if self.min_target < 0:
            raise bad("min_target", self.min_target, "a target cannot be negative", "use >= 0")
        if self.max_target is not None and self.max_target < self.min_target:
            raise bad("max_target", self.max_target, f"it is below min_target "
                      f"({self.min_target})", "raise max_target or lower min_target")
        return self


def required_connections(demand: Sequence[float], settings: PlanSettings) -> list[int]:
    """Connections each period needs by Little's law (see the module docstring), clamped to
    the settings' bounds. Negative or NaN demand counts as zero."""
    scale = settings.headroom * (settings.hold_time / settings.step
                                 if settings.kind == "arrivals" else 1.0)
    out = []
    for value in demand:
        need = value * scale if value > 0 else 0.0  # NaN > 0 is False
        n = max(settings.min_target, math.ceil(need - 1e-9))
        if settings.max_target is not None:
            n = min(n, settings.max_target)
        out.append(n)
    return out


def build_steps(start: float, demand: Sequence[float], settings: PlanSettings, *,
                current: int = 0) -> list[WarmStep]:
    """One `WarmStep` per period of `demand` (period i starts at `start + i * step`).

    Applies Little's law, the lead time and the ramp limit, in that order. `current` is the
    number of connections the pool holds now, the point the ramp starts from.
    """
    settings.validate()
    if current < 0:
        raise ConfigError("current", current, "a pool cannot hold fewer than 0 connections",
                          "pass the number of connections open now")
    if not demand:
        raise ConfigError("demand", list(demand), "the forecast is empty",
                          "forecast at least one period")
    need = required_connections(demand, settings)
    n = len(need)
    ahead = math.ceil(settings.lead / settings.step - 1e-9)
    # Lead: slot j must already hold what any period starting within `lead` after it needs.
    required = [max(need[j:min(n, j + ahead + 1)]) for j in range(n)]
    target = list(required)
    if settings.max_ramp is not None:
        per_step = settings.max_ramp * settings.step
        # Backward pass: start climbing early enough to reach each peak within the ramp.
        for j in range(n - 2, -1, -1):
            target[j] = max(target[j], math.ceil(target[j + 1] - per_step - 1e-9))
        # Forward pass: from where the pool is now, we cannot climb faster than the ramp.
        level = float(current)
        for j in range(n):
            level = min(float(target[j]), level + per_step) if target[j] > level \
                else float(target[j])
            target[j] = math.floor(level + 1e-9)
    return [WarmStep(start + j * settings.step, target[j], required[j], target[j] < required[j])
            for j in range(n)]


@dataclass(frozen=True)
class WarmPlan:
    """Target warm connections per backend group over time: a step function per group.

    `steps[group]` is sorted by time; the plan covers ``[start, end)``. Outside it (before the
    first step, or after `end`, when the plan has gone stale) `target_at` returns 0, which
    `WarmController` reads as "the plan asks for nothing" — it then keeps what observed demand
    needs, and never scales in without an observation.
    """

    steps: Mapping[str, Sequence[WarmStep]]
    end: float
    lead: float = DEFAULT_LEAD
    max_ramp: float | None = None
    quantile: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> WarmPlan:
        """Check the invariants; raises `ConfigError` naming the group and the step."""
        if not self.steps:
            raise ConfigError("plan.steps", {}, "a plan needs at least one backend group",
                              "build it from a forecast with build_plan()")
        for group, steps in self.steps.items():
            key = f"plan.steps[{group!r}]"
            if not group:
                raise ConfigError("plan.steps", group, "a group needs a name", "name it")
            if not steps:
                raise ConfigError(key, [], "the group has no steps", "give it at least one")
            previous = -math.inf
            for i, step in enumerate(steps):
                if not step.at > previous:
                    raise ConfigError(f"{key}[{i}].at", step.at, "steps must be in strictly "
                                      "increasing time order", "sort the steps, drop duplicates")
                if step.target < 0:
                    raise ConfigError(f"{key}[{i}].target", step.target,
                                      "a target cannot be negative", "use >= 0")
                previous = step.at
            if not self.end > previous:
                raise ConfigError("plan.end", self.end, f"the plan ends before the last step of "
                                  f"group {group!r} at {previous}", "end after the last step")
        if self.max_ramp is not None and not self.max_ramp > 0:
            raise ConfigError("plan.max_ramp", self.max_ramp, "a ramp limit must be positive",
                              "use connections per second > 0, or None")
        return self

    @property
    def groups(self) -> list[str]:
        return list(self.steps)

    @property
    def start(self) -> float:
        return min(steps[0].at for steps in self.steps.values())

    def target_at(self, t: float, group: str | None = None) -> int:
        """The planned target of `group` (default: the only group) at time `t`, or 0 outside
        the plan."""
        steps = self._group(group)
        if t >= self.end:
            return 0
        i = bisect_right([s.at for s in steps], t) - 1
        return steps[i].target if i >= 0 else 0

    def step_at(self, t: float, group: str | None = None) -> WarmStep | None:
        """The step in force at `t`, or None outside the plan."""
        steps = self._group(group)
        i = bisect_right([s.at for s in steps], t) - 1
        return steps[i] if i >= 0 and t < self.end else None

    def next_change(self, t: float, group: str | None = None) -> float | None:
        """The first time after `t` at which the planned target may change, or None."""
        steps = self._group(group)
        for step in steps:
            if step.at > t:
                return step.at
        return self.end if t < self.end else None

    def peak(self, group: str | None = None) -> int:
        return max(s.target for s in self._group(group))

    def shortfalls(self, group: str | None = None) -> list[WarmStep]:
        """Steps where the ramp limit keeps the target below the need."""
        return [s for s in self._group(group) if s.short]

    def shifted(self, delta: float) -> WarmPlan:
        """The same plan on another timeline: every time plus `delta` seconds (e.g. from Unix
        time to a pool's monotonic clock: ``delta = pool.now() - time.time()``)."""
        return WarmPlan({g: [WarmStep(s.at + delta, s.target, s.required, s.short) for s in ss]
                         for g, ss in self.steps.items()}, self.end + delta, self.lead,
                        self.max_ramp, self.quantile, dict(self.meta))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; `from_dict` reads it back."""
        return {
            "end": self.end, "lead": self.lead, "max_ramp": self.max_ramp,
            "quantile": self.quantile, "meta": dict(self.meta),
            "steps": {g: [{"at": s.at, "target": s.target, "required": s.required,
                           "short": s.short} for s in ss] for g, ss in self.steps.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WarmPlan:
        try:
            steps = {g: [WarmStep(float(s["at"]), int(s["target"]), int(s.get("required", 0)),
                                  bool(s.get("short", False))) for s in ss]
                     for g, ss in data["steps"].items()}
            return cls(steps, float(data["end"]), float(data.get("lead", DEFAULT_LEAD)),
                       data.get("max_ramp"), data.get("quantile"), dict(data.get("meta", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError("plan", type(exc).__name__, f"the plan data is malformed ({exc})",
                              "pass what WarmPlan.to_dict() produced") from exc

    def _group(self, group: str | None) -> Sequence[WarmStep]:
        if group is None:
            if len(self.steps) != 1:
                raise ConfigError("group", None, f"the plan has groups {self.groups}",
                                  "name the group")
            return next(iter(self.steps.values()))
        try:
            return self.steps[group]
        except KeyError:
            raise ConfigError("group", group, f"the plan has no such group (it has "
                              f"{', '.join(self.groups)})", "name a planned group") from None

    def __repr__(self) -> str:
        parts = ", ".join(f"{g}: {len(s)} steps, peak {max(x.target for x in s)}"
                          for g, s in self.steps.items())
        return f"<WarmPlan {self.start:.0f}..{self.end:.0f} [{parts}]>"


def build_plan(groups: Mapping[str, tuple[float, Sequence[float]]], settings: PlanSettings, *,
               current: Mapping[str, int] | None = None, quantile: float | None = None,
               meta: Mapping[str, Any] | None = None) -> WarmPlan:
    """A `WarmPlan` from `{group: (start, demand per period)}`; see `build_steps`."""
    steps = {g: build_steps(start, demand, settings, current=(current or {}).get(g, 0))
             for g, (start, demand) in groups.items()}
    end = max(ss[-1].at for ss in steps.values()) + settings.step
    return WarmPlan(steps, end, settings.lead, settings.max_ramp, quantile, dict(meta or {}))


class WarmController:
    """Turns a plan and observed demand into the target to set now; sans-I/O.

    Scale-out follows the plan (at most `max_ramp` connections per second above the last
    target); scale-in happens only down to what the *observed* concurrency needs (times
    `headroom`), never on the forecast alone, and not at all while nothing is observed.
    """

    def __init__(self, plan: WarmPlan, group: str | None = None, *, headroom: float = 1.0,
                 max_ramp: float | None = None, initial: int = 0) -> None:
        if headroom < 1.0:
            raise ConfigError("headroom", headroom, "headroom below 1 under-provisions",
                              "use 1.0 or more")
        self.plan = plan
        self.group = group if group is not None else (plan.groups[0] if len(plan.groups) == 1
                                                      else None)
        plan.target_at(plan.start, self.group)  # validates the group name
        self.headroom = headroom
        self.max_ramp = max_ramp if max_ramp is not None else plan.max_ramp
        self.target = initial
        self._ramp_clock: float | None = None
        self._last_call: float | None = None

    def decide(self, now: float, observed: float | None = None) -> int:
        """The target at `now`, given the concurrency observed now (None: not known).

        The first call may jump straight to the plan (the planner ramped the plan from the
        pool's size at planning time); later rises are held to `max_ramp`, with the unused
        fraction of a connection carried over, so frequent calls climb no faster than rare ones.
        """
        planned = self.plan.target_at(now, self.group)
        current = self.target
        if planned > current:
            new = planned
            if self.max_ramp is not None and self._ramp_clock is not None:
                # Credit never exceeds the time since the last call plus one connection's worth.
                assert self._last_call is not None
                self._ramp_clock = max(self._ramp_clock, self._last_call - 1.0 / self.max_ramp)
                allowed = math.floor(self.max_ramp * (now - self._ramp_clock) + 1e-9)
                new = min(new, current + allowed)
                self._ramp_clock += (new - current) / self.max_ramp
            else:
                self._ramp_clock = now
        else:
            self._ramp_clock = now
            if observed is None:
                new = current
            else:
                need = math.ceil(max(0.0, observed) * self.headroom - 1e-9)
                new = min(current, max(planned, need))
        self.target = new
        self._last_call = now
        return new
