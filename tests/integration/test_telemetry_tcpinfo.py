"""TCP_INFO of real loopback sockets: RTT for the record, and the half-open hint of a socket
whose peer has gone (CLOSE_WAIT)."""

from __future__ import annotations

import socket
import sys

import pytest

from connwise.core.zombies import TCP_CLOSE_WAIT, TCP_ESTABLISHED
from connwise.telemetry.tcpinfo import read_tcp_info

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
