"""`limits.send_timeout` over real loopback sockets: a client that stops reading what the
gateway sends it is cut off, and what it held (the admission slot, the upstream connection)
goes back, where it would otherwise be held for as long as the client stays connected."""

from __future__ import annotations

import asyncio
import socket

from tests.integration.conftest import GatewayFactory, Start
from tests.integration.tcp_relay import until
from tests.integration.test_gateway_http_edges import still_serves, web_config

BIG = 32 * 1024 * 1024  # more than the kernel's buffers on both sides hold


async def big(head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (BIG, b"x" * BIG)


async def test_a_client_that_stops_reading_an_answer_is_cut_off(
        make_gateway: GatewayFactory, raw: Start) -> None:
    backend = await raw(big)
    gateway = await make_gateway(**web_config([backend.address], limits={"send_timeout": 0.3}))
    host, port = gateway.listeners["web"].address
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    group = gateway.groups["app"]
    await until(lambda: group.scheduler.in_use == 1)
    try:
        # Never read: the gateway's buffer for the client fills, and send_timeout runs out.
        await until(lambda: gateway.counters["http_send_timeout"] == 1, timeout=5)
        await until(lambda: group.scheduler.in_use == 0)
        await until(lambda: not gateway.clients)
    finally:
        sock.close()
    await still_serves(gateway)


async def test_a_slow_reader_that_keeps_reading_is_not_cut_off(
        make_gateway: GatewayFactory, raw: Start) -> None:
    """The timeout runs between two writes the client lets through, not over the answer."""
    backend = await raw(big)
    gateway = await make_gateway(**web_config([backend.address], limits={"send_timeout": 0.3}))
    host, port = gateway.listeners["web"].address
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
    received = 0
    while received < BIG:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
        assert chunk, f"cut off after {received} bytes"
        received += len(chunk)
        await asyncio.sleep(0.005)  # reads at ~200 MB/s, pausing the gateway's writes often
    writer.close()
    assert gateway.counters["http_send_timeout"] == 0
