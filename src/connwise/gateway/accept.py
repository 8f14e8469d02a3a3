"""The gateway's own accept loop: many connections per event-loop wake-up.

Why not `loop.create_server`: uvloop's server hands one connection to Python per event-loop
iteration (500 queued connections take 501 iterations; this loop takes 4, and asyncio's own
server 7), and under load an iteration also serves every connection that has data ready. A
burst of 1000 connects then sits in the kernel's accept queue while the loop goes round: with
wrk at 1000 connections, `connection_made` was spread over 3.2 s, and the first requests of the
late connections made the gateway's p99 71x HAProxy's. HAProxy (`tune.maxaccept`) and nginx
(`multi_accept`) accept many connections per wake-up; so does this loop. The listening socket
is non-blocking and watched with `loop.add_reader`; each wake-up accepts up to `batch`
connections and hands each to the loop with `connect_accepted_socket`, which builds the same
transport (TCP_NODELAY included) as a server would. The
protocol factory is called with the accepted socket and the peer's address, as `accept()`
returned them: the gateway reads the client's IP and, as the connection ends, its TCP_INFO from
them, where asking the transport would cost a `getpeername()` and a new socket wrapper each.
The batch bound keeps one wake-up from starving established connections when the queue is
deeper than that; the reader fires again on the next iteration.

Measured with uvloop on 2,000 queued connections: accepting here cost about 25 us per
connection against uvloop's 15 us (Python's `accept()` and one task per connection); `_accept`
now skips `accept()`'s wrapper, which converted the family and type to enums for every
connection (~2.5 us). `connect_accepted_socket` is driven by hand rather than by a task: that
saved no time, but a task (with its copy of the context and its entry in asyncio's registry of
tasks) is ~350 bytes per connection being set up, and a burst of thousands left that much
memory behind, freed but scattered (`gateway_memory`). Memory: the transport keeps the accepted
Python socket object, which
uvloop's server does not create, for the connection's life; under uvloop it is a subclass
of the C socket (`UvAcceptedSocket`, 64 bytes) rather than a `socket.socket` (88 bytes, 96 as
allocated).

The listening sockets are bound with SO_REUSEPORT, so `--workers N` processes each own a socket
on the same address and the kernel spreads connections across them; `check_unshared`, run once
before they bind, keeps another gateway (any process of the user) from joining them. The
backlog is the kernel's cap (`net.core.somaxconn`), at least 4096. Errors that mean "out of
descriptors or memory" (EMFILE, ENFILE, ENOBUFS, ENOMEM) pause accepting for `retry_delay`
instead of spinning on a socket that stays readable, as asyncio's own server does; a
connection reset before it was accepted is skipped.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from connwise.errors import ConfigError

try:
    import uvloop
except ImportError:  # uvloop is optional: plain asyncio where it does not build
    uvloop = None  # type: ignore[assignment]

log = logging.getLogger("connwise.gateway")

#: Connections accepted per wake-up: enough to drain a burst in a few iterations, few enough
#: that established connections are served in between.
ACCEPT_BATCH = 256
#: Seconds accepting pauses after running out of descriptors or memory (asyncio: 1 s).
RETRY_DELAY = 1.0
#: The floor of the listen backlog; the kernel caps it at net.core.somaxconn.
MIN_BACKLOG = 4096

_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def bind_failed(key: str, address: str, owner: str, exc: OSError) -> ConfigError:
    """The error of an address that cannot be listened on (in use, not local, unresolvable):
    a configuration error naming the key, so the command line prints one line and exits 2."""
    reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc)
    if exc.errno == errno.EADDRINUSE:
        port = address.rpartition(":")[2]
        return ConfigError(key, address, f"{owner} cannot listen on it: another socket listens "
                           f"on {address} ({reason})", "stop the other gateway or whatever "
                           f"holds it (`ss -ltnp 'sport = :{port}'` names the process), or "
                           "choose another address")
    return ConfigError(key, address, f"{owner} cannot listen on it ({reason})",
                       "stop what holds the address, or choose another one")


def check_unshared(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) when a socket listens on `host:port`, on any address `host`
    resolves to, that `listen` would share the port with.

    `listen` binds with SO_REUSEPORT so that `--workers` processes share the address, and the
    kernel lets any process of the same user do the same: a second gateway started on the
    port of a running one would silently take half its connections. This binds each address
    without SO_REUSEPORT (with SO_REUSEADDR, as `listen`, so connections in TIME_WAIT do not
    count), which Linux refuses while another socket listens there, SO_REUSEPORT or not, and
    closes it. The process that starts calls it once, before its workers bind (they then share
    only with each other); a gateway that starts in the moment between the two is not seen.
    Port 0 shares nothing: nothing to check."""
    if port == 0:
        return
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    for family, kind, proto, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)


def listen_backlog() -> int:
    """The backlog to listen with: the kernel's `somaxconn`, at least MIN_BACKLOG."""
    try:
        return max(MIN_BACKLOG, int(_SOMAXCONN.read_text()))
    except (OSError, ValueError):
        return MIN_BACKLOG


#: (idle, interval, count) of TCP keep-alive, in whole seconds; None: off.
Keepalive = tuple[int, int, int] | None
#: Makes the protocol of an accepted connection from its socket and peer address.
ProtocolFactory = Callable[[_socket.socket, Any], asyncio.Protocol]


def set_keepalive(sock: socket.socket, keepalive: Keepalive) -> None:
    """TCP keep-alive on `sock`. On a listening socket, Linux hands these options down to every
    socket it accepts, so a listener sets them once instead of once per connection."""
    if keepalive is None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        return
    idle, interval, count = keepalive
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; other systems keep their defaults
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


class AcceptedSocket(socket.socket):
    """An accepted connection's socket whose `family` and `type` are the C socket's plain
    integers. `socket.socket` converts them to enums on every read, and uvloop's
    `connect_accepted_socket` reads them three or four times per connection (~5,000
    instructions in all, under callgrind)."""

    __slots__ = ()

    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]


class UvAcceptedSocket(_socket.socket):
    """An accepted connection's socket under uvloop: the C socket without `socket.socket`'s
    three slots, 64 bytes where `AcceptedSocket` takes 88 (96 as allocated); the transport
    keeps it for the connection's life. Its `family` and `type` are plain integers already.

    uvloop closes the descriptor itself (libuv), then calls `close()` on a file object that is
    not a `socket.socket`: this one detaches instead, so the number, which another thread may
    have been given again by then, is not closed a second time. (asyncio's transports close
    their socket themselves: they get an `AcceptedSocket`.)"""

    __slots__ = ()

    def close(self) -> None:
        self.detach()


def accepted_socket_type(loop: asyncio.AbstractEventLoop) -> type[_socket.socket]:
    """The class an accept loop on `loop` wraps accepted descriptors in."""
    if uvloop is not None and isinstance(loop, uvloop.Loop):
        return UvAcceptedSocket
    return AcceptedSocket


class AcceptLoop:
    """Listening sockets for one listener, accepting in batches; see the module docstring.

    Offers what the gateway used of `asyncio.Server`: `sockets`, `close()` (stop accepting and
    close the listening sockets at once) and `wait_closed()` (connections being set up have
    reached their protocol).
    """

    __slots__ = (
        "_closed",
        "_loop",
        "_paused",
        "_retry",
        "_setting_up",
        "_settled",
        "_socket_type",
        "_sockets",
        "batch",
        "factory",
        "on_error",
        "retry_delay",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 factory: ProtocolFactory, *, batch: int = ACCEPT_BATCH,
                 retry_delay: float = RETRY_DELAY,
                 on_error: Callable[[OSError], None] | None = None) -> None:
        if batch < 1:
            raise ValueError(f"batch={batch!r}: accept at least one connection per wake-up")
        self._loop = loop
        self._socket_type = accepted_socket_type(loop)
        self._sockets = tuple(sockets)
        self.factory = factory
        self.batch = batch
        self.retry_delay = retry_delay
        self.on_error = on_error
        self._closed = False
        self._paused = False
        self._retry: asyncio.TimerHandle | None = None
        #: Connections being set up (`_set_up`), and what `wait_closed` waits on for them.
        self._setting_up = 0
        self._settled: asyncio.Future[None] | None = None

    @classmethod
    async def listen(cls, host: str, port: int, factory: ProtocolFactory, *,
                     batch: int = ACCEPT_BATCH,
                     on_error: Callable[[OSError], None] | None = None,
                     keepalive: Keepalive = None) -> AcceptLoop:
        """Bind every address `host` resolves to (SO_REUSEADDR, SO_REUSEPORT), listen, and
        start accepting, with `keepalive` for the accepted connections. Raises OSError naming
        the address when a bind fails."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, family=socket.AF_UNSPEC,
                                       type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        backlog = listen_backlog()
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                set_keepalive(sock, keepalive)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise OSError(exc.errno, f"could not bind {host}:{port} "
                                  f"({address!r}): {exc.strerror}") from None
                sock.listen(backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        server = cls(loop, sockets, factory, batch=batch, on_error=on_error)
        server._start()
        return server

    # -- accepting ----------------------------------------------------------------------------

    def _start(self) -> None:
        self._paused = False
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock, int(sock.family))

    def _stop(self) -> None:
        for sock in self._sockets:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())

    def _accept(self, listening: socket.socket, family: int) -> None:
        """Up to `batch` connections. `socket.accept()` is bypassed for the C `_accept()`
        and a socket made from plain integers: its wrapper converts the family and type to
        enums for every connection (~2.5 us of ~5.5)."""
        loop = self._loop
        accept = listening._accept  # type: ignore[attr-defined]  # the C method accept() wraps
        wrap = self._socket_type
        for _ in range(self.batch):
            try:
                fd, peer = accept()
                conn = wrap(family, socket.SOCK_STREAM, 0, fd)
            except BlockingIOError:
                return
            except (InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                self._failed(exc)
                return
            # Typed as a socket.socket, but a loop reads no more of it than the C socket has.
            self._set_up(loop.connect_accepted_socket(partial(self.factory, conn, peer),
                                                      conn))  # type: ignore[arg-type]

    def _set_up(self, setup: Coroutine[Any, Any, object]) -> None:
        """Run `connect_accepted_socket` without a task (see the module docstring): its first
        step makes the transport and schedules `connection_made`, then it waits on a future
        that `connection_made` completes; `_step` sends into it as each future it waits on
        completes, as a task would."""
        self._setting_up += 1
        self._step(setup)

    def _step(self, setup: Coroutine[Any, Any, object],
              _done: asyncio.Future[object] | None = None) -> None:
        try:
            waiter = setup.send(None)
        except StopIteration:
            pass
        except asyncio.CancelledError:
            pass  # the connection went before it was set up
        except Exception as exc:
            log.warning("an accepted connection could not be set up: %s", exc)
        else:
            waiter._asyncio_future_blocking = False  # taken over, as a task would
            waiter.add_done_callback(partial(self._step, setup))
            return
        self._setting_up -= 1
        if not self._setting_up and self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    def _failed(self, exc: OSError) -> None:
        if self.on_error is not None:
            self.on_error(exc)
        if exc.errno not in _RESOURCE_ERRORS:
            log.warning("accept failed, continuing: %s", exc)
            return
        log.error("accept failed: %s; accepting again in %.1f s (raise the open-file limit, "
                  "or lower [limits] max_connections)", exc, self.retry_delay)
        if not self._paused and not self._closed:
            self._paused = True
            self._stop()
            self._retry = self._loop.call_later(self.retry_delay, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._start()

    def set_keepalive(self, keepalive: Keepalive) -> None:
        """New keep-alive settings for connections accepted from now on (a reload)."""
        for sock in self.sockets:
            set_keepalive(sock, keepalive)

    # -- closing ------------------------------------------------------------------------------

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets; empty once closed (as `asyncio.Server.sockets`)."""
        return () if self._closed else self._sockets

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop accepting and close the listening sockets (the kernel resets connections still
        in their accept queue). Established connections are not touched."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._paused:
            self._stop()
        for sock in self._sockets:
            sock.close()

    async def wait_closed(self) -> None:
        """Wait until connections accepted before `close()` have reached their protocol."""
        if self._setting_up:
            if self._settled is None or self._settled.done():
                self._settled = self._loop.create_future()
            await self._settled
