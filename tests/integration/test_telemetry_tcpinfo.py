"""TCP_INFO of real loopback sockets: RTT for the record, and the half-open hint of a socket
whose peer has gone (CLOSE_WAIT)."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest

from connwise.core.zombies import TCP_CLOSE_WAIT, TCP_ESTABLISHED
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.tcpinfo import TcpInfoSampler, read_tcp_info, sample_into

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
