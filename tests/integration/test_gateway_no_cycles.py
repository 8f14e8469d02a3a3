"""A closed connection is freed by reference counting alone: no protocol object of the gateway is
left in a reference cycle for the garbage collector (an HTTP client and its parser, the two halves
of a tcp relay, a WebSocket client and its upstream). Each such cycle kept ~10-16 objects per
connection (transports, sockets, CQI state) alive until a collection, which under
`Connection: close` load cost ~4% of the gateway's instructions."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
import websockets
from websockets.asyncio.server import Server

from connwise.gateway.http import Exchange, HttpClient, _Grant
from connwise.gateway.relay import RelayHalf
from connwise.gateway.upstream_http import UpstreamConnection
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin

GATEWAY_TYPES = (HttpClient, RelayHalf, UpstreamConnection)


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable from here on, kept in `gc.garbage` for the test."""
    gc.collect()
    flags = gc.get_debug()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


async def http_request(port: int, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = await asyncio.wait_for(reader.read(), 10)  # every answer here ends with a close
    writer.close()
    await writer.wait_closed()
    return answer


async def test_closed_connections_leave_no_cycles(make_gateway: GatewayFactory,
                                                  origins: list[HttpOrigin], echo: Server,
                                                  saved_garbage: list[object]) -> None:
    ws_address = f"127.0.0.1:{echo.sockets[0].getsockname()[1]}"
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"},
                   {"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "app"}],
        routes=[{"listener": "web", "group": "ws", "path_prefix": "/ws"},
                {"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origins[0].address], "health": {"kind": "none"}},
                "ws": {"backends": [ws_address], "health": {"kind": "none"}}})
    web, raw = gateway.listeners["web"].address[1], gateway.listeners["raw"].address[1]
    head = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    for _ in range(5):
        assert (await http_request(web, head)).startswith(b"HTTP/1.1 200")
        # Through the tcp relay the origin ends the connection: `/close` answers and closes.
        assert (await http_request(raw, head.replace(b"/x", b"/close"))).startswith(
            b"HTTP/1.1 200")
    for i in range(3):
        async with websockets.connect(f"ws://127.0.0.1:{web}/ws") as ws:
            await ws.send(f"m{i}")
            assert await asyncio.wait_for(ws.recv(), 10) == f"m{i}"
    for _ in range(200):
        if not gateway.clients:
            break
        await asyncio.sleep(0.01)
    assert not gateway.clients
    await asyncio.sleep(0.05)  # the upstream halves' connection_lost follow their clients'
    gc.collect()
    leaked = [type(o).__name__ for o in saved_garbage if isinstance(o, GATEWAY_TYPES)]
    assert leaked == []


async def test_requests_shed_from_the_queue_leave_no_cycles(
        make_gateway: GatewayFactory, origins: list[HttpOrigin],
        saved_garbage: list[object]) -> None:
    """A queued request holds a grant that the scheduler's waiter names as its token; shed or
    served, the grant lets go of the waiter."""
    classes = {"critical": {"rank": 2, "max_wait": 0.05},
               "interactive": {"rank": 1, "max_wait": 0.05, "aging_rate": 0.2},
               "bulk": {"rank": 0, "max_wait": 0.05, "aging_rate": 0.1}}
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origins[0].address], "max_in_flight": 2,
                        "max_waiters": 8, "health": {"kind": "none"}}},
        classes=classes)
    web = gateway.listeners["web"].address[1]
    head = b"GET /slow?ms=30 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    answers = await asyncio.gather(*(http_request(web, head) for _ in range(30)))
    statuses = {answer[:12] for answer in answers}
    assert statuses == {b"HTTP/1.1 200", b"HTTP/1.1 503"}  # some served, some shed
    assert gateway.class_counters["queued", "interactive"] > 0  # they waited in the queue
    await asyncio.sleep(0.05)
    gc.collect()
    leaked = [type(o).__name__ for o in saved_garbage
              if isinstance(o, (*GATEWAY_TYPES, _Grant, Exchange))]
    assert leaked == []


async def test_a_failed_exchange_leaves_no_cycle(make_gateway: GatewayFactory,
                                                 saved_garbage: list[object]) -> None:
    """A backend that closes before answering: the failure raised from the exchange's future
    must not keep that future (and through it the client and the upstream) in a cycle."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    backend = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        gateway = await make_gateway(
            listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
            routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
            groups={"app": {"backends": [f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"],
                            "health": {"kind": "none"}, "warm_target": 0}})
        web = gateway.listeners["web"].address[1]
        head = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        for _ in range(3):  # fewer than the failures that eject the backend
            assert (await http_request(web, head)).startswith(b"HTTP/1.1 502")
        await asyncio.sleep(0.05)
        gc.collect()
    finally:
        backend.close()
    leaked = [type(o).__name__ for o in saved_garbage
              if isinstance(o, (*GATEWAY_TYPES, Exchange, BaseException))]
    assert leaked == []


async def test_a_client_gone_mid_request_leaves_no_cycle(make_gateway: GatewayFactory,
                                                         origins: list[HttpOrigin],
                                                         saved_garbage: list[object]) -> None:
    """Clients that go away while their request waits for its answer or its body: the
    requests they leave in their queue hold nothing that points back at them."""
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origins[0].address], "health": {"kind": "none"}}})
    web = gateway.listeners["web"].address[1]
    for head in (b"GET /slow?ms=300 HTTP/1.1\r\nHost: t\r\n\r\n",
                 b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc"):
        _, writer = await asyncio.open_connection("127.0.0.1", web)
        writer.write(head)
        await asyncio.sleep(0.05)
        writer.close()
        await writer.wait_closed()
    for _ in range(100):
        if not gateway.clients:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.4)  # the slow answer ends on its upstream connection
    gc.collect()
    leaked = [type(o).__name__ for o in saved_garbage if isinstance(o, (*GATEWAY_TYPES, Exchange))]
    assert leaked == []
