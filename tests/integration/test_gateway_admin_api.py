"""The admin listener over raw loopback sockets: what it answers to repeated operator actions,
bad input, torn and pipelined requests, and how its connections end when it closes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from connwise.gateway.admin import AdminServer
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory

#: Nothing listens here: the group's pools warm nothing (warm_target 0, no health checks), so
#: no test connects to it.
BACKEND = "127.0.0.1:9"
AUTH = b"Authorization: Bearer t\r\n"

Answer = tuple[int, dict[str, str], bytes]
Start = Callable[..., "asyncio.Future[AdminServer]"]


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        groups={"app": {"backends": [BACKEND], "max_in_flight": 8,
                        "health": {"kind": "none"}}})


@pytest.fixture
async def admin(gateway: Gateway) -> AsyncIterator[AdminServer]:
    server = AdminServer(gateway, "127.0.0.1:0", "t")
    await server.start()
    yield server
    await server.close()


async def send(server: AdminServer, raw: bytes, *, eof: bool = False) -> bytes:
    """Write `raw` to the admin listener (then a FIN with `eof`) and read to the end."""
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(raw)
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def call(server: AdminServer, method: str, path: str, body: bytes = b"",
               auth: bytes = AUTH) -> tuple[int, dict[str, str], Any]:
    raw = (f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n"
           .encode() + auth + b"\r\n" + body)
    status, headers, answer = parse(await send(server, raw))
    is_json = headers.get("content-type") == "application/json"
    return status, headers, json.loads(answer) if is_json else answer


async def test_drain_and_undrain_are_idempotent(admin: AdminServer, gateway: Gateway) -> None:
    for action, state in (("drain", "draining"), ("drain", "draining"),
                          ("undrain", "slow_start"), ("undrain", "slow_start")):
        status, _, answer = await call(admin, "POST", f"/backends/app/{BACKEND}/{action}")
        assert status == 200 and answer["health"]["state"] == state, (action, answer)
    status, _, answer = await call(admin, "POST", f"/backends/app/{BACKEND}/undrain")
    assert status == 200, answer
    assert gateway.groups["app"].backends[0].health.available(gateway.clock.now())
