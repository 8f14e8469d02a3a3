"""Request and response bodies streamed through the http listener over real loopback sockets:
a body the backend takes slowly holds its client back (bounded memory) and is not timed out,
a backend that takes none of it gets 504, tiny chunks are coalesced on the way up."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from connwise.gateway.http import HttpClient
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.test_gateway_http_edges import (
    LoopbackServer,
    connect,
    header_of,
    read_answer,
    web_config,
)
from tests.integration.test_gateway_http_fastpath import until

MiB = 1024 * 1024


class GatedBackend(LoopbackServer):
    """A keep-alive backend that reads a request head at once and its body (Content-Length
    or chunked, kept raw) only once `gate` is set, then answers 200 with the body's length."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.head_read = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                self.head_read.set()
                await self.gate.wait()
                if header_of(head, b"transfer-encoding"):  # (nothing pipelined behind it)
                    body = b""
                    while not (body.endswith(b"\r\n0\r\n\r\n") or body == b"0\r\n\r\n"):
                        piece = await reader.read(MiB)
                        if not piece:
                            raise asyncio.IncompleteReadError(body, None)
                        body += piece
                else:
                    left = int((header_of(head, b"content-length") or [b"0"])[0])
                    pieces = []
                    while left:
                        pieces.append(await reader.readexactly(min(left, MiB)))
                        left -= len(pieces[-1])
                    body = b"".join(pieces)
                self.bodies.append(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d"
                             % (len(str(len(body))), len(body)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # (cancelled: the test ended while a request waited at the gate)
        finally:
            writer.close()


def client_of(gateway: Gateway) -> HttpClient:
    [client] = gateway.clients.values()
    assert isinstance(client, HttpClient)
    return client


async def test_a_large_body_to_a_slow_backend_holds_its_client_back(
        make_gateway: GatewayFactory) -> None:
    """The gateway stops reading a body the backend does not take yet: it holds a bounded
    buffer of it, not the whole body (up to `max_body_bytes`), and reads on once the backend
    takes it. The client's send waits meanwhile."""
    backend = await GatedBackend().start()
    size = 48 * MiB  # far more than the loopback socket buffers on the way hold
    gateway = await make_gateway(**web_config([backend.address],
                                              limits={"max_body_bytes": 64 * MiB}))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        sending = asyncio.ensure_future(writer.drain())
        await asyncio.wait_for(backend.head_read.wait(), 5)
        done, _ = await asyncio.wait([sending], timeout=0.3)
        assert not done, "the gateway read the whole body though the backend took none of it"
        assert client_of(gateway).bytes_in < 24 * MiB
        backend.gate.set()
        await asyncio.wait_for(sending, 5)
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == b"%d" % size
        # The connection goes on: the next body streams as well.
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == b"3"
    finally:
        writer.close()
        backend.stop()
    assert [len(b) for b in backend.bodies] == [size, 3]
    assert gateway.counters["http_body_timeout"] == 0


async def test_a_body_held_back_in_the_admission_queue_is_not_timed_out(
        make_gateway: GatewayFactory) -> None:
    """A request queued for a slot stops being read once `BODY_BUFFER` of its body is in:
    the client cannot send meanwhile, and that is not its silence (it got 408)."""
    backend = await GatedBackend().start()
    size = 16 * MiB
    config = web_config([backend.address], limits={"max_body_bytes": 64 * MiB,
                                                   "body_timeout": 0.2})
    config["groups"]["app"]["max_in_flight"] = 1
    gateway = await make_gateway(**config)
    holder_reader, holder = await connect(gateway)
    reader, writer = await connect(gateway)
    try:
        holder.write(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")  # its answer waits for the gate
        await asyncio.wait_for(backend.head_read.wait(), 5)
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
                     + b"x" * size)
        await asyncio.sleep(0.5)  # the body timeout passes, twice, while the request queues
        backend.gate.set()
        assert (await read_answer(holder_reader))[1] == b"0"
        head, body = await read_answer(reader)
    finally:
        holder.close()
        writer.close()
        backend.stop()
    assert head.startswith(b"HTTP/1.1 200") and body == b"%d" % size
    assert gateway.counters["http_body_timeout"] == 0


async def test_a_backend_that_takes_no_body_gets_504(make_gateway: GatewayFactory) -> None:
    """A backend that reads the head and then neither reads the body nor answers: past the
    body timeout, 504, a passive failure of the backend, both connections closed and the slot
    given back (the exchange hung for ever, with the body in memory)."""
    backend = await GatedBackend().start()
    size = 48 * MiB
    gateway = await make_gateway(**web_config([backend.address],
                                              limits={"max_body_bytes": 64 * MiB,
                                                      "body_timeout": 0.3}))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size
                     + b"x" * size)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 504"), head
        assert b"Connection: close" in head
    finally:
        writer.close()
        backend.stop()
    group = gateway.groups["app"]
    await until(lambda: group.scheduler.in_use == 0 and group.backends[0].outstanding == 0)
    assert group.backends[0].failures == 1
    assert gateway.counters["http_504"] == 1


async def test_tiny_chunks_go_upstream_in_few(make_gateway: GatewayFactory) -> None:
    """A chunked body of one-byte chunks: the gateway buffered one object per chunk (~40
    bytes for each byte, past `max_body_bytes` many times over) and wrote each as a chunk of
    its own (a send each); what arrived together goes up as one chunk."""
    backend = await GatedBackend().start()
    backend.gate.set()
    count = 100_000
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"1;ext=x\r\nx\r\n" * count + b"0\r\n\r\n")
        head, body = await read_answer(reader)
    finally:
        writer.close()
        backend.stop()
    assert head.startswith(b"HTTP/1.1 200")
    [raw] = backend.bodies
    assert body == b"%d" % len(raw)
    assert raw.endswith(b"\r\n0\r\n\r\n") and raw.count(b"x") == count
    assert raw.count(b"\r\n") < 2000, "a chunk per read of the client, not one per chunk"


@pytest.mark.parametrize(("prefix", "backends", "status"), [
    ("/api", "live", b"404"),  # no route
    ("/", "dead", b"502"),  # no backend answers
])
async def test_a_100_continue_request_the_gateway_answers_itself_ends_the_connection(
        make_gateway: GatewayFactory, prefix: str, backends: str, status: bytes) -> None:
    """The client waits for `100 Continue` before it sends its body, and the gateway's own
    answer tells it not to: the gateway waited for the body all the same, with no timer
    running, and the connection stayed taken for as long as the client kept it open. It now
    says `Connection: close` and closes (RFC 9110 10.1.1; h11 does the same)."""
    backend = await GatedBackend().start()
    address = backend.address
    if backends == "dead":
        backend.stop()
        assert backend.server is not None
        await backend.server.wait_closed()
    config = web_config([address])
    config["routes"][0]["path_prefix"] = prefix
    config["groups"]["app"]["connect_timeout"] = 0.2
    gateway = await make_gateway(**config)
    reader, writer = await connect(gateway)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2)  # until the gateway closes
    finally:
        writer.close()
        backend.stop()
    assert answer.startswith(b"HTTP/1.1 " + status), answer
    assert b"Connection: close" in answer
    assert gateway.groups["app"].scheduler.in_use == 0


class ResettingBackend(LoopbackServer):
    """Answers a request with a body delimited by the close (no length, no chunks), then,
    once `reset` is set, resets the connection instead of closing it."""

    def __init__(self) -> None:
        self.reset = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
        await writer.drain()
        await self.reset.wait()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST: the body did not end, the backend failed


async def test_a_body_delimited_by_the_close_that_ends_in_a_reset_is_a_failure(
        make_gateway: GatewayFactory) -> None:
    """A reset is no end of a body delimited by the close: the answer failed, and the
    backend is charged a passive failure (it counted as a whole answer, and a success)."""
    backend = await ResettingBackend().start()
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head
        assert await asyncio.wait_for(reader.readexactly(7), 5) == b"partial"
        backend.reset.set()
        await asyncio.wait_for(reader.read(), 5)  # the gateway closes
    finally:
        writer.close()
        backend.stop()
    group = gateway.groups["app"]
    await until(lambda: group.scheduler.in_use == 0)
    assert group.backends[0].failures == 1
