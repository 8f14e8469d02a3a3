"""Half-open client connections: TCP keep-alive on the gateway's client sockets (`[zombies]
keepalive_*`, set on the listening sockets and inherited by the accepted ones) and what the
gateway does when the kernel gives up on a peer. The options are read back from the gateway's
real accepted sockets; the kernel's verdict itself (ETIMEDOUT after unanswered probes) needs a
peer that vanishes without a FIN or RST, which loopback cannot produce, so that event is
delivered to the client protocol as the transport would deliver it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.core.zombies import Verdict, ZombieEvent, ZombieFinding, peer_lost
from connwise.gateway.runtime import Gateway
from connwise.telemetry.memory import MemorySink
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.recorder import Recorder
from connwise.telemetry.tcpinfo import TcpInfoSampler
from tests.integration.http_origin import HttpOrigin
from tests.integration.tcp_backend import TcpBackend


@pytest.fixture
async def backends() -> AsyncIterator[tuple[TcpBackend, HttpOrigin]]:
    echo = await TcpBackend().start()
    origin = await HttpOrigin("o").start()
    yield echo, origin
    await origin.stop()
    await echo.stop()


def config(backends: tuple[TcpBackend, HttpOrigin], **zombies: Any) -> dict[str, Any]:
    echo, origin = backends
    return {
        "listeners": [{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "echo"},
                      {"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"echo": {"backends": [f"127.0.0.1:{echo.port}"], "health": {"kind": "none"}},
                   "app": {"backends": [origin.address], "health": {"kind": "none"}}},
        "zombies": zombies,
    }


async def open_client(gateway: Gateway, listener: str) -> tuple[asyncio.StreamWriter, Any]:
    """A client connection and the gateway's protocol object for it."""
    host, port = gateway.listeners[listener].address
    reader, writer = await asyncio.open_connection(host, port)
    if listener == "raw":
        assert await asyncio.wait_for(reader.readline(), 5) == b"HELLO\n"
    local = writer.get_extra_info("sockname")[1]
    for _ in range(500):
        for client in gateway.clients.values():
            transport: Any = getattr(client, "transport", None)
            if transport is not None and transport.get_extra_info("peername")[1] == local:
                return writer, client
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway never registered the connection")


def keepalive_of(client: Any) -> tuple[int, int, int, int]:
    sock = client.transport.get_extra_info("socket")
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))


def test_only_etimedout_means_the_peer_was_lost() -> None:
    assert peer_lost(TimeoutError(errno.ETIMEDOUT, "Connection timed out"))
    assert peer_lost(OSError(errno.ETIMEDOUT, "Connection timed out"))
    assert not peer_lost(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert not peer_lost(None)


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="TCP_KEEPIDLE is Linux-only")
async def test_client_sockets_inherit_keepalive_and_a_reload_changes_it_for_new_ones(
        backends: tuple[TcpBackend, HttpOrigin]) -> None:
    gateway = Gateway(load_gateway_config(config(backends, keepalive_idle=45,
                                                 keepalive_interval=7, keepalive_count=4)))
    await gateway.start()
    writers = []
    try:
        before = []
        for listener in ("raw", "web"):
            writer, client = await open_client(gateway, listener)
            writers.append(writer)
            before.append(client)
            assert keepalive_of(client) == (1, 45, 7, 4), listener
        await gateway.reload(load_gateway_config(config(backends, keepalive_idle=0)))
        for listener in ("raw", "web"):
            writer, fresh = await open_client(gateway, listener)
            writers.append(writer)
            assert keepalive_of(fresh)[0] == 0, listener
        assert all(keepalive_of(client)[0] == 1 for client in before), "established ones keep it"
        default = load_gateway_config(config(backends)).zombies
        assert (default.keepalive_idle, default.keepalive_interval,
                default.keepalive_count) == (60, 10, 3)
    finally:
        for writer in writers:
            writer.close()
        await gateway.drain(1.0)


@pytest.mark.parametrize("listener", ["raw", "web"])
async def test_a_peer_the_kernel_gave_up_on_is_reported_half_open_and_recorded(
        backends: tuple[TcpBackend, HttpOrigin], listener: str) -> None:
    gateway = Gateway(load_gateway_config(config(backends)))
    await gateway.start()
    records: MemorySink[ConnRecord] = MemorySink()
    gateway.recorder = Recorder(records, node="test", wall_offset=0.0)
    found: list[ZombieEvent] = []
    gateway.zombies.subscribe(found.append)
    writer, client = await open_client(gateway, listener)
    healthy, _ = await open_client(gateway, listener)
    try:
        client.connection_lost(TimeoutError(errno.ETIMEDOUT, "Connection timed out"))
        client.transport.abort()
        await asyncio.sleep(0.05)
        assert client.conn_id not in gateway.clients
        assert [(f.key, f.owner, f.verdict) for f in found
                if isinstance(f, ZombieFinding)] == [
            (client.conn_id, listener, Verdict.HALF_OPEN)]
        assert gateway.zombies.found[listener, "half_open"] == 1
        ended = [r for r in records.events if r.close_reason == "half_open"]
        assert len(ended) == 1 and ended[0].flag == "half_open"
        assert len(gateway.clients) == 1, "the healthy connection is untouched"
    finally:
        for w in (writer, healthy):
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()
        await gateway.drain(1.0)


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux-only")
@pytest.mark.parametrize("listener", ["raw", "web"])
async def test_records_carry_a_tcp_info_sample_taken_as_the_connection_ends(
        backends: tuple[TcpBackend, HttpOrigin], listener: str) -> None:
    gateway = Gateway(load_gateway_config(config(backends)))
    gateway.tcp_info = TcpInfoSampler(every=1)  # short connections are sampled 1 in 8 by default
    await gateway.start()
    records: MemorySink[ConnRecord] = MemorySink()
    gateway.recorder = Recorder(records, node="test", wall_offset=0.0)
    try:
        for closer in ("client", "gateway"):
            writer, client = await open_client(gateway, listener)
            if closer == "client":
                writer.close()
            else:
                client.close()
            await asyncio.sleep(0.05)
            with contextlib.suppress(ConnectionError):
                writer.close()
                await writer.wait_closed()
        ended = [r for r in records.events if r.kind == "client"]
        assert len(ended) == 2
        for rec in ended:
            assert rec.rtt_ms is not None and 0 < rec.rtt_ms < 1000, rec.rtt_ms
            assert rec.retransmits == 0
    finally:
        await gateway.drain(1.0)
