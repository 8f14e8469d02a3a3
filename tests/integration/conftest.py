"""What the integration tests share: a factory of started gateways that drains them at the end,
two real HTTP origins, raw HTTP backends, a WebSocket echo server, and the drop of a PostgreSQL
schema a test worked in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
import websockets
from websockets.asyncio.server import Server, ServerConnection

from connwise.config import load_gateway_config
from connwise.gateway.runtime import Gateway
from tests.integration.http_origin import HttpOrigin

if TYPE_CHECKING:
    from tests.integration.test_gateway_http_edges import Answer, RawBackend

GatewayFactory = Callable[..., Awaitable[Gateway]]
#: What the `raw` fixture gives: `await raw(answer)` starts a `RawBackend` answering `answer`.
Start = Callable[["Answer"], Awaitable["RawBackend"]]


@pytest.fixture
async def make_gateway() -> AsyncIterator[GatewayFactory]:
    """`await make_gateway(**config)`: a started gateway, drained when the test ends."""
    running: list[Gateway] = []

    async def make(**config: Any) -> Gateway:
        gateway = Gateway(load_gateway_config(config))
        await gateway.start()
        running.append(gateway)
        return gateway

    yield make
    for gateway in running:
        if not gateway.draining:
            await gateway.drain(1.0)


@pytest.fixture
async def origins() -> AsyncIterator[list[HttpOrigin]]:
    started = [await HttpOrigin(f"o{i}").start() for i in range(2)]
    yield started
    for origin in started:
        await origin.stop()


async def drop_schema(dsn: str, schema: str) -> None:
    """Drop a test's own PostgreSQL schema and everything in it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def echo() -> AsyncIterator[Server]:
    """A WebSocket server on loopback that sends every message back."""
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    server = await websockets.serve(handler, "127.0.0.1", 0)
    yield server
    server.close()
    await server.wait_closed()


@pytest.fixture
async def raw() -> AsyncIterator[Start]:
    """`await raw(answer)`: a started `RawBackend`, stopped when the test ends."""
    # Imported here: the module defining it imports this one.
    from tests.integration.test_gateway_http_edges import RawBackend

    started: list[RawBackend] = []

    async def start(answer: Answer) -> RawBackend:
        backend = await RawBackend(answer).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()
