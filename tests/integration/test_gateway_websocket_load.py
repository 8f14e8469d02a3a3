"""WebSocket relays and the upstream pools over real loopback sockets: a relay leaves its pool
(whose `max_in_flight` slots are for requests) and counts in its backend's load instead, which
p2c and the bounded-load hash ring read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response

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
