"""What a keep-alive connection must not carry from one exchange to the next, on either side of
the gateway: bytes a backend sends beyond its answer (a second answer, a body to a HEAD
request, anything while the connection is idle) reach no client, and the upstream connection
that carried them is not used again."""

from __future__ import annotations

import asyncio
import socket

import pytest

from connwise.gateway.http import HttpClient
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory, Start
from tests.integration.test_gateway_admission import until
from tests.integration.test_gateway_http_edges import (
    LoopbackServer,
    RawBackend,
    connect,
    read_answer,
    web_config,
)

SECOND = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"


async def second_request_is_answered_alone(reader: asyncio.StreamReader,
                                           writer: asyncio.StreamWriter) -> None:
    """The next request on the connection gets its own answer, and nothing before it."""
    writer.write(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    head, body = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert body == b"second" and b"smuggled" not in head.lower()


@pytest.mark.parametrize("extra", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Smuggled: 1\r\n\r\nevil",  # a whole answer
    b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n",  # the start of one
])
async def test_an_answer_the_backend_sends_beyond_its_own_reaches_nobody(
        make_gateway: GatewayFactory, raw: Start, extra: bytes) -> None:
    """What follows an answer in the backend's write is no answer to anything: it goes to no
    client (the client would read it as the answer to its next request), and the connection
    closes (kept, the next answer on it would be read after it, by any client)."""
    async def answer(head: bytes) -> bytes:
        if head.startswith(b"GET /a "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + extra
        return SECOND

    backend = await raw(answer)
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        head, body = await read_answer(reader)
        assert body == b"ok" and b"keep-alive" in head.lower()
        await second_request_is_answered_alone(reader, writer)
    finally:
        writer.close()
    assert backend.connections == 2  # the first upstream connection was not used again


async def test_a_body_to_a_head_request_reaches_nobody(make_gateway: GatewayFactory,
                                                       raw: Start) -> None:
    """A backend that sends a body with its answer to a HEAD request (by the answer's
    Content-Length): the client gets the head alone, and the connection is not used again."""
    async def answer(head: bytes) -> bytes:
        if head.startswith(b"HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
        return SECOND

    backend = await raw(answer)
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 4" in head.lower()
        await second_request_is_answered_alone(reader, writer)
    finally:
        writer.close()
    assert backend.connections == 2


class LateBackend(LoopbackServer):
    """Answers every request with `SECOND`, and sends `late` a moment after its first answer,
    while the connection is idle in the gateway's pool."""

    def __init__(self, late: bytes) -> None:
        self.late = late
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = True
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(SECOND)
                if first:
                    first = False
                    await asyncio.sleep(0.1)
                    writer.write(self.late)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_bytes_an_idle_upstream_connection_receives_reach_nobody(
        make_gateway: GatewayFactory) -> None:
    """The start of an answer sent while no request is in hand ends the connection: the next
    request's answer would be read after it (here, with its field)."""
    backend = await LateBackend(b"HTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n").start()
    try:
        gateway = await make_gateway(**web_config([backend.address]))
        reader, writer = await connect(gateway)
        try:
            writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
            _, body = await read_answer(reader)
            assert body == b"second"
            await asyncio.sleep(0.3)  # the late bytes came
            await second_request_is_answered_alone(reader, writer)
        finally:
            writer.close()
    finally:
        backend.stop()
    assert backend.connections == 2


# -- a client that reads slowly: its backpressure is the exchange's, not the connection's ------

BIG = 1 << 20


async def sized(head: bytes) -> bytes:
    """`/big` gets a 1 MiB body, `/small` one of 1 KiB, anything else `SECOND`."""
    path = head.split(b" ", 2)[1]
    size = {b"/big": BIG, b"/small": 1024}.get(path)
    if size is None:
        return SECOND
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (size, b"x" * size)


async def slow_client(gateway: Gateway) -> tuple[socket.socket, HttpClient]:
    """A client socket that buffers little and is not read (what it does not read stays in
    the gateway's transport), and the gateway's side of it."""
    host, port = gateway.listeners["web"].address
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    await until(lambda: len(gateway.clients) == 1)
    [client] = gateway.clients.values()
    assert isinstance(client, HttpClient)
    assert client.transport is not None
    client.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                        16384)
    return sock, client


async def paused_client(gateway: Gateway, backend: RawBackend
                        ) -> tuple[socket.socket, asyncio.Transport]:
    """A `slow_client` that asked for two answers and read neither: the first fills what the
    sockets hold and the gateway keeps the rest (its high-water mark raised for it: no
    backpressure yet); the second takes the gateway's buffer over the mark in the read that
    completes it, which stops reading that answer's upstream connection."""
    sock, client = await slow_client(gateway)
    transport = client.transport
    assert transport is not None
    loop = asyncio.get_running_loop()
    try:
        transport.set_write_buffer_limits(high=64 * BIG)
        await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: len(backend.heads) == 1 and not client.queue
                    and transport.get_write_buffer_size() > 0)
        transport.set_write_buffer_limits(high=transport.get_write_buffer_size() + 512, low=0)
        await loop.sock_sendall(sock, b"GET /small HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: len(backend.heads) == 2 and not client.queue)
    except BaseException:
        sock.close()
        raise
    return sock, transport


async def read_all_then_ask_again(sock: socket.socket, sizes: tuple[int, ...]) -> None:
    """The client reads the answers of `sizes` at last; its next request then goes to the
    same upstream connection and gets its own answer."""
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        for size in sizes:
            _, body = await read_answer(reader)
            assert len(body) == size
        await second_request_is_answered_alone(reader, writer)
    finally:
        writer.close()


async def test_an_answer_that_ends_as_its_client_stops_reading_leaves_its_connection_reading(
        make_gateway: GatewayFactory, raw: Start) -> None:
    """The client's send buffer filled with the last bytes of an answer, which stopped reading
    the answer's upstream connection (backpressure): the connection goes back to its pool
    reading again, or the next request on it, from any client, never gets its answer."""
    backend = await raw(sized)
    gateway = await make_gateway(**web_config([backend.address]))
    sock, _ = await paused_client(gateway, backend)
    await read_all_then_ask_again(sock, (BIG, 1024))
    assert backend.connections == 1 and len(backend.heads) == 3


async def test_the_next_answer_to_a_client_that_stopped_reading_waits_for_it(
        make_gateway: GatewayFactory, raw: Start) -> None:
    """The client's backpressure outlives the answer that caused it: the next answer's upstream
    connection is not read while the client reads nothing (else the gateway would hold all of
    it, and of every answer after it), and is read once the client reads again."""
    backend = await raw(sized)
    gateway = await make_gateway(**web_config([backend.address]))
    sock, transport = await paused_client(gateway, backend)
    try:
        held = transport.get_write_buffer_size()
        # The client, its buffer over the high-water mark, asks for another big answer.
        await asyncio.get_running_loop().sock_sendall(
            sock, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: len(backend.heads) == 3)
        await asyncio.sleep(0.3)
        assert transport.get_write_buffer_size() - held < BIG // 2  # a read, not the answer
    except BaseException:
        sock.close()
        raise
    await read_all_then_ask_again(sock, (BIG, 1024, BIG))


async def path_echo(head: bytes) -> bytes:
    """Answers with the request's target as its body."""
    path = head.split(b" ", 2)[1]
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path)


async def test_a_connection_answered_before_its_request_body_was_sent_is_not_reused(
        make_gateway: GatewayFactory) -> None:
    """A backend that answers before it read the request body leaves that body in its stream,
    where it would read it as a request (here one for `/evil`) and answer it to whoever sent
    the next request on the connection: the gateway finishes sending the body and closes the
    connection instead of pooling it."""
    backend = await RawBackend(path_echo, read_bodies=False).start()
    try:
        gateway = await make_gateway(**web_config([backend.address]))
        smuggled = b"GET /evil HTTP/1.1\r\nHost: a\r\n\r\n"
        reader, writer = await connect(gateway)
        try:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                         % len(smuggled))
            head, body = await read_answer(reader)  # answered while the body is still due
            assert head.startswith(b"HTTP/1.1 200") and body == b"/upload"
            # The body, sent after the answer, and the next request right behind it: on a
            # pooled connection the next request would go out before the answer to `/evil`.
            writer.write(smuggled + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
            _, body = await read_answer(reader)
        finally:
            writer.close()
        assert body == b"/next", body
        assert backend.connections == 2  # the first connection was not used again
    finally:
        backend.stop()


async def early_hints(head: bytes) -> bytes:
    """`/hints`: a 103 with its Link header, then the answer; `/switch`: a 101 nobody asked
    for; anything else: a plain answer."""
    if head.startswith(b"GET /hints "):
        return (b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    if head.startswith(b"GET /switch "):
        return b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
    return SECOND


async def test_interim_answers_keep_their_status_and_fields_and_an_unasked_101_is_refused(
        make_gateway: GatewayFactory, raw: Start) -> None:
    backend = await raw(early_hints)
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /hints HTTP/1.1\r\nHost: a\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        writer.write(b"GET /switch HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 502"), head
    finally:
        writer.close()
    reader, writer = await connect(gateway)  # and it goes on serving
    try:
        await second_request_is_answered_alone(reader, writer)
    finally:
        writer.close()
