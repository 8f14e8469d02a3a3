"""Admission and degradation of the gateway over real loopback sockets: the signal read when a
queued request is dispatched (httpx), and the throttle step on WebSocket relays (websockets)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets

from connwise.core.degrade import SIGNAL, THROTTLE, DegradeConfig, DegradeLadder
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin


@pytest.fixture
async def origin() -> AsyncIterator[HttpOrigin]:
    started = await HttpOrigin("o0").start()
    yield started
    await started.stop()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a gateway-side condition (nothing to await on: the state lives in the core)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def base_url(gateway: Gateway, listener: str = "web") -> str:
    host, port = gateway.listeners[listener].address
    return f"http://{host}:{port}"


async def test_a_queued_request_carries_the_signal_in_force_when_it_is_dispatched(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    # One slot and a queue of four: one waiter fills a quarter of the queue, a pressure of
    # 1.25 that takes interactive to the signal step (1.15) and no further (queue is 1.4).
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origin.address], "max_in_flight": 1, "max_waiters": 4,
                        "health": {"kind": "none"}}})
    group = gateway.groups["app"]
    async with httpx.AsyncClient(base_url=base_url(gateway), timeout=10) as client:
        holder = asyncio.ensure_future(client.get("/slow?ms=1200"))
        await until(lambda: group.scheduler.in_use > 0)
        assert group.admission.level("interactive") == 0
        queued = asyncio.ensure_future(client.get("/headers"))
        await until(lambda: group.scheduler.waiting > 0)
        # It arrived below the signal step; the ladder climbs while it waits.
        assert group.admission.level("interactive") < SIGNAL
        await until(lambda: group.admission.level("interactive") >= SIGNAL)
        assert not queued.done()
        answer = await queued
        first = await holder
    assert answer.status_code == 200
    assert json.loads(answer.text)["connwise-degrade"] == str(SIGNAL)
    assert first.status_code == 200
    assert gateway.class_counters["signal", "interactive"] == 1
    assert group.admission.stats()["interactive"]["applied"]["signal"] == 1


async def test_websocket_relay_of_a_throttled_class_is_capped(
        make_gateway: GatewayFactory) -> None:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    server = await websockets.serve(echo, "127.0.0.1", 0, max_size=None)
    port = server.sockets[0].getsockname()[1]
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "ws", "path_prefix": "/ws",
                 "upgrade": "websocket"}],
        groups={"ws": {"backends": [f"127.0.0.1:{port}"], "health": {"kind": "none"}}})
    group = gateway.groups["ws"]
    rate, burst = 512 * 1024, 32 * 1024
    # The group's own ladder type, with a small rate so the cap shows in about a second, and
    # a long dwell_down so the periodic tick (no real contention here) does not undo it.
    group.admission = DegradeLadder(DegradeConfig(throttle_rate=rate, throttle_burst=burst,
                                                  dwell_down=60.0), gateway.classes)
    host, gport = gateway.listeners["web"].address
    payload = os.urandom(8 * 1024)
    count = 32

    async def echo_through() -> tuple[float, str]:
        async with websockets.connect(f"ws://{host}:{gport}/ws", max_size=None,
                                      compression=None) as ws:
            class_name = gateway.connections()[0]["class"]
            started = time.monotonic()
            # Ping-pong: the bucket lets a chunk through and pauses the reading after it, so
            # the cap shows over many chunks, not in one large write.
            for _ in range(count):
                await ws.send(payload)
                assert await ws.recv() == payload
            return time.monotonic() - started, class_name

    free, class_name = await echo_through()
    assert gateway.class_counters["throttle", class_name] == 0
    # Contention puts the class (and the classes below it) on the throttle step.
    ladder = group.admission
    for t in range(3):
        ladder.update_pressure(dict.fromkeys(gateway.classes.names, 1.0), float(t))
    assert ladder.level(class_name) >= THROTTLE
    throttled, _ = await echo_through()
    server.close()
    relayed = 2 * count * len(payload)  # both directions
    floor = (relayed - burst - len(payload)) / rate  # the last chunk passes before its pause
    assert throttled >= 0.9 * floor, (throttled, floor)
    assert free < floor / 3, (free, floor)
    assert gateway.class_counters["throttle", class_name] == 1
    assert ladder.stats()[class_name]["applied"]["throttle"] == 1
