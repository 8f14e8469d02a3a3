"""The gateway's accept loop over real loopback sockets: a queued burst is taken in a few
event-loop iterations (uvloop's own server needs one per connection), bursts through the
gateway are all served, drain closes the listening socket, limits still hold, running out
of descriptors pauses accepting instead of spinning, and another listener on the address is
seen before SO_REUSEPORT would share it."""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import os
import resource
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import pytest
import uvloop

from connwise.gateway.accept import (
    AcceptedSocket,
    AcceptLoop,
    UvAcceptedSocket,
    check_unshared,
    listen_backlog,
)
from connwise.gateway.runtime import Gateway
from tests.integration.http_origin import HttpOrigin
from tests.integration.tcp_backend import TcpBackend as _TcpBackend

BURST = 500


class TcpBackend(_TcpBackend):
    """The line-echo backend with a backlog that holds the burst (asyncio's default of 100
    would drop SYNs and measure the kernel's retransmit timer, not the gateway)."""

    async def start(self) -> TcpBackend:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self


class Counting(asyncio.Protocol):
    """Counts connections; keeps the peers the accept loop handed over with each socket."""

    made = 0
    peers: ClassVar[set[tuple[str, int]]] = set()

    def __init__(self, sock: _socket.socket, peer: tuple[str, int]) -> None:
        assert sock.getpeername() == peer
        Counting.peers.add(peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Counting.made += 1


def connect_queued(port: int, n: int) -> list[socket.socket]:
    """n connections the kernel has completed but nobody has accepted yet."""
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


async def burst_iterations() -> int:
    """Loop iterations the accept loop needs to set up BURST queued connections."""
    Counting.made = 0
    Counting.peers = set()
    server = await AcceptLoop.listen("127.0.0.1", 0, Counting)
    # Connecting without yielding to the loop: the kernel queues the whole burst first.
    clients = connect_queued(server.sockets[0].getsockname()[1], BURST)
    try:
        iterations = 0
        while Counting.made < BURST and iterations < 10 * BURST:
            await asyncio.sleep(0)
            iterations += 1
        assert Counting.made == BURST
        assert Counting.peers == {client.getsockname() for client in clients}
        return iterations
    finally:
        server.close()
        await server.wait_closed()
        for client in clients:
            client.close()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_queued_burst_is_accepted_in_a_few_iterations(loop_kind: str) -> None:
    iterations = (uvloop.run(burst_iterations()) if loop_kind == "uvloop"
                  else asyncio.run(burst_iterations()))
    # 256 per wake-up, plus the iterations in which each batch's transports are set up
    # (uvloop's create_server takes 501 for this burst: one connection per iteration).
    assert iterations <= 10


class Keeping(asyncio.Protocol):
    """Keeps the socket the accept loop handed over, and says when the connection is lost."""

    def __init__(self, sock: _socket.socket, peer: tuple[str, int]) -> None:
        self.sock = sock
        self.lost = asyncio.get_running_loop().create_future()
        Keeping.made.put_nowait(self)

    #: Made afresh for each event loop.
    made: ClassVar[asyncio.Queue[Keeping]]

    def connection_lost(self, exc: Exception | None) -> None:
        # What a tcp client does as it ends: TCP_INFO is still readable from the socket.
        self.lost.set_result(len(self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def accept_and_lose() -> tuple[type[_socket.socket], int, int, int]:
    """Connections through an accept loop, closed by the peer: the class of the socket the
    protocol got, the TCP_INFO bytes read as it ended, its descriptor afterwards, and the
    descriptors the second connection left open (the first one's may include the loop's own,
    opened on first use)."""
    Keeping.made = asyncio.Queue()
    server = await AcceptLoop.listen("127.0.0.1", 0, Keeping)
    try:
        for _ in range(2):
            before = open_fds()
            client = socket.create_connection(("127.0.0.1", server.sockets[0].getsockname()[1]))
            protocol = await asyncio.wait_for(Keeping.made.get(), 5)
            client.close()
            info = await asyncio.wait_for(protocol.lost, 5)
            await asyncio.sleep(0.05)
        return type(protocol.sock), info, protocol.sock.fileno(), open_fds() - before
    finally:
        server.close()


@pytest.mark.parametrize(("loop_kind", "kind"), [("asyncio", AcceptedSocket),
                                                 ("uvloop", UvAcceptedSocket)])
def test_an_accepted_socket_is_read_as_it_ends_and_closed_once(
        loop_kind: str, kind: type[_socket.socket]) -> None:
    run = uvloop.run if loop_kind == "uvloop" else asyncio.run
    got, info, fd, leaked = run(accept_and_lose())
    assert (got, info, fd, leaked) == (kind, 8, -1, 0)


def test_the_uvloop_socket_is_the_c_socket_without_the_python_slots() -> None:
    # The transport keeps it for the connection's life: 88 bytes as a socket.socket, 96 as
    # allocated.
    a, b = socket.socketpair()
    try:
        bare = UvAcceptedSocket(a.family, a.type, 0, os.dup(a.fileno()))
        full = AcceptedSocket(a.family, a.type, 0, os.dup(a.fileno()))
        assert (sys.getsizeof(bare), sys.getsizeof(full)) == (64, 88)
        assert (bare.family, bare.type) == (socket.AF_UNIX, socket.SOCK_STREAM)
        full.close()
        bare.close()
    finally:
        a.close()
        b.close()


def test_closing_the_uvloop_socket_never_closes_its_number_again() -> None:
    # uvloop (libuv) closes the descriptor, then calls close() on the file object: by then the
    # number may belong to another socket (another thread's), which must stay open.
    a, b = socket.socketpair()
    try:
        sock = UvAcceptedSocket(a.family, a.type, 0, os.dup(a.fileno()))
        number = sock.fileno()
        os.close(number)  # what libuv does
        reused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            assert reused.fileno() == number
            sock.close()
            assert sock.fileno() == -1
            assert reused.getsockname() == ("0.0.0.0", 0)  # still open
        finally:
            reused.close()
    finally:
        a.close()
        b.close()


def test_listen_backlog_is_at_least_4096_and_follows_somaxconn() -> None:
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    assert listen_backlog() == max(4096, somaxconn)


def tcp_config(backend: TcpBackend, **limits: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "b"}],
        "groups": {"b": {"backends": [f"127.0.0.1:{backend.port}"], "health": {"kind": "none"},
                         "max_in_flight": 2 * BURST, "max_waiters": 2 * BURST}},
        "limits": {"max_connections": 2 * BURST, "max_connections_per_ip": 2 * BURST,
                   **limits},
    }


async def echo_once(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 20)
        writer.write(b"ping\n")
        return greeting + await asyncio.wait_for(reader.readline(), 20)
    finally:
        writer.close()


async def test_a_burst_of_tcp_connects_is_all_relayed(
        make_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    backend = await TcpBackend().start()
    try:
        gateway = await make_gateway(**tcp_config(backend))
        host, port = gateway.listeners["raw"].address
        answers = await asyncio.gather(*(echo_once(host, port) for _ in range(BURST)))
        assert answers == [b"HELLO\nping\n"] * BURST
        assert gateway.counters["accepted"] == BURST
        assert backend.accepted == BURST
    finally:
        await backend.stop()


async def test_a_burst_of_http_connects_is_all_answered(
        make_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    origin = await HttpOrigin("o").start()
    try:
        gateway = await make_gateway(
            listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
            routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
            groups={"app": {"backends": [origin.address], "health": {"kind": "none"},
                            "max_in_flight": 2 * BURST, "max_waiters": 2 * BURST}},
            limits={"max_connections": 2 * BURST, "max_connections_per_ip": 2 * BURST})
        host, port = gateway.listeners["web"].address

        async def get() -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                return await asyncio.wait_for(reader.read(), 20)
            finally:
                writer.close()

        answers = await asyncio.gather(*(get() for _ in range(BURST)))
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
        assert gateway.counters["accepted"] == BURST
    finally:
        await origin.stop()


async def test_drain_stops_accepting_and_closes_the_listening_socket(
        make_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    backend = await TcpBackend().start()
    try:
        gateway = await make_gateway(**tcp_config(backend))
        listener = gateway.listeners["raw"]
        host, port = listener.address
        held = await asyncio.open_connection(host, port)
        assert await held[0].readline() == b"HELLO\n"
        server = listener.server
        assert server is not None
        (listening,) = server.sockets
        drained = asyncio.ensure_future(gateway.drain(0.5))
        await asyncio.sleep(0.05)
        assert server.closed and server.sockets == ()
        assert listening.fileno() == -1
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)
        held[1].write(b"still here\n")  # an established relay keeps working while draining
        assert await held[0].readline() == b"still here\n"
        held[1].close()
        assert (await drained)["forced"] == 0
    finally:
        await backend.stop()


async def test_connection_limits_still_hold(
        make_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    backend = await TcpBackend().start()
    try:
        gateway = await make_gateway(**tcp_config(backend, max_connections_per_ip=3))
        host, port = gateway.listeners["raw"].address
        held = [await asyncio.open_connection(host, port) for _ in range(3)]
        for reader, _ in held:
            assert await reader.readline() == b"HELLO\n"
        reader, writer = await asyncio.open_connection(host, port)
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, never relayed
        writer.close()
        assert gateway.counters["refused_per_ip"] == 1
        for _, w in held:
            w.close()
        for _ in range(100):
            if not gateway.clients:
                break
            await asyncio.sleep(0.02)
        assert await echo_once(host, port) == b"HELLO\nping\n"
    finally:
        await backend.stop()

    backend = await TcpBackend().start()
    try:
        gateway = await make_gateway(**tcp_config(backend, max_connections=2))
        host, port = gateway.listeners["raw"].address
        held = [await asyncio.open_connection(host, port) for _ in range(2)]
        for reader, _ in held:
            assert await reader.readline() == b"HELLO\n"
        reader, writer = await asyncio.open_connection(host, port)
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert gateway.counters["refused_max_connections"] == 1
        for _, w in held:
            w.close()
    finally:
        await backend.stop()


async def test_running_out_of_descriptors_pauses_accepting_then_resumes() -> None:
    errors: list[OSError] = []
    Counting.made = 0
    server = await AcceptLoop.listen("127.0.0.1", 0, Counting, on_error=errors.append)
    server.retry_delay = 0.2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    client = socket.create_connection(("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # accept() now fails: EMFILE
        try:
            await asyncio.sleep(0.05)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert [e.errno for e in errors] == [24]  # once, then paused: no busy loop
        assert Counting.made == 0
        for _ in range(50):
            if Counting.made:
                break
            await asyncio.sleep(0.02)
        assert Counting.made == 1  # resumed after retry_delay
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_check_unshared_sees_a_listener_that_reuseport_would_share() -> None:
    """A listening accept loop (SO_REUSEPORT) on the port is reported, from its address and
    from the wildcard one, where a second accept loop binds beside it (what the check is
    for). Once it closed, a connection it left in TIME_WAIT does not count."""
    first = await AcceptLoop.listen("127.0.0.1", 0, Counting)
    port = first.sockets[0].getsockname()[1]
    beside = await AcceptLoop.listen("127.0.0.1", port, Counting)  # the kernel lets it share
    beside.close()
    try:
        with pytest.raises(OSError) as caught:
            check_unshared("127.0.0.1", port)
        assert caught.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as caught:
            check_unshared("0.0.0.0", port)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        first.close()
    with socket.create_server(("127.0.0.1", port)) as server:  # SO_REUSEADDR, as the gateway
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server's side closes first: its end goes to TIME_WAIT
        client.close()
    check_unshared("127.0.0.1", port)
    check_unshared("127.0.0.1", 0)
