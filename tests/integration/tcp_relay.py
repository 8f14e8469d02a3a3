"""A loopback TCP relay to put between a pool and a real service, to simulate the service going
down and coming back: `stop()` refuses new connections and cuts the open ones (what clients see
when a server restarts), `start()` listens again on the same port; `stalled = True` makes it a
service that accepts and never answers (a hung server, a black-holed route). Also the small
helpers the driver tests share: a port nobody listens on, and waiting for a condition."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable


class TcpRelay:
    """Forwards every connection on 127.0.0.1:`port` to `target_host:target_port`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        #: While True, what either end sends is swallowed, on open connections and on new ones,
        #: which are accepted but not forwarded: nothing reaches the service, nothing comes back.
        self.stalled = False
        #: Client connections whose client has not closed its end yet.
        self.open = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpRelay:
        """Listen (again): on a free port the first time, on the same port after `stop()`."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut every relayed connection, both sides."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    def cut(self) -> None:
        """Abort every open connection (an RST to both ends), keep listening."""
        for writer in list(self._writers):
            writer.transport.abort()

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the relay's."""
        scheme, _, rest = url.partition("://")
        userinfo, at, hostpart = rest.partition("@") if "@" in rest else ("", "", rest)
        tail = hostpart[len(hostpart.split("/", 1)[0]):]
        return f"{scheme}://{userinfo}{at}127.0.0.1:{self.port}{tail}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        task = asyncio.current_task()
        if task is not None:  # for stop() to wait for, so no handler outlives the relay
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await self._relay(reader, writer)
        finally:
            self.open -= 1

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.stalled:
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
            writer.transport.abort()
            self._writers.discard(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                 self.target_port)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        pumps = [asyncio.create_task(self._pump(reader, up_writer)),
                 asyncio.create_task(self._pump(up_reader, writer))]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for w in (writer, up_writer):
            w.transport.abort()
            self._writers.discard(w)
        await asyncio.wait(pumps)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.stalled:
                    continue
                writer.write(data)
                await writer.drain()


def free_port() -> int:
    """A loopback port that nothing listens on (bound and released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until `predicate()` holds, polling; fail the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)
