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

from connwise.core.degrade import QUEUE, SIGNAL, THROTTLE, DegradeConfig, DegradeLadder
from connwise.gateway.http import HttpClient
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


def one_slot(origin: HttpOrigin, max_wait: float = 10.0) -> dict[str, Any]:
    """One slot to the origin; interactive requests wait at most `max_wait` seconds."""
    return {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"app": {"backends": [origin.address], "max_in_flight": 1,
                           "max_waiters": 16, "health": {"kind": "none"}}},
        "classes": {"critical": {"rank": 2, "reserved_share": 0.0, "max_wait": 5.0},
                    "interactive": {"rank": 1, "max_wait": max_wait, "aging_rate": 0.2},
                    "bulk": {"rank": 0, "aging_rate": 0.1}}}


async def raw_get(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    lowered = {k.lower(): v for k, v in headers.items()}
    body = await reader.readexactly(int(lowered.get("content-length", "0")))
    return int(lines[0].split()[1]), lowered, body


async def slot_held(make_gateway: GatewayFactory, origin: HttpOrigin, ms: int,
                    max_wait: float = 10.0) -> tuple[Gateway, int, asyncio.StreamReader,
                                                      asyncio.StreamWriter]:
    """A gateway with one slot, and a request holding it for `ms` ms: the gateway, its port,
    and the holder's reader and writer."""
    gateway = await make_gateway(**one_slot(origin, max_wait))
    port = gateway.listeners["web"].address[1]
    reader, writer = await raw_get(port, f"/slow?ms={ms}")
    await until(lambda: gateway.groups["app"].scheduler.in_use == 1)
    return gateway, port, reader, writer


async def both_go_on(gateway: Gateway, holder: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                     client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                     queued: bool) -> None:
    """The holder is answered (and then the client's `queued` request, sent once the slot
    freed), the client's connection serves its next request at once, and both close with
    nothing left behind."""
    status, _, _ = await read_answer(holder[0])
    assert status == 200
    if queued:
        status, _, body = await read_answer(client[0])
        assert status == 200 and body
    client[1].write(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, _ = await read_answer(client[0])
    assert status == 200
    for _, w in (client, holder):
        w.close()
    await until(lambda: not gateway.clients)
    assert gateway.groups["app"].scheduler.in_use == 0


async def test_a_queued_request_waits_without_a_task_and_is_sent_when_the_slot_frees(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    gateway, port, holder_reader, holder = await slot_held(make_gateway, origin, 300)
    group = gateway.groups["app"]
    reader, writer = await raw_get(port, "/fast")
    await until(lambda: group.scheduler.waiting == 1)
    [queued] = [c for c in gateway.clients.values()
                if isinstance(c, HttpClient) and c.queued is not None]
    assert isinstance(queued, HttpClient) and queued.task is None
    # The holder's answer frees the slot; the queued request goes out and is answered.
    await both_go_on(gateway, (holder_reader, holder), (reader, writer), queued=True)
    assert group.scheduler.waiting == 0


async def test_a_queued_request_past_its_max_wait_gets_503_and_the_connection_goes_on(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    gateway, port, holder_reader, holder = await slot_held(make_gateway, origin, 1000,
                                                           max_wait=0.2)
    group = gateway.groups["app"]
    reader, writer = await raw_get(port, "/fast")
    status, headers, _ = await read_answer(reader)
    assert status == 503 and "retry-after" in headers
    assert group.scheduler.waiting == 0 and gateway.class_counters["shed", "interactive"] == 1
    await both_go_on(gateway, (holder_reader, holder), (reader, writer), queued=False)


async def test_a_client_that_leaves_while_queued_leaves_the_queue(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    gateway, port, holder_reader, holder = await slot_held(make_gateway, origin, 300)
    group = gateway.groups["app"]
    _, leaver = await raw_get(port, "/fast")
    await until(lambda: group.scheduler.waiting == 1)
    leaver.close()
    await until(lambda: group.scheduler.waiting == 0)
    before = origin.requests
    status, _, _ = await read_answer(holder_reader)
    assert status == 200
    holder.close()
    await until(lambda: not gateway.clients)
    assert group.scheduler.in_use == 0
    assert origin.requests == before, "the request of a client gone is never sent"


async def test_a_client_gone_in_the_iteration_its_queued_request_is_granted_frees_the_slot(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    # The client's end is pending (its transport closed, `connection_lost` scheduled) when the
    # slot frees in the same loop iteration: the grant hands the request to a task (no idle
    # upstream connection yet), which `connection_lost` then cancels before its first step.
    gateway = await make_gateway(**one_slot(origin))
    group = gateway.groups["app"]
    assert group.scheduler.try_admit("interactive")  # the test holds the only slot
    _, leaver = await raw_get(gateway.listeners["web"].address[1], "/fast")
    await until(lambda: group.scheduler.waiting == 1)
    [client] = [c for c in gateway.clients.values() if isinstance(c, HttpClient)]
    assert client.transport is not None
    client.transport.abort()
    group.release("interactive")  # as the end of another exchange does
    assert client.task is not None, "the grant went to a task"
    await until(lambda: not gateway.clients)
    leaver.close()
    assert client.task.cancelled()
    assert group.scheduler.in_use == 0 and group.scheduler.waiting == 0


async def test_a_request_the_full_queue_refuses_is_not_counted_as_queued(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    config = one_slot(origin)
    config["groups"]["app"]["max_waiters"] = 1
    gateway = await make_gateway(**config)
    group = gateway.groups["app"]
    ladder = group.admission = DegradeLadder(
        DegradeConfig(dwell_down=60.0, max_level={"bulk": QUEUE, "interactive": QUEUE}),
        gateway.classes)
    for t in range(4):
        ladder.update_pressure({"bulk": 2.0, "interactive": 2.0}, float(t))
    assert ladder.level("interactive") == QUEUE
    assert group.scheduler.try_admit("interactive")  # the test holds the only slot
    port = gateway.listeners["web"].address[1]
    queued_reader, queued = await raw_get(port, "/fast")
    await until(lambda: group.scheduler.waiting == 1)
    refused_reader, refused = await raw_get(port, "/fast")
    status, _, _ = await read_answer(refused_reader)
    assert status == 503
    group.release("interactive")
    status, _, _ = await read_answer(queued_reader)
    assert status == 200
    for writer in (queued, refused):
        writer.close()
    assert ladder.stats()["interactive"]["applied"]["queue"] == 1
    assert gateway.class_counters["queued", "interactive"] == 1
    assert gateway.class_counters["shed", "interactive"] == 1
