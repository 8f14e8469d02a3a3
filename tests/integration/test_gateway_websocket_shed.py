"""A refused WebSocket handshake over real loopback sockets: the gateway completes it itself and
closes with 1013 (try again later), which a browser can read where a 503 reads as 1006; the
origin never sees it. Anything that is not a valid handshake still gets 503 with Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request

from connwise.core.degrade import SHED, WS_TRY_AGAIN_LATER, DegradeConfig, DegradeLadder
from connwise.gateway import http as gateway_http
from connwise.gateway.http import WS_REFUSAL_GRACE
from connwise.gateway.runtime import Gateway
from connwise.gateway.wsframes import CLOSE_TRY_AGAIN_LATER
from tests.integration.conftest import GatewayFactory
from tests.integration.test_gateway_admission import read_answer, until

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's answer to KEY


@dataclass
class EchoOrigin:
    """A WebSocket echo server that notes every handshake it is asked for."""

    server: Server
    handshakes: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def origin() -> AsyncIterator[EchoOrigin]:
    handshakes: list[str] = []

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    def seen(connection: ServerConnection, request: Request) -> None:
        handshakes.append(request.path)

    server = await websockets.serve(echo, "127.0.0.1", 0, process_request=seen)
    yield EchoOrigin(server, handshakes)
    server.close()
    await server.wait_closed()


def one_ws_slot(origin: EchoOrigin, max_wait: float = 10.0) -> dict[str, Any]:
    """One slot to the echo origin; every class waits at most `max_wait` seconds."""
    return {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "ws", "path_prefix": "/ws"}],
        "groups": {"ws": {"backends": [origin.address], "max_in_flight": 1, "max_waiters": 16,
                          "health": {"kind": "none"}}},
        "classes": {"critical": {"rank": 2, "reserved_share": 0.0, "max_wait": max_wait},
                    "interactive": {"rank": 1, "max_wait": max_wait, "aging_rate": 0.2},
                    "bulk": {"rank": 0, "max_wait": max_wait, "aging_rate": 0.1}}}


def hold_the_slot(gateway: Gateway) -> None:
    """Take the group's one slot, as a long request would: nothing arriving finds it free."""
    assert gateway.groups["ws"].scheduler.try_admit("critical")


def shed_every_class(gateway: Gateway) -> DegradeLadder:
    """Put every class of the group on the shed step, refusing whatever finds no free slot
    (no backlog), and keep it there (a long dwell_down: the periodic tick sees no contention)."""
    ladder = DegradeLadder(DegradeConfig(dwell_up=0.0, dwell_down=60.0, shed_backlog=0),
                           gateway.classes)
    gateway.groups["ws"].admission = ladder
    names = gateway.classes.names
    for t in range(4 * len(names)):
        ladder.update_pressure(dict.fromkeys(names, 10.0), float(t))
    assert all(ladder.level(name) == SHED for name in names)
    return ladder


def ws_url(gateway: Gateway) -> str:
    host, port = gateway.listeners["web"].address
    return f"ws://{host}:{port}/ws"


async def refused(gateway: Gateway) -> websockets.ConnectionClosed:
    """Connect as a WebSocket client; the handshake succeeds and the first read fails."""
    async with websockets.connect(ws_url(gateway), open_timeout=5) as ws:
        assert ws.response is not None and ws.response.status_code == 101
        assert ws.response.headers["Retry-After"] == "5"
        with pytest.raises(websockets.ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == WS_TRY_AGAIN_LATER
    return caught.value


def shed_classes(gateway: Gateway) -> list[str]:
    return [name for (step, name), n in gateway.class_counters.items() if step == "shed" and n]


async def test_a_shed_websocket_handshake_is_completed_and_closed_with_1013(
        make_gateway: GatewayFactory, origin: EchoOrigin, tmp_path: Path) -> None:
    from connwise.telemetry.record import FIELD_NAMES
    from connwise.telemetry.stores import StoreSpec

    store = tmp_path / "gw.db"
    gateway = await make_gateway(**one_ws_slot(origin),
                                 telemetry={"store": str(store), "flush_interval": 0.05})
    hold_the_slot(gateway)
    ladder = shed_every_class(gateway)
    started = time.monotonic()
    closed = await refused(gateway)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (WS_TRY_AGAIN_LATER, "try again later")
    # The client's close frame found the connection open, and the client's close ended it,
    # not the grace deadline.
    await until(lambda: not gateway.clients)
    assert time.monotonic() - started < WS_REFUSAL_GRACE
    [class_name] = shed_classes(gateway)
    assert gateway.class_counters["shed", class_name] == 1
    assert ladder.stats()[class_name]["applied"]["shed"] == 1
    assert origin.handshakes == []
    gateway.groups["ws"].release("critical")
    await gateway.drain(1.0)
    rows = [dict(zip(FIELD_NAMES, row, strict=True))
            for chunk in StoreSpec.parse(str(store)).read() for row in chunk]
    [row] = rows
    assert row["status"] == 503 and row["requests"] == 1 and not row["backend"]


async def test_a_websocket_handshake_past_its_max_wait_is_closed_with_1013(
        make_gateway: GatewayFactory, origin: EchoOrigin) -> None:
    gateway = await make_gateway(**one_ws_slot(origin, max_wait=0.2))
    hold_the_slot(gateway)
    closed = await refused(gateway)
    assert closed.rcvd is not None and closed.rcvd.code == WS_TRY_AGAIN_LATER
    [class_name] = shed_classes(gateway)
    assert gateway.class_counters["queued", class_name] == 1
    assert gateway.groups["ws"].scheduler.waiting == 0
    assert origin.handshakes == []
    gateway.groups["ws"].release("critical")


def upgrade_request(**override: str | None) -> bytes:
    headers: dict[str, str | None] = {
        "Host": "t", "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13"}
    headers.update({name.replace("_", "-"): value for name, value in override.items()})
    lines = [f"{name}: {value}" for name, value in headers.items() if value is not None]
    return ("GET /ws HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_refused_handshake_ignores_what_the_client_sends_and_closes_after_the_grace(
        make_gateway: GatewayFactory, origin: EchoOrigin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway_http, "WS_REFUSAL_GRACE", 0.5)
    gateway = await make_gateway(**one_ws_slot(origin))
    hold_the_slot(gateway)
    shed_every_class(gateway)
    host, port = gateway.listeners["web"].address
    reader, writer = await asyncio.open_connection(host, port)
    # A client that writes a frame (and something that looks like HTTP) before it reads, and
    # never sends a close frame: neither is parsed nor answered, the grace deadline closes.
    masked_text = b"\x81\x82abcd" + bytes(b ^ m for b, m in zip(b"hi", b"ab", strict=True))
    writer.write(upgrade_request() + masked_text + b"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert f"Sec-WebSocket-Accept: {ACCEPT}\r\n".encode() in head
    # Half-closed after the close frame: the client reads it, then end of stream...
    assert await asyncio.wait_for(reader.read(), 5) == CLOSE_TRY_AGAIN_LATER
    # ...while the gateway still reads, for its close frame, until the grace ends.
    assert len(gateway.clients) == 1
    writer.write(b"\x88\x80abcd")  # a close frame with no code
    await until(lambda: not gateway.clients)
    writer.close()
    assert origin.handshakes == []
    gateway.groups["ws"].release("critical")


@pytest.mark.parametrize("override", [
    {"Sec_WebSocket_Key": "not a key"},
    {"Sec_WebSocket_Key": None},
    {"Sec_WebSocket_Version": "8"},
    {"Upgrade": "h2c"},
])
async def test_a_refused_upgrade_that_is_no_valid_handshake_gets_503_and_others_are_served(
        make_gateway: GatewayFactory, origin: EchoOrigin, override: dict[str, str | None]) -> None:
    gateway = await make_gateway(**one_ws_slot(origin))
    hold_the_slot(gateway)
    shed_every_class(gateway)
    host, port = gateway.listeners["web"].address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(upgrade_request(**override))
    status, headers, _ = await read_answer(reader)
    assert status == 503 and headers["retry-after"] == "5"
    writer.close()
    assert origin.handshakes == []
    # The slot frees and the ladder relaxes: the next WebSocket is relayed to the origin.
    group = gateway.groups["ws"]
    group.release("critical")
    group.admission = DegradeLadder(DegradeConfig(), gateway.classes)
    async with websockets.connect(ws_url(gateway), open_timeout=5) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"
    assert origin.handshakes == ["/ws"]
