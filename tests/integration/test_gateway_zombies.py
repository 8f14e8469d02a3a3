"""The gateway's live zombie watch over real loopback sockets: a tcp listener in front of an echo
service and an http listener in front of an HTTP origin and a WebSocket echo server, healthy
connections that exchange data every 2 s and planted connections that go silent. The planted
ones (and only they) are reported: log, admin `/connections`, `/metrics`, the telemetry record's
flag; with `reclaim` they are closed after the grace period (tcp both sides, WebSocket with 1001)
while the healthy ones go on. Gateway time is a VirtualClock driven by the test, so the watch is
scanned by hand; one test runs the watch's own task in real time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve

from connwise.config import load_gateway_config
from connwise.core.clock import VirtualClock
from connwise.core.zombies import (
    Verdict,
    ZombieEvent,
    ZombieFinding,
    ZombieForgiven,
    ZombieReclaimed,
)
from connwise.gateway.admin import AdminServer
from connwise.gateway.runtime import Gateway
from connwise.telemetry.memory import MemorySink
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.recorder import Recorder
from tests.integration.http_origin import HttpOrigin
from tests.integration.tcp_backend import TcpBackend

REQUEST = b"GET /fast HTTP/1.1\r\nHost: test\r\n\r\n"


@dataclass
class Services:
    echo: TcpBackend
    origin: HttpOrigin
    ws: Server
    ws_close_codes: list[int | None] = field(default_factory=list)


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    codes: list[int | None] = []

    async def ws_echo(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            codes.append(ws.close_code)

    echo = await TcpBackend().start()
    origin = await HttpOrigin("o").start()
    ws = await serve(ws_echo, "127.0.0.1", 0)
    yield Services(echo, origin, ws, codes)
    ws.close()
    await origin.stop()
    await echo.stop()


def config(services: Services, **zombies: Any) -> dict[str, Any]:
    ws_port = services.ws.sockets[0].getsockname()[1]
    return {
        "listeners": [{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "echo"},
                      {"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "ws", "path_prefix": "/ws",
                    "upgrade": "websocket"},
                   {"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"echo": {"backends": [f"127.0.0.1:{services.echo.port}"],
                            "health": {"kind": "none"}},
                   "app": {"backends": [services.origin.address], "health": {"kind": "none"}},
                   "ws": {"backends": [f"127.0.0.1:{ws_port}"], "health": {"kind": "none"}}},
        "zombies": {"interval": 3600.0, "k": 3.0, "min_samples": 5, "floor": 1.0,
                    **zombies},
    }


class Conn:
    """One client connection of the test: tcp, http keep-alive or WebSocket."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ws: ClientConnection | None = None

    @classmethod
    async def open(cls, gateway: Gateway, kind: str) -> Conn:
        conn = cls(kind)
        if kind == "ws":
            host, port = gateway.listeners["web"].address
            conn.ws = await websockets.connect(f"ws://{host}:{port}/ws")
        else:
            host, port = gateway.listeners["raw" if kind == "tcp" else "web"].address
            conn.reader, conn.writer = await asyncio.open_connection(host, port)
            if kind == "tcp":
                assert await conn.reader.readline() == b"HELLO\n"  # relayed: upstream joined
        await conn.exchange()
        return conn

    @property
    def port(self) -> int:
        if self.ws is not None:
            return int(self.ws.local_address[1])
        assert self.writer is not None
        return int(self.writer.get_extra_info("sockname")[1])

    async def exchange(self) -> None:
        """One round trip of useful traffic."""
        if self.ws is not None:
            await self.ws.send("ping")
            assert await asyncio.wait_for(self.ws.recv(), 5) == "ping"
            return
        assert self.reader is not None and self.writer is not None
        if self.kind == "tcp":
            self.writer.write(b"ping\n")
            assert await asyncio.wait_for(self.reader.readline(), 5) == b"ping\n"
            return
        self.writer.write(REQUEST)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await asyncio.wait_for(self.reader.readexactly(length), 5)

    async def closed_by_gateway(self) -> bool:
        """True once the gateway closed this connection (EOF, or a WebSocket close)."""
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.recv(), 5)
            except websockets.ConnectionClosed:
                return True
            return False
        assert self.reader is not None
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        elif self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@dataclass
class Scene:
    gateway: Gateway
    clock: VirtualClock
    records: MemorySink[ConnRecord]
    healthy: list[Conn]
    planted: list[Conn]
    ids: dict[Conn, int]
    #: What the watch's subscribers got, in order.
    events: list[ZombieEvent]

    @property
    def found(self) -> list[ZombieFinding]:
        return [e for e in self.events if isinstance(e, ZombieFinding)]


@pytest.fixture
async def scene_factory(services: Services) -> AsyncIterator[Callable[..., Any]]:
    opened: list[tuple[Gateway, list[Conn]]] = []

    async def make(**zombies: Any) -> Scene:
        clock = VirtualClock(1000.0)
        gateway = Gateway(load_gateway_config(config(services, **zombies)), clock=clock)
        await gateway.start()
        records: MemorySink[ConnRecord] = MemorySink()
        gateway.recorder = Recorder(records, node="test", wall_offset=0.0)
        healthy = [await Conn.open(gateway, kind) for kind in ("tcp", "tcp", "ws", "http")]
        planted = [await Conn.open(gateway, kind) for kind in ("tcp", "tcp", "ws", "ws", "http")]
        conns = healthy + planted
        opened.append((gateway, conns))
        by_port = {c.transport.get_extra_info("peername")[1]: conn_id  # type: ignore[attr-defined]
                   for conn_id, c in gateway.clients.items()}
        ids = {conn: by_port[conn.port] for conn in conns}
        events: list[ZombieEvent] = []
        gateway.zombies.subscribe(events.append)
        return Scene(gateway, clock, records, healthy, planted, ids, events)

    yield make
    for gateway, conns in opened:
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()
        if not gateway.draining:
            await gateway.drain(1.0)


async def rounds(scene: Scene, n: int) -> None:
    """`n` rounds of 2 s: a scan in the middle of a silence, then the healthy connections
    exchange data and a scan sees it (the gap of 2 s that ended in traffic is learned)."""
    watch = scene.gateway.zombies
    for _ in range(n):
        scene.clock.advance(1.0)
        watch.scan()
        scene.clock.advance(1.0)
        for conn in scene.healthy:
            await conn.exchange()
        watch.scan()


async def test_planted_zombies_are_reported_and_kept(scene_factory: Callable[..., Any]) -> None:
    scene: Scene = await scene_factory()
    gateway = scene.gateway
    watch = gateway.zombies
    await rounds(scene, 6)
    planted = {scene.ids[c] for c in scene.planted}
    # Ground truth known: every planted connection found, no healthy one (precision, recall 1).
    assert {f.key for f in scene.found} == planted
    assert len(scene.found) == len(planted), "each is reported once"
    assert all(f.verdict is Verdict.ZOMBIE for f in scene.found)
    thresholds = watch.segment_thresholds()
    assert set(thresholds) == {"raw/tcp", "web/websocket", "web/http"}
    assert all(6.0 <= t <= 6.3 for t in thresholds.values()), thresholds  # 3 x p99 of 2 s
    await rounds(scene, 10)  # t = 1032: the planted ones have been silent for 32 s
    assert len(scene.found) == len(planted), "no second report within one idle stretch"
    assert set(gateway.clients) >= planted, "reclaim is off: nothing is closed"
    for conn in scene.healthy:
        await conn.exchange()
    records = {r.conn_id: r for r in scene.records.events}
    assert not records, "no connection ended"

    admin = AdminServer(gateway, "127.0.0.1:0", "t0ken")
    await admin.start()
    host, port = admin.address
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}",
                                     headers={"Authorization": "Bearer t0ken"}) as client:
            rows = (await client.get("/connections")).json()["connections"]
            metrics = (await client.get("/metrics")).text
            stats = (await client.get("/stats")).json()
    finally:
        await admin.close()
    zombies = {row["id"]: row for row in rows if row["zombie"] is not None}
    assert set(zombies) == planted
    assert all(row["zombie"]["verdict"] == "zombie" and row["zombie"]["closes_in"] is None
               and row["idle"] == 32.0 for row in zombies.values())
    assert all(row["zombie"] is None and row["idle"] == 0.0 for row in rows
               if row["id"] not in planted)
    assert 'connwise_zombies_total{owner="raw",verdict="zombie"} 2.0' in metrics
    assert 'connwise_zombies_total{owner="web",verdict="zombie"} 3.0' in metrics
    assert 'connwise_zombie_connections{owner="raw"} 2.0' in metrics
    assert 'connwise_zombie_threshold_seconds{segment="web/websocket"}' in metrics
    assert stats["zombies"]["flagged"] == 5 and stats["zombies"]["reclaimed"] == {}

    # The telemetry record of a reported connection carries the flag when it ends.
    first = scene.planted[0]
    await first.close()
    await until(lambda: str(scene.ids[first]) in {r.conn_id for r in scene.records.events})
    record = next(r for r in scene.records.events if r.conn_id == str(scene.ids[first]))
    assert record.flag == "zombie" and record.close_reason != "zombie"
    assert scene.ids[first] not in watch.flagged


async def test_reclaim_closes_zombies_after_grace_and_spares_the_healthy(
        scene_factory: Callable[..., Any], services: Services) -> None:
    scene: Scene = await scene_factory(reclaim=True, grace=20.0)
    gateway = scene.gateway
    await rounds(scene, 6)  # t = 1012; planted ones reported around t = 1007
    planted = {scene.ids[c] for c in scene.planted}
    assert {f.key for f in scene.found} == planted
    tcp_a, tcp_b, ws_spoken, ws_silent, http_idle = scene.planted
    scene.clock.advance(0.5)
    await ws_spoken.exchange()  # a reported connection that speaks again is forgiven
    assert gateway.zombies.reclaimed == {}
    await rounds(scene, 5)  # t = 1022.5: within the grace period, nothing closed
    assert scene.ids[ws_spoken] not in gateway.zombies.flagged
    assert set(gateway.clients) >= planted
    assert services.echo.open == 4
    await rounds(scene, 4)  # t = 1030.5: the grace period of the silent ones is over
    closed = [tcp_a, tcp_b, ws_silent, http_idle]
    for conn in closed:
        assert await conn.closed_by_gateway()
    assert ws_silent.ws is not None and ws_silent.ws.close_code == 1001
    await until(lambda: services.echo.open == 2)  # tcp: the upstream side closed too
    await until(lambda: 1001 in services.ws_close_codes)  # WebSocket: both sides got 1001
    assert gateway.zombies.reclaimed == {"raw": 2, "web": 2}
    reclaimed = {str(scene.ids[c]) for c in closed}
    await until(lambda: reclaimed <= {r.conn_id for r in scene.records.events})
    for record in scene.records.events:
        assert record.conn_id in reclaimed
        assert record.close_reason == "zombie" and record.flag == "zombie"
    for conn in [*scene.healthy, ws_spoken]:
        await conn.exchange()
    assert scene.ids[ws_spoken] in gateway.clients


async def test_subscribers_get_found_forgiven_and_reclaimed_events(
        scene_factory: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    """The gateway's watch told its subscribers what it found, not what became of it: a
    planted connection is found and, past its grace, reclaimed; one that speaks during its
    grace is forgiven and stays open; each is an event. A subscriber that raises breaks
    neither the gateway nor the subscribers after it."""
    scene: Scene = await scene_factory(reclaim=True, grace=20.0)
    gateway, watch = scene.gateway, scene.gateway.zombies
    failures: list[ZombieEvent] = []

    def broken(event: ZombieEvent) -> None:
        failures.append(event)
        raise RuntimeError("subscriber bug")

    after: list[ZombieEvent] = []
    watch.subscribe(broken)
    unsubscribe = watch.subscribe(after.append)
    await rounds(scene, 6)  # t = 1012; planted ones reported around t = 1007
    tcp_a, tcp_b, ws_spoken, ws_silent, http_idle = scene.planted
    found = {f.key: f for f in scene.found}
    assert set(found) == {scene.ids[c] for c in scene.planted}
    assert scene.events == scene.found, "nothing forgiven or reclaimed yet"
    scene.clock.advance(0.5)
    await ws_spoken.exchange()  # within the grace period: forgiven
    await rounds(scene, 1)
    [forgiven] = [e for e in scene.events if isinstance(e, ZombieForgiven)]
    assert forgiven.finding is found[scene.ids[ws_spoken]] and forgiven.at == 1013.5
    await rounds(scene, 9)  # t = 1032.5: the grace period of the silent ones is over
    for conn in (tcp_a, tcp_b, ws_silent, http_idle):
        assert await conn.closed_by_gateway()
    reclaimed = [e for e in scene.events if isinstance(e, ZombieReclaimed)]
    assert {e.finding.key for e in reclaimed} == {scene.ids[c] for c in
                                                  (tcp_a, tcp_b, ws_silent, http_idle)}
    for event in reclaimed:
        assert event.finding is found[event.finding.key] and event.grace == 20.0
        assert 20.0 <= event.at - event.finding.at < 22.0
    assert scene.events[-len(reclaimed):] == reclaimed
    for _ in range(3):  # scanned again before the loop saw the closes: nothing found anew
        scene.clock.advance(1.0)
        watch.scan()
    assert scene.events[-len(reclaimed):] == reclaimed
    # Every event reached the failing subscriber and the one after it; the gateway went on.
    assert failures == after == scene.events and len(scene.events) == 5 + 1 + 4
    assert sum(r.getMessage().startswith("zombie watch: subscriber") for r in caplog.records
               ) == len(scene.events)
    await ws_spoken.exchange()
    assert scene.ids[ws_spoken] in gateway.clients
    for conn in scene.healthy:
        await conn.exchange()
    unsubscribe()
    seen = len(after)
    await rounds(scene, 8)  # the forgiven one falls silent again: a new idle stretch, found anew
    assert isinstance(scene.events[-1], ZombieFinding)
    assert scene.events[-1].key == scene.ids[ws_spoken] and len(after) == seen


async def test_the_watch_task_scans_in_real_time_and_ends_with_the_gateway(
        services: Services) -> None:
    gateway = Gateway(load_gateway_config(config(
        services, interval=0.05, floor=0.2, default_threshold=0.4, min_samples=1000,
        reclaim=True, grace=0.2)))
    await gateway.start()
    try:
        assert gateway.zombies.running
        healthy = await Conn.open(gateway, "tcp")
        zombie = await Conn.open(gateway, "tcp")
        deadline = asyncio.get_running_loop().time() + 1.5
        while asyncio.get_running_loop().time() < deadline:
            await healthy.exchange()
            await asyncio.sleep(0.05)
        assert await zombie.closed_by_gateway()
        await healthy.exchange()
        assert gateway.zombies.reclaimed == {"raw": 1}
        await healthy.close()
    finally:
        await gateway.drain(1.0)
    assert not gateway.zombies.running, "the watch task ends when the gateway drains"


async def test_disabled_watch_has_no_task_and_reload_turns_it_on_and_off(
        services: Services) -> None:
    data = config(services, enabled=False)
    gateway = Gateway(load_gateway_config(data))
    await gateway.start()
    try:
        assert not gateway.zombies.running
        conn = await Conn.open(gateway, "tcp")
        assert [row["zombie"] for row in gateway.connections()] == [None]
        await gateway.reload(load_gateway_config({**data, "zombies": {"interval": 0.05}}))
        assert gateway.zombies.running
        await asyncio.sleep(0.12)
        assert gateway.zombies.trackers, "scanning again"
        await gateway.reload(load_gateway_config(data))
        await until(lambda: not gateway.zombies.running)
        assert not gateway.zombies.trackers
        await conn.close()
    finally:
        await gateway.drain(1.0)


async def test_a_quiet_websocket_beside_busy_http_is_not_reclaimed(
        services: Services) -> None:
    """HTTP keep-alive connections speak every 2 s and teach their segment a 6 s threshold; a
    WebSocket speaks every 40 s and has too few gaps to learn from. It used to borrow the 6 s,
    be reported after 7 s of quiet and closed after the grace, before its first gap ended, so
    its segment never learned. Now it keeps the default threshold while it learns."""
    clock = VirtualClock(1000.0)
    gateway = Gateway(load_gateway_config(config(services, reclaim=True, grace=5.0)),
                      clock=clock)
    await gateway.start()
    conns = [await Conn.open(gateway, kind) for kind in ("http", "http", "ws")]
    *browsers, socket = conns
    found: list[ZombieEvent] = []
    gateway.zombies.subscribe(found.append)
    watch = gateway.zombies
    try:
        for second in range(1, 121):
            clock.advance(1.0)
            if second % 2 == 0:
                for conn in browsers:
                    await conn.exchange()
            if second % 40 == 0:
                await socket.exchange()
            watch.scan()
        assert 6.0 <= watch.segment_thresholds()["web/http"] <= 6.3
        assert found == [] and watch.reclaimed == {}
        await socket.exchange()
    finally:
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.close()
        await gateway.drain(1.0)


async def test_a_reload_that_changes_the_segments_starts_learning_afresh(
        services: Services) -> None:
    """Segments named by the old `segment` keys kept their histograms after a reload and were
    exported as thresholds for ever; gaps learned per (listener, kind) say nothing about a
    segment per listener."""
    clock = VirtualClock(1000.0)
    data = config(services)
    gateway = Gateway(load_gateway_config(data), clock=clock)
    await gateway.start()
    conn = await Conn.open(gateway, "tcp")
    try:
        watch = gateway.zombies
        for _ in range(3):
            clock.advance(1.0)
            watch.scan()
            clock.advance(1.0)
            await conn.exchange()
            watch.scan()
        assert list(watch.segment_thresholds()) == ["raw/tcp"]
        await gateway.reload(load_gateway_config(
            {**data, "zombies": {**data["zombies"], "segment": ["listener"]}}))
        assert watch.segment_thresholds() == {}
        clock.advance(1.0)
        watch.scan()
        clock.advance(1.0)
        await conn.exchange()
        watch.scan()
        assert list(watch.segment_thresholds()) == ["raw"]
    finally:
        await conn.close()
        await gateway.drain(1.0)


async def test_reclaim_never_closes_a_connection_with_a_request_in_flight(
        scene_factory: Callable[..., Any]) -> None:
    """A reported HTTP keep-alive zombie sends a request to a slow upstream: while the gateway
    holds it, the connection is busy, not silent, so scans past its grace leave it alone, the
    answer arrives, and it is forgiven."""
    scene: Scene = await scene_factory(reclaim=True, grace=5.0)
    gateway = scene.gateway
    await rounds(scene, 6)
    http_idle = scene.planted[4]
    key = scene.ids[http_idle]
    assert key in {f.key for f in scene.found}
    assert http_idle.writer is not None and http_idle.reader is not None
    http_idle.writer.write(b"GET /slow?ms=300 HTTP/1.1\r\nHost: test\r\n\r\n")
    client = gateway.clients[key]
    await until(lambda: client.idle_since() is None)
    for _ in range(3):
        scene.clock.advance(10.0)  # far past the grace period
        gateway.zombies.scan()
    assert key in gateway.clients
    for other in scene.planted[:2]:  # reclaim is at work: the silent tcp zombies are gone
        assert await other.closed_by_gateway()
    head = await asyncio.wait_for(http_idle.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert key not in gateway.zombies.flagged
