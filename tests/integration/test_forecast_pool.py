"""The planner drives a real `connwise.Pool` over loopback TCP: forecast -> plan -> applier ->
`Pool.set_target` -> real connections opened to a real server, warm before the peak."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

import connwise
from connwise.core.clock import VirtualClock
from connwise.core.lifecycle import State
from connwise.core.plan import WarmPlan, WarmStep
from connwise.forecast.applier import PlanApplier
from connwise.forecast.forecaster import Forecaster, ForecasterConfig
from connwise.forecast.planner import PlannerConfig, plan
from connwise.forecast.series import from_values
from connwise.pool.drivers.tcp import TcpConnection, TcpDriver
from tests.integration.tcp_backend import TcpBackend

DAY = 1440  # minutes
T0 = 1_704_067_200.0


@pytest.fixture
async def backend() -> AsyncIterator[TcpBackend]:
    server = await TcpBackend().start()
    yield server
    await server.stop()


def make_pool(backend: TcpBackend, **kwargs: object) -> connwise.Pool[TcpConnection]:
    options: dict[str, object] = {"min_size": 0, "max_size": 12, "name": "fc",
                                  "max_connecting": 12}
    options.update(kwargs)
    return connwise.Pool(TcpDriver("127.0.0.1", backend.port, greeting=b"HELLO"),
                         **options)  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def minute_history(days: int = 3) -> np.ndarray:
    """Arrivals per minute: 4 normally, 16 from minute 30 to 39 of hour 12, every day."""
    values = np.full(days * DAY, 4.0)
    for d in range(days):
        values[d * DAY + 12 * 60 + 30:d * DAY + 12 * 60 + 40] = 16.0
    return values


async def test_forecast_plan_drives_a_real_pool_warm_before_the_peak(
        backend: TcpBackend) -> None:
    history = from_values(minute_history()[:-12 * 60], step=60, start=T0, segment="db")
    # history ends at 12:00 of day 3; the forecast covers 12:00..13:00
    forecaster = Forecaster(ForecasterConfig(models=["snaive_daily"], horizon=60, windows=1))
    forecasts = forecaster.fit([history]).predict()
    assert forecasts["db"].mean[30:40].tolist() == [16.0] * 10
    # held 30 s: 4/min -> 2 at once, 16/min -> 8; warm 10 minutes ahead, at most 3 per minute
    warm = plan(forecasts, PlannerConfig(quantile=0.5, hold_time=30, lead=600,
                                         max_ramp=0.05))
    targets = [s.target for s in warm.steps["db"]]
    assert targets[:19] == [2] * 19 and targets[19] == 5 and targets[20:40] == [8] * 20
    clock = VirtualClock(1000.0)
    async with make_pool(backend, clock=clock) as pool:
        offset = pool.now() - warm.start  # plan start = pool time 1000

        async def sleep(seconds: float) -> None:
            clock.advance(seconds)
            await until(lambda: pool.policy.counts[State.CONNECTING] == 0)

        applier = PlanApplier(pool, warm, tick=60.0, offset=offset, sleep=sleep)
        seen: list[tuple[int, int, int]] = []
        original_step = applier.step

        def step() -> int:
            target = original_step()
            minute = round((pool.now() - 1000.0) / 60)
            seen.append((minute, target, pool.policy.open_connections))
            return target

        applier.step = step  # type: ignore[method-assign]
        await applier.run(until=1000.0 + 45 * 60)
        await until(lambda: backend.open >= 8)
        by_minute = {m: (t, n) for m, t, n in seen}
        assert by_minute[0] == (2, 2)
        assert by_minute[18][0] == 2
        assert by_minute[19][0] == 5  # the ramp: 3 more a minute, no storm
        # Ten minutes before the peak at minute 30 the pool holds 8 real connections.
        assert by_minute[20] == (8, 8)
        assert by_minute[30] == (8, 8)
        assert pool.stats()["counters"]["created"] >= 8
        # After the peak the plan asks for 2 and nothing is in use: scale-in to the plan.
        assert pool.policy.active_target(pool.now()) == 2


async def test_applier_on_the_pool_clock_in_real_time(backend: TcpBackend) -> None:
    async with make_pool(backend) as pool:
        now = pool.now()
        warm = WarmPlan({"db": [WarmStep(now, 2), WarmStep(now + 0.3, 5)]}, end=now + 5)
        applier = PlanApplier(pool, warm, tick=0.05, offset=0.0)
        task = asyncio.create_task(applier.run(until=now + 0.6))
        await until(lambda: backend.open == 2)
        assert pool.policy.active_target(pool.now()) == 2
        await until(lambda: backend.open == 5)
        assert pool.now() >= now + 0.3  # not before its step
        await task
        assert pool.stats()["target"] == 5


async def test_forecast_only_leaves_a_real_pool_alone(backend: TcpBackend) -> None:
    async with make_pool(backend) as pool:
        now = pool.now()
        warm = WarmPlan({"db": [WarmStep(now, 6)]}, end=now + 5,
                        meta={"mode": "forecast_only"})
        applier = PlanApplier(pool, warm, tick=0.05, offset=0.0)
        await applier.run(until=now + 0.2)
        assert applier.history and applier.history[-1][1] == 6
        assert pool.stats()["target"] == 0 and backend.open == 0
