"""The tcp listener's edge paths over real loopback sockets: backpressure that holds from the
first byte, a client that leaves while its upstream connect is pending, reclaiming a relay
that no longer reads, and a client that half-closes before its ClientHello is complete."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from connwise.gateway.deadlines import FifoDeadlines
from connwise.gateway.runtime import Gateway
from connwise.gateway.tcp import TcpClient
from tests.integration.conftest import GatewayFactory
from tests.integration.tcp_relay import until

#: Bytes a test client writes at once: far more than the relay may hold for it.
FLOOD = 8 * 1024 * 1024
#: What a relay may hold for a side that does not read: the early bytes (at most
#: EARLY_DATA_LIMIT and a chunk) and the transport's high-water mark, with room to spare.
LIMIT = 1024 * 1024


@contextlib.contextmanager
def silent_backend(rcvbuf: int = 4096) -> Iterator[int]:
    """A port whose connections the kernel completes and nobody reads, with a small receive
    window: a backend that stops reading (its port, while the context lasts)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def blackhole_backend() -> Iterator[int]:
    """A port whose accept queue is full: a connect to it gets no SYN-ACK and stays pending
    (the kernel drops the SYN), as to a backend behind a dead link."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = [socket.create_connection(("127.0.0.1", port))]
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        sock.close()


def tcp_listener(*ports: int, **group: object) -> dict[str, object]:
    return {"listeners": [{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "b"}],
            "groups": {"b": {"backends": [f"127.0.0.1:{p}" for p in ports],
                             "health": {"kind": "none"}, **group}}}


def the_client(gateway: Gateway) -> TcpClient:
    clients = list(gateway.clients.values())
    assert len(clients) == 1
    client = clients[0]
    assert isinstance(client, TcpClient)
    return client


@pytest.fixture
async def wan_send_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream connections get a send buffer the size of a WAN path's (loopback's first one
    is megabytes): the kernel then takes only part of a large write at once."""
    loop = asyncio.get_running_loop()
    connect = loop.create_connection

    async def small_buffer(*args: Any, **kwargs: Any) -> Any:
        transport, protocol = await connect(*args, **kwargs)
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                      32 * 1024)
        return transport, protocol

    monkeypatch.setattr(loop, "create_connection", small_buffer)


@pytest.mark.usefixtures("wan_send_buffer")
async def test_backpressure_holds_when_the_early_bytes_fill_the_upstream(
        make_gateway: GatewayFactory) -> None:
    """Bytes sent before the upstream connect completes are flushed at join; when that flush
    alone passes the upstream's high-water mark, the client's reading must stay paused (it
    was resumed, and the relay then read the whole flood into the upstream's buffer)."""
    with silent_backend() as port:
        gateway = await make_gateway(**tcp_listener(port))
        host, gport = gateway.listeners["raw"].address
        _, writer = await asyncio.open_connection(host, gport)
        writer.write(b"x" * FLOOD)  # at once: the gateway reads some while it connects
        await until(lambda: bool(gateway.clients))
        client = the_client(gateway)
        await until(lambda: client.peer is not None)
        upstream = client.peer
        assert client.transport is not None and upstream is not None
        assert upstream.transport is not None

        def buffered() -> int:
            assert upstream.transport is not None
            return upstream.transport.get_write_buffer_size()

        # Either the client is paused (right) or the upstream's buffer grows past any bound.
        reading = client.transport.is_reading
        await until(lambda: not reading() or buffered() > LIMIT)
        assert buffered() <= LIMIT, f"{buffered()} bytes held for a backend that does not read"
        writer.transport.abort()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), not a FIN, which would be a half-close to relay."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
    writer.transport.abort()


def connecting(gateway: Gateway) -> list[asyncio.Task[None]]:
    """The gateway's tasks that connect a tcp client to its upstream."""
    return [task for task in gateway._tasks
            if task.get_coro().__qualname__ == "TcpClient._connect"]  # type: ignore[union-attr]


async def test_a_client_gone_while_its_upstream_connect_is_pending_ends_the_connect(
        make_gateway: GatewayFactory) -> None:
    """A client that resets while the connect to its backend hangs: the connect ends with it
    (it went on for `connect_timeout`, holding the backend's outstanding count, and was then
    retried and counted as `upstream_unavailable` for a client long gone)."""
    with blackhole_backend() as port:
        gateway = await make_gateway(**tcp_listener(port, connect_timeout=30.0))
        group = gateway.groups["b"]
        backend = group.backends[0]
        _, writer = await asyncio.open_connection(*gateway.listeners["raw"].address)
        writer.write(b"early bytes")
        await until(lambda: backend.outstanding == 1)
        reset(writer)
        await until(lambda: not gateway.clients)
        assert group.scheduler.in_use == 0
        await until(lambda: not connecting(gateway), timeout=1.0)
        assert backend.outstanding == 0
        assert gateway.counters["upstream_unavailable"] == 0
        assert len(group.connect_deadlines) == 0  # its deadline went with it


async def test_a_connect_past_connect_timeout_is_retried_then_given_up(
        make_gateway: GatewayFactory) -> None:
    # The group's deadlines (one timer for every connect in flight) replaced an asyncio.timeout
    # per connect: a connect that hangs still ends at connect_timeout, counts as a failure of
    # its backend and is retried.
    with blackhole_backend() as port:
        gateway = await make_gateway(**tcp_listener(port, connect_timeout=0.3, retries=1))
        group = gateway.groups["b"]
        backend = group.backends[0]
        loop = asyncio.get_running_loop()
        started = loop.time()
        reader, writer = await asyncio.open_connection(*gateway.listeners["raw"].address)
        try:
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            elapsed = loop.time() - started
            assert 0.55 <= elapsed < 2.0, elapsed  # two attempts of 0.3 s (one backend)
            await until(lambda: gateway.counters["upstream_unavailable"] == 1)
            assert backend.failures == 2 and backend.outstanding == 0
            assert len(group.connect_deadlines) == 0
        finally:
            writer.close()


async def test_deadlines_fire_in_order_once_and_not_when_discarded() -> None:
    deadlines = FifoDeadlines(0.05)
    fired: list[str] = []
    a, b, c = (lambda: fired.append("a")), (lambda: fired.append("b")), (lambda: fired.append("c"))
    deadlines.add(a)
    deadlines.add(b)
    deadlines.add(c)
    deadlines.discard(b)
    deadlines.add(a)  # added again: moves to its new deadline, after c's
    assert len(deadlines) == 2
    await until(lambda: len(fired) == 2, timeout=2.0)
    assert fired == ["c", "a"] and len(deadlines) == 0
    deadlines.add(b)
    deadlines.cancel()
    await asyncio.sleep(0.1)
    assert fired == ["c", "a"]
    with pytest.raises(ValueError, match="delay=0"):
        FifoDeadlines(0)


async def test_reclaim_ends_a_relay_whose_client_stopped_reading(
        make_gateway: GatewayFactory) -> None:
    """A backend sends more than a client reads: the relay stalls with bytes buffered for the
    client, and no byte moves. The zombie watch reclaims it; a plain close waits to flush that
    buffer, which never happens, so the relay (its slot, its upstream) stayed open for good."""
    async def flood(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * FLOOD)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    backend = await asyncio.start_server(flood, "127.0.0.1", 0)
    try:
        gateway = await make_gateway(
            **tcp_listener(backend.sockets[0].getsockname()[1]),
            zombies={"interval": 0.02, "floor": 0.05, "default_threshold": 0.05,
                     "reclaim": True, "grace": 0.0})
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(gateway.listeners["raw"].address)
        sock.setblocking(False)
        try:
            await until(lambda: sum(gateway.zombies.reclaimed.values()) >= 1)
            await until(lambda: not gateway.clients, timeout=1.0)
            assert gateway.groups["b"].scheduler.in_use == 0
        finally:
            sock.close()
    finally:
        backend.close()


async def test_a_client_that_half_closes_before_a_whole_client_hello_is_routed_at_once(
        make_gateway: GatewayFactory) -> None:
    """On an sni listener, a client that sends a few bytes (no ClientHello, too short to tell)
    and then its FIN will send nothing more: it is routed by what came, to the default group,
    at once (it waited out `header_timeout` and was then reset as an `sni_timeout`)."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"got " + await reader.read())
        writer.close()

    backend = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        gateway = await make_gateway(
            listeners=[{"name": "tls", "kind": "tcp", "bind": "127.0.0.1:0", "group": "b",
                        "sni": {"b.example.com": "b"}}],
            groups={"b": {"backends": [f"127.0.0.1:{backend.sockets[0].getsockname()[1]}"],
                          "health": {"kind": "none"}}},
            limits={"header_timeout": 30.0})
        reader, writer = await asyncio.open_connection(*gateway.listeners["tls"].address)
        writer.write(b"hi")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 1.0) == b"got hi"
        assert gateway.counters["sni_timeout"] == 0
        writer.close()
    finally:
        backend.close()
