"""WebSocket relays over real loopback sockets: a relay leaves its upstream pool (whose
`max_in_flight` slots are for requests) and counts in its backend's load instead, which p2c and
the bounded-load hash ring read; its throttle follows its connection's class."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response

from connwise.config import load_gateway_config
from connwise.core.degrade import THROTTLE, DegradeConfig, DegradeLadder
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.test_gateway_admission import until


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def _plain(connection: ServerConnection, request: Request) -> Response | None:
    """`GET /plain` is an ordinary HTTP request: 200, and the upgrade path stays WebSocket."""
    if request.path != "/plain":
        return None
    return connection.respond(HTTPStatus.OK, "plain\n")


@pytest.fixture
async def echo_servers() -> AsyncIterator[list[Server]]:
    servers = [await websockets.serve(_echo, "127.0.0.1", 0, process_request=_plain)
               for _ in range(2)]
    yield servers
    for server in servers:
        server.close()
        await server.wait_closed()


def address(server: Server) -> str:
    return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def ws_config(servers: list[Server], **group: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "ws", "path_prefix": "/"}],
        "groups": {"ws": {"backends": [address(s) for s in servers],
                          "health": {"kind": "none"}, **group}}}


def base(gateway: Gateway, scheme: str) -> str:
    host, port = gateway.listeners["web"].address
    return f"{scheme}://{host}:{port}"


async def open_sockets(gateway: Gateway, n: int,
                       stack: contextlib.AsyncExitStack) -> list[Any]:
    sockets = []
    for i in range(n):
        ws = await stack.enter_async_context(
            websockets.connect(base(gateway, "ws") + "/ws", open_timeout=3))
        await ws.send(f"m{i}")
        assert await asyncio.wait_for(ws.recv(), 3) == f"m{i}"
        sockets.append(ws)
    return sockets


async def test_open_websockets_leave_the_pool_for_requests_and_more_websockets(
        make_gateway: GatewayFactory, echo_servers: list[Server]) -> None:
    gateway = await make_gateway(**ws_config(echo_servers[:1], max_in_flight=2,
                                             connect_timeout=0.5))
    [backend] = gateway.groups["ws"].backends
    assert backend.pool is not None
    async with contextlib.AsyncExitStack() as stack:
        await open_sockets(gateway, 2, stack)
        assert backend.outstanding == 2                     # the relays are its load...
        stats = backend.pool.stats()
        assert stats["connections"]["in_use"] == 0           # ...not the pool's
        assert stats["counters"]["detached"] == 2
        async with httpx.AsyncClient(base_url=base(gateway, "http")) as client:
            answer = await client.get("/plain", timeout=3)
        assert answer.status_code == 200 and answer.text == "plain\n"
        [third] = await open_sockets(gateway, 1, stack)
        await third.send("again")
        assert await asyncio.wait_for(third.recv(), 3) == "again"
        assert backend.outstanding == 3
    await until(lambda: backend.outstanding == 0)
    assert gateway.groups["ws"].scheduler.in_use == 0


@pytest.mark.parametrize("balance", ["hash", "p2c"])
async def test_open_websockets_count_in_the_balancers_load(
        make_gateway: GatewayFactory, echo_servers: list[Server], balance: str) -> None:
    """Every test client has the same address, the `hash` key: without relays in the load,
    the ring would send all of them to one backend; p2c would pick at random."""
    gateway = await make_gateway(**ws_config(echo_servers, balance=balance))
    backends = gateway.groups["ws"].backends
    async with contextlib.AsyncExitStack() as stack:
        await open_sockets(gateway, 10, stack)
        loads = sorted(b.outstanding for b in backends)
        assert sum(loads) == 10
        if balance == "p2c":
            assert loads == [5, 5]                           # always the less loaded of two
        else:
            assert loads[0] >= 3                             # bounded: at most 1.25 x the mean
        by_backend = {c["backend"] for c in gateway.connections()}
        assert by_backend == {b.name for b in backends}
    await until(lambda: all(b.outstanding == 0 for b in backends))


async def test_an_escalated_websocket_leaves_its_old_class_throttle(
        make_gateway: GatewayFactory, echo_servers: list[Server]) -> None:
    """Co-editing: a WebSocket is throttled mid-message; a second one joins its document, the
    group rule raises both, and the first one's relay follows its new class at once. (The
    route says bulk; a WebSocket's CQI puts it in interactive.)"""
    config = ws_config(echo_servers[:1])
    config["routes"][0]["class"] = "bulk"
    config["escalation"] = {"groups": [{"name": "coedit", "min_members": 2}],
                            "max_escalated_share": 1.0}
    gateway = await make_gateway(**config)
    ladder = DegradeLadder(DegradeConfig(dwell_up=0.0, dwell_down=60.0, throttle_rate=2000.0,
                                         throttle_burst=1000.0), gateway.classes)
    for t in range(2):  # a class climbs once the one below it stands higher
        ladder.update_pressure({"bulk": 10.0, "interactive": 10.0}, float(t))
    assert (ladder.level("interactive"), ladder.level("critical")) == (THROTTLE, 0)
    gateway.groups["ws"].admission = ladder
    doc = {"x-connwise-group": "doc-7"}
    url = base(gateway, "ws") + "/ws"
    async with websockets.connect(url, additional_headers=doc, compression=None) as first:
        [client] = gateway.clients.values()
        throttle = client.throttle  # type: ignore[attr-defined]
        assert throttle is not None and throttle.degrade.name == "interactive"
        message = os.urandom(200_000)                        # 100 s at 2000 bytes a second
        await first.send(message)
        await until(lambda: throttle.client_timer is not None
                    or throttle.upstream_timer is not None)
        async with websockets.connect(url, additional_headers=doc) as second:
            assert {c["class"] for c in gateway.connections()} == {"critical"}
            assert throttle.degrade.name == "critical" and throttle.bucket is None
            assert await asyncio.wait_for(first.recv(), 3) == message
            await second.send("hi")
            assert await asyncio.wait_for(second.recv(), 3) == "hi"
    assert gateway.class_counters["throttle", "interactive"] == 1
    assert gateway.class_counters["throttle", "critical"] == 0


async def test_a_reclassified_websocket_takes_its_new_class_and_throttle(
        make_gateway: GatewayFactory, echo_servers: list[Server]) -> None:
    """Without escalation rules the class is the CQI's: a WebSocket whose traffic makes it
    heavy falls to bulk (the resource axis), and its relay is capped as bulk is."""
    config = ws_config(echo_servers[:1])
    config["routes"][0]["class"] = "bulk"
    gateway = await make_gateway(**config)
    ladder = DegradeLadder(DegradeConfig(dwell_up=0.0, dwell_down=60.0), gateway.classes)
    ladder.update_pressure({"bulk": 10.0}, 0.0)
    assert (ladder.level("bulk"), ladder.level("interactive")) == (THROTTLE, 0)
    gateway.groups["ws"].admission = ladder
    async with websockets.connect(base(gateway, "ws") + "/ws") as ws:
        [client] = gateway.clients.values()
        throttle = client.throttle  # type: ignore[attr-defined]
        assert throttle.degrade.name == "interactive"
        client.bytes_in = 10**12  # type: ignore[attr-defined]  # as if it had sent a terabyte
        await asyncio.sleep(0.05)
        gateway.observe_resources(gateway.clock.now())
        [conn] = gateway.connections()
        assert conn["class"] == "bulk" and not conn["why"]["escalated"]
        assert throttle.degrade.name == "bulk"
        await ws.send("still relayed")
        assert await asyncio.wait_for(ws.recv(), 3) == "still relayed"
    assert gateway.class_counters["reclassified", "bulk"] == 1
    assert gateway.class_counters["throttle", "bulk"] == 1


async def test_relays_open_across_a_reload_still_count_in_the_load(
        make_gateway: GatewayFactory, echo_servers: list[Server]) -> None:
    """A reload replaces the groups, and its new backends started from no load while the
    WebSockets of the old ones went on (for hours): p2c split new sessions evenly between a
    backend with 6 open and one with none. They count in the new backend's load."""
    config = ws_config(echo_servers, balance="p2c")
    config["groups"]["ws"]["health"]["slow_start"] = 0
    gateway = await make_gateway(**config)
    busy, idle = (b.name for b in gateway.groups["ws"].backends)
    gateway.groups["ws"].health.drain(idle, gateway.clock.now())
    async with contextlib.AsyncExitStack() as stack:
        await open_sockets(gateway, 6, stack)                 # all on `busy`
        await gateway.reload(load_gateway_config(config))
        group = gateway.groups["ws"]
        group.health.undrain(idle, gateway.clock.now())
        await open_sockets(gateway, 6, stack)
        loads = {b.name: b.outstanding for b in group.backends}
        assert loads == {busy: 0, idle: 6}                    # the new ones went to `idle`
        now = gateway.clock.now()                             # and the admin API says so
        assert {b.name: b.snapshot(now)["outstanding"] for b in group.backends} == {
            busy: 6, idle: 6}
    await until(lambda: all(b.load == 0 for b in group.backends))
    group.tick(gateway.clock.now())
    assert all(not b.carried for b in group.backends)         # the old backends let go
