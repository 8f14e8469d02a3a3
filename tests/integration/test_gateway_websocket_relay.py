"""The WebSocket relay over raw loopback sockets: what the backend sends with its 101, a close
frame the gateway writes itself while a frame is in flight, and backpressure toward a backend
that does not read."""

from __future__ import annotations

import asyncio

import uvloop

from connwise.config import load_gateway_config
from connwise.gateway.http import HttpClient
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.test_gateway_admission import until
from tests.integration.test_gateway_http_conformance import UpgradeBackend, upgrade
from tests.integration.test_gateway_http_edges import LoopbackServer, connect, web_config

#: A binary frame from a server (unmasked) of 65535 bytes, the largest with a 2-byte length.
BIG_FRAME = b"\x82\x7e\xff\xff" + bytes(65535)


def the_client(gateway: Gateway) -> HttpClient:
    [client] = gateway.clients.values()
    assert isinstance(client, HttpClient)
    return client


class BurstAfter101(LoopbackServer):
    """Answers `GET /big` with `size` bytes (keep-alive), and an upgrade with its 101 and
    `frames` of BIG_FRAME in the same write; then reads until the gateway closes."""

    def __init__(self, size: int, frames: int) -> None:
        self.size = size
        self.frames = frames

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readuntil(b"\r\n\r\n")).startswith(b"GET /big "):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (self.size, bytes(self.size)))
                await writer.drain()
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n" + BIG_FRAME * self.frames)
            await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_frames_the_backend_sends_with_its_101_all_reach_the_client() -> None:
    """Under uvloop, on an upstream connection whose receive buffer grew with an earlier large
    answer: the read holding the 101 fills uvloop's buffer, so libuv reads again at once,
    before the relay has started; those bytes too must reach the client, in order."""
    frames, size = 32, 4 << 20

    async def scenario() -> bytes:
        backend = await BurstAfter101(size, frames).start()
        gateway = Gateway(load_gateway_config(web_config([backend.address])))
        await gateway.start()
        try:
            reader, writer = await connect(gateway)
            writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.wait_for(reader.readexactly(size), 5)
            writer.write(upgrade(b"/ws"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 101"), head
            try:
                return await asyncio.wait_for(reader.readexactly(len(BIG_FRAME) * frames), 5)
            finally:
                writer.close()
        finally:
            await gateway.drain(1.0)
            backend.stop()

    assert uvloop.run(scenario()) == BIG_FRAME * frames


class EchoUntilClosed(UpgradeBackend):
    """`UpgradeBackend` that says when the gateway closed its connection (`ended`)."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await super()._serve(reader, writer)
        finally:
            self.ended.set()


#: The start of a client's binary frame announcing 1000 payload bytes, and 10 of them: the
#: echoing backend sends it back as it came, so both directions stand inside a frame.
PARTIAL_FRAME = b"\x82\xfe\x03\xe8abcd" + bytes(10)


async def test_a_drain_writes_no_close_frame_into_a_frame_in_flight(
        make_gateway: GatewayFactory) -> None:
    """At the drain timeout each side gets a close frame with 1001, but only between frames: one
    written in the middle of a frame the relay is forwarding would be read as payload, and the
    frame after it as garbage. A side in mid-frame gets the close alone."""
    backend = await EchoUntilClosed().start()
    try:
        gateway = await make_gateway(**web_config([backend.address]))
        reader, writer = await connect(gateway)
        writer.write(upgrade(b"/ws") + PARTIAL_FRAME)
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert await asyncio.wait_for(reader.readexactly(len(PARTIAL_FRAME)), 5) == PARTIAL_FRAME
        assert await gateway.drain(0.05) == {"finished": 0, "forced": 1}
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert rest == b""
        await asyncio.wait_for(backend.ended.wait(), 5)
        assert backend.relayed == PARTIAL_FRAME
    finally:
        backend.stop()


class DeafAfter101(LoopbackServer):
    """Answers an upgrade with its 101, then reads nothing more until the test ends."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            await self.release.wait()
        finally:
            writer.close()


async def test_a_backend_that_does_not_read_stops_the_client_being_read(
        make_gateway: GatewayFactory) -> None:
    """The client's bytes pile up in the gateway only to the upstream transport's high-water
    mark: past it the client is no longer read (its sends then stall in TCP), as a slow client
    stops the backend being read."""
    backend = await DeafAfter101().start()
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    writer.write(upgrade(b"/ws"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    client = the_client(gateway)
    upstream = client.relay_to
    assert upstream is not None and upstream.transport is not None and client.transport
    chunk = b"\x82\x7f" + (1 << 40).to_bytes(8, "big") + b"abcd" + bytes(1 << 20)

    async def send() -> None:
        while True:
            writer.write(chunk)
            await writer.drain()

    sending = asyncio.create_task(send())
    try:
        # Either the client stops being read, or the buffer grows past any sane bound.
        await until(lambda: not client.transport.is_reading()  # type: ignore[union-attr]
                    or upstream.transport.get_write_buffer_size() > 32 << 20)  # type: ignore[union-attr]
        assert upstream.transport.get_write_buffer_size() < 1 << 20
    finally:
        sending.cancel()
        writer.close()
        backend.release.set()
        backend.stop()
