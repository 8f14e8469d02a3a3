"""The gateway's `[forecast]` task end to end: a model fitted on a small generated history (from a
real SQLite telemetry store, or saved in the registry), the gateway's upstream pools warmed over
real loopback origins ten minutes before the forecast peak, and forecast-only mode publishing
the plan on the admin API and /metrics while leaving every target alone. Time is a VirtualClock
the forecast task advances through the gateway's `sleep`, so an hour passes in a second."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from connwise.config import load_gateway_config
from connwise.core.clock import VirtualClock
from connwise.core.lifecycle import State
from connwise.forecast.forecaster import Forecaster, ForecasterConfig
from connwise.forecast.registry import Registry
from connwise.forecast.series import from_values
from connwise.forecast.store import StoreSource
from connwise.gateway.admin import AdminServer
from connwise.gateway.forecasting import GatewayForecast
from connwise.gateway.runtime import Gateway
from connwise.telemetry.store_sqlite import SqliteStore
from tests.integration.http_origin import HttpOrigin

DAY = 1440  # minutes
T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
NOON = T0 + 2 * 86400 + 12 * 3600  # where the history ends: the forecast covers 12:00..13:00
PEAK = NOON + 30 * 60


def per_minute(days: int = 3) -> np.ndarray:
    """Connections opened per minute: 2, and 20 from 12:30 to 12:39, every day."""
    values = np.full(days * DAY, 2.0)
    for d in range(days):
        values[d * DAY + 12 * 60 + 30:d * DAY + 12 * 60 + 40] = 20.0
    return values


def fill_store(path: Path, backends: list[str]) -> None:
    """The gateway's client records of that history, up to noon of day 3, each held 30 s,
    spread over the group's backends."""
    rows = []
    for minute, n in enumerate(per_minute()[:-12 * 60]):
        for i in range(int(n)):
            start = T0 + minute * 60 + i * 2.0
            rows.append((f"{minute}-{i}", "client", "web", backends[i % len(backends)], start,
                         start + 30.0, 1, 30.0))
    store = SqliteStore(path)
    store.write(rows, ("conn_id", "kind", "source", "backend", "started_at", "ended_at",
                       "requests", "active_s"))
    store.close()


def fit(registry: Path, history: Any) -> None:
    forecaster = Forecaster(ForecasterConfig(models=["snaive_daily"], horizon=60, windows=1))
    Registry(registry).save("gw", forecaster.fit(history), promote=True)


class Run:
    """A gateway on a VirtualClock at `NOON`; its forecast task's sleeps advance the clock,
    and each records (minute past noon, the group's decided target, its open upstream
    connections) once the pools have finished connecting."""

    def __init__(self, config: dict[str, Any], stop_minute: int, *,
                 wall_clock: Callable[[], float] | None = None,
                 at: dict[int, Callable[[], None]] | None = None,
                 timeout: float = 30.0, hanging_from: float = math.inf) -> None:
        """`at`: minute -> what to do when the task first sleeps at or after it; `timeout`:
        real seconds the run may take; time stands still while a refresh runs, but for one
        started at or after minute `hanging_from`."""
        self.clock = VirtualClock(NOON)
        self.stop_at = NOON + stop_minute * 60
        self.at = dict(at or {})
        self.timeout = timeout
        self.hanging_from = hanging_from
        self.done = asyncio.Event()
        self.seen: dict[int, tuple[int, int]] = {}
        self.split: dict[int, list[int]] = {}
        self.gateway = Gateway(load_gateway_config(config), clock=self.clock,
                               wall_clock=wall_clock or self.clock.now, sleep=self.sleep)

    def open_connections(self) -> int:
        return sum(b.pool.policy.open_connections for b in self.gateway.groups["app"].backends
                   if b.pool is not None)

    async def settled(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        pools = [b.pool for b in self.gateway.groups["app"].backends if b.pool is not None]
        while any(p.policy.counts[State.CONNECTING] for p in pools):
            assert loop.time() < deadline, "the pools did not finish connecting"
            await asyncio.sleep(0.005)

    async def sleep(self, seconds: float) -> None:
        await self.settled()
        forecast = self.gateway.forecast
        assert forecast is not None
        minute = round((self.clock.now() - NOON) / 60)
        if forecast.refreshing is not None and minute < self.hanging_from:
            await asyncio.wait([forecast.refreshing])
            return  # the task wakes at once to carry out the new plans
        for when in sorted(self.at):
            if when <= minute:
                self.at.pop(when)()
        applier = forecast.appliers.get("app")
        if applier is not None:
            self.seen[minute] = (applier.controller.target, self.open_connections())
            self.split[minute] = [b.warm_target for b in self.gateway.groups["app"].backends]
        if self.clock.now() >= self.stop_at:
            self.done.set()
            await asyncio.Event().wait()  # parked until the gateway drains
        self.clock.advance(seconds)

    async def __call__(self) -> Gateway:
        await self.gateway.start()
        await asyncio.wait_for(self.done.wait(), self.timeout)
        return self.gateway


def gateway_config(origins: list[HttpOrigin], forecast: dict[str, Any]) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app"}],
        "groups": {"app": {"backends": [o.address for o in origins], "max_in_flight": 32,
                           "health": {"kind": "none"}}},
        "admin": {"bind": "127.0.0.1:0", "allow_anonymous": True},
        "forecast": {"enabled": True, "model": "gw", "quantile": 0.5, "lead": 600,
                     "refresh_interval": 7200, "tick": 60, **forecast},
    }


async def test_pools_are_warm_before_the_forecast_peak(tmp_path: Path,
                                                       origins: list[HttpOrigin]) -> None:
    store = tmp_path / "telemetry.db"
    addresses = [o.address for o in origins]
    fill_store(store, addresses)
    history = StoreSource(str(store), segment_by="group", groups=dict.fromkeys(addresses, "app"),
                          since=T0, until=NOON)
    fit(tmp_path / "registry", [history.series("app")])
    run = Run(gateway_config(origins, {"registry": str(tmp_path / "registry"),
                                       "store": str(store), "metric": "connections"}),
              stop_minute=45)
    gateway = await run()
    try:
        forecast = gateway.forecast
        assert forecast is not None and forecast.error is None and forecast.version == 1
        planned = forecast.plans["app"]
        # The hold time came from the store: 30 s. Little's law: 2 a minute held 30 s is 1 at
        # once, 20 a minute is 10; warm ten minutes ahead of the peak at 12:30.
        assert planned.hold_time == pytest.approx(30.0) and planned.hold_source == "store"
        assert [s.target for s in planned.plan.steps["app"]][:25] == [1] * 20 + [10] * 5
        assert run.seen[0] == (1, 1)
        assert run.seen[19] == (1, 1)
        # Ten minutes before the peak the group holds 10 real connections, split 5 and 5.
        assert run.seen[20] == (10, 10)
        assert run.seen[30] == (10, 10)
        assert run.split[19] == [1, 0] and run.split[20] == [5, 5]
        assert sum(o.connections for o in origins) >= 10
        # After the peak the plan asks for 1 and nothing is in use: scale-in follows.
        assert run.seen[45][0] == 1 and run.split[45] == [1, 0]
    finally:
        await gateway.drain(1.0)


async def test_forecast_only_publishes_the_plan_and_leaves_targets_alone(
        tmp_path: Path, origins: list[HttpOrigin]) -> None:
    history = from_values(per_minute()[:-12 * 60], step=60, start=T0, segment="app")
    fit(tmp_path / "registry", [history])
    run = Run(gateway_config(origins, {"registry": str(tmp_path / "registry"),
                                       "mode": "forecast_only", "hold_time": 30.0}),
              stop_minute=20)
    gateway = await run()
    admin = AdminServer(gateway, "127.0.0.1:0", None)
    await admin.start()
    try:
        assert run.seen[20] == (10, 0)  # decided, never applied
        assert [b.warm_target for b in gateway.groups["app"].backends] == [0, 0]
        assert sum(o.connections for o in origins) == 0
        host, port = admin.address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            shown = (await client.get("/forecast")).json()
            metrics = (await client.get("/metrics")).text
        group = shown["groups"]["app"]
        assert shown["mode"] == "forecast_only" and shown["error"] is None
        assert group["applied"] is False and group["target"] == 10
        assert group["now"]["target"] == 10 and group["peak"] == 10
        assert group["hold_time_from"] == "config"
        assert group["backends"] == {o.address: 0 for o in origins}
        assert len(group["plan"]["steps"]["app"]) == 60
        assert 'connwise_forecast_warm_target{group="app"} 10.0' in metrics
        assert 'connwise_forecast_demand{horizon="10m",segment="app"} 20.0' in metrics
        backend = origins[0].address
        assert f'connwise_warm_target{{backend="{backend}",group="app"}} 0.0' in metrics
        # A reload that turns the section off stops the task; /forecast then says so.
        task = gateway.forecast._task if gateway.forecast is not None else None
        assert task is not None and not task.done()
        await gateway.reload(load_gateway_config(gateway_config(origins, {"enabled": False})))
        assert gateway.forecast is None
        await asyncio.wait([task], timeout=1.0)
        assert task.cancelled()
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            off = await client.get("/forecast")
        assert off.status_code == 404 and "[forecast]" in off.json()["error"]
    finally:
        await admin.close()
        await gateway.drain(1.0)


async def test_a_group_the_new_champion_cannot_plan_gets_its_own_warm_target_back(
        tmp_path: Path, origins: list[HttpOrigin]) -> None:
    registry = tmp_path / "registry"
    fit(registry, [from_values(per_minute()[:-12 * 60], step=60, start=T0, segment="app")])

    def promote_another() -> None:  # a champion that knows nothing of group app
        fit(registry, [from_values(per_minute()[:-12 * 60], step=60, start=T0,
                                   segment="other")])

    run = Run(gateway_config(origins, {"registry": str(registry), "hold_time": 30.0,
                                       "refresh_interval": 1800}),
              stop_minute=31, at={25: promote_another})
    gateway = await run()
    try:
        forecast = gateway.forecast
        assert forecast is not None and forecast.version == 2
        assert run.split[25] == [5, 5]
        assert "app" in forecast.skipped and "app" not in forecast.appliers
        # The planner no longer owns the group: its pools hold its warm_target (0) again,
        # not the last forecast's 10 for ever.
        assert [b.warm_target for b in gateway.groups["app"].backends] == [0, 0]
    finally:
        await gateway.drain(1.0)


async def test_the_warm_target_floor_holds_after_the_plan_ends(
        tmp_path: Path, origins: list[HttpOrigin]) -> None:
    fit(tmp_path / "registry",
        [from_values(per_minute()[:-12 * 60], step=60, start=T0, segment="app")])
    config = gateway_config(origins, {"registry": str(tmp_path / "registry"),
                                      "hold_time": 30.0})
    config["groups"]["app"]["warm_target"] = 1
    run = Run(config, stop_minute=70)  # the plan covers an hour; the next refresh is at 120
    gateway = await run()
    try:
        assert run.split[45] == [1, 1]
        # Past the plan's end it asks for nothing, and nothing is in use: the group keeps its
        # static warm_target, one per backend, all the same.
        assert run.split[65] == [1, 1]
    finally:
        await gateway.drain(1.0)


async def test_a_wall_clock_step_moves_the_plan_with_it(
        tmp_path: Path, origins: list[HttpOrigin]) -> None:
    fit(tmp_path / "registry",
        [from_values(per_minute()[:-12 * 60], step=60, start=T0, segment="app")])
    skew = [-300.0]  # the wall clock is five minutes slow, until NTP steps it at minute 5

    def correct() -> None:
        skew[0] = 0.0

    run = Run(gateway_config(origins, {"registry": str(tmp_path / "registry"),
                                       "hold_time": 30.0, "refresh_interval": 600}),
              stop_minute=21, wall_clock=lambda: run.clock.now() + skew[0], at={5: correct})
    gateway = await run()
    try:
        # The plan's 12:20 step happens when the wall clock says 12:20, not five minutes on.
        assert run.seen[19][0] == 1 and run.seen[20][0] == 10
    finally:
        await gateway.drain(1.0)


async def test_plan_steps_go_on_while_a_refresh_hangs_and_a_drain_does_not_wait_for_it(
        tmp_path: Path, origins: list[HttpOrigin], monkeypatch: pytest.MonkeyPatch) -> None:
    fit(tmp_path / "registry",
        [from_values(per_minute()[:-12 * 60], step=60, start=T0, segment="app")])
    release = threading.Event()
    compute = GatewayForecast._compute
    calls = []

    def hanging(self: GatewayForecast, *args: Any) -> Any:
        # A daemon thread: one blocked for good must not keep the process from exiting.
        calls.append(threading.current_thread().daemon)
        if len(calls) > 1:  # the second refresh: a store that does not answer
            release.wait(10.0)
        return compute(self, *args)

    monkeypatch.setattr(GatewayForecast, "_compute", hanging)
    run = Run(gateway_config(origins, {"registry": str(tmp_path / "registry"),
                                       "hold_time": 30.0, "refresh_interval": 600}),
              stop_minute=21, timeout=5.0, hanging_from=10)
    try:
        gateway = await run()
        forecast = gateway.forecast
        assert forecast is not None and calls == [True, True] and forecast.refreshes == 1
        # The refresh of minute 10 still runs; the plan of the first one is carried out.
        assert run.seen[20] == (10, 10) and run.split[20] == [5, 5]
        assert forecast.snapshot()["refreshing_since"] == NOON + 600
        drained = asyncio.create_task(gateway.drain(1.0))
        await asyncio.wait_for(asyncio.shield(drained), 3.0)
    finally:
        release.set()


async def test_refreshes_without_a_champion_fail_are_counted_and_the_first_champion_is_used(
        tmp_path: Path, origins: list[HttpOrigin]) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()

    def promote() -> None:
        fit(registry, [from_values(per_minute()[:-12 * 60], step=60, start=T0, segment="app")])

    run = Run(gateway_config(origins, {"registry": str(registry), "hold_time": 30.0,
                                       "refresh_interval": 300}),
              stop_minute=21, at={10: promote})
    gateway = await run()
    try:
        forecast = gateway.forecast
        assert forecast is not None
        shown = forecast.snapshot()
        # Minutes 0, 5 and 10 found no champion; 15 and 20 planned with the first one.
        assert shown["failures"] == 3 and shown["refreshes"] == 2
        assert shown["error"] is None and shown["version"] == 1
        assert min(run.seen) == 15 and run.seen[20] == (10, 10)
    finally:
        await gateway.drain(1.0)



async def test_a_forecast_that_ends_before_now_is_an_error_not_a_silent_empty_plan(
        tmp_path: Path, origins: list[HttpOrigin]) -> None:
    # Fitted on a window that ended at 10:00; without a store it forecasts 10:00..11:00.
    fit(tmp_path / "registry",
        [from_values(per_minute()[:-12 * 60 - 120], step=60, start=T0, segment="app")])
    run = Run(gateway_config(origins, {"registry": str(tmp_path / "registry"),
                                       "hold_time": 30.0}), stop_minute=0)
    gateway = await run()
    try:
        forecast = gateway.forecast
        assert forecast is not None and forecast.plans == {} and forecast.appliers == {}
        assert forecast.error is not None and "ends" in forecast.error
        assert "store" in forecast.error
    finally:
        await gateway.drain(1.0)
