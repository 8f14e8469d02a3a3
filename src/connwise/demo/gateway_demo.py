"""`connwise demo gateway` (and plain `connwise demo`): the gateway in front of an application
that is offered a baseline, a spike and an overload, with critical work put first.

Theory of the demo
------------------
Priority admission and the degradation ladder change nothing while capacity is free; they
matter when more work arrives than the backends may run at once. So the demo starts, on
127.0.0.1 and inside the command:

* an HTTP application on `backends` ports, with fast endpoints (`/checkout`, `/api`) and a slow
  one (`/reports`) that honours `Connwise-Degrade` by answering `degrade_factor` times faster,
  as an application that lowers quality (a lighter page, fewer rows) would;
* a WebSocket echo;
* the real `connwise.gateway.runtime.Gateway` in front: `/checkout` -> critical, `/api` ->
  interactive, `/reports` -> bulk, all in one group bounded to `capacity` requests in flight
  and `max_waiters` queued; `/ws` -> the echo, in a group of its own;

then drives an open-loop load through the gateway: a request comes at its time whether or not
earlier ones were answered, as users do (a closed loop would let a slow gateway slow the load
down and hide its queue). The offered load of each phase is a multiple of the group's capacity
at full cost (Little's law: rate = concurrency / mean service time): 0.5x at baseline, 1.5x in
the spike, 6x in the overload, 0.5x in the recovery. Even with every bulk request degraded the
overload needs more than the capacity, so something has to give; the question the demo answers
is *what*. A few WebSocket sessions stay open through all of it.

Everything is measured by the clients, per class: a request is *served* (200, maybe degraded:
the application says so in `X-Degraded`), *shed* (503 with Retry-After: the ladder's last step,
a full queue, or a wait over the class's max wait) or an *error* (anything else, including the
client's own timeout). Latency is from the moment the client sends to the last byte of the
answer, for served requests; shed requests are counted, not timed. The gateway's own counters
and the ladder's levels are read from the running objects between the load's steps.

The closing sentences are computed from the figures, and say so when connwise did not help.
The figures vary by a few milliseconds from run to run (one event loop runs the load, the
gateway and the application); the schedule does not (the same seed gives the same requests).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import hashlib
import json
import math
import os
import random
import struct
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import httptools
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

import connwise
from connwise.config import load_gateway_config
from connwise.core.degrade import LEVEL_NAMES, SIGNAL_HEADER
from connwise.demo.figures import fmt_ms as _fmt
from connwise.demo.figures import percentile
from connwise.demo.figures import to_ms as _ms
from connwise.errors import ConfigError
from connwise.gateway.runtime import Gateway

try:
    import uvloop
except ImportError:  # uvloop is optional: plain asyncio where it does not build
    uvloop = None  # type: ignore[assignment]

#: The classes, highest first, and the path prefix the gateway maps to each.
CLASSES = ("critical", "interactive", "bulk")
PATHS = {"critical": "/checkout/pay", "interactive": "/api/items", "bulk": "/reports/daily"}
ROUTE_PREFIXES = {"critical": "/checkout", "interactive": "/api", "bulk": "/reports"}
DEFAULT_DURATION = 15.0
QUICK_DURATION = 5.0
#: RFC 6455 section 1.3: the GUID appended to Sec-WebSocket-Key.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEGRADE_HEADER = SIGNAL_HEADER.lower().encode()


# -- the scenario and its schedule ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the run: its share of the duration and its offered load, as a multiple of
    the group's capacity at full cost."""

    name: str
    share: float
    load: float


DEFAULT_PHASES: tuple[Phase, ...] = (
    Phase("baseline", 0.25, 0.5),
    Phase("spike", 0.2, 1.5),
    # 6x: even with every bulk request degraded (5x cheaper) the work offered needs about 1.6x
    # the capacity, so the ladder must go past the signal; critical and interactive alone need
    # about half of it, so shedding bulk is enough to serve them.
    Phase("overload", 0.35, 6.0),
    Phase("recovery", 0.2, 0.5),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """The workload and the gateway's settings; seconds unless a name ends in `_ms`."""

    duration: float = DEFAULT_DURATION
    seed: int = 7
    phases: tuple[Phase, ...] = DEFAULT_PHASES
    #: The application group's `max_in_flight` and `max_waiters`: small, so that a laptop's
    #: event loop can offer several times the capacity without running out of CPU first.
    capacity: int = 10
    max_waiters: int = 40
    #: Application backends (ports) in the group, balanced by least outstanding requests.
    backends: int = 2
    #: The mix; bulk is the rest.
    critical_share: float = 0.1
    interactive_share: float = 0.3
    #: Service time of each class's endpoint in ms (uniform): checkout and the API are fast,
    #: reports are slow unless degraded.
    critical_ms: tuple[float, float] = (10.0, 30.0)
    interactive_ms: tuple[float, float] = (20.0, 60.0)
    bulk_ms: tuple[float, float] = (150.0, 350.0)
    #: How much faster the report endpoint answers when it gets `Connwise-Degrade` (the issue's
    #: priority benchmark uses 10 ms -> 2 ms).
    degrade_factor: float = 5.0
    #: WebSocket sessions open through most of the run, one echo every `ws_interval` seconds.
    ws_sessions: int = 6
    ws_interval: float = 0.2
    #: The client gives up on a request after this (longer than any class's max wait, 30 s
    #: for bulk, would make the run's end wait too long; the queue is bounded well below it).
    request_timeout: float = 15.0

    @classmethod
    def from_options(cls, *, duration: float | None = None, seed: int = 7,
                     quick: bool = False) -> Scenario:
        """The scenario of the CLI options; `duration` defaults to 15 s, or 5 s with `quick`.
        Raises `ConfigError` whose key is the option's name."""
        if duration is None:
            duration = QUICK_DURATION if quick else DEFAULT_DURATION
        return cls(duration=duration, seed=seed).validate()

    def validate(self) -> Scenario:
        # Ten minutes at most: every request's task and latency is kept for the summary.
        if not 3.0 <= self.duration <= 600.0:  # also refuses NaN
            raise ConfigError("duration", self.duration, "the run needs between 3 and 600 "
                              "seconds (a baseline, a spike, an overload and a recovery)",
                              "use e.g. 15, or --quick for 5")
        if not self.phases or not math.isclose(sum(p.share for p in self.phases), 1.0):
            raise ConfigError("phases", [p.share for p in self.phases], "the phases' shares "
                              "must add up to 1", "adjust the shares")
        for phase in self.phases:
            if not (phase.share > 0 and 0 < phase.load <= 100):
                raise ConfigError(f"phases.{phase.name}", (phase.share, phase.load),
                                  "a phase needs a positive share and a load in (0, 100]",
                                  "use e.g. Phase('spike', 0.2, 1.5)")
        shares = (self.critical_share, self.interactive_share)
        if not (min(shares) >= 0 and sum(shares) <= 1):
            raise ConfigError("critical_share", self.critical_share, "the critical and "
                              "interactive shares are in 0..1 and add up to at most 1",
                              "use e.g. 0.1 and 0.3")
        for key in ("critical_ms", "interactive_ms", "bulk_ms"):
            lo, hi = getattr(self, key)
            if not 0 < lo <= hi <= 60_000:
                raise ConfigError(key, (lo, hi), "a service time range needs "
                                  "0 < low <= high <= 60000 ms", "use e.g. (10, 30)")
        if self.capacity < 1 or self.max_waiters < 0 or self.backends < 1:
            raise ConfigError("capacity", self.capacity, "the group needs a capacity >= 1, "
                              "max_waiters >= 0 and at least one backend", "use e.g. 10")
        if not self.degrade_factor >= 1:
            raise ConfigError("degrade_factor", self.degrade_factor, "a degraded answer is "
                              "not slower than a full one", "use e.g. 5")
        if self.ws_sessions < 0 or not self.ws_interval > 0:
            raise ConfigError("ws_sessions", self.ws_sessions, "sessions >= 0 with a positive "
                              "interval", "use e.g. 6 sessions every 0.2 s")
        return self

    def mean_service(self) -> float:
        """Expected seconds a request holds its slot at full cost (the endpoints' means)."""
        interactive = self.interactive_share * sum(self.interactive_ms) / 2
        critical = self.critical_share * sum(self.critical_ms) / 2
        bulk_share = 1 - self.critical_share - self.interactive_share
        return (critical + interactive + bulk_share * sum(self.bulk_ms) / 2) / 1000

    def service_range(self, class_name: str) -> tuple[float, float]:
        return {"critical": self.critical_ms, "interactive": self.interactive_ms,
                "bulk": self.bulk_ms}[class_name]

    def phase_spans(self) -> list[tuple[str, float, float, float]]:
        """(name, start, end, offered concurrency) of each phase, in order; the last ends at
        `duration` exactly."""
        spans: list[tuple[str, float, float, float]] = []
        start = 0.0
        for i, phase in enumerate(self.phases):
            end = self.duration if i == len(self.phases) - 1 else \
                start + phase.share * self.duration
            spans.append((phase.name, start, end, phase.load * self.capacity))
            start = end
        return spans

    def phase_at(self, t: float) -> tuple[str, float]:
        for name, start, end, concurrency in self.phase_spans():
            if start <= t < end:
                return name, concurrency
        return "finishing", 0.0

    def figures(self) -> dict[str, Any]:
        return {"duration_s": self.duration, "seed": self.seed, "capacity": self.capacity,
                "max_waiters": self.max_waiters, "backends": self.backends,
                "mix": {"critical": self.critical_share, "interactive": self.interactive_share,
                        "bulk": round(1 - self.critical_share - self.interactive_share, 6)},
                "service_ms": {n: list(self.service_range(n)) for n in CLASSES},
                "degrade_factor": self.degrade_factor,
                "phases": [{"name": n, "start_s": round(s, 3), "end_s": round(e, 3),
                            "offered_concurrency": c, "load": c / self.capacity}
                           for n, s, e, c in self.phase_spans()],
                "ws_sessions": self.ws_sessions, "ws_interval_s": self.ws_interval}


@dataclass(frozen=True, slots=True)
class Request:
    """One request: when it is sent (s after the start), its class, its service time in ms."""

    at: float
    class_name: str
    service_ms: float

    @property
    def path(self) -> str:
        return f"{PATHS[self.class_name]}?ms={self.service_ms:g}"


@dataclass(frozen=True, slots=True, order=True)
class Session:
    """One WebSocket session: open at `at`, echo every interval, close at `until`."""

    at: float
    until: float


@dataclass(frozen=True, slots=True)
class Schedule:
    requests: tuple[Request, ...]
    sessions: tuple[Session, ...]

    def count(self, class_name: str) -> int:
        return sum(r.class_name == class_name for r in self.requests)


def build_schedule(scenario: Scenario) -> Schedule:
    """The workload, a pure function of the scenario and its seed.

    Arrivals are Poisson within each phase, at the rate that offers the phase's concurrency at
    full cost, so a spike is a burst of arrivals, not a step of a fixed number of clients.
    WebSocket sessions come from their own stream of the seed, so changing their number does
    not change the requests.
    """
    rng = random.Random(scenario.seed)
    hold = scenario.mean_service()
    cut_critical = scenario.critical_share
    cut_interactive = cut_critical + scenario.interactive_share
    requests: list[Request] = []
    for _, start, end, concurrency in scenario.phase_spans():
        rate = concurrency / hold
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            draw = rng.random()
            name = ("critical" if draw < cut_critical else
                    "interactive" if draw < cut_interactive else "bulk")
            lo, hi = scenario.service_range(name)
            requests.append(Request(round(t, 6), name, round(rng.uniform(lo, hi), 1)))
    ws_rng = random.Random(f"{scenario.seed}:ws")
    d = scenario.duration
    sessions = sorted(Session(round(ws_rng.uniform(0.0, 0.2 * d), 6),
                              round(ws_rng.uniform(0.85 * d, d), 6))
                      for _ in range(scenario.ws_sessions))
    return Schedule(tuple(requests), tuple(sessions))


# -- the application: fast and slow endpoints, and a WebSocket echo -------------------------------


class _AppProtocol(asyncio.Protocol):
    """One connection to the application; requests on it are answered one at a time, in
    order, as the gateway sends them."""

    def __init__(self, app: DemoApp) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None  # uvloop's transports do not subclass asyncio.Transport
        self.url = b""
        self.degrade = 0
        self.last: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.app.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.degrade = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == _DEGRADE_HEADER:
            with contextlib.suppress(ValueError):
                self.degrade = int(value)

    def on_message_complete(self) -> None:
        previous, keep_alive = self.last, self.parser.should_keep_alive()
        self.last = asyncio.ensure_future(self.answer(self.url, self.degrade, keep_alive,
                                                      previous))
        self.app.tasks.add(self.last)
        self.last.add_done_callback(self.app.tasks.discard)

    async def answer(self, url: bytes, degrade: int, keep_alive: bool,
                     previous: asyncio.Future[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        app = self.app
        parts = urlsplit(url.decode("latin-1"))
        extra = b""
        status = b"200 OK"
        if parts.path == "/health":
            body = b"ok\n"
        elif parts.path.startswith(("/checkout", "/api", "/reports")):
            try:
                ms = float(parse_qs(parts.query).get("ms", ["10"])[0])
            except ValueError:
                ms = 10.0
            if parts.path.startswith("/reports"):
                if degrade > 0:
                    # The slow endpoint honours the signal: a lighter report, sooner.
                    ms /= app.degrade_factor
                    extra = b"X-Degraded: %d\r\n" % degrade
                    app.degraded += 1
                (app.report_ms_degraded if degrade > 0 else app.report_ms_full).append(ms)
            app.requests += 1
            app.in_flight += 1
            app.peak_in_flight = max(app.peak_in_flight, app.in_flight)
            try:
                await asyncio.sleep(ms / 1000)
            finally:
                app.in_flight -= 1
            body = b"%s from %s\n" % (parts.path.encode(), app.name.encode())
        else:
            status, body = b"404 Not Found", b"not found\n"
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                        b"X-Backend: %s\r\n%s%s\r\n%s"
                        % (status, len(body), app.name.encode(), extra,
                           b"" if keep_alive else b"Connection: close\r\n", body))
        if not keep_alive:
            transport.close()


class DemoApp:
    """The application behind the gateway, on one port; see the module docstring."""

    def __init__(self, name: str, degrade_factor: float) -> None:
        self.name = name
        self.degrade_factor = degrade_factor
        self.port = 0
        self.requests = 0
        self.degraded = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        #: Service times of the report endpoint in ms, in full and degraded.
        self.report_ms_full: list[float] = []
        self.report_ms_degraded: list[float] = []
        self.transports: set[Any] = set()
        self.tasks: set[asyncio.Future[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> DemoApp:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AppProtocol(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.transports):
                transport.abort()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self._server = None

    def figures(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "requests": self.requests,
                "degraded": self.degraded, "peak_in_flight": self.peak_in_flight,
                "reports": {"full": len(self.report_ms_full),
                            "degraded": len(self.report_ms_degraded)}}


def ws_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final WebSocket frame (RFC 6455 5.2); masked with `mask` (4 bytes) when given, as a
    client must."""
    size = len(payload)
    first = 0x80 | opcode
    mask_bit = 0x80 if mask is not None else 0
    if size < 126:
        head = struct.pack("!BB", first, mask_bit | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if mask is None:
        return head + payload
    return head + mask + _unmask(payload, mask)


def parse_ws_frame(buf: bytes | bytearray) -> tuple[int, int, bytes] | None:
    """(bytes used, opcode, unmasked payload) of the first complete frame in `buf`, or None."""
    if len(buf) < 2:
        return None
    opcode = buf[0] & 0x0F
    masked = bool(buf[1] & 0x80)
    size = buf[1] & 0x7F
    used = 2
    if size == 126:
        if len(buf) < 4:
            return None
        size, used = struct.unpack_from("!H", buf, 2)[0], 4
    elif size == 127:
        if len(buf) < 10:
            return None
        size, used = struct.unpack_from("!Q", buf, 2)[0], 10
    mask = b""
    if masked:
        if len(buf) < used + 4:
            return None
        mask = bytes(buf[used:used + 4])
        used += 4
    if len(buf) < used + size:
        return None
    payload = bytes(buf[used:used + size])
    return used + size, opcode, _unmask(payload, mask) if masked else payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return payload
    key = int.from_bytes((mask * (len(payload) // 4 + 1))[:len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(len(payload), "big")


def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


class _EchoProtocol(asyncio.Protocol):
    """One WebSocket connection to the echo: the upgrade, then each message sent back."""

    def __init__(self, echo: EchoServer) -> None:
        self.echo = echo
        self.transport: Any = None
        self.buf = bytearray()
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.echo.transports.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.echo.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16384:
                    self.transport.close()
                return
            head, self.buf = bytes(self.buf[:end]), self.buf[end + 4:]
            key = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            if key is None:
                self.transport.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                self.transport.close()
                return
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                                 % ws_accept(key))
            self.upgraded = True
            self.echo.sessions += 1
        while (frame := parse_ws_frame(self.buf)) is not None:
            used, opcode, payload = frame
            del self.buf[:used]
            if opcode == 0x8:  # close: answer with the same code, then close
                self.transport.write(ws_frame(0x8, payload[:2]))
                self.transport.close()
                return
            if opcode == 0x9:  # ping
                self.transport.write(ws_frame(0xA, payload))
            elif opcode in (0x1, 0x2):
                self.echo.messages += 1
                self.transport.write(ws_frame(opcode, payload))


class EchoServer:
    """A WebSocket echo on 127.0.0.1 (RFC 6455, unfragmented messages: all the demo sends)."""

    def __init__(self) -> None:
        self.port = 0
        self.sessions = 0
        self.messages = 0
        self.transports: set[Any] = set()
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> EchoServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _EchoProtocol(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.transports):
                transport.abort()
            self._server = None


# -- the clients ----------------------------------------------------------------------------------


class _ClientConnection(asyncio.Protocol):
    """One keep-alive client connection to the gateway: one request at a time."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, int, bool]] | None = None
        self._degraded = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("the gateway closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            self.close()

    def on_message_begin(self) -> None:
        self._degraded = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-degraded":
            with contextlib.suppress(ValueError):
                self._degraded = int(value)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), self._degraded,
                                    self.parser.should_keep_alive()))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
            self.closed = True

    async def get(self, path: str) -> tuple[int, int, bool]:
        """(status, degraded level, keep-alive) of `GET path`."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(b"GET %s HTTP/1.1\r\nHost: demo.connwise\r\n\r\n"
                             % path.encode("ascii"))
        return await self.waiter


class GatewayClient:
    """Open-loop HTTP/1.1 clients: a request takes an idle keep-alive connection or opens one,
    so the number of connections follows the number of requests outstanding."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[_ClientConnection] = []
        self.opened = 0

    async def get(self, path: str) -> tuple[int, int]:
        """(status, degraded level) of `GET path`; raises on a connection failure."""
        conn = None
        while self.idle:
            candidate = self.idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        if conn is None:
            _, conn = await asyncio.get_running_loop().create_connection(
                _ClientConnection, self.host, self.port)
            self.opened += 1
        try:
            status, degraded, keep_alive = await conn.get(path)
        except BaseException:
            conn.close()
            raise
        if keep_alive and not conn.closed:
            self.idle.append(conn)
        else:
            conn.close()
        return status, degraded

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def ws_connect(host: str, port: int,
                     path: str = "/ws") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a WebSocket through the gateway (the client side of RFC 6455's handshake). The
    socket is closed when the handshake fails or is cancelled (a timeout, Ctrl-C)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        key = base64.b64encode(os.urandom(16))
        writer.write(b"GET %s HTTP/1.1\r\nHost: demo.connwise\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), key))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101") or ws_accept(key) not in head:
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            raise ConnectionError(f"WebSocket upgrade refused: {status}")
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def ws_read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4) if head[1] & 0x80 else b""
    payload = await reader.readexactly(size)
    return head[0] & 0x0F, _unmask(payload, mask) if mask else payload


# -- tallies and snapshots ------------------------------------------------------------------------


class Tally:
    """What the clients of one class (in one phase, or in all) saw."""

    __slots__ = ("degraded", "errors", "latencies", "requests", "served", "shed")

    def __init__(self) -> None:
        self.requests = 0
        self.served = 0
        self.degraded = 0
        self.shed = 0
        self.errors = 0
        #: Seconds of each served request, kept sorted so live percentiles cost no sort.
        self.latencies: list[float] = []

    def percentile_ms(self, q: float) -> float | None:
        return _ms(percentile(self.latencies, q, presorted=True))

    def figures(self) -> dict[str, Any]:
        lat = self.latencies
        ms = {f"p{q}": self.percentile_ms(q) for q in (50, 95, 99)}
        ms["max"] = _ms(lat[-1] if lat else None)
        ms["mean"] = _ms(sum(lat) / len(lat) if lat else None)
        return {"requests": self.requests, "served": self.served, "degraded": self.degraded,
                "shed": self.shed, "errors": self.errors,
                "served_share": round(self.served / self.requests, 4) if self.requests else None,
                "latency_ms": ms}


@dataclass(frozen=True, slots=True)
class ClassRow:
    sent: int
    served: int
    degraded: int
    shed: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    queued: int
    in_flight: int
    level: int


@dataclass(frozen=True, slots=True)
class BackendRow:
    name: str
    health: str
    outstanding: int
    total: int
    upstream_open: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the live view shows at one moment."""

    elapsed: float
    duration: float
    phase: str
    offered: float
    capacity: int
    in_flight: int
    waiting: int
    max_waiters: int
    classes: dict[str, ClassRow]
    backends: list[BackendRow]
    ws_open: int
    ws_messages: int
    ws_p50_ms: float | None
    ws_p99_ms: float | None


class LadderLog:
    """The ladder's moves by class, sampled every 0.1 s between the load's steps, and how busy
    the group was while each class stood on each level.

    Under contention the ladder is updated every 10 ms and a step up needs only its 0.05 s
    `dwell_up`, so a sample may find a class two steps higher than the last one; since the
    ladder moves one step per update, the steps between were taken too, and are logged at the
    sample's time (to within 0.1 s, as every move here)."""

    def __init__(self) -> None:
        self.levels = dict.fromkeys(CLASSES, 0)
        self.peak = dict.fromkeys(CLASSES, 0)
        self.transitions: list[dict[str, Any]] = []
        #: Seconds each class spent on each level, and the utilization integrated over them.
        self.seconds = {name: [0.0] * len(LEVEL_NAMES) for name in CLASSES}
        self.busy = {name: [0.0] * len(LEVEL_NAMES) for name in CLASSES}
        self._last: float | None = None

    def sample(self, levels: dict[str, int], t: float, utilization: float) -> None:
        """Record the levels seen at `t` (s since the start); the time since the previous
        sample counts for the levels seen then, at this sample's utilization."""
        if self._last is not None and t > self._last:
            dt = t - self._last
            for name, level in self.levels.items():
                self.seconds[name][level] += dt
                self.busy[name][level] += dt * utilization
        self._last = t
        for name, level in levels.items():
            before = self.levels[name]
            step = 1 if level > before else -1
            for to in range(before + step, level + step, step) if level != before else ():
                self.transitions.append({"t": round(t, 3), "class": name,
                                         "from": LEVEL_NAMES[to - step], "to": LEVEL_NAMES[to]})
            self.levels[name] = level
            self.peak[name] = max(self.peak[name], level)

    def figures(self) -> dict[str, Any]:
        first: dict[str, dict[str, float]] = {name: {} for name in CLASSES}
        for move in self.transitions:
            first[move["class"]].setdefault(move["to"], move["t"])
        return {
            "transitions": self.transitions,
            "peak": {n: LEVEL_NAMES[level] for n, level in self.peak.items()},
            "end": {n: LEVEL_NAMES[level] for n, level in self.levels.items()},
            "first_reached_s": first,
            "seconds_at_level": {n: {LEVEL_NAMES[i]: round(v, 3) for i, v in enumerate(row) if v}
                                 for n, row in self.seconds.items()},
            "utilization_at_level": {
                n: {LEVEL_NAMES[i]: round(self.busy[n][i] / v, 3)
                    for i, v in enumerate(row) if v}
                for n, row in self.seconds.items()},
        }


# -- one run --------------------------------------------------------------------------------------


def gateway_config(scenario: Scenario, apps: Sequence[DemoApp],
                   echo: EchoServer) -> dict[str, Any]:
    """The gateway's configuration for the demo, as the TOML file would give it."""
    routes: list[dict[str, Any]] = [
        {"listener": "web", "group": "app", "path_prefix": ROUTE_PREFIXES[name], "class": name}
        for name in CLASSES]
    routes.append({"listener": "web", "group": "ws", "path_prefix": "/ws",
                   "class": "interactive", "upgrade": "websocket"})
    return {
        "node_id": "demo",
        "drain_timeout": 2.0,
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": routes,
        "groups": {
            "app": {"backends": [app.address for app in apps],
                    "max_in_flight": scenario.capacity, "max_waiters": scenario.max_waiters,
                    # Keep-alive connections ready before the first request, as in production.
                    "warm_target": max(1, scenario.capacity // len(apps)),
                    "health": {"kind": "http", "path": "/health", "interval": 1.0}},
            "ws": {"backends": [echo.address], "health": {"kind": "tcp", "interval": 1.0}},
        },
        # One client IP opens every connection of the load: lift the per-IP bound.
        "limits": {"max_connections_per_ip": 4096},
    }


class Run:
    """The load against one running gateway: the clients' tallies and the gateway's state."""

    def __init__(self, scenario: Scenario, gateway: Gateway, client: GatewayClient,
                 sessions: int) -> None:
        self.scenario = scenario
        self.sessions = sessions
        self.gateway = gateway
        self.client = client
        self.t0 = 0.0
        self.tallies = {name: Tally() for name in CLASSES}
        self.by_phase: dict[str, dict[str, Tally]] = {
            p.name: {name: Tally() for name in CLASSES} for p in scenario.phases}
        self.ladder = LadderLog()
        self.max_lag = 0.0
        self.ws_open = 0
        self.ws_opened = 0
        self.ws_messages = 0
        self.ws_errors = 0
        self.ws_rtts: list[float] = []

    def now(self) -> float:
        return self.gateway.clock.now() - self.t0

    async def send(self, request: Request) -> None:
        """One client request, open loop: sent now whatever became of the earlier ones."""
        self.max_lag = max(self.max_lag, self.now() - request.at)
        phase = self.scenario.phase_at(request.at)[0]
        tallies = (self.tallies[request.class_name], self.by_phase[phase][request.class_name])
        for tally in tallies:
            tally.requests += 1
        start = self.now()
        try:
            async with asyncio.timeout(self.scenario.request_timeout):
                status, degraded = await self.client.get(request.path)
        except (OSError, TimeoutError, httptools.HttpParserError):
            status, degraded = 0, 0
        elapsed = self.now() - start
        for tally in tallies:
            if status == 200:
                tally.served += 1
                bisect.insort(tally.latencies, elapsed)
                if degraded:
                    tally.degraded += 1
            elif status == 503:
                tally.shed += 1
            else:
                tally.errors += 1

    async def session(self, session: Session, host: str, port: int) -> None:
        """One WebSocket session: from its start, echo a message every interval until its
        end."""
        interval = self.scenario.ws_interval
        await asyncio.sleep(max(0.0, session.at - self.now()))
        try:
            reader, writer = await asyncio.wait_for(ws_connect(host, port), 5.0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.ws_errors += 1
            return
        self.ws_open += 1
        self.ws_opened += 1
        n = 0
        try:
            while self.now() < session.until:
                n += 1
                payload = b"tick %d" % n
                start = self.now()
                writer.write(ws_frame(0x1, payload, os.urandom(4)))
                opcode, echoed = await asyncio.wait_for(ws_read(reader), 5.0)
                if opcode != 0x1 or echoed != payload:
                    self.ws_errors += 1
                    break
                self.ws_messages += 1
                bisect.insort(self.ws_rtts, self.now() - start)
                await asyncio.sleep(max(0.0, min(interval, session.until - self.now())))
            writer.write(ws_frame(0x8, struct.pack("!H", 1000), os.urandom(4)))
            with contextlib.suppress(TimeoutError, asyncio.IncompleteReadError):
                await asyncio.wait_for(ws_read(reader), 2.0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            self.ws_errors += 1
        finally:
            self.ws_open -= 1
            writer.close()

    def sample_ladder(self) -> None:
        group = self.gateway.groups["app"]
        admission, scheduler = group.admission, group.scheduler
        self.ladder.sample({name: admission.level(name) for name in CLASSES}, self.now(),
                           scheduler.in_use / scheduler.capacity)

    def snapshot(self) -> Snapshot:
        group = self.gateway.groups["app"]
        scheduler = group.scheduler
        waiting = scheduler.waiting_by_class()
        in_use = scheduler.in_use_by_class()
        now = group.clock()
        elapsed = self.now()
        phase, offered = self.scenario.phase_at(elapsed)
        classes = {name: ClassRow(
            sent=t.requests, served=t.served, degraded=t.degraded, shed=t.shed, errors=t.errors,
            p50_ms=t.percentile_ms(50), p99_ms=t.percentile_ms(99),
            queued=waiting.get(name, 0), in_flight=in_use.get(name, 0),
            level=group.admission.level(name)) for name, t in self.tallies.items()}
        backends = []
        for b in group.backends:
            conns = b.pool.stats()["connections"] if b.pool is not None else {}
            backends.append(BackendRow(b.name, b.health.snapshot(now)["state"], b.outstanding,
                                       b.total, conns.get("idle", 0) + conns.get("in_use", 0)))
        rtts = self.ws_rtts
        return Snapshot(
            elapsed=elapsed, duration=self.scenario.duration, phase=phase, offered=offered,
            capacity=scheduler.capacity, in_flight=scheduler.in_use, waiting=scheduler.waiting,
            max_waiters=scheduler.max_waiters, classes=classes, backends=backends,
            ws_open=self.ws_open, ws_messages=self.ws_messages,
            ws_p50_ms=_ms(percentile(rtts, 50, presorted=True)),
            ws_p99_ms=_ms(percentile(rtts, 99, presorted=True)))

    def figures(self, elapsed: float) -> dict[str, Any]:
        gateway = self.gateway
        group = gateway.groups["app"]
        now = group.clock()
        ladder = group.admission.stats()
        spans = {name: start for name, start, _, _ in self.scenario.phase_spans()}
        classes: dict[str, Any] = {}
        for name, tally in self.tallies.items():
            figures = tally.figures()
            figures["phases"] = {phase: self.by_phase[phase][name].figures()
                                 for phase in self.by_phase}
            figures["gateway"] = {step: gateway.class_counters.get((step, name), 0)
                                  for step in ("signal", "queued", "displaced", "shed")}
            classes[name] = figures
        rtts = self.ws_rtts
        return {
            "elapsed_s": round(elapsed, 3),
            "requests": sum(t.requests for t in self.tallies.values()),
            "classes": classes,
            "ladder": {
                **self.ladder.figures(),
                "phase_starts_s": {n: round(s, 3) for n, s in spans.items()},
                "entered": {n: ladder[n]["entered"] for n in CLASSES},
                "applied": {n: ladder[n]["applied"] for n in CLASSES},
            },
            "websocket": {
                "sessions": self.sessions, "opened": self.ws_opened,
                "messages": self.ws_messages, "errors": self.ws_errors,
                "rtt_ms": {"p50": _ms(percentile(rtts, 50, presorted=True)),
                           "p99": _ms(percentile(rtts, 99, presorted=True)),
                           "max": _ms(rtts[-1] if rtts else None)}},
            "gateway": {
                "counters": dict(gateway.counters),
                "group": {"capacity": group.scheduler.capacity,
                          "max_waiters": group.scheduler.max_waiters,
                          "shed_backlog": group.admission.config.shed_backlog},
                "backends": [{"name": b.name, "requests": b.total, "failures": b.failures,
                              "health": b.health.snapshot(now)["state"]}
                             for b in group.backends]},
            "generator": {"max_lag_ms": _ms(self.max_lag),
                          "client_connections": self.client.opened},
        }


async def run_gateway(scenario: Scenario, schedule: Schedule, view: View) -> dict[str, Any]:
    """Start the application, the echo and the gateway, drive `schedule` through it, and
    return the figures. Everything is closed on the way out, also on Ctrl-C."""
    apps: list[DemoApp] = []
    echo = EchoServer()
    gateway: Gateway | None = None
    client: GatewayClient | None = None
    tasks: set[asyncio.Task[None]] = set()
    monitor: asyncio.Task[None] | None = None
    run: Run | None = None
    try:
        for i in range(scenario.backends):
            apps.append(await DemoApp(f"app{i + 1}", scenario.degrade_factor).start())
        await echo.start()
        gateway = Gateway(load_gateway_config(gateway_config(scenario, apps, echo),
                                              source="demo"))
        await gateway.start()
        host, port = gateway.listeners["web"].address
        client = GatewayClient(host, port)
        run = Run(scenario, gateway, client, len(schedule.sessions))
        view.begin(describe_gateway(scenario, apps, echo, host, port))
        run.t0 = gateway.clock.now()
        monitor = asyncio.create_task(_monitor(run, view))

        def spawn(coro: Coroutine[Any, Any, None]) -> None:
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for session in schedule.sessions:
            spawn(run.session(session, host, port))
        for request in schedule.requests:
            delay = request.at - run.now()
            if delay > 0:
                await asyncio.sleep(delay)
            spawn(run.send(request))
        await asyncio.gather(*tasks)
        elapsed = run.now()
        run.sample_ladder()
    finally:
        if monitor is not None:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if run is not None:
            with contextlib.suppress(Exception):
                view.end(run.snapshot())
        if client is not None:
            client.close()
        if gateway is not None:
            await gateway.drain(1.0)
        await echo.stop()
        for app in apps:
            await app.stop()
    figures = run.figures(elapsed)
    figures["backends"] = [app.figures() for app in apps]
    full = [ms for app in apps for ms in app.report_ms_full]
    light = [ms for app in apps for ms in app.report_ms_degraded]
    # What the signal bought, at the application: the report endpoint's own service times.
    figures["report_service_ms"] = {
        "full_mean": round(sum(full) / len(full), 3) if full else None,
        "degraded_mean": round(sum(light) / len(light), 3) if light else None}
    return figures


async def _monitor(run: Run, view: View) -> None:
    """Sample the ladder every 0.1 s; show a snapshot every `view.interval`."""
    next_show = 0.0
    while True:
        run.sample_ladder()
        if run.now() >= next_show:
            view.show(run.snapshot())
            next_show = run.now() + view.interval
        await asyncio.sleep(0.1)


# -- what the figures say -------------------------------------------------------------------------


def _pct(part: int, whole: int) -> str:
    return "-" if not whole else f"{100 * part / whole:.0f}%"


def findings(result: dict[str, Any]) -> list[str]:
    """Sentences of what admission and the ladder did, computed from the figures; they say so
    when connwise did not help."""
    classes = result["run"]["classes"]
    ladder = result["run"]["ladder"]
    phases = [p["name"] for p in result["scenario"]["phases"]]
    calm, hot = (phases[0], "overload") if "overload" in phases else (phases[0], phases[-1])
    out: list[str] = []

    parts = []
    for name in CLASSES:
        c = classes[name]
        parts.append(f"{name} {_pct(c['served'], c['requests'])} of {c['requests']} "
                     f"(p99 {_fmt(c['latency_ms']['p99'])} ms)")
    out.append("Served: " + ", ".join(parts) + ".")

    crit = classes["critical"]
    if not crit["requests"]:
        out.append("No critical request was sent, so there was nothing to protect.")
    else:
        lost = crit["shed"] + crit["errors"]
        base = crit["phases"].get(calm, {}).get("latency_ms", {}).get("p99")
        over = crit["phases"].get(hot, {}).get("latency_ms", {}).get("p99")
        if lost:
            sentence = (f"{lost} critical request{'' if lost == 1 else 's'} "
                        f"({_pct(lost, crit['requests'])}) {'was' if lost == 1 else 'were'} "
                        f"not served ({crit['shed']} shed, {crit['errors']} failed): connwise "
                        "did not protect all critical work.")
        else:
            sentence = "No critical request was shed."
        if base is not None and over is not None:
            if over <= max(2 * base, base + 20.0):
                sentence += (f" Critical p99 was {_fmt(over)} ms in the {hot} against "
                             f"{_fmt(base)} ms at {calm}: priority and the reserved share kept "
                             "critical work ahead of the queue.")
            else:
                sentence += (f" But critical p99 rose from {_fmt(base)} ms at {calm} to "
                             f"{_fmt(over)} ms in the {hot} ({over / max(base, 1.0):.1f}x): "
                             "priority did not fully shield it (a critical request still waits "
                             "for a slot to free, and one event loop runs the load too).")
        out.append(sentence)

    bulk = classes["bulk"]
    if bulk["requests"]:
        full = result["run"]["report_service_ms"]["full_mean"]
        light = result["run"]["report_service_ms"]["degraded_mean"]
        if bulk["shed"] or bulk["degraded"]:
            sentence = (f"Bulk made the room: {bulk['shed']} of {bulk['requests']} "
                        f"({_pct(bulk['shed'], bulk['requests'])}) shed with 503 and "
                        f"Retry-After, {bulk['degraded']} "
                        f"({_pct(bulk['degraded'], bulk['requests'])}) served degraded")
            if full is not None and light is not None:
                sentence += (f" (the report endpoint honoured {SIGNAL_HEADER} and spent "
                             f"{_fmt(light)} ms on such a report instead of {_fmt(full)} ms, "
                             "on average)")
            out.append(sentence + ".")
        else:
            out.append("Bulk was neither shed nor degraded: the load never pressed the capacity "
                       "hard enough for the ladder to act, so connwise changed nothing here.")

    moves = []
    for name in reversed(CLASSES):
        peak = ladder["peak"][name]
        if peak == "none":
            moves.append(f"left {name} at none")
            continue
        steps = ", ".join(f"{level} at {t:.1f} s"
                          for level, t in ladder["first_reached_s"][name].items()
                          if level != "none")
        moves.append(f"took {name} up to {peak} ({steps})")
    when = ", ".join(f"{name} at {t:.1f} s" for name, t in ladder["phase_starts_s"].items())
    sentence = f"The ladder {'; '.join(moves)}; the phases began: {when}."
    ends = {n: level for n, level in ladder["end"].items() if level != "none"}
    if ends:
        sentence += (" At the end it still held " +
                     ", ".join(f"{n} at {level}" for n, level in ends.items()) +
                     ": it steps down one level per 5 s of calm, so it lags the load's fall.")
    out.append(sentence)

    # The shed step refuses a request only when no slot is free for it, `shed_backlog` x
    # capacity requests wait and the pressure is at the step's exit
    # (`DegradeLadder.takes_free_slot` and `sheds`): it never refuses
    # work a free slot could take, so a low utilization at shed is the calm the ladder lingers
    # in, not refused work that had room.
    group = result["run"].get("gateway", {}).get("group", {})
    backlog = (math.ceil(group["shed_backlog"] * group["capacity"])
               if "shed_backlog" in group else None)
    for name in CLASSES:
        seconds = ladder["seconds_at_level"][name].get("shed")
        if not seconds:
            continue
        busy = ladder["utilization_at_level"][name]["shed"]
        refused = ladder.get("applied", {}).get(name, {}).get("shed")
        sentence = f"While {name} stood at shed ({seconds:.1f} s) "
        if busy < 0.8:
            sentence += (f"the group used {100 * busy:.0f}% of its capacity on average: the "
                         "load had fallen and the ladder, which steps down one level per 5 s "
                         "of calm, still stood there")
        else:
            sentence += (f"the group stayed busy ({100 * busy:.0f}% of its capacity on "
                         "average)")
        if refused is not None:
            sentence += (f"; that step refused {refused} {name} request"
                         f"{'' if refused == 1 else 's'}")
        if backlog is not None:
            sentence += (f", and only while {backlog} requests or more waited and kept the "
                         "ladder's pressure at the step's exit; a free slot "
                         f"with nobody waiting still took {name} work, so the refused work "
                         "had no room")
        out.append(sentence + ".")

    if "recovery" in phases:
        rec = bulk["phases"].get("recovery", {}) if bulk["requests"] else {}
        if rec.get("shed"):
            sentence = (f"In the recovery {rec['shed']} of {rec['requests']} bulk requests were "
                        "still shed, after the overload had ended: its backlog had not drained "
                        "yet")
            if backlog is not None:
                sentence += (f" (bulk is refused only while {backlog} requests wait, the "
                             "ladder still stands at shed and its pressure is at the step's "
                             f"exit, or when all {group['max_waiters']} places of the queue "
                             "are taken)")
            out.append(sentence + ".")

    ws = result["run"]["websocket"]
    if ws["sessions"]:
        sentence = (f"{ws['opened']} of {ws['sessions']} WebSocket sessions through the gateway "
                    f"echoed {ws['messages']} messages, round trip p99 "
                    f"{_fmt(ws['rtt_ms']['p99'])} ms")
        if ws["errors"]:
            sentence += f", with {ws['errors']} errors: the overload reached them"
        else:
            sentence += ": admission applies when a session opens, so they ran through the overload"
        out.append(sentence + ".")
    return out


# -- views ----------------------------------------------------------------------------------------


class View(Protocol):
    """Where the run shows itself while it runs."""

    interval: float

    def begin(self, description: str) -> None: ...

    def show(self, snap: Snapshot) -> None: ...

    def end(self, snap: Snapshot) -> None: ...


_LEVEL_STYLES = ("green", "cyan", "yellow", "magenta", "bold red")


def render_live(snap: Snapshot) -> RenderableType:
    """The live panel: the phase, the classes, the backends and the WebSocket sessions."""
    header = Text.assemble(
        ("gateway", "bold"), f"   t = {snap.elapsed:4.1f} / {snap.duration:.1f} s   ",
        (snap.phase, "bold magenta"), f" ({snap.offered:g} concurrent offered, capacity "
        f"{snap.capacity})   in flight {snap.in_flight}/{snap.capacity}, queued "
        f"{snap.waiting}/{snap.max_waiters}")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("class", "sent", "served", "degraded", "shed", "errors", "p50 ms", "p99 ms",
                   "in flight", "queued", "ladder"):
        table.add_column(column, justify="left" if column in ("class", "ladder") else "right")
    for name, row in snap.classes.items():
        table.add_row(name, str(row.sent), str(row.served), str(row.degraded), str(row.shed),
                      str(row.errors), _fmt(row.p50_ms), _fmt(row.p99_ms), str(row.in_flight),
                      str(row.queued), Text(LEVEL_NAMES[row.level], _LEVEL_STYLES[row.level]))
    backends = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("backend", "health", "outstanding", "requests", "upstream conns"):
        backends.add_column(column, justify="left" if column in ("backend", "health")
                            else "right")
    for b in snap.backends:
        backends.add_row(b.name, b.health, str(b.outstanding), str(b.total), str(b.upstream_open))
    ws = Text(f"websocket: {snap.ws_open} open, {snap.ws_messages} messages echoed, round trip "
              f"p50 {_fmt(snap.ws_p50_ms)} ms, p99 {_fmt(snap.ws_p99_ms)} ms")
    return Panel(Group(header, table, backends, ws), expand=False)


def render_line(snap: Snapshot) -> str:
    """The live view as one plain line, for logs and pipes."""
    classes = " | ".join(
        f"{n} {r.served}/{r.sent} served, {r.shed} shed, p99 {_fmt(r.p99_ms)} ms, "
        f"queued {r.queued}, {LEVEL_NAMES[r.level]}" for n, r in snap.classes.items())
    loads = ", ".join(f":{b.name.rsplit(':', 1)[-1]} {b.health} ({b.outstanding} in flight)"
                      for b in snap.backends)
    return (f"gateway t={snap.elapsed:5.1f}s {snap.phase:<9} | in flight {snap.in_flight}/"
            f"{snap.capacity} | {classes} | backends: {loads} | ws {snap.ws_open} open, p99 "
            f"{_fmt(snap.ws_p99_ms)} ms")


class LiveView:
    """A rich.live panel. The event loop only builds it from a `Snapshot` (immutable data read
    between the gateway's bookkeeping steps, 0.2 ms); rich's refresh thread renders it, since
    rendering costs about 20 ms and would stall the gateway, the load and the application
    that share the loop, and so inflate the very latencies the panel shows."""

    def __init__(self, console: Console, interval: float = 0.25) -> None:
        self.console = console
        self.interval = interval
        self._live: Live | None = None

    def begin(self, description: str) -> None:
        self.console.print(description, highlight=False)
        self._live = Live(console=self.console, auto_refresh=True,
                          refresh_per_second=1 / self.interval, transient=False)
        self._live.start()

    def show(self, snap: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render_live(snap))

    def end(self, snap: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render_live(snap))
            self._live.stop()  # renders the last update once more
            self._live = None


class PlainView:
    """Periodic plain lines, for when stdout is not a terminal."""

    def __init__(self, console: Console, interval: float = 1.0) -> None:
        self.console = console
        self.interval = interval

    def begin(self, description: str) -> None:
        self.console.print(description, markup=False, highlight=False)

    def show(self, snap: Snapshot) -> None:
        self.console.print(render_line(snap), markup=False, highlight=False, soft_wrap=True)

    def end(self, snap: Snapshot) -> None:
        self.show(snap)


def render_summary(result: dict[str, Any]) -> RenderableType:
    """The closing tables: requests by class, p99 by phase, the ladder, the backends."""
    run = result["run"]
    classes = run["classes"]
    phases = [p["name"] for p in result["scenario"]["phases"]]
    served = Table(title="Requests by class (latency of served requests, in ms)",
                   box=box.SIMPLE_HEAD)
    for column in ("class", "requests", "served", "degraded", "shed", "errors", "served %",
                   "p50", "p95", "p99", "max"):
        served.add_column(column, justify="left" if column == "class" else "right")
    for name in CLASSES:
        c = classes[name]
        lat = c["latency_ms"]
        served.add_row(name, str(c["requests"]), str(c["served"]), str(c["degraded"]),
                       str(c["shed"]), str(c["errors"]), _pct(c["served"], c["requests"]),
                       _fmt(lat["p50"]), _fmt(lat["p95"]), _fmt(lat["p99"]), _fmt(lat["max"]))
    by_phase = Table(title="p99 latency in ms, and requests shed, by phase", box=box.SIMPLE_HEAD)
    by_phase.add_column("class")
    for phase in phases:
        by_phase.add_column(phase, justify="right")
    for name in CLASSES:
        cells = []
        for phase in phases:
            p = classes[name]["phases"][phase]
            shed = f" ({p['shed']} shed)" if p["shed"] else ""
            cells.append(f"{_fmt(p['latency_ms']['p99'])}{shed}")
        by_phase.add_row(name, *cells)
    ladder = Table(title="Degradation ladder (group app)", box=box.SIMPLE_HEAD)
    for column in ("class", "highest level", "at the end", "signalled", "queued", "displaced",
                   "shed"):
        ladder.add_column(column, justify="left" if column in ("class", "highest level",
                                                               "at the end") else "right")
    for name in CLASSES:
        g = classes[name]["gateway"]
        ladder.add_row(name, run["ladder"]["peak"][name], run["ladder"]["end"][name],
                       str(g["signal"]), str(g["queued"]), str(g["displaced"]), str(g["shed"]))
    backends = Table(title="Backends", box=box.SIMPLE_HEAD)
    for column in ("backend", "requests", "degraded", "peak in flight", "health at the end"):
        backends.add_column(column, justify="left" if column in ("backend", "health at the end")
                            else "right")
    health = {b["name"]: b["health"] for b in run["gateway"]["backends"]}
    for app in run["backends"]:
        backends.add_row(f"{app['name']} ({app['address']})", str(app["requests"]),
                         str(app["degraded"]), str(app["peak_in_flight"]),
                         health.get(app["address"], "-"))
    ws = run["websocket"]
    ws_line = Text(f"WebSocket: {ws['opened']} of {ws['sessions']} sessions opened, "
                   f"{ws['messages']} messages echoed, {ws['errors']} errors, round trip p50 "
                   f"{_fmt(ws['rtt_ms']['p50'])} ms, p99 {_fmt(ws['rtt_ms']['p99'])} ms")
    return Group(served, by_phase, ladder, backends, ws_line)


# -- the demo -------------------------------------------------------------------------------------


def describe(scenario: Scenario, schedule: Schedule) -> str:
    """The scenario in plain words, printed before the run."""
    phases = ", ".join(f"{name} {end - start:.1f} s at {c / scenario.capacity:g}x"
                       for name, start, end, c in scenario.phase_spans())
    counts = ", ".join(f"{schedule.count(n)} {n}" for n in CLASSES)
    return (f"connwise demo gateway (seed {scenario.seed}): the gateway in front of "
            f"{scenario.backends} application backends (at most {scenario.capacity} requests "
            f"in flight, {scenario.max_waiters} queued) and a WebSocket echo, all on "
            f"127.0.0.1. Load, as a multiple of the capacity: {phases}. "
            f"{len(schedule.requests)} requests ({counts}) and {len(schedule.sessions)} "
            "WebSocket sessions.")


def describe_gateway(scenario: Scenario, apps: Sequence[DemoApp], echo: EchoServer,
                     host: str, port: int) -> str:
    routes = ", ".join(f"{ROUTE_PREFIXES[n]} -> {n}" for n in CLASSES)
    backends = ", ".join(app.address for app in apps)
    return (f"Gateway on http://{host}:{port}: {routes} (group app: {backends}); "
            f"/ws -> the echo on {echo.address}.")


async def run_all(scenario: Scenario, schedule: Schedule, view: View) -> dict[str, Any]:
    run = await run_gateway(scenario, schedule, view)
    scenario_figures = scenario.figures()
    scenario_figures["requests"] = len(schedule.requests)
    scenario_figures["requests_by_class"] = {n: schedule.count(n) for n in CLASSES}
    result = {"version": connwise.__version__, "scenario": scenario_figures, "run": run}
    result["findings"] = findings(result)
    return result


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """uvloop when installed, as `connwise gateway` runs."""
    if uvloop is None:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_gateway_demo(scenario: Scenario, *, console: Console, json_path: Path | None = None,
                     live: bool | None = None) -> dict[str, Any]:
    """Run the demo, print it to `console` and return its figures (also written to `json_path`).

    `live` chooses the rich live panel over plain lines; by default, live when the console is a
    terminal, because a pipe or a test wants lines it can read afterwards.
    """
    schedule = build_schedule(scenario)
    console.print(describe(scenario, schedule), highlight=False)
    use_live = console.is_terminal if live is None else live
    view: View = LiveView(console) if use_live else PlainView(
        console, interval=min(1.0, max(0.5, scenario.duration / 10)))
    result = _run(run_all(scenario, schedule, view))
    console.print()
    console.print(render_summary(result))
    console.print("What admission and the degradation ladder did:", style="bold")
    for sentence in result["findings"]:
        console.print(f"- {sentence}", highlight=False)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"Figures written to {json_path}", highlight=False)
    return result
