"""The gateway's forecast task: forecast each group's demand, plan, and pre-warm its upstream pools.

Theory of operation
-------------------
One asyncio task per gateway (`[forecast]` in the configuration). Every `refresh_interval` it
starts a refresh (one at a time), which hands a worker thread the slow part — load the
registry's champion (statsforecast models refit from their saved window), read the newest
history from the telemetry store (one SQL aggregation), forecast, and plan each group's warm
connections with the planner (Little's law, lead time, ramp limit) — so that seconds of CPU
never stall the event loop. Meanwhile, and between refreshes, it drives one `PlanApplier` per
group, the same shell that drives a `connwise.Pool`, through a
`GroupActuator` that makes a group's per-backend pools look like one pool: the group's target
is split evenly over its available backends, and its observed demand is the group's admitted
plus queued requests. Scale-out follows the plan; scale-in follows only observed demand
(`connwise.core.plan.WarmController`). A group's static `warm_target` (per backend) stays the
floor of what it holds, also once a plan has ended; a group a refresh no longer plans (the new
champion has no segment for it) gets its static `warm_target` back.

In forecast-only mode the appliers decide and publish (`/forecast`, the gauges) and never set a
target. A failed refresh (no champion, an unreachable store, a forecast that ends before now)
is logged and shown in `/forecast`; the previous plans stay in force and the next refresh tries
again.

Time: plans are on Unix time (`wall_clock`), the gateway on its `clock`; the applier converts,
with the offset between the two measured again before every decision.
The task waits with `sleep` (seconds of `clock`), which tests pair with a `VirtualClock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from connwise.config import ForecastSection, GatewayConfig
from connwise.core.plan import WarmPlan
from connwise.errors import ConfigError, ConnwiseError
from connwise.forecast.applier import PlanApplier
from connwise.forecast.base import Forecast
from connwise.forecast.prom import ForecastMetrics
from connwise.forecast.series import DemandSeries

if TYPE_CHECKING:
    from connwise.forecast.forecaster import Forecaster
    from connwise.gateway.runtime import Gateway
    from connwise.gateway.upstreams import Group

log = logging.getLogger("connwise.gateway.forecast")

#: The planner's per-group target gauge; `connwise_warm_target{group, backend}` is taken by the
#: targets the pools hold (see `connwise.gateway.admin`).
TARGET_METRIC = "connwise_forecast_warm_target"


class GroupActuator:
    """A backend group as one pool for `PlanApplier` (see the module docstring)."""

    def __init__(self, gateway: Gateway, name: str) -> None:
        self.gateway = gateway
        self.name = name
        self.target: int | None = None
        self._layout: tuple[int, frozenset[str]] | None = None

    @property
    def group(self) -> Group | None:
        """The group of that name now (a reload replaces the objects)."""
        return self.gateway.groups.get(self.name)

    def now(self) -> float:
        return self.gateway.clock.now()

    def stats(self) -> dict[str, Any]:
        group = self.group
        if group is None:
            return {"connections": {"in_use": 0}, "waiting": 0}
        scheduler = group.scheduler
        return {"connections": {"in_use": scheduler.in_use}, "waiting": scheduler.waiting,
                "max_size": group.config.max_in_flight}

    def set_target(self, n: int, at: float | None = None) -> None:
        """Hold `n` warm connections in the group, never fewer than its static floor (its
        `warm_target` times its backends: a plan that has ended asks for 0): `n // k` per
        available backend (the first `n % k` one more), none on the unavailable ones."""
        group = self.group
        self.target = n
        if group is None:
            return
        config = group.config
        n = max(n, min(config.warm_target * len(group.backends), config.max_in_flight))
        now = self.now()
        available = frozenset(group.health.available(now)) or frozenset(
            b.name for b in group.backends)
        chosen = [b for b in group.backends if b.name in available]
        base, extra = divmod(n, len(chosen))
        for i, backend in enumerate(chosen):
            group.set_warm_target(backend, base + (1 if i < extra else 0), at=at)
        for backend in group.backends:
            if backend.name not in available:
                group.set_warm_target(backend, 0, at=at)
        self._layout = (id(group), available)

    def release(self) -> None:
        """The planner no longer plans the group: its backends hold the configuration's
        `warm_target` again, not the last plan's target for ever."""
        group = self.group
        self.target = None
        if group is not None:
            for backend in group.backends:
                group.set_warm_target(backend, group.config.warm_target)

    def rebalance(self) -> None:
        """Split the target again when the group's available backends (or, after a reload, the
        group itself) changed since it was set."""
        group = self.group
        if self.target is None or group is None:
            return
        available = frozenset(group.health.available(self.now())) or frozenset(
            b.name for b in group.backends)
        if self._layout != (id(group), available):
            self.set_target(self.target)


@dataclass(frozen=True)
class GroupPlan:
    """What a refresh computed for one group."""

    segment: str
    plan: WarmPlan
    forecast: Forecast
    hold_time: float
    hold_source: str


@dataclass(frozen=True)
class Refresh:
    """What a refresh computed: plans per group, and why other groups have none."""

    version: int
    plans: dict[str, GroupPlan]
    skipped: dict[str, str]


class GatewayForecast:
    """The forecast task of one gateway; see the module docstring."""

    def __init__(self, gateway: Gateway, section: ForecastSection, *,
                 wall_clock: Callable[[], float],
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.gateway = gateway
        self.section = section
        self.wall_clock = wall_clock
        self.sleep = sleep
        self.registry = CollectorRegistry()
        self.metrics = ForecastMetrics(self.registry, horizons=section.horizons,
                                       target_name=TARGET_METRIC)
        self.appliers: dict[str, PlanApplier] = {}
        self.plans: dict[str, GroupPlan] = {}
        self.skipped: dict[str, str] = {}
        self.version: int | None = None
        #: Refreshes that planned, and those that failed (`error` only tells of the last one).
        self.refreshes = 0
        self.failures = 0
        self.error: str | None = None
        self.refreshed_at: float | None = None
        #: The refresh in progress, and when (wall clock) it started.
        self.refreshing: asyncio.Task[None] | None = None
        self.refreshing_since: float | None = None
        self._forecaster: Forecaster | None = None
        self._next_refresh = -math.inf
        self._task: asyncio.Task[None] | None = None

    @property
    def forecast_only(self) -> bool:
        return self.section.mode == "forecast_only"

    def start(self) -> None:
        self._task = self.gateway.spawn(self.run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.refreshing is not None:  # its plans must not reach the pools any more
            self.refreshing.cancel()

    async def run(self) -> None:
        """Refresh every `refresh_interval`; decide at every plan step and `tick`, also while a
        refresh runs: a slow one (a big model, a store that does not answer) must not hold up
        the plans in force. A refresh due while one runs starts when that one ends."""
        clock = self.gateway.clock
        try:
            while True:
                if self.refreshing is None and clock.now() >= self._next_refresh:
                    self._next_refresh = clock.now() + self.section.refresh_interval
                    self.refreshing = asyncio.ensure_future(self.refresh())
                self._decide()
                wakes = [a.next_wakeup() for a in self.appliers.values()]
                waits: set[asyncio.Future[Any]] = set()
                if self.refreshing is None:
                    wakes.append(self._next_refresh)
                else:
                    waits.add(self.refreshing)  # its plans are carried out at once
                if wakes:
                    waits.add(asyncio.ensure_future(
                        self.sleep(max(0.0, min(wakes) - clock.now()))))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits - {self.refreshing}:
                        waiting.cancel()
                if self.refreshing is not None and self.refreshing.done():
                    refreshed, self.refreshing = self.refreshing, None
                    refreshed.result()  # a bug in it is not swallowed
        finally:
            if self.refreshing is not None:
                self.refreshing.cancel()
                self.refreshing = None

    def _decide(self) -> None:
        """Each applier decides and carries out its group's target now."""
        clock = self.gateway.clock
        for name, applier in list(self.appliers.items()):
            actuator = applier.pool
            assert isinstance(actuator, GroupActuator)
            if actuator.group is None:
                del self.appliers[name]  # the group went away in a reload
                continue
            # Measured afresh: a step of the wall clock (NTP, a resumed VM) moves the plan.
            applier.offset = clock.now() - self.wall_clock()
            applier.step()
            if not self.forecast_only:
                actuator.rebalance()

    async def refresh(self) -> None:
        """Forecast and plan in a worker thread, then hand the plans to the appliers."""
        # The worker reads this configuration, not the gateway's: a reload may swap that
        # (and the groups) while it runs.
        config = self.gateway.config
        currents = {name: self._current(name) for name in self.gateway.groups}
        self.refreshing_since = wall_now = self.wall_clock()
        try:
            result = await in_daemon_thread(self._compute, wall_now, config, currents)
        except Exception as exc:
            self.failures += 1
            self.error = str(exc) or type(exc).__name__
            log.warning("forecast refresh failed (the previous plans stay in force): %s",
                        self.error, exc_info=not isinstance(exc, ConnwiseError))
            return
        finally:
            self.refreshing_since = None
        self.error = None
        self.refreshes += 1
        self.refreshed_at = self.wall_clock()
        self.version = result.version
        self.skipped = result.skipped
        self.plans = result.plans
        for name, planned in result.plans.items():
            applier = self.appliers.get(name)
            if applier is None:
                self.appliers[name] = PlanApplier(
                    GroupActuator(self.gateway, name), planned.plan, group=name,
                    tick=self.section.tick, headroom=self.section.headroom,
                    forecast_only=self.forecast_only, metrics=self.metrics,
                    forecast=planned.forecast, wall_clock=self.wall_clock)
            else:
                applier.replace_plan(planned.plan)
                applier.forecast = planned.forecast
        for name in set(self.appliers) - set(result.plans):
            actuator = self.appliers.pop(name).pool
            assert isinstance(actuator, GroupActuator)
            if not self.forecast_only:
                actuator.release()

    def _current(self, name: str) -> int:
        applier = self.appliers.get(name)
        if applier is not None:
            return applier.controller.target
        group = self.gateway.groups[name]
        return sum(b.warm_target for b in group.backends)

    # -- the worker thread ----------------------------------------------------------------------

    def _compute(self, wall_now: float, config: GatewayConfig,
                 currents: dict[str, int]) -> Refresh:
        from connwise.forecast.planner import PlannerConfig, plan  # noqa: PLC0415
        from connwise.forecast.registry import Registry  # noqa: PLC0415
        from connwise.forecast.store import metric_kind  # noqa: PLC0415

        section = self.section
        assert section.registry is not None  # the configuration guarantees it
        registry = Registry(section.registry)
        champion = registry.champion(section.model)
        if self._forecaster is None or champion != self.version:
            self._forecaster = registry.load(section.model)
            log.info("forecast model %s v%s loaded", section.model, champion)
        forecaster = self._forecaster
        known = {s.segment for s in forecaster.panel}
        wanted = {g: section.segments.get(g, g) for g in config.groups}
        skipped = {g: f"the model has no segment {s!r} (it has {', '.join(sorted(known))})"
                   for g, s in wanted.items() if s not in known}
        holds: dict[str, tuple[float, str]] = {}
        if section.store is not None:
            holds = self._update_from_store(forecaster, wall_now, config, wanted, known)
        forecasts = forecaster.predict()
        end = max(f.start + len(f) * f.step for f in forecasts.values())
        if end <= wall_now:
            # Planned, it would ask for nothing, in silence: a model fitted long ago, no store.
            raise ConfigError("forecast.store", section.store, f"model {section.model} "
                              f"v{champion}'s forecast ends at {_iso(end)}, before now "
                              f"({_iso(wall_now)}): it forecasts from the end of its history",
                              "set store, so that it forecasts from the newest history, or "
                              "fit the model again")
        plans = {}
        for name, segment in wanted.items():
            if name in skipped:
                continue
            group = config.groups[name]
            hold, source = ((section.hold_time, "config") if section.hold_time is not None
                            else holds.get(segment, (1.0, "default")))
            settings = PlannerConfig(
                quantile=section.quantile, hold_time=hold, kind=metric_kind(section.metric),
                lead=section.lead, max_ramp=section.max_ramp, headroom=section.headroom,
                min_target=min(group.warm_target * len(group.backends), group.max_in_flight),
                max_target=group.max_in_flight, mode=section.mode)
            warm = plan({name: forecasts[segment]}, settings,
                        current={name: currents.get(name, 0)},
                        meta={"segment": segment, "model": section.model, "version": champion})
            plans[name] = GroupPlan(segment, warm, forecasts[segment], hold, source)
        return Refresh(champion or 0, plans, skipped)

    def _update_from_store(self, forecaster: Forecaster, wall_now: float, config: GatewayConfig,
                           wanted: dict[str, str], known: set[str]) -> dict[str, tuple[float, str]]:
        """Refit the model's window on the store's newest history; the hold time per segment."""
        from connwise.forecast.store import StoreSource, backend_groups  # noqa: PLC0415

        section = self.section
        assert section.store is not None
        step = forecaster.panel[0].step
        length = max(len(s) for s in forecaster.panel)
        until = math.floor(wall_now / step) * step
        since = until - length * step
        source = StoreSource(section.store, metric=section.metric, step=step,
                             segment_by=section.segment_by, kinds=section.record_kinds,
                             groups=backend_groups(config)
                             if "group" in section.segment_by else None,
                             since=since, until=until)
        present = set(source.segments())
        # A segment without records in the window had no demand: zeros, not a hole.
        panel = [source.series(s) if s in present
                 else DemandSeries(s, float(since), step, np.zeros(length))
                 for s in sorted(known)]
        forecaster.update(panel)
        holds = {}
        for segment in set(wanted.values()) & present:
            try:
                holds[segment] = (source.hold_time(segment), "store")
            except ValueError:
                continue
        return holds

    # -- what the admin API shows -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        section = self.section
        now = self.gateway.clock.now()
        groups: dict[str, Any] = {}
        for name, planned in self.plans.items():
            applier = self.appliers.get(name)
            group = self.gateway.groups.get(name)
            plan_now = now - applier.offset if applier is not None else self.wall_clock()
            step = planned.plan.step_at(plan_now, name)
            groups[name] = {
                "segment": planned.segment,
                "hold_time": planned.hold_time, "hold_time_from": planned.hold_source,
                "target": applier.controller.target if applier is not None else None,
                "applied": not self.forecast_only,
                "backends": {b.name: b.warm_target for b in group.backends} if group else {},
                "now": None if step is None else {"at": step.at, "target": step.target,
                                                  "required": step.required,
                                                  "short": step.short},
                "peak": planned.plan.peak(name),
                "plan": planned.plan.to_dict(),
            }
        return {"mode": section.mode, "model": section.model, "version": self.version,
                "refreshes": self.refreshes, "refreshed_at": self.refreshed_at,
                "refreshing_since": self.refreshing_since, "failures": self.failures,
                "error": self.error, "groups": groups, "skipped": self.skipped}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


T = TypeVar("T")


async def in_daemon_thread(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` in a thread of its own, awaited. A daemon thread, not the loop's default
    executor: a refresh blocked for good (a store that never answers a query) must not keep the
    process from exiting after its drain, and `asyncio.run` joins the executor's threads with
    no limit. Cancelling the await leaves the thread to finish on its own; its end is dropped."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():
            outcome()

    def run() -> None:
        try:
            result = work(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, lambda: done.set_exception(error))
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, lambda: done.set_result(result))

    threading.Thread(target=run, name="connwise-forecast-refresh", daemon=True).start()
    return await done
