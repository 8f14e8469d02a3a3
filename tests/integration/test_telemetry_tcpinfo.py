"""TCP_INFO of real loopback sockets: RTT for the record, and the half-open hint of a socket
whose peer has gone (CLOSE_WAIT after a FIN, CLOSE after a reset) but not of a slow reader."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time

import pytest

from connwise.core.zombies import TCP_CLOSE_WAIT, TCP_ESTABLISHED
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.tcpinfo import TcpInfoSampler, read_tcp_info, sample_into

#: Linux's TCP_CLOSE (include/net/tcp_states.h): a socket whose peer reset it.
TCP_CLOSE = 7

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="TCP_INFO is read on Linux only")


def test_established_then_half_open_when_the_peer_leaves() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    try:
        client.sendall(b"ping")
        assert peer.recv(4) == b"ping"
        info = read_tcp_info(client)
        assert info is not None
        assert info.state == TCP_ESTABLISHED and not info.half_open
        assert info.rtt_ms > 0 and info.total_retrans == 0
        peer.close()  # FIN from the peer; our side sits in CLOSE_WAIT until it closes
        assert client.recv(1) == b""
        info = read_tcp_info(client)
        assert info is not None and info.state == TCP_CLOSE_WAIT and info.half_open
    finally:
        client.close()
        server.close()
    assert read_tcp_info(client) is None  # closed socket: nothing to read


def test_sample_into_reads_the_same_rtt_and_retransmits_as_the_full_struct() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    rec = ConnRecord("1", "client", "web", 0.0)
    try:
        client.sendall(b"ping")
        assert peer.recv(4) == b"ping"
        info = read_tcp_info(client)
        sample_into(rec, client)
        assert info is not None and rec.rtt_ms is not None and rec.rtt_ms > 0
        # The kernel's smoothed RTT may move between the two reads; both come from one field.
        assert abs(rec.rtt_ms - info.rtt_ms) < 5.0
        assert rec.retransmits == info.total_retrans == 0
    finally:
        client.close()
        peer.close()
        server.close()
    closed = ConnRecord("2", "client", "web", 0.0)
    sample_into(closed, client)  # closed socket: the columns stay NULL
    sample_into(closed, None)
    assert closed.rtt_ms is None and closed.retransmits is None


async def test_the_sampler_reads_every_nth_short_connection_and_every_long_one() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    _, writer = await asyncio.open_connection(*server.getsockname())
    peer, _ = server.accept()
    try:
        def sampled(sampler: TcpInfoSampler, ages: list[float]) -> list[bool]:
            recs = [ConnRecord(str(i), "client", "web", 0.0) for i in range(len(ages))]
            for rec, age in zip(recs, ages, strict=True):
                sampler.sample(rec, writer.transport, age)  # read from the transport's socket
            return [rec.rtt_ms is not None for rec in recs]

        every_third = TcpInfoSampler(every=3)
        assert sampled(every_third, [0.01] * 7) == [False, False, True] * 2 + [False]
        # A connection of a second or more is always read, and does not move the count (one
        # short connection was counted above; the third is read).
        assert sampled(every_third, [5.0, 1.0, 0.01, 2.0, 0.01]) == [True, True, False, True,
                                                                      True]
        assert sampled(TcpInfoSampler(every=1), [0.01] * 3) == [True] * 3
        assert sampled(TcpInfoSampler(every=0), [0.01, 5.0]) == [False, False]
        gone = ConnRecord("x", "client", "web", 0.0)
        TcpInfoSampler(every=1).sample(gone, None, 5.0)  # no transport: the columns stay NULL
        assert gone.rtt_ms is None
    finally:
        writer.close()
        peer.close()
        server.close()
    with pytest.raises(ValueError, match="every=-1"):
        TcpInfoSampler(every=-1)


def test_a_peer_that_stops_reading_is_alive_not_half_open() -> None:
    """A slow reader with a full window: the kernel sends zero-window probes with growing
    backoff, but every byte sent was acknowledged (`unacked` 0), so the rule keeps it alive;
    only unacknowledged data after the backoffs means the peer vanished."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.connect(server.getsockname())
    peer, _ = server.accept()
    try:
        client.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                client.send(b"x" * 65536)
        deadline = time.monotonic() + 10.0
        info = read_tcp_info(client)
        while info is not None and info.backoff < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            info = read_tcp_info(client)
        assert info is not None and info.backoff >= 3, info
        assert info.state == TCP_ESTABLISHED and info.unacked == 0 and not info.half_open
    finally:
        for s in (client, peer, server):
            s.close()


@pytest.mark.parametrize("unread", [False, True], ids=["fin", "reset"])
def test_a_peer_process_killed_mid_connection_leaves_a_half_open_socket(unread: bool) -> None:
    """SIGKILL: the kernel closes the dead process's socket with a FIN, or a reset when data
    sat unread in it; our side, still open, is CLOSE_WAIT or CLOSE, and TCP_INFO says so."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c",
                              "import socket, time\n"
                              f"s = socket.create_connection(('127.0.0.1', {port}))\n"
                              "s.sendall(b'ready')\n"
                              "time.sleep(60)\n"])
    peer, _ = server.accept()
    try:
        peer.settimeout(10.0)
        assert peer.recv(5) == b"ready"
        if unread:
            peer.sendall(b"never read")
        info = read_tcp_info(peer)
        assert info is not None and info.state == TCP_ESTABLISHED and not info.half_open
        child.send_signal(signal.SIGKILL)
        child.wait(10.0)
        deadline = time.monotonic() + 5.0
        while info is not None and info.state == TCP_ESTABLISHED and \
                time.monotonic() < deadline:
            time.sleep(0.01)
            info = read_tcp_info(peer)
        assert info is not None and info.half_open
        assert info.state == (TCP_CLOSE if unread else TCP_CLOSE_WAIT)
    finally:
        child.kill()
        child.wait()
        peer.close()
        server.close()
