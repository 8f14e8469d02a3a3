"""The admin API over a started gateway: warm_target refuses bad bodies naming the field,
/connections says each connection's state and a WebSocket's close codes; and an SNI listener
closes a client that sends no ClientHello within `limits.header_timeout`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connwise.gateway.admin import AdminServer
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.tcp_backend import TcpBackend
from tests.integration.test_gateway_admission import until

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture
async def origin() -> AsyncIterator[HttpOrigin]:
    started = await HttpOrigin("o").start()
    yield started
    await started.stop()


def admin(gateway: Gateway) -> AdminServer:
    """An admin API with no listener: `dispatch` is what a request to it runs."""
    return AdminServer(gateway, "127.0.0.1:0", "t")


def post(server: AdminServer, path: str, body: bytes) -> tuple[int, Any]:
    status, _, answer = server.dispatch("POST", path, {"authorization": "Bearer t"}, body)
    return status, json.loads(answer)


def connections(gateway: Gateway) -> list[dict[str, Any]]:
    status, _, answer = admin(gateway).dispatch("GET", "/connections",
                                                {"authorization": "Bearer t"}, b"")
    assert status == 200
    return list(json.loads(answer)["connections"])


@pytest.mark.parametrize(("body", "error"), [
    (b'{"n": 2.9}', "'n' = 2.9: the target is a whole number of connections in 0..8"),
    (b'{"n": NaN}', "'n' = nan"),
    (b'{"n": Infinity}', "'n' = inf"),
    (b'{"n": -1}', "'n' = -1"),
    (b'{"n": 9}', "'n' = 9: the target is a whole number of connections in 0..8 (the group's "
                  "max_in_flight)"),
    (b'{"n": true}', "'n' = True"),
    (b'{"n": "4"}', "'n' = '4'"),
    (b'{"n": 2, "in": -5}', "'in' = -5: seconds from now, a finite number >= 0"),
    (b'{"n": 2, "in": NaN}', "'in' = nan"),
    (b'{"in": 5}', "'n' is missing"),
    (b'{"n": 2, "at": 5}', "unknown field 'at'"),
    (b'[2]', "the body is list, not a JSON object"),
    (b'n=2', "the body is not JSON"),
])
async def test_warm_target_refuses_what_is_not_a_target(
        make_gateway: GatewayFactory, origin: HttpOrigin, body: bytes, error: str) -> None:
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        groups={"app": {"backends": [origin.address], "max_in_flight": 8,
                        "health": {"kind": "none"}}})
    server = admin(gateway)
    path = f"/backends/app/{origin.address}/warm_target"
    status, answer = post(server, path, body)
    assert status == 400 and answer["error"].startswith(error), answer
    assert answer["error"].endswith('send {"n": <connections>, "in": <seconds>}')
    assert gateway.groups["app"].backends[0].warm_target == 0
    for good, n in ((b'{"n": 8}', 8), (b'{"n": 3.0, "in": 0.5}', 3), (b'{"n": 0}', 0)):
        status, answer = post(server, path, good)
        assert status == 200 and answer["warm_target"] == n, answer


async def test_connections_say_their_state(make_gateway: GatewayFactory,
                                           origin: HttpOrigin) -> None:
    backend = await TcpBackend().start()
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"},
                   {"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "one"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origin.address], "health": {"kind": "none"}},
                "one": {"backends": [f"127.0.0.1:{backend.port}"], "max_in_flight": 1,
                        "health": {"kind": "none"}}})
    web_host, web_port = gateway.listeners["web"].address
    raw_host, raw_port = gateway.listeners["raw"].address
    opened = []
    try:
        reader, writer = await asyncio.open_connection(web_host, web_port)
        opened.append(writer)
        writer.write(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        relayed = await asyncio.open_connection(raw_host, raw_port)
        opened.append(relayed[1])
        assert await asyncio.wait_for(relayed[0].readline(), 5) == b"HELLO\n"
        waiting = await asyncio.open_connection(raw_host, raw_port)  # the slot is taken
        opened.append(waiting[1])
        await until(lambda: len(gateway.clients) == 3)
        states = {(c["kind"], c["state"]) for c in connections(gateway)}
        assert states == {("http", "idle"), ("tcp", "active"), ("tcp", "queued")}, states
    finally:
        for w in opened:
            w.close()
        await backend.stop()


async def raw_websocket_origin() -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    """Answers a WebSocket handshake, then reads and never answers (nor closes): what it is
    sent stays visible on the gateway's side."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        key = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        writers.append(writer)
        while await reader.read(4096):
            pass

    return await asyncio.start_server(handle, "127.0.0.1", 0), writers


async def test_a_websocket_shows_its_close_codes(make_gateway: GatewayFactory) -> None:
    server, upstreams = await raw_websocket_origin()
    port = server.sockets[0].getsockname()[1]
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "ws", "path_prefix": "/",
                 "upgrade": "websocket"}],
        groups={"ws": {"backends": [f"127.0.0.1:{port}"], "health": {"kind": "none"}}})
    host, gport = gateway.listeners["web"].address
    reader, writer = await asyncio.open_connection(host, gport)
    try:
        writer.write(b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        [conn] = connections(gateway)
        assert conn["kind"] == "websocket" and conn["state"] == "active"
        assert conn["close_code"] == {"client": None, "upstream": None}
        # The client closes with 4001 (a masked close frame) ...
        mask = os.urandom(4)
        payload = (4001).to_bytes(2, "big")
        writer.write(b"\x88\x82" + mask + bytes(b ^ m for b, m in zip(payload, mask[:2],
                                                                        strict=True)))
        await until(lambda: connections(gateway)[0]["close_code"]["client"] == 4001)
        # ... and the upstream answers 1000 (unmasked).
        upstreams[0].write(b"\x88\x02" + (1000).to_bytes(2, "big"))
        await until(lambda: connections(gateway)[0]["close_code"]["upstream"] == 1000)
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"\x88\x02\x03\xe8"
    finally:
        writer.close()
        for upstream in upstreams:
            upstream.close()
        server.close()


async def test_an_sni_listener_closes_a_client_that_sends_no_hello(
        make_gateway: GatewayFactory) -> None:
    backend = await TcpBackend().start()
    gateway = await make_gateway(
        listeners=[{"name": "tls", "kind": "tcp", "bind": "127.0.0.1:0", "group": "a",
                    "sni": {"B.Example.com": "a"}}],
        groups={"a": {"backends": [f"127.0.0.1:{backend.port}"], "health": {"kind": "none"}}},
        limits={"header_timeout": 0.3})
    host, port = gateway.listeners["tls"].address
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectionError):  # aborted: a reset, or EOF
            if not await asyncio.wait_for(reader.read(10), 5):
                raise ConnectionResetError
        assert 0.25 <= time.monotonic() - started < 2.0
        assert gateway.counters["sni_timeout"] == 1
        assert backend.accepted == 0
        await until(lambda: not gateway.clients)
    finally:
        writer.close()
        await backend.stop()
