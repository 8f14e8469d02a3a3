"""What a keep-alive connection must not carry from one exchange to the next, on either side of
the gateway: bytes a backend sends beyond its answer (a second answer, a body to a HEAD
request, anything while the connection is idle) reach no client, and the upstream connection
that carried them is not used again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.test_gateway_http_conformance import Start
from tests.integration.test_gateway_http_edges import (
    Answer,
    LoopbackServer,
    RawBackend,
    connect,
    read_answer,
    web_config,
)


@pytest.fixture
async def raw() -> AsyncIterator[Start]:
    """`await raw(answer)`: a started `RawBackend`, stopped when the test ends."""
    started: list[RawBackend] = []

    async def start(answer: Answer) -> RawBackend:
        backend = await RawBackend(answer).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


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
