"""Raw TCP connections: for services connwise has no client library for, and for load tests.

A TCP connection has no protocol of its own, so the driver checks liveness locally by peeking at
the socket (a peer that closed shows EOF; a half-open one shows nothing and is caught by the
optional `probe`), and resets nothing. A service with a greeting (an SMTP banner, a handshake
that costs time, like the demo's backend) is awaited with `greeting`; a service with a ping is
checked with `probe` and `probe_reply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from dataclasses import dataclass

from connwise.errors import BackendUnavailable, ConfigError, ConnectionBroken

#: Longest greeting or probe reply read, in bytes: a bound, not a protocol limit.
MAX_LINE = 4096


@dataclass(slots=True, eq=False)
class TcpConnection:
    """One open TCP connection, as streams."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def readline(self) -> bytes:
        return await self.reader.readuntil(b"\n")


class TcpDriver:
    """Connects to `host:port`; optional `greeting` awaited on connect, `probe` used to check."""

    name = "tcp"
    settles_interrupts = False

    def __init__(self, host: str, port: int, *, greeting: bytes | None = None,
                 probe: bytes | None = None, probe_reply: bytes | None = None) -> None:
        if not host:
            raise ConfigError("host", host, "no host given", "use e.g. '127.0.0.1'")
        if not 0 < port < 65536:
            raise ConfigError("port", port, "a TCP port lies in 1..65535", "fix the port")
        if (probe is None) != (probe_reply is None):
            raise ConfigError("probe", probe, "probe and probe_reply go together",
                              "set both, or neither to check by peeking at the socket")
        self.host = host
        self.port = port
        self.greeting = greeting
        self.probe = probe
        self.probe_reply = probe_reply

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    async def connect(self) -> TcpConnection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=MAX_LINE)
        except socket.gaierror as exc:
            raise ConfigError("host", self.host, f"the name does not resolve ({exc.strerror})",
                              "check the host name") from exc
        except ConnectionRefusedError as exc:
            raise BackendUnavailable(f"could not connect to {self.address}: connection refused; "
                                     "is the service running and listening there?") from exc
        except OSError as exc:
            raise BackendUnavailable(f"could not connect to {self.address}: "
                                     f"{exc.strerror or exc}") from exc
        conn = TcpConnection(reader, writer)
        if self.greeting is not None:
            try:
                line = await reader.readuntil(b"\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as exc:
                writer.close()
                raise BackendUnavailable(f"{self.address} closed the connection before its "
                                         "greeting; is it the right service?") from exc
            if not line.startswith(self.greeting):
                writer.close()
                raise BackendUnavailable(f"{self.address} greeted with {line[:60]!r}, expected "
                                         f"{self.greeting!r}; is it the right service?")
        return conn

    async def check(self, conn: TcpConnection) -> None:
        await asyncio.sleep(0)
        if self._peer_closed(conn):
            raise ConnectionBroken(f"connection to {self.address} was closed by the peer")
        if self.probe is None or self.probe_reply is None:
            return
        try:
            await conn.send(self.probe)
            reply = await conn.readline()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ConnectionBroken(f"probe to {self.address} failed: {exc}") from exc
        if not reply.startswith(self.probe_reply):
            raise ConnectionBroken(f"probe to {self.address} got {reply[:60]!r}, expected "
                                   f"{self.probe_reply!r}")

    def needs_reset(self, conn: TcpConnection) -> bool:
        return False

    async def reset(self, conn: TcpConnection, *, full: bool) -> None:
        return None

    def is_connection_error(self, exc: BaseException) -> bool:
        return isinstance(exc, (OSError, asyncio.IncompleteReadError, ConnectionBroken))

    def is_broken(self, conn: TcpConnection) -> bool:
        return conn.writer.is_closing() or conn.reader.at_eof()

    def _peer_closed(self, conn: TcpConnection) -> bool:
        """Peek at the socket without consuming: an empty read means the peer closed."""
        if self.is_broken(conn):
            return True
        sock = conn.writer.get_extra_info("socket")
        if sock is None:
            return True
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"")
        except BlockingIOError:
            return False
        except OSError as exc:
            return exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK)

    async def close(self, conn: TcpConnection) -> None:
        conn.writer.close()
        with contextlib.suppress(OSError):
            await conn.writer.wait_closed()
