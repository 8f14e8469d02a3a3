"""The applier: an asyncio task that drives `Pool.set_target` from a `WarmPlan`.

It is the thin shell around the core `WarmController`: each time it wakes it reads the pool's
clock and the pool's observed demand (connections in use plus callers waiting), asks the
controller for the target, and carries it out with `pool.set_target(n)`. It wakes at every
step of the plan and at least every `tick` seconds in between, because scale-in follows
*observed* demand, which changes between steps.

Timelines: plans are built on Unix time (forecasts are); the pool runs on its own (monotonic)
clock. The applier converts with `offset` (pool time = plan time + offset), measured once at
construction as ``pool.now() - wall_clock()`` unless given (pass 0 for a plan built on the
pool's clock).

In forecast-only mode (the plan's ``meta["mode"]``, or `forecast_only=True`) it computes and
publishes every decision (`history`, the ``connwise_warm_target`` gauge, the demand gauges)
and never calls `set_target`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from connwise.core.plan import WarmController, WarmPlan
from connwise.errors import ConfigError
from connwise.forecast.base import Forecast
from connwise.forecast.prom import ForecastMetrics

log = logging.getLogger("connwise.forecast.applier")


class Actuator(Protocol):
    """What the applier needs of a pool (`connwise.Pool` has it)."""

    def now(self) -> float: ...

    def set_target(self, n: int, at: float | None = None) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def observed_demand(pool: Actuator) -> float:
    """Concurrency a pool observes now: connections in use plus callers waiting."""
    stats = pool.stats()
    waiting = stats.get("waiting", 0)
    waiting_total = sum(waiting.values()) if isinstance(waiting, Mapping) else float(waiting)
    return float(stats["connections"]["in_use"]) + float(waiting_total)


class PlanApplier:
    """See the module docstring. `history` holds ``(pool time, target)`` per decision."""

    def __init__(self, pool: Actuator, plan: WarmPlan, *, group: str | None = None,
                 tick: float = 15.0, headroom: float = 1.0, offset: float | None = None,
                 forecast_only: bool | None = None, metrics: ForecastMetrics | None = None,
                 forecast: Forecast | None = None,
                 observe: Callable[[], float | None] | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if not tick > 0:
            raise ConfigError("applier.tick", tick, "the applier must wake up at some "
                              "interval", "use seconds > 0, e.g. 15")
        self.pool = pool
        self.controller = WarmController(plan, group, headroom=headroom)
        self.group = self.controller.group or "default"
        self.tick = tick
        self.offset = pool.now() - wall_clock() if offset is None else offset
        self.forecast_only = (plan.meta.get("mode") == "forecast_only" if forecast_only is None
                              else forecast_only)
        self.metrics = metrics
        self.forecast = forecast
        self.observe = observe if observe is not None else (lambda: observed_demand(pool))
        self._sleep = sleep
        self.history: list[tuple[float, int]] = []
        self._stopped = False
        self._last_set: int | None = None

    @property
    def plan(self) -> WarmPlan:
        return self.controller.plan

    def replace_plan(self, plan: WarmPlan) -> None:
        """Switch to a new plan (after re-planning), keeping the current target."""
        current = self.controller.target
        self.controller = WarmController(plan, self.group if self.group in plan.groups
                                         else None, headroom=self.controller.headroom,
                                         initial=current)

    def step(self) -> int:
        """Decide and carry out the target for now; returns it. Synchronous, no awaits."""
        now = self.pool.now()
        plan_now = now - self.offset
        try:
            observed = self.observe()
        except Exception:
            log.exception("applier %s: observing demand failed; holding the target", self.group)
            observed = None
        target = self.controller.decide(plan_now, observed)
        self.history.append((now, target))
        if self.metrics is not None:
            self.metrics.publish_target(self.group, target)
            if self.forecast is not None:
                self.metrics.publish_forecast(self.forecast, plan_now,
                                              self.plan.quantile or 0.5)
        if self.forecast_only:
            if target != self._last_set:
                log.info("applier %s (forecast only): would set warm target %d", self.group,
                         target)
                self._last_set = target
            return target
        # What the pool can hold now: a target clamped to its max_size is set in full once
        # the pool grows, so compare what is set, not what was planned.
        limit = self.pool.stats().get("max_size")
        applied = min(target, limit) if isinstance(limit, int) else target
        if applied != self._last_set:
            try:
                self.pool.set_target(applied)
            except ConfigError as exc:  # not recorded as set: the next decision tries again
                log.warning("applier %s: set_target(%d) refused: %s", self.group, applied, exc)
            else:
                self._last_set = applied
        return target

    def next_wakeup(self) -> float:
        """Pool time of the next decision: the next plan step, or `tick` from now."""
        now = self.pool.now()
        change = self.plan.next_change(now - self.offset, self.controller.group)
        wake = now + self.tick
        if change is not None:
            wake = min(wake, change + self.offset)
        return wake

    async def run(self, until: float | None = None) -> None:
        """Decide at every plan step and every `tick`, until `stop()`, cancellation, or pool
        time `until`."""
        self._stopped = False
        while not self._stopped:
            self.step()
            now = self.pool.now()
            if until is not None and now >= until:
                return
            wake = self.next_wakeup()
            if until is not None:
                wake = min(wake, until)
            await self._sleep(max(0.0, wake - now) if math.isfinite(wake) else self.tick)

    def stop(self) -> None:
        self._stopped = True
