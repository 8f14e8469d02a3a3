"""A real loopback TCP service for pool tests: a greeting after a handshake delay, line echo,
and the knobs a test needs — stop it, cut every connection, start it again on the same port."""

from __future__ import annotations

import asyncio
import contextlib


class TcpBackend:
    """Echoes lines; greets with b"HELLO\\n" after `handshake` seconds."""

    def __init__(self, handshake: float = 0.0) -> None:
        self.handshake = handshake
        self.port = 0
        self.accepted = 0
        self.in_handshake = 0
        self.max_in_handshake = 0
        self.open = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpBackend:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every open connection (a server going down)."""
        if self._server is not None:
            self._server.close()
            self.cut()
            await self._server.wait_closed()
            self._server = None

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self._writers.add(writer)
        try:
            self.in_handshake += 1
            self.max_in_handshake = max(self.max_in_handshake, self.in_handshake)
            try:
                await asyncio.sleep(self.handshake)
            finally:
                self.in_handshake -= 1
            writer.write(b"HELLO\n")
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
