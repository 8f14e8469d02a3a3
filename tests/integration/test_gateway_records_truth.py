"""Whether a gateway record tells what happened to its connection, over real loopback sockets:
where a WebSocket session's time goes, class changes an escalation makes, degradation steps
applied, who closed the connection and why, and which phase an upstream connect is."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import Server

from connwise.core.cqi import ClassChange
from connwise.core.degrade import QUEUE, SHED
from connwise.gateway.http import HttpClient
from connwise.gateway.runtime import Gateway
from connwise.gateway.tcp import TcpClient
from connwise.telemetry.memory import MemorySink
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.recorder import Recorder
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.tcp_backend import TcpBackend
from tests.integration.tcp_relay import until
from tests.integration.test_gateway_records import _config, _rows


@pytest.fixture
async def echo_backend() -> AsyncIterator[TcpBackend]:
    backend = await TcpBackend().start()
    yield backend
    await backend.stop()


def _tcp_config(backend: str, **group: Any) -> dict[str, Any]:
    return {"listeners": [{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0",
                           "group": "echo"}],
            "groups": {"echo": {"backends": [backend], "health": {"kind": "none"}, **group}}}


def _recording(gateway: Gateway) -> MemorySink[ConnRecord]:
    """Client records into memory, in the owner's clock (no store, no upstream records)."""
    records: MemorySink[ConnRecord] = MemorySink()
    gateway.recorder = Recorder(records, node="test", wall_offset=0.0)
    return records


def _adds_up(rec: ConnRecord) -> bool:
    phases = rec.queued_s + rec.connecting_s + rec.active_s + rec.idle_s + rec.draining_s
    return abs(rec.ended_at - rec.started_at - phases) < 1e-6 and min(
        rec.queued_s, rec.connecting_s, rec.active_s, rec.idle_s, rec.draining_s) >= 0


async def _ended(records: MemorySink[ConnRecord], n: int = 1) -> list[ConnRecord]:
    await until(lambda: len(records.events) >= n)
    return list(records.events)


async def _websocket_gateway(make_gateway: GatewayFactory,
                             echo: Server) -> tuple[Gateway, MemorySink[ConnRecord]]:
    """A gateway relaying WebSockets to `echo`, its client records into memory."""
    port = echo.sockets[0].getsockname()[1]
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [f"127.0.0.1:{port}"], "health": {"kind": "none"}}})
    return gateway, _recording(gateway)


async def _closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_a_websocket_session_is_active_time_with_no_idle_tail(
        make_gateway: GatewayFactory, tmp_path: Path,
        echo: Server) -> None:
    port = echo.sockets[0].getsockname()[1]
    store = tmp_path / "gw.db"
    gateway = await make_gateway(**_config(store, [f"127.0.0.1:{port}"]))
    host, gport = gateway.listeners["web"].address
    async with websockets.connect(f"ws://{host}:{gport}/ws") as ws:
        for i in range(4):  # talking all along: ~0.4 s of session, no idle stretch
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
            await asyncio.sleep(0.1)
    echo.close()
    rows = await _rows(gateway, store)
    for kind in ("client", "upstream"):
        [row] = [row for row in rows if row["kind"] == kind]
        assert row["active_s"] >= 0.35, (kind, row["active_s"], row["idle_s"])
        # Its last frame (the close) came just before the end: it was never a zombie.
        assert row["tail_idle_s"] < 0.1, (kind, row["tail_idle_s"])


async def test_an_escalation_of_a_tcp_relay_is_a_class_change_of_its_record(
        make_gateway: GatewayFactory, echo_backend: TcpBackend) -> None:
    gateway = await make_gateway(**_tcp_config(f"127.0.0.1:{echo_backend.port}"))
    records = _recording(gateway)
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(reader.readline(), 5) == b"HELLO\n"
    [client] = gateway.clients.values()
    assert isinstance(client, TcpClient) and client.class_state is not None
    first = client.class_state.class_name
    gateway.apply_changes([ClassChange(client.conn_id, first, "critical", "test",
                                       gateway.clock.now())])
    await _closed(writer)
    [rec] = await _ended(records)
    assert (rec.class_name, rec.class_changes) == ("critical", 1)


async def test_an_escalation_of_a_websocket_is_a_class_change_of_its_record(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], echo: Server) -> None:
    gateway, records = await _websocket_gateway(make_gateway, echo)
    host, gport = gateway.listeners["web"].address
    async with websockets.connect(f"ws://{host}:{gport}/ws") as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        [client] = gateway.clients.values()
        assert isinstance(client, HttpClient) and client.class_state is not None
        first = client.class_state.class_name
        assert first != "critical"
        gateway.apply_changes([ClassChange(client.conn_id, first, "critical", "test",
                                           gateway.clock.now())])
        await ws.send("y")
        assert await ws.recv() == "y"
    [rec] = await _ended(records)
    assert (rec.class_name, rec.class_changes) == ("critical", 1)


@pytest.mark.parametrize("level", [QUEUE, SHED])
async def test_the_queue_and_shed_steps_are_degradations_of_http_records(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], level: int) -> None:
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origins[0].address], "health": {"kind": "none"},
                        "max_in_flight": 1}},
        degrade={"shed_backlog": 0})
    records = _recording(gateway)
    group = gateway.groups["app"]
    # Held for seconds: the ladder steps down only after `dwell_down` under the exit; the
    # pressure at the top keeps the shed step refusing what finds no free slot.
    state = group.admission.state("interactive")
    state.level, state.pressure = level, 2.0
    host, port = gateway.listeners["web"].address
    slow = None
    if level == SHED:  # a free slot is taken even at the shed step: hold the only one
        _, slow = await asyncio.open_connection(host, port)
        slow.write(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        await until(lambda: sum(group.scheduler.in_use_by_class().values()) == 1)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 503" if level == SHED else b"HTTP/1.1 200"), head
    await _closed(writer)
    if slow is not None:
        await _closed(slow)
    ended = await _ended(records, 2 if slow is not None else 1)
    applied = group.admission.state("interactive").applied
    assert applied[level] == 1
    # Each step the ladder counts as applied is in the record of the connection it hit.
    assert sum(rec.degradations for rec in ended) == sum(applied)


async def test_the_shed_step_is_a_degradation_of_a_tcp_record(
        make_gateway: GatewayFactory, echo_backend: TcpBackend) -> None:
    # No backlog, and a shed step whose exit is 0: the gateway's own ladder updates (the real
    # contention: the slot held, nobody waiting) keep the pressure over it.
    steps = [{"enter": 0.85, "exit": 0.6}, {"enter": 1.0, "exit": 0.5},
             {"enter": 1.25, "exit": 0.9}, {"enter": 1.6, "exit": 0.0}]
    gateway = await make_gateway(**_tcp_config(f"127.0.0.1:{echo_backend.port}",
                                               max_in_flight=1),
                                 degrade={"shed_backlog": 0, "steps": steps})
    records = _recording(gateway)
    group = gateway.groups["echo"]
    state = group.admission.state("interactive")
    state.level, state.pressure = SHED, 2.0
    # A free slot is taken even at the shed step: the test holds the only one.
    assert group.scheduler.try_admit("interactive")
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    await _closed(writer)
    [rec] = await _ended(records)
    assert rec.degradations == 1 and rec.close_reason == "refused"
    group.release("interactive")


async def test_a_websocket_throttle_is_a_degradation_of_its_record(
        make_gateway: GatewayFactory, echo: Server) -> None:
    gateway, records = await _websocket_gateway(make_gateway, echo)
    host, gport = gateway.listeners["web"].address
    async with websockets.connect(f"ws://{host}:{gport}/ws") as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        state = gateway.groups["app"].admission.state("interactive")
        state.throttle_rate = 1e9  # the class stands on the throttle step (a huge cap)
        await ws.send("y")
        assert await ws.recv() == "y"
        state.throttle_rate = None
    [rec] = await _ended(records)
    assert state.applied[1] == 1 and rec.degradations == 1


async def test_who_closed_an_http_connection_is_in_its_close_reason(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origins[0].address], "health": {"kind": "none"}}},
        limits={"keepalive_timeout": 0.2, "max_header_bytes": 1024})
    records = _recording(gateway)
    host, port = gateway.listeners["web"].address

    async def one(request: bytes, status: bytes) -> ConnRecord:
        before = len(records.events)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 " + status), head
        if status != b"200":
            assert await asyncio.wait_for(reader.read(), 5) is not None
        else:
            await asyncio.sleep(0.5)  # past the keep-alive timeout
        await _closed(writer)
        return (await _ended(records, before + 1))[-1]

    idle = await one(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n", b"200")
    assert (idle.close_reason, idle.final_state) == ("idle timeout", "closed")
    big = await one(b"GET /fast HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 2000 + b"\r\n\r\n", b"431")
    assert big.close_reason == "rejected 431" and big.requests == 0
    bad = await one(b"GET /fast HTTP/1.1\r\n\r\n", b"400")  # no Host
    assert bad.close_reason == "rejected 400"
    assert all(_adds_up(rec) for rec in records.events)


async def test_a_tcp_upstream_connect_is_connecting_time_not_queued(
        make_gateway: GatewayFactory) -> None:
    # A backend whose accept queue is full: its connects hang until the connect timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = []
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(listener.getsockname())
        filler.append(sock)
    try:
        gateway = await make_gateway(**_tcp_config(
            f"127.0.0.1:{listener.getsockname()[1]}", connect_timeout=0.3, retries=0))
        records = _recording(gateway)
        host, port = gateway.listeners["raw"].address
        reader, writer = await asyncio.open_connection(host, port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await _closed(writer)
        [rec] = await _ended(records)
    finally:
        for sock in (*filler, listener):
            sock.close()
    # Admitted at once (a free slot): the wait was the connect's.
    assert rec.queued_s < 0.1 and rec.connecting_s >= 0.25, (rec.queued_s, rec.connecting_s)
    assert rec.final_state == "failed" and _adds_up(rec)


async def test_time_after_the_drain_began_is_draining_time(
        make_gateway: GatewayFactory, origins: list[HttpOrigin],
        echo_backend: TcpBackend) -> None:
    """A request in flight when the gateway drains: its time after the drain began moves
    from the draining column to the active one, the rest from the idle one; a tcp relay the
    drain timeout ends spent that time draining."""
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"},
                   {"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "echo"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origins[0].address], "health": {"kind": "none"}},
                "echo": {"backends": [f"127.0.0.1:{echo_backend.port}"],
                         "health": {"kind": "none"}}})
    records = _recording(gateway)
    host, port = gateway.listeners["raw"].address
    raw_reader, raw_writer = await asyncio.open_connection(host, port)
    assert await asyncio.wait_for(raw_reader.readline(), 5) == b"HELLO\n"  # its greeting
    raw_writer.write(b"hello\n")
    assert await asyncio.wait_for(raw_reader.readline(), 5) == b"hello\n"
    host, port = gateway.listeners["web"].address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /slow?ms=400 HTTP/1.1\r\nHost: a\r\n\r\n")
    group = gateway.groups["app"]
    await until(lambda: group.scheduler.in_use > 0)
    drained = asyncio.create_task(gateway.drain(0.6))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
    assert await drained == {"finished": 1, "forced": 1}
    await _closed(writer)
    await _closed(raw_writer)
    by_kind = {rec.source: rec for rec in await _ended(records, 2)}
    http, tcp = by_kind["web"], by_kind["raw"]
    assert http.active_s >= 0.35 and http.draining_s < 0.1, (http.active_s, http.draining_s)
    assert tcp.draining_s >= 0.55, tcp.draining_s
    assert _adds_up(http) and _adds_up(tcp)
