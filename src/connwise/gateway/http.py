"""The `http` listener: HTTP/1.1 reverse proxying with httptools, keep-alive on both sides.

Theory of operation
-------------------
`HttpClient` is the protocol of one client connection. httptools parses requests as bytes
arrive; a request head that exceeds `max_header_bytes` gets 431 (counted per chunk while the
head spans chunks, as httptools holds a header line back until it ends), as does the trailer
section of a chunked body (counted the same way: httptools would buffer an endless trailer
line), one that does not arrive within `header_timeout` gets 408 (slowloris), as does a body
that pauses longer than `body_timeout` between two reads, a body over `max_body_bytes` gets
413, and anything llhttp rejects — an invalid request line, Content-Length with
Transfer-Encoding, differing duplicate Content-Lengths (request smuggling) — gets 400, as do an
HTTP/1.1 request without a Host header or with a second one, a bracketed Host that is no IP
literal, an absolute-form target that is not an http(s) URI, an upgrade request with a body
(llhttp hands its body over as the new protocol's bytes), a CONNECT request, and a
Transfer-Encoding other than chunked or in an HTTP/1.0 request; then the connection is closed.
A bad request pipelined behind others is answered after them: reading stops until they were.
Trailer fields are dropped, never merged into the head. Paths are normalised before routing
(gateway/paths.py) and forwarded as routed.

A target in absolute-form (`GET http://host/path`) is routed by its authority, not by the Host
header (RFC 9112 3.2.2), and forwarded in origin-form with a Host header made from it. Routes
see the host without its port, an IPv6 literal with its brackets (`[::1]`), either way.

The gateway's own answers (404, 502, 503, 504, 408...) have a Date, no body when the request was
a HEAD, and say `Connection: close` whenever the connection closes after them: the client asked
for it, or the gateway drains and it is the connection's last answer. A drain answers every
request the gateway read before it, pipelined ones included, and takes none that begins after
it (`HttpClient.drain`).

Each complete head becomes an `Exchange`: route it, classify it, admit it through the group's
scheduler (degradation ladder: throttle, signal, queue, shed with 503 Retry-After), take a
keep-alive upstream connection from the chosen backend's `connwise.Pool`, write the rewritten
head, stream the body both ways, and give the connection back. Exchanges on one client
connection are answered in order; a pipelined request waits, with reading paused, for the one
before it. Idempotent requests whose upstream fails before any response byte are retried once on
another backend; a request that is not retried gets 502 if no answer head went out yet, and the
connection closes.

The common case runs without a task: a request without a body, admitted at once, for which
the chosen backend has an idle upstream connection, is forwarded from the parser callback
(`_forward_now`) and finished from the upstream's (`_forwarded`); a task per request cost more
CPU than the rest of the proxying. Anything else — a body to stream, an upgrade, a queue to wait
in, an upstream to connect, a retry — goes to a task (`_serve`), which takes the exchange over
at the step where the callback left it. The connection's timeouts (header read, body read,
the upstream's response head, keep-alive idle) share one lazily re-armed timer, so a
keep-alive request arms none: it stores its response deadline, a float the timer reads when it
fires. A backend that sends no response head within the group's `response_timeout` of the
request's last byte gets the exchange failed (not retried: the request may have had effects),
its connection closed and a passive health failure; the client gets 504.

A `101 Switching Protocols` answer to an upgrade turns both connections into a byte relay, with
WebSocket frame headers tracked for message counts and close codes, and capped by the ladder's
throttle step while its class stands on it (`relay.RelayThrottle`). Between an upgrade request and
its answer nothing is parsed and reading stops: what the client sent after the request (its
first frames, perhaps) is held, relayed first once the 101 came, or dropped with the
connection if the upgrade is refused (`_hold`).

Refused requests (shed, timed out or displaced in the queue, queue full) get 503 with
`Retry-After`, except a valid WebSocket handshake: a browser sees no status of a failed
handshake, only close code 1006, so the gateway completes the handshake itself and closes with
1013, try again later (`_refuse_upgrade`); the upstream is never contacted. Its connection
record keeps status 503, the admission's answer, whichever way it reached the client.
"""

from __future__ import annotations

import _socket
import asyncio
import functools
import inspect
import logging
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, cast

import httptools

from connwise.config import ip_literal
from connwise.core.zombies import peer_lost
from connwise.errors import BackendError, PoolError
from connwise.gateway.paths import BadPath, normalise
from connwise.gateway.relay import RelayThrottle
from connwise.gateway.upstream_http import UpstreamConnection, UpstreamFailed, date_field
from connwise.gateway.wsframes import (
    CLOSE_GOING_AWAY,
    WS_GOING_AWAY,
    FrameTracker,
    close_frame,
    handshake_accept,
    try_again_later,
)

if TYPE_CHECKING:
    from connwise.core.cqi import ClassState
    from connwise.core.degrade import DegradeLadder
    from connwise.core.scheduler import Waiter
    from connwise.gateway.runtime import Gateway, Listener
    from connwise.gateway.upstreams import Backend, Group
    from connwise.telemetry.record import ConnRecord

log = logging.getLogger("connwise.gateway.http")

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authorization"})
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
#: Pipelined requests parsed ahead of the one being answered before reading pauses.
PIPELINE_DEPTH = 4
#: Bytes of a request body held for its backend before reading the client pauses until the
#: backend takes them (uvicorn's flow-control high-water mark): what a client sends faster
#: than its backend reads waits in the client's socket, not in the gateway's memory.
BODY_BUFFER = 64 * 1024
#: Request headers the proxy reads itself (the rest are only forwarded). Proxy-Connection only
#: for the HTTP version (see `on_headers_complete`): llhttp reads it as a Connection header.
_HEADS_UP = frozenset({b"host", b"content-length", b"transfer-encoding", b"expect",
                       b"connection", b"proxy-connection"})
#: What the brackets of an IP literal in a Host header may hold (RFC 3986 3.2.2: an IPv6
#: address, an IPv4 one in its last 32 bits).
_IP_LITERAL = b"0123456789abcdefABCDEF:."
#: `HttpClient.head_fed` between request heads, in the chunk in which one begins, and in the
#: one in which a chunk's size line of a chunked body ended (the last chunk's trailer section
#: follows it, counted like a head).
_NO_HEAD = -1
_HEAD_BEGUN = -2
_CHUNK_BEGUN = -3
#: `HttpClient.fields` while no head or trailer section is read: nothing is ever put in it.
_NO_FIELDS: list[tuple[bytes, bytes]] = []
#: `Exchange.body` while no body bytes wait: immutable, so never extended in place.
_NO_BODY = b""
#: Seconds a refused WebSocket handshake's connection stays open, half-closed, for the client's
#: close frame: closing at once would answer that frame with a reset, which can destroy the
#: unread 1013 at the client (the lingering close of Apache httpd, on a shorter clock).
WS_REFUSAL_GRACE = 2.0


def simple_response(status: int, reason: str, *, close: bool, extra: bytes = b"",
                    body: bytes = b"", head: bool = False) -> bytes:
    """An answer of the gateway's own; `head`: to a HEAD request, so it has the headers of the
    answer to a GET, Content-Length included, and no body (RFC 9110 9.3.2): a body would be
    read as the start of the next answer on a keep-alive connection. It has a Date, as an
    origin server's answers must (RFC 9110 6.6.1)."""
    body = body or f"{status} {reason}\n".encode()
    connection = b"close" if close else b"keep-alive"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"%sConnection: %s\r\n%s\r\n%s" % (status, reason.encode(), len(body), date_field(),
                                               connection, extra, b"" if head else body))


class Exchange:
    """One request and its answer."""

    __slots__ = (
        "admitted",
        "backend",
        "body",
        "body_done",
        "body_event",
        "body_size",
        "chunked",
        "class_name",
        "connection",
        "content_length",
        "degrade",
        "ended_at",
        "expect_continue",
        "group",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "released",
        "started_at",
        "status",
        "upgrade",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.path = "/"
        self.host = ""
        self.method = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.upgrade = False
        self.chunked = False
        self.content_length: int | None = None
        self.expect_continue = False
        #: The Connection header's value (its tokens name more hop-by-hop headers).
        self.connection: bytes | None = None
        #: Body bytes read and not yet taken (`HttpClient.take_body`): one buffer, not an
        #: object per piece, which for one-byte chunks cost ~40 bytes per byte of body. Empty,
        #: it is `_NO_BODY`: a request without a body makes no bytearray (~500 instructions).
        self.body: bytes | bytearray = _NO_BODY
        self.body_size = 0
        self.body_done = False
        #: Created by the first wait for body bytes: a request without a body never needs one.
        self.body_event: asyncio.Event | None = None
        self.degrade = 0
        self.class_name = ""
        self.status = 0
        #: Set once routed and classified (None: not routed yet, or no route matched).
        self.group: Group | None = None
        #: Admitted through the group's scheduler (the slot is held until `released`).
        self.admitted = False
        #: The admission slot went back (at the answer's end, or when the exchange ended).
        self.released = False
        #: With a record: when the request was admitted and when its answer ended (read by
        #: the upstream connection, which sees the end first); 0.0 until then.
        self.started_at = 0.0
        self.ended_at = 0.0
        #: The backend picked for the attempt in hand (handed from the callback to the task).
        self.backend: Backend | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def body_withheld(self) -> bool:
        """The client waits for `100 Continue` to send a body it has not begun: answered
        otherwise, it may never send it, and the connection cannot go on without it (RFC 9110
        10.1.1), so an answer of the gateway's own closes it."""
        return self.expect_continue and not self.body_size and not self.body_done

    def body_arrived(self) -> None:
        if self.body_event is not None:
            self.body_event.set()

    async def wait_body(self) -> None:
        """Wait for more body bytes (or its end); call only when `body` is empty."""
        event = self.body_event
        if event is None:
            event = self.body_event = asyncio.Event()
        event.clear()
        await event.wait()


class HttpClient(asyncio.Protocol):
    """One client connection of an http listener; see the module docstring."""

    __slots__ = (
        "_body_paused",
        "_drain_waiters",
        "_paused",
        "_write_paused",
        "active_upstream",
        "body_deadline",
        "bytes_in",
        "bytes_out",
        "class_state",
        "client_ip",
        "client_ip_bytes",
        "closed",
        "conn_id",
        "draining",
        "fields",
        "frames",
        "gateway",
        "head_fed",
        "header_bytes",
        "header_deadline",
        "held",
        "idle_deadline",
        "last_active",
        "last_host",
        "last_host_name",
        "listener",
        "loop",
        "opened_at",
        "parser",
        "parsing",
        "queue",
        "queued",
        "record",
        "rejection",
        "relay_to",
        "requests",
        "response_deadline",
        "send_deadline",
        "task",
        "throttle",
        "timer",
        "transport",
        "write_deadline",
    )

    def __init__(self, gateway: Gateway, listener: Listener, sock: _socket.socket,
                 peer: Any) -> None:
        self.gateway = gateway
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        #: Released (None) once the connection is a WebSocket relay: it parses nothing more.
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.conn_id = 0
        # Interned: connections from one address share the string (and the per-IP key).
        self.client_ip: str = sys.intern(peer[0]) if peer else ""
        #: As X-Forwarded-For writes it, encoded once per connection rather than per request.
        self.client_ip_bytes = self.client_ip.encode()
        self.closed = False
        self.draining = False
        self.parsing: Exchange | None = None
        #: Where `on_header` puts a field: the head's (`parsing.headers`), then, once the head
        #: of a chunked request is complete, its trailer section's, counted and dropped: never
        #: merged into the head, which may not have gone upstream yet (RFC 9110 6.5.1; a
        #: trailer `Host` there would be a second one). Between requests
        #: `_NO_FIELDS`, so that an idle connection keeps no request's headers.
        self.fields = _NO_FIELDS
        # A list, not a deque: at most PIPELINE_DEPTH + 1 entries, and an empty deque costs
        # ~600 bytes per idle connection where an empty list costs 56.
        self.queue: list[Exchange] = []
        self.task: asyncio.Task[None] | None = None
        #: The head request while it waits in the admission queue without a task.
        self.queued: _Grant | None = None
        self.header_bytes = 0
        #: The last plain `host[:port]` Host header of an origin-form request, and the host
        #: name it routes by (see `on_headers_complete`).
        self.last_host: bytes | None = None
        self.last_host_name = ""
        #: The head (or trailer section) being read, counted a chunk at a time once it spans
        #: chunks (see `_head_spans`): _NO_HEAD between heads, _HEAD_BEGUN while the chunk in
        #: which one began is fed, _CHUNK_BEGUN from a chunk's size line to its data, then
        #: its bytes so far.
        self.head_fed = _NO_HEAD
        #: The answer (400, 408, 413, 431) to a bad request pipelined behind others still being
        #: answered: it goes out, and the connection closes, once they were (see `_reject`).
        self.rejection: bytes | None = None
        #: Set once an upgrade request was read, until its answer: what the client sent after
        #: it, which is not HTTP if the upgrade succeeds (see `_hold`).
        self.held: bytes | None = None
        self.loop = asyncio.get_running_loop()
        #: The one timer of the connection (see `_on_timer`), and its deadlines in loop time
        #: (0.0: none): the head being read, the next read of a request body, the response
        #: head of the request sent upstream, and the keep-alive idle wait.
        self.timer: asyncio.TimerHandle | None = None
        self.header_deadline = 0.0
        self.body_deadline = 0.0
        self.response_deadline = 0.0
        self.idle_deadline = 0.0
        #: The backend is to take more of the request body by then (see `body_send_due`).
        self.send_deadline = 0.0
        #: `send_timeout` after the client's transport paused our writing (its buffer full).
        self.write_deadline = 0.0
        self.relay_to: UpstreamConnection | None = None
        #: The ladder's throttle on this connection's WebSocket relay (set with `relay_to`).
        self.throttle: RelayThrottle | None = None
        self.active_upstream: UpstreamConnection | None = None
        self.class_state: ClassState | None = None
        self.opened_at = gateway.clock.now()
        #: When bytes last moved either way (or the connection opened): the zombie watch's input.
        self.last_active = self.opened_at
        self.record: ConnRecord | None = None
        #: WebSocket frames from the client, tracked once the connection is a relay.
        self.frames: FrameTracker | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.requests = 0
        self._paused = False
        #: Reading stopped because `BODY_BUFFER` bytes of a request body wait for the backend.
        self._body_paused = False
        self._write_paused = False
        #: Tasks waiting for the client to read (None until one waits: most never do).
        self._drain_waiters: list[asyncio.Future[None]] | None = None

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if not self.gateway.client_opened(self):
            self.transport.write(simple_response(503, "Service Unavailable", close=True,
                                                 extra=b"Retry-After: 1\r\n"))
            self.transport.close()
            self.closed = True
            return
        recorder = self.gateway.recorder
        if recorder is not None:
            segments = self.gateway.segments
            self.record = recorder.begin_client(
                str(self.conn_id), self.listener.name, self.opened_at, "idle", self.client_ip,
                # Without a CIDR table (the default), no call per connection to learn "".
                "" if segments.regions is None else segments.region_of_address(self.client_ip))
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.conn_id == 0:
            return
        self.closed = True
        # The parser holds bound methods of this protocol: a reference cycle that only the
        # garbage collector would free (with the transport, the socket and the CQI state it
        # keeps alive), ~16 objects per connection and a share of every collection.
        self.parser = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            coro = cast("Coroutine[Any, Any, None]", task.get_coro())
            if self.queue and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                # Cancelled before its first step (the grant or the retry that made it ran in
                # the loop iteration in which this connection ended): its `finally`, which
                # gives the admission slot back, never runs.
                self._settle(self.queue[0])
        elif self.active_upstream is not None:
            self._abandon(self.active_upstream, exc)
        elif self.queued is not None:
            self.queued.cancel()
            self.queued = None
        for waiter in self._drain_waiters or ():
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("client went away"))
        if self.relay_to is not None:
            self.relay_to.close()
        if self.throttle is not None:
            self.throttle.cancel()
            self.throttle = None  # it holds both halves: a cycle otherwise
        lost = peer_lost(exc)
        if lost:
            self.gateway.zombies.peer_lost(self)
        rec = self.record
        recorder = self.gateway.recorder
        if rec is not None and recorder is not None:
            self.record = None
            now = self.gateway.clock.now()
            self.gateway.tcp_info.sample(rec, self.transport, now - self.opened_at)
            rec.bytes_in, rec.bytes_out = self.bytes_in, self.bytes_out
            rec.msgs_in = self.frames.messages if self.frames is not None else 0
            if self.relay_to is not None:
                rec.msgs_out = self.relay_to.frames.messages
                rec.unuse(self.last_active)  # the session's last traffic ends its use
            state = self.class_state
            if state is not None:  # the CQI behind the last class, copied once, not per request
                axes = state.axes
                rec.cqi_business, rec.cqi_technical = axes.business, axes.technical
                rec.cqi_user, rec.cqi_resource = axes.user, axes.resource
                rec.cqi_score = state.score
            # An answer in flight (a task's ends after this); no slice of the queue made for it.
            ex = self.queue[0] if self.queue else None
            if ex is not None and ex.started_at:
                rec.request_done(ex.started_at, now, ex.class_name, ex.degrade > 0,
                                 ex.status or 499)
                ex.started_at = 0.0
            reason = "half_open" if lost else "draining" if self.draining else (
                "reset" if exc else "client closed")
            recorder.end(rec, now, reason, exc is not None)  # positional: a keyword costs ~200
        self.gateway.client_closed(self)
        self.relay_to = None  # it points back (`relay_client`): no cycle left for the collector

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._closing_for("draining" if self.draining else "gateway closed")
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self._closing_for("draining" if self.draining else "gateway closed")
            self.transport.abort()

    def _closing_for(self, reason: str) -> None:
        """The gateway ends the connection for `reason`: its record says so, unless a reason
        was given first (the zombie watch's, a more precise one before a generic close)."""
        rec = self.record
        if rec is not None and not rec.close_reason:
            rec.close_reason = reason

    def drain(self) -> None:
        """The gateway drains: an idle keep-alive connection closes now; one with requests in
        hand answers them all, a request pipelined behind the one in flight included (the
        gateway read it: it is in flight too, as for nginx and HAProxy), and one being read,
        then closes, the last answer saying `Connection: close` (`serves_last`). A request
        that begins after the drain began is not taken (`on_message_begin`). WebSockets get
        1001 at the drain timeout."""
        self.draining = True
        if self.relay_to is None and not self.queue and self.parsing is None:
            self.close()

    def serves_last(self, ex: Exchange) -> bool:
        """While draining: whether `ex` is the last request this connection answers, so that
        its answer says `Connection: close` and no earlier one does (a client that reads
        `close` takes the requests it pipelined after it for not taken). The last is the
        request being read, else the last queued: none begins after the drain began."""
        queue = self.queue
        parsing = self.parsing
        return not queue or (queue[-1] is ex and (parsing is None or parsing is ex))

    def _take_no_more(self) -> None:
        """A request begins after the drain began: it is not taken, nor anything after it
        (reading stops, the parser goes). The requests before it are answered, then the
        connection closes: `_ended` sends this empty rejection, that is the close alone."""
        transport = self.transport
        self.parser = None
        if transport is None or self.closed:
            return
        if not self.queue:
            self.close()
            return
        self.rejection = b""
        self._paused = True
        transport.pause_reading()

    def bytes_total(self) -> int:
        return self.bytes_in + self.bytes_out

    def cqi_to_feed(self, now: float) -> ClassState | None:
        """The state to feed this connection's byte count (None before its first request)."""
        return self.class_state

    def idle_since(self) -> float | None:
        """When bytes last moved either way; None while a request is in hand (a slow upstream
        is not the client's idleness): the zombie watch's input."""
        return None if self.queue else self.last_active

    def reclaim(self) -> None:
        """The zombie watch closes this connection: a WebSocket with close frames (1001, going
        away) to both sides, an idle keep-alive connection with a plain close."""
        if self.relay_to is not None:
            self.going_away()
        else:
            self.close()

    def follow_class(self, class_name: str) -> None:
        """The connection's class changed: a WebSocket relay's throttle follows it (a request
        takes its class when it is admitted, so nothing else does; its record counts the
        change at the request's end, a WebSocket's here)."""
        if self.throttle is not None:
            self.throttle.follow(class_name)
        rec = self.record
        if rec is not None and self.relay_to is not None and class_name != rec.class_name:
            rec.class_changes += 1
            rec.class_name = class_name

    def describe(self, now: float) -> dict[str, Any]:
        """The admin API's view; a WebSocket adds the last close code seen each way (None
        until a close frame passed)."""
        relay = self.relay_to
        upstream = relay or self.active_upstream
        described = {"id": self.conn_id, "kind": "websocket" if relay else "http",
                     "state": self.state(),
                     "listener": self.listener.name, "client": self.client_ip,
                     "age": round(now - self.opened_at, 3), "bytes_in": self.bytes_in,
                     "bytes_out": self.bytes_out, "requests": self.requests,
                     "backend": upstream.address if upstream else None,
                     "class": self.class_state.class_name if self.class_state else None,
                     "why": self.class_state.explain(now) if self.class_state else None}
        if relay is not None:
            described["close_code"] = {
                "client": self.frames.close_code if self.frames is not None else None,
                "upstream": relay.frames.close_code}
        return described

    def state(self) -> str:
        """`queued` while a request waits for admission, `active` while one is served or a
        WebSocket relayed, `draining` once the gateway drains, else `idle`."""
        if self.draining:
            return "draining"
        if (self.relay_to or self.active_upstream) is not None or (
                self.task is not None and not self.task.done()):
            return "active"
        if self.queued is not None:
            return "queued"
        return "idle"

    def metric_labels(self) -> tuple[str, str, str, str, str]:
        """(listener, kind, state, class, backend) for `connwise_connections`."""
        upstream = self.relay_to or self.active_upstream
        return (self.listener.name, "websocket" if self.relay_to else "http",
                self.state(), self.class_state.class_name if self.class_state else "",
                upstream.address if upstream else "")

    def going_away(self) -> None:
        """Drain timeout: a WebSocket gets close frames with code 1001 on both sides, then both
        connections close; anything else is aborted. A side the relay is sending a frame to
        gets the close alone: a close frame written into the frame would be read as its
        payload, and the frame's end as garbage."""
        upstream = self.relay_to
        if upstream is None:
            self.abort()
            return
        if upstream.frames.at_boundary:
            self.write(CLOSE_GOING_AWAY)
        if self.frames is not None and self.frames.at_boundary:
            upstream.write(close_frame(WS_GOING_AWAY, mask=os.urandom(4)))
        upstream.close()
        self.close()

    def pause_writing(self) -> None:
        """The client does not read what the gateway sends as fast as it comes: the upstream
        pauses, and the client must take more within `send_timeout` (`_send_stalled`)."""
        self._write_paused = True
        deadline = self.write_deadline = self.loop.time() + self.gateway.limits.send_timeout
        self._arm(deadline)
        upstream = self.relay_to or self.active_upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_deadline = 0.0
        upstream = self.relay_to or self.active_upstream
        throttle = self.throttle
        if (upstream is not None and upstream.transport is not None and not upstream.closed
                and (throttle is None or throttle.upstream_timer is None)):
            upstream.transport.resume_reading()
        waiters, self._drain_waiters = self._drain_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    async def wait_writable(self) -> None:
        if self._write_paused and not self.closed:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._drain_waiters is None:
                self._drain_waiters = []
            self._drain_waiters.append(waiter)
            await waiter

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.bytes_out += len(data)
            self.last_active = self.gateway.clock.now()
            self.transport.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        """Write several pieces at once (uvloop: one writev)."""
        if self.transport is not None and not self.closed:
            size = 0
            for chunk in chunks:  # sum(map(len, chunks)) cost ~1,700 instructions, this ~400
                size += len(chunk)
            self.bytes_out += size
            self.last_active = self.gateway.clock.now()
            self.transport.writelines(chunks)

    # -- timers -------------------------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        if not self.header_deadline:
            self.header_deadline = (self.loop.time()
                                    + self.gateway.limits.header_timeout)
            self._arm(self.header_deadline)

    def _arm(self, deadline: float) -> None:
        """Have the timer fire by `deadline`. A timer due earlier is left alone: when it fires,
        `_on_timer` re-arms it for the deadline then in force, so a deadline that keeps moving
        later (one per request) costs no timer operation."""
        timer = self.timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        """Act on the deadline that passed (one per firing), then re-arm for the earliest one
        left while the connection stays open."""
        self.timer = None
        now = self.loop.time()
        if self.header_deadline and now >= self.header_deadline:
            self.header_deadline = 0.0
            self._header_timeout()
        elif self.response_deadline and now >= self.response_deadline:
            self.response_deadline = 0.0
            self._response_timeout()
        elif self.body_deadline and now >= self.body_deadline:
            self.body_deadline = 0.0
            self._body_timeout(now)
        elif self.send_deadline and now >= self.send_deadline:
            self.send_deadline = 0.0
            self._send_timeout()
        elif self.write_deadline and now >= self.write_deadline:
            self.write_deadline = 0.0
            self._send_stalled()
        elif self.idle_deadline and now >= self.idle_deadline:
            self.idle_deadline = 0.0
            self._closing_for("idle timeout")
            self.close()
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        deadlines = [d for d in (self.header_deadline, self.body_deadline,
                                 self.response_deadline, self.idle_deadline,
                                 self.send_deadline, self.write_deadline) if d]
        if deadlines:
            self._arm(min(deadlines))

    def _body_due(self) -> None:
        """The next read of the request body being parsed is due within `body_timeout`."""
        deadline = self.body_deadline = (self.loop.time()
                                         + self.gateway.limits.body_timeout)
        self._arm(deadline)

    def _response_due(self, timeout: float) -> None:
        """The request in hand went upstream whole: its response head is due within `timeout`
        (its group's `response_timeout`). Per request a clock read, a float store and a
        compare: the timer almost always fires earlier already (`_arm`'s test, inlined)."""
        deadline = self.response_deadline = self.loop.time() + timeout
        timer = self.timer
        if timer is None or timer.when() > deadline:
            self._arm(deadline)

    def _header_timeout(self) -> None:
        if self.parsing is not None or (not self.queue and self.bytes_in > 0):
            self.gateway.count("http_408")
            self._reject(408, "Request Timeout")
        elif not self.queue:  # no request came at all
            self._closing_for("idle timeout")
            self.close()

    def _body_timeout(self, now: float) -> None:
        """No byte of the request body came for `body_timeout` (slowloris on the body): 408
        unless an answer to the request has begun, and the connection closes; its end
        (`connection_lost`) gives back what the exchange holds, as for a client that leaves
        mid-request: the admission slot, and the upstream connection, closed (its state is
        unknown). A client that does not read either is aborted, so its full send buffer
        cannot hold the slot."""
        if self._paused or (self._body_paused and not self._write_paused):
            # The gateway stopped reading (pipelining, or what was read waits for admission
            # or for the backend: `body_send_due` times that), not the client sending; a
            # client that reads none of its answers meanwhile is aborted all the same.
            self.body_deadline = now + self.gateway.limits.body_timeout
            return
        self.gateway.count("http_body_timeout")
        ex = self.parsing
        if self._write_paused:
            self.abort()
        elif ex is not None and self.queue and self.queue[0] is ex and not ex.status:
            self._reject(408, "Request Timeout")
        else:
            self.close()  # an answer to it began, or one to a request before it is under way

    def body_send_due(self) -> None:
        """The backend does not take the request body being sent (its connection's writing
        paused): it is to take more within `body_timeout`, or `_send_timeout` fails it."""
        deadline = self.send_deadline = self.loop.time() + self.gateway.limits.body_timeout
        self._arm(deadline)

    def _send_timeout(self) -> None:
        """The backend took no byte of the request body for `body_timeout` (it neither reads
        it nor answers): 504 unless its answer began, the exchange fails, not retryable, and
        the upstream connection is aborted (closing it would wait for the body it does not
        read); the exchange's failure path reports the backend to its group's passive health
        and closes the client. A client that does not read either is aborted."""
        upstream = self.active_upstream
        if upstream is None or not upstream.write_blocked() or not self.queue:
            return  # the backend took it since, or the exchange ended
        ex = self.queue[0]
        if not ex.status:
            self.gateway.count("http_504")
            ex.status = 504
            self.write(simple_response(504, "Gateway Timeout", close=True,
                                       head=ex.method == b"HEAD"))
        ex.keep_alive = False
        upstream.fail(UpstreamFailed(
            f"backend {upstream.address} took no byte of the request body within "
            f"limits.body_timeout = {self.gateway.limits.body_timeout:g} s", retryable=False))
        if self._write_paused:
            self.abort()

    def _send_stalled(self) -> None:
        """The client took no byte of what is buffered for it within `send_timeout`: it is
        aborted (a close would wait to send that buffer), and its end gives back what it holds,
        as for a client that leaves: the admission slot, the upstream connection (closed, its
        answer unread), a WebSocket's backend."""
        if not self._write_paused or self.closed:
            return
        self.gateway.count("http_send_timeout")
        self._closing_for("send timeout")
        self.abort()

    def _response_timeout(self) -> None:
        """The backend sent no response head within `response_timeout` of the request's last
        byte: 504, and the exchange fails, not retryable (the request may have had effects).
        Its failure path (`_forwarded`, or `_forward` in a task) reports the backend to its
        group's passive health, closes both connections and gives the slot back."""
        upstream = self.active_upstream
        if upstream is None or not upstream.awaiting_head() or not self.queue:
            return  # the head came, or the exchange ended: the deadline was moot
        ex = self.queue[0]
        group = ex.group
        assert group is not None
        self.gateway.count("http_504")
        ex.status = 504  # an answer went out: nothing else is written for this exchange
        ex.keep_alive = False
        self.write(simple_response(504, "Gateway Timeout", close=True,
                                   head=ex.method == b"HEAD"))
        upstream.fail(UpstreamFailed(
            f"backend {upstream.address} sent no response head within "
            f"groups.{group.name}.response_timeout = {group.response_timeout:g} s of "
            f"the request", retryable=False))

    # -- parsing ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.last_active = self.gateway.clock.now()
        upstream = self.relay_to
        frames = self.frames
        if upstream is not None and frames is not None:
            before = frames.messages
            frames.feed(data)
            upstream.write(data)
            if self.throttle is not None:
                self.throttle.client_sent(len(data))
            engine = self.gateway.escalation
            if engine is not None and frames.messages != before:
                self.gateway.apply_changes(engine.on_activity(
                    self.conn_id, self.gateway.clock.now(), frames.messages - before))
            return
        parser = self.parser
        if parser is None:
            return  # a refused WebSocket handshake, or a bad request's answer waits its turn
        self.idle_deadline = 0.0
        try:
            parser.feed_data(data)
            if self.head_fed != _NO_HEAD:  # the chunk ended inside a head or trailer section
                self._head_spans(data)
        except httptools.HttpParserUpgrade as exc:
            self._hold(data[exc.args[0]:] if exc.args and isinstance(exc.args[0], int) else b"")
        except httptools.HttpParserError as exc:
            # A callback that refused the request (431, 413, 400) answered it already: httptools
            # reports its _Rejected as a parser error.
            if self.parser is not None:
                self.gateway.count("http_400")
                log.debug("client %s: bad request: %s", self.client_ip, exc)
                self._reject(400, "Bad Request")
        except _Rejected:  # from `_head_spans`, outside the parser
            pass

    def _hold(self, rest: bytes) -> None:
        """An upgrade request was read, and `rest` followed it in the chunk. What follows it is
        the new protocol if the upgrade succeeds, and a WebSocket client may send its first
        frames before the 101 arrives: nothing more is parsed until the answer. Reading stops,
        so `rest` is all that is held (at most one read); it goes to the backend once the
        relay starts (`_start_relay`), before anything read after it. If the upgrade is
        refused, what was held is dropped with the connection (its answer says close: the
        bytes may be frames, and must not be read as a request), and a connection that held
        nothing goes on with HTTP (`_ended`)."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.held = rest
        self._paused = True
        transport.pause_reading()
        queue = self.queue
        if rest and queue and queue[-1].upgrade:
            queue[-1].keep_alive = False

    def _reject(self, status: int, reason: str) -> None:
        """Answer the request being read with `status` and close the connection.

        A request pipelined behind others still being answered must not overtake their
        answers (or cut them off): reading stops, nothing more is parsed, and `_ended` sends
        this answer once the requests before it were answered. The bad request itself, if its
        head was queued already, leaves the queue unstarted. If an answer to it began already
        (the backend answered before the body was read), the close alone ends it: nothing
        can follow that answer."""
        transport = self.transport
        if transport is None or self.closed:
            return
        queue = self.queue
        ex = self.parsing
        self._closing_for(f"rejected {status}")
        answer = simple_response(status, reason, close=True, head=self._head_request(ex))
        self.parser = None  # nothing more is parsed
        if ex is not None and len(queue) > 1 and queue[-1] is ex:
            queue.pop()
        if queue and queue[0] is not ex:
            self.rejection = answer
            self.parsing = None
            self.header_deadline = 0.0
            self._paused = True
            transport.pause_reading()
            return
        if ex is None or not ex.status:
            self.write(answer)
        transport.close()

    def _head_request(self, ex: Exchange | None) -> bool:
        """Whether `ex`, the request being read, is a HEAD, whose answer has no body: known
        from its request target on (the method comes before it), its head complete or not."""
        if ex is None:
            return False
        if ex.method:
            return ex.method == b"HEAD"
        parser = self.parser
        return bool(ex.url) and parser is not None and parser.get_method() == b"HEAD"

    def on_message_begin(self) -> None:
        if self.draining:
            self._take_no_more()
            raise _Rejected
        ex = self.parsing = Exchange()
        self.fields = ex.headers
        self.header_bytes = 0
        self.head_fed = _HEAD_BEGUN
        if not self.header_deadline:
            # `_arm_header_timer` inlined, and `_arm`'s test too, as in `_response_due`: a
            # keep-alive request's head starts the header deadline, and the timer, due
            # earlier, almost always stays.
            deadline = self.header_deadline = (self.loop.time()
                                               + self.gateway.limits.header_timeout)
            timer = self.timer
            if timer is None or timer.when() > deadline:
                self._arm(deadline)

    def on_url(self, url: bytes) -> None:
        assert self.parsing is not None
        self.parsing.url += url
        self.header_bytes += len(url)
        if self.header_bytes > self.gateway.limits.max_header_bytes:
            self._header_overflow()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.gateway.limits.max_header_bytes:
            self._header_overflow()

    def _head_spans(self, data: bytes) -> None:
        """The chunk `data` ended inside a request head or trailer section. httptools hands a
        header over only once its line ends, buffering it meanwhile, so `on_header` alone
        never sees a line that does not end: the head is counted here, a chunk at a time, from
        the chunk in which it began (what followed the request target: bytes of pipelined
        requests before it do not count) until the one that completes it, and is refused with
        431 as soon as it is over `max_header_bytes`. A head that arrives in one chunk never
        gets here.

        The trailer section of a chunked body is counted the same way, from the chunk in
        which the last chunk's size line ended (what follows that line's end). Every chunk's
        size line sets `_CHUNK_BEGUN`, and a data chunk's first byte of data undoes it
        (`on_body`): a chunk that ends after a size line with its data still to come counts
        nothing of its own, and the next chunk brings the data."""
        fed = self.head_fed
        if fed == _HEAD_BEGUN:
            ex = self.parsing
            url = ex.url if ex is not None else b""
            at = data.rfind(url)  # the target so far ends the chunk or precedes what does
            fed = len(data) - at if at >= 0 else self.header_bytes
        elif fed == _CHUNK_BEGUN:
            fed = len(data) - data.rfind(b"\n") - 1  # the unfinished line after the last LF
        else:
            fed += len(data)
        self.head_fed = fed
        if fed > self.gateway.limits.max_header_bytes:
            self._header_overflow()

    def _header_overflow(self) -> NoReturn:
        self.gateway.count("http_431")
        self._reject(431, "Request Header Fields Too Large")
        raise _Rejected

    def _bad_request(self, why: str) -> NoReturn:
        self.gateway.count("http_400")
        log.debug("client %s: bad request: %s", self.client_ip, why)
        self._reject(400, "Bad Request")
        raise _Rejected

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        self.header_deadline = 0.0
        self.head_fed = _NO_HEAD
        parser = self.parser
        assert parser is not None
        ex.method = parser.get_method()
        keep_alive = ex.keep_alive = parser.should_keep_alive()
        ex.upgrade = parser.should_upgrade()
        host: bytes | None = None
        proxy_connection = False
        for name, value in ex.headers:
            lower = name.lower()
            if lower not in _HEADS_UP:
                continue
            if lower == b"host":
                if host is not None:  # which one would the backend believe? (RFC 9112 3.2)
                    self._bad_request("more than one Host header")
                host = value
            elif lower == b"content-length":
                ex.content_length = int(value)
            elif lower == b"transfer-encoding":
                # llhttp lets a request through with chunked last; the gateway decodes only
                # chunked and sends the body on chunked alone, so a coding before it (gzip,
                # identity) would be dropped and the backend read coded bytes as the content.
                codings = {c.strip() for c in value.lower().split(b",")} - {b""}
                if codings - {b"chunked"}:
                    self._bad_request(f"Transfer-Encoding {value[:200]!r} is not chunked")
                ex.chunked = ex.chunked or bool(codings)
            elif lower == b"expect":
                ex.expect_continue = ex.expect_continue or value.lower() == b"100-continue"
            elif lower == b"connection":
                ex.connection = value if ex.connection is None else ex.connection + b"," + value
            else:  # proxy-connection
                proxy_connection = True
        # `get_http_version()` costs ~2,600 instructions (a str.format per call), and the
        # keep-alive answer tells the common version: llhttp accepts HTTP/0.9, 1.0, 1.1 and 2.0
        # alone, and without a Connection or Proxy-Connection header keeps only 1.1 alive.
        ex.version = ("1.1" if keep_alive and ex.connection is None and not proxy_connection
                      else parser.get_http_version())
        if ex.chunked and ex.version == "1.0":
            # RFC 9112 6.1: its framing is faulty. An HTTP/1.0 hop in front of the gateway
            # knows no chunks, and may read the body as the next request.
            self._bad_request("Transfer-Encoding in an HTTP/1.0 request")
        if ex.upgrade and (ex.chunked or ex.content_length):
            # llhttp reads no body of an upgrade request: what follows its head is held as the
            # new protocol's (`_hold`), so the backend would get a head announcing a body that
            # never comes (Content-Length: it reads the next request on the connection as that
            # body) or, Transfer-Encoding dropped as hop-by-hop, none.
            self._bad_request("an upgrade request with a body")
        if ex.method == b"CONNECT":
            # A tunnel, which a reverse proxy does not make. llhttp takes it for an upgrade and
            # lets an absolute-form target through: it went upstream as `CONNECT /`, with the
            # Upgrade header an upgrade request gets.
            self._bad_request("a CONNECT request")
        raw = ex.url
        if raw[:1] == b"/":  # origin-form: routed by the Host header
            # Bytes are searched for by their value (`63 in raw`: a memchr, ~230 instructions)
            # and two-byte runs in the decoded text (`"//" in text`, as cheap): a `bytes.find`
            # costs ~1,100 instructions (its arguments are parsed as a format string) and
            # `bytes in bytes` ~1,600 (it tries the needle as an int first), per call.
            path = raw if 63 not in raw and 35 not in raw else (  # no `?`, no `#`
                httptools.parse_url(raw).path or b"/")  # without a query: the path itself
            text = path.decode("latin-1")
            if 37 in path or "/." in text or "//" in text:  # `%`, a dot segment, `//`
                path = self._normalise(ex, path, raw[len(path):])
                text = path.decode("latin-1")
            ex.path = text
            if host is not None and host == self.last_host:
                # A keep-alive client names one Host request after request: its name is read
                # once (~2,000 instructions: partition, slice, decode, lower), then compared.
                ex.host = self.last_host_name
            else:
                name, _, port = host.partition(b":") if host is not None else (b"", b"", b"")
                if host is not None and name[:1] != b"[" and not (port and not port.isdigit()):
                    ex.host = self.last_host_name = name.decode("latin-1").lower()
                    self.last_host = host
                else:
                    self._host_header(ex, host)
        elif raw == b"*":  # asterisk-form (OPTIONS *)
            ex.path = "*"
            self._host_header(ex, host)
        else:
            if host is None:
                self._host_header(ex, host)  # required all the same (RFC 9112 3.2)
            self._absolute_form(ex)
        limit = self.gateway.limits.max_body_bytes
        if ex.content_length is not None and ex.content_length > limit:
            self.gateway.count("http_413")
            self._reject(413, "Content Too Large")
            raise _Rejected
        self.fields = _NO_FIELDS  # the head is whole: it keeps its fields
        if ex.chunked or ex.content_length:
            if ex.chunked:
                self.fields = []  # the trailer section's
            if not ex.expect_continue:
                self._body_due()  # with 100-continue, the client sends once the head went on
        self.requests += 1
        queue = self.queue
        queue.append(ex)
        if len(queue) == 1:
            self._start(ex)  # nothing in hand: answer it now
        elif len(queue) > PIPELINE_DEPTH and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _host_header(self, ex: Exchange, host: bytes | None) -> None:
        """Set `ex.host` from its Host header's value `host` (None: there was none): the host
        without its port, lowercased, an IPv6 literal with its brackets (`[::1]`, as a URI
        writes it and as an absolute-form target's authority routes). An HTTP/1.1 request
        without a Host header, with a port that is not digits (`a:b:c`: the route would see `a`
        and the backend something else) or with a bracketed host that is no IP literal, gets
        400 (RFC 9112 3.2); HTTP/1.0 knew no Host header. `on_headers_complete` reads the plain
        `host[:port]` of an origin-form request itself and calls this for the rest."""
        if host is None:
            if ex.version != "1.0":
                self._bad_request("an HTTP/1.1 request without a Host header")
            return
        if host[:1] != b"[":  # host[:port], and a port is digits (RFC 9110 7.2, RFC 3986 3.2.3)
            name, _, port = host.partition(b":")
            if port and not port.isdigit():
                self._bad_request(f"Host header {host[:200]!r} is no host[:port]")
            ex.host = name.decode("latin-1").lower()
            return
        end = host.find(b"]")
        port = host[end + 1:]
        literal = ip_literal(host[1:end].decode("latin-1")) if end >= 2 and not \
            host[1:end].translate(None, _IP_LITERAL) else None
        if literal is None or (port and not (port[:1] == b":"
                                             and (port == b":" or port[1:].isdigit()))):
            self._bad_request(f"Host header {host[:200]!r} is no [IP literal] with a port")
        ex.host = literal

    def _normalise(self, ex: Exchange, path: bytes, rest: bytes) -> bytes:
        """`path` normalised (gateway/paths.py) unless `[http] normalize_path` is off, and
        `ex.url` rewritten with it ahead of `rest` (the query) if that changed it: the backend
        gets the path the route matched. A malformed percent-escape gets 400."""
        limits = self.gateway.limits
        if not limits.normalize_path:
            return path
        try:
            normal = normalise(path, limits.merge_slashes)
        except BadPath as exc:
            self._bad_request(str(exc))
        if normal != path:
            ex.url = normal + rest
        return normal

    def _absolute_form(self, ex: Exchange) -> None:
        """RFC 9112 3.2.2: a target in absolute-form (`http://host:port/path?query`) names the
        host itself, and the Host header is ignored. It routes by that authority and goes on
        in origin-form with a Host header made from it, so the route and the backend see one
        host; a scheme other than http(s), userinfo or a target that is no URI gets 400."""
        try:
            url = httptools.parse_url(ex.url)
        except httptools.HttpParserInvalidURLError:
            self._bad_request(f"invalid request target {ex.url[:200]!r}")
        scheme = (url.schema or b"").lower()
        if scheme not in (b"http", b"https") or not url.host or url.userinfo is not None:
            self._bad_request(f"request target {ex.url[:200]!r} is not an http(s) URI")
        if b":" in url.host:  # an IPv6 literal: written the one way routes compare it
            literal = ip_literal(url.host.decode("latin-1"))
            if literal is None:
                self._bad_request(f"request target {ex.url[:200]!r} has no valid IP literal")
            host = literal.encode()
        else:
            host = url.host
        authority = host if url.port is None else b"%s:%d" % (host, url.port)
        path = url.path or (b"*" if ex.method == b"OPTIONS" else b"/")
        ex.url = path if url.query is None else path + b"?" + url.query
        if path[:1] == b"/":
            path = self._normalise(ex, path, ex.url[len(path):])
        ex.path = path.decode("latin-1")
        ex.host = host.decode("latin-1").lower()
        ex.headers = [(name, value) for name, value in ex.headers if name.lower() != b"host"]
        ex.headers.append((b"Host", authority))

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None
        self.head_fed = _NO_HEAD  # data: the chunk whose size line came last was no last chunk
        ex.body_size += len(body)
        if ex.body_size > self.gateway.limits.max_body_bytes:
            self.gateway.count("http_413")
            self._reject(413, "Content Too Large")
            raise _Rejected
        if ex.body:
            ex.body += body  # a bytearray, extended in place
        else:
            ex.body = bytearray(body)
        if len(ex.body) >= BODY_BUFFER and not self._body_paused and self.transport:
            self._body_paused = True  # until the backend takes it (`take_body`)
            self.transport.pause_reading()
        ex.body_arrived()
        self._body_due()

    def take_body(self, ex: Exchange) -> bytes | bytearray:
        """The body bytes of `ex` read so far, handed over (its buffer starts afresh); reading
        goes on if it stopped for them, and the client's body deadline starts afresh: it could
        not send meanwhile."""
        body = ex.body
        ex.body = _NO_BODY
        if self._body_paused:
            self._body_paused = False
            if not self._paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()
                if self.body_deadline:
                    self._body_due()
        return body

    def on_chunk_header(self) -> None:
        """A chunk's size line ended: if it was the last chunk's, a trailer section follows
        (see `_head_spans`)."""
        self.head_fed = _CHUNK_BEGUN

    def on_chunk_complete(self) -> None:
        self.head_fed = _NO_HEAD

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None
        ex.body_done = True
        if ex.body_event is not None:  # `body_arrived()`, without its call per request
            ex.body_event.set()
        self.body_deadline = 0.0
        self.parsing = None
        if not self.queue and not self.closed:
            # Answered while its head was parsed (a shed 503): `_next` ran before the
            # message was complete and left the keep-alive wait to this point.
            self._next()

    # -- serving ------------------------------------------------------------------------------

    def _start(self, ex: Exchange, granted: Group | None = None) -> None:
        """Answer `ex`, the head of the queue (or, with `granted`, the queued head that group
        just gave a slot): from this callback when it can go straight to an idle upstream
        connection, else in a task (see the module docstring)."""
        try:
            if self._forward_now(ex) if granted is None else self._dispatch(granted, ex):
                return
        except Exception:
            log.exception("client %s: exchange failed", self.client_ip)
            self._settle(ex)
            self.write(_bad_gateway(ex))
            self.close()
            return
        self.task = self.loop.create_task(self._serve(ex))

    def _forward_now(self, ex: Exchange) -> bool:
        """The common case, without a task: True once the head of `ex` went upstream. False
        leaves `ex` to `_serve` at the step reached: routed and classified (`ex.group`),
        admitted (`ex.admitted`), its backend picked (`ex.backend`)."""
        if ex.upgrade or ex.chunked or ex.content_length:
            return False
        gateway = self.gateway
        route = gateway.routers[self.listener.name].match(ex)
        if route is None:
            return False
        group = ex.group = gateway.groups[route.group]
        class_name = ex.class_name = gateway.classify(route, ex, self)
        ladder = group.admission
        scheduler = group.scheduler
        if not (ladder.takes_free_slot(class_name, scheduler)
                and scheduler.try_admit(class_name)):
            self._queue(group, ex)
            return True
        self._signal(ladder, ex)
        ex.admitted = True
        rec = self.record
        if rec is not None:  # `_record_start`, written out on the common path: a call less
            if not rec.device:
                gateway.segments.fill(rec, ex.headers)
            # The admission's time is the client's last traffic: the read of this request's
            # last bytes, in this callback, or for a pipelined request the write of the answer
            # before it (in this callback, or a loop iteration before when a task ran that
            # exchange). A clock read (~400 instructions) less per request.
            ex.started_at = self.last_active
        return self._dispatch(group, ex)

    def _dispatch(self, group: Group, ex: Exchange) -> bool:
        """`ex` is admitted: pick its backend and write its head to an idle upstream
        connection; False (the backend picked, in `ex.backend`) when there is none."""
        # The balancing key: only `hash` groups use one (the others ignore it).
        key = self.gateway.affinity_key(group, ex, self) if group.hashed else ""
        backend = ex.backend = group.pick(key, self.client_ip)
        pool = backend.pool if backend is not None else None
        upstream = pool.try_getconn("any") if pool is not None else None
        if backend is None or upstream is None:
            return False
        backend.outstanding += 1
        upstream.begin(ex, self, via=self.gateway.via, forwarded_proto=b"http",
                       on_done=self._forwarded)
        self._response_due(group.response_timeout)
        return True

    def _queue(self, group: Group, ex: Exchange) -> None:
        """`_forward_now`'s request found no free slot: refuse it (shed) or queue it, without
        a task. The grant then dispatches it from the callback that freed the slot — the end
        of another exchange — so the backend gets its next request in the same loop
        iteration as it answered the last (a task woken by a future started it one iteration
        later, and at 3x overload those idle gaps were a quarter of the capacity)."""
        gateway = self.gateway
        ladder = group.admission
        scheduler = group.scheduler
        class_name = ex.class_name
        if ladder.sheds(class_name, scheduler):
            ladder.record(class_name, 4)
            if self.record is not None:
                self.record.degradations += 1
            self._refuse(ladder, ex)
            return
        now = gateway.clock.now()
        grant = _Grant(self, group, ex)
        try:
            grant.waiter = scheduler.submit(class_name, now, token=grant)
        except Exception:
            self._refuse(ladder, ex)
            return
        queue_step = ladder.should_queue(class_name)
        if queue_step:  # counted once queued: a full queue refuses it
            ladder.record(class_name, 3)
        gateway.count_class("queued", class_name)
        if self.record is not None:
            self.record.phase("queued", now)
            self.record.degradations += queue_step
        self.queued = grant
        grant.timer = self.loop.call_at(self.loop.time() + grant.waiter.deadline - now,
                                        grant.expire)
        for victim in scheduler.take_displaced():
            gateway.count_class("displaced", victim.class_name)
            victim.token.displaced()
        group.contended(now)
        group.grant_free(now)

    def _granted(self, group: Group, ex: Exchange) -> None:
        """A slot for the queued `ex`: dispatch it now, or hand it to a task when the backend
        has no idle connection."""
        self.queued = None
        self._signal(group.admission, ex)
        ex.admitted = True
        if self.record is not None:
            self._record_start(self.record, ex)
        self._start(ex, group)

    def _refuse(self, ladder: DegradeLadder, ex: Exchange) -> None:
        """503 for `ex` (shed, timed out in the queue, displaced), then the next request
        (`_unavailable` says how a WebSocket handshake is refused)."""
        self.queued = None
        self.gateway.count_class("shed", ex.class_name)
        self._unavailable(ladder, ex)
        self._record_refused(ex)
        if self._ended(ex):
            self._next()

    def _forwarded(self, upstream: UpstreamConnection, failure: UpstreamFailed | None) -> None:
        """The end of an exchange `_forward_now` started: what `_forward` and `_exchange` do
        after their await. A retryable failure hands the exchange to a task for the retry."""
        ex = self.queue[0]
        group, backend = ex.group, ex.backend
        assert group is not None and backend is not None and backend.pool is not None
        backend.outstanding -= 1
        if failure is not None:
            retries = group.retries if ex.method in IDEMPOTENT else 0
            failure.retryable = failure.retryable and retries > 0 and ex.body_size == 0
            group.connect_failed(backend, failure)
            self._give_back(backend.pool, upstream, failure)
            if failure.retryable and not self.closed:
                self.gateway.count("http_retries")
                ex.backend = None
                self.task = self.loop.create_task(self._serve(ex, {backend.name}, 1))
                return
            self._settle(ex)
            self._upstream_failed(ex)
            return
        self._backend_answered(group, backend, ex)
        pool = backend.pool
        if not pool.try_putconn(upstream):  # `_give_back`, written out: a call less per request
            self.gateway.spawn(pool.putconn(upstream))
        self._settle(ex)
        if self._ended(ex):
            self._next()

    def _abandon(self, upstream: UpstreamConnection, exc: BaseException | None) -> None:
        """The client went away while `_forward_now`'s exchange was in flight: the upstream's
        state is unknown, so it is closed and its slot given back, as `_forward` does."""
        upstream.detach()
        upstream.reusable = False
        upstream.close()
        ex = self.queue[0]
        backend = ex.backend
        if backend is not None and backend.pool is not None:
            backend.outstanding -= 1
            self._give_back(backend.pool, upstream, exc or ConnectionResetError("client closed"))
        self._settle(ex)

    def _relay_started(self) -> None:
        """The connection is a byte relay from now on: no head to wait for, no keep-alive
        idle wait (the zombie watch covers silent relays), so the timer goes, and with it
        ~340 bytes per WebSocket that would otherwise stay until the header deadline. The
        frame tracker is made here: a connection that never upgrades needs none."""
        self.header_deadline = self.idle_deadline = 0.0
        self.body_deadline = self.response_deadline = self.send_deadline = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.frames = FrameTracker()

    def _start_relay(self, group: Group, backend: Backend, pool: Any,
                     upstream: UpstreamConnection, ex: Exchange) -> None:
        """A 101: both connections relay bytes from now on. The relay lives as long as its
        session, hours for a WebSocket, so its upstream connection leaves the pool (whose
        `max_in_flight` slots are for requests: kept, two WebSockets would have left none) and
        counts in the backend's load instead, which the balancers read, until it closes."""
        pool.detach(upstream)
        if upstream.closed:  # the backend hung up right after its 101: nothing to relay
            self.close()
            return
        backend.outstanding += 1
        upstream.relay_backend = backend
        self._relay_started()
        self.relay_to = upstream
        self.throttle = RelayThrottle(self, upstream, group.admission, ex.class_name)
        upstream.start_relay(self)
        held, self.held = self.held, None
        if held is not None:  # what the client sent before the 101 goes first (`_hold`)
            if held:
                self._relay_held(upstream, held)
            self._paused = False
            self.throttle.resume_client()  # unless the held bytes' debt or backpressure holds it

    def _relay_held(self, upstream: UpstreamConnection, held: bytes) -> None:
        """Relay `held` as `data_received` relays what comes once the relay started."""
        frames = self.frames
        assert frames is not None
        frames.feed(held)
        upstream.write(held)
        if self.throttle is not None:
            self.throttle.client_sent(len(held))
        engine = self.gateway.escalation
        if engine is not None and frames.messages:
            self.gateway.apply_changes(engine.on_activity(
                self.conn_id, self.gateway.clock.now(), frames.messages))

    def _give_back(self, pool: Any, upstream: UpstreamConnection,
                   error: BaseException | None) -> None:
        if not pool.try_putconn(upstream, error=error):
            self.gateway.spawn(pool.putconn(upstream, error=error))

    def _upstream_failed(self, ex: Exchange) -> None:
        """The upstream failed `ex`, which is not retried: 502 if no answer head went to the
        client yet (a 1xx does not count), else the client can only see the answer cut off.
        The connection closes either way: the request's body may be half read."""
        if not ex.status:
            self.gateway.count("http_502")
            self.write(_bad_gateway(ex))
        ex.keep_alive = False
        self.close()

    def _answer(self, ex: Exchange, status: int, reason: str, extra: bytes = b"",
                body: bytes = b"") -> None:
        """Answer `ex` from the gateway itself (404, 502, 503): `Connection: close` when the
        connection ends after it (the client's wish, a drain, or a body the client withholds
        until told to continue: `_ended` closes it then), and no body to a HEAD request."""
        if ex.body_withheld() or (self.draining and self.serves_last(ex)):
            ex.keep_alive = False
        self.write(simple_response(status, reason, close=not ex.keep_alive,
                                   extra=extra, body=body, head=ex.method == b"HEAD"))

    def _backend_answered(self, group: Group, backend: Backend, ex: Exchange) -> None:
        """The backend answered `ex`: its health follows, and the record names it."""
        if ex.status >= 500:
            # A 5xx answer is an outlier signal (Envoy's consecutive_5xx), not a retry.
            group.connect_failed(backend, UpstreamFailed(f"answered {ex.status}",
                                                         retryable=False))
        else:
            group.connect_ok(backend)
        if self.record is not None:
            self.record.backend = backend.name

    def _settle(self, ex: Exchange) -> None:
        """`ex` ended, answered or not: its admission slot goes back, its record is closed."""
        group = ex.group
        if not ex.admitted or group is None:
            return
        ex.admitted = False
        if not ex.released:
            ex.released = True
            group.release(ex.class_name)
        rec = self.record
        if rec is not None:
            end = ex.ended_at
            if ex.started_at:  # else counted with the upstream's record (`requests_done`)
                end = end or self.gateway.clock.now()
                rec.request_done(ex.started_at, end, ex.class_name, ex.degrade > 0,
                                 ex.status or 502)
                ex.started_at = 0.0
            if self.relay_to is not None and end:  # a 101: the session is active time
                rec.phase("active", end)

    def _ended(self, ex: Exchange) -> bool:
        """`ex` was answered: take it off the queue; True when the connection goes on."""
        queue = self.queue
        queue.pop(0)
        if self._paused:
            if self.rejection is not None:
                # A bad request waits behind the queue; or, empty, one that began after the
                # drain began (`_take_no_more`).
                if not queue or not ex.keep_alive:
                    self._send_rejection(ex)
                    return False
                return True
            if self.held is not None:  # an upgrade request waits for its answer (`_hold`)
                if not queue:  # it was answered, and no relay started: the upgrade was refused
                    held, self.held = self.held, None
                    if not held and self.transport:  # nothing but HTTP: it goes on
                        self._paused = False
                        self.transport.resume_reading()
            elif len(queue) <= PIPELINE_DEPTH and self.transport:
                self._paused = False
                if not self._body_paused:  # else the backend's taking the body resumes it
                    self.transport.resume_reading()
                if self.body_deadline:  # the client had no way to send while reading was paused
                    self._body_due()
        if self.relay_to is not None:
            self.parser = None  # a relay parses nothing more: free it (~1 KiB)
            return False
        if self.parser is None:
            return False  # a refused WebSocket handshake: it closes by itself (_refuse_upgrade)
        if not ex.keep_alive or (self.draining and not queue and self.parsing is None):
            self.close()
            return False
        return True

    def _send_rejection(self, ex: Exchange) -> None:
        """The requests before a bad one were answered: its answer goes out, then the close
        (only the close when the last answer ended the connection, so that its client sends
        nothing after it, or made it a WebSocket relay)."""
        rejection, self.rejection = self.rejection, None
        if rejection and ex.keep_alive and self.relay_to is None:
            self.write(rejection)
        self.close()

    def _next(self) -> None:
        """Answer the next queued request, or wait for one (keep-alive idle timeout)."""
        if self.closed:
            return
        if self.queue:
            self._start(self.queue[0])
        elif self.parsing is None:
            deadline = self.idle_deadline = (self.loop.time()
                                             + self.gateway.limits.keepalive_timeout)
            timer = self.timer
            if timer is None or timer.when() > deadline:  # `_arm`'s test, as `_response_due`
                self._arm(deadline)

    async def _serve(self, ex: Exchange, tried: set[str] | None = None,
                     attempt: int = 0) -> None:
        try:
            await self._exchange(ex, tried, attempt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("client %s: exchange failed", self.client_ip)
            self.write(_bad_gateway(ex))
            self.close()
            return
        finally:
            self.task = None  # a finished task would stay referenced by an idle client
        if self._ended(ex):
            self._next()

    async def _exchange(self, ex: Exchange, tried: set[str] | None, attempt: int) -> None:
        """`ex` from the step `_forward_now` reached (or from the start)."""
        gateway = self.gateway
        group = ex.group
        if group is None:
            route = gateway.routers[self.listener.name].match(ex)
            if route is None:
                gateway.count("http_404")
                self._answer(ex, 404, "Not Found")
                await self._discard_body(ex, 404)
                return
            group = ex.group = gateway.groups[route.group]
            ex.class_name = gateway.classify(route, ex, self)
        if not ex.admitted:
            if not await self._admit(group, ex):
                self._record_refused(ex)
                await self._discard_body(ex, 503)
                return
            ex.admitted = True
            if self.record is not None:
                self._record_start(self.record, ex)
        try:
            await self._forward(group, ex, tried or set(), attempt)
        finally:
            self._settle(ex)


    def _record_start(self, rec: ConnRecord, ex: Exchange) -> None:
        """`ex` is admitted: its start, for `request_done` at its end (one record call per
        request, there)."""
        if not rec.device:  # the first request says who the client is
            self.gateway.segments.fill(rec, ex.headers)
        ex.started_at = self.gateway.clock.now()

    def _record_refused(self, ex: Exchange) -> None:
        """`ex` was answered 503 by admission: it counts as a request of the record."""
        rec = self.record
        if rec is not None:
            if not rec.device:
                self.gateway.segments.fill(rec, ex.headers)
            if rec.current_phase == "queued":  # its wait ended in the refusal
                rec.phase("idle", self.gateway.clock.now())
            rec.requests += 1
            rec.status = 503

    async def _admit(self, group: Group, ex: Exchange) -> bool:
        """Admit `ex` through its group's ladder and scheduler; False once it was answered 503.

        The signal level is read when the request is dispatched, after any wait in the queue:
        requests that queued while the ladder climbed leave with the signal on, and the cheaper
        work they then ask for is what drains the queue. Shed refuses work a free slot cannot
        take at once (the rule is the core's, `DegradeLadder.takes_free_slot` and `sheds`,
        which the simulator applies too)."""
        gateway = self.gateway
        ladder = group.admission
        class_name = ex.class_name
        scheduler = group.scheduler
        now = gateway.clock.now()
        if ladder.takes_free_slot(class_name, scheduler) and scheduler.try_admit(class_name):
            self._signal(ladder, ex)
            return True
        if ladder.sheds(class_name, scheduler):
            gateway.count_class("shed", class_name)
            ladder.record(class_name, 4)
            if self.record is not None:
                self.record.degradations += 1
            self._unavailable(ladder, ex)
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            waiter = scheduler.submit(class_name, now, token=_FutureToken(future))
        except Exception:
            gateway.count_class("shed", class_name)
            self._unavailable(ladder, ex)
            return False
        queue_step = ladder.should_queue(class_name)
        if queue_step:  # counted once queued: a full queue refuses it
            ladder.record(class_name, 3)
        gateway.count_class("queued", class_name)
        if self.record is not None:
            self.record.phase("queued", now)
            self.record.degradations += queue_step
        for victim in scheduler.take_displaced():
            gateway.count_class("displaced", victim.class_name)
            victim.token.displaced()
        group.contended(now)
        group.grant_free(now)
        # Await the future itself, with a timer for the deadline: a grant wakes this task in
        # one loop iteration (wait_for + shield took three or four, with the slot held idle).
        timer = asyncio.get_running_loop().call_later(waiter.deadline - now, _expire,
                                                      scheduler, waiter, future)
        try:
            admitted = await future
        except asyncio.CancelledError:
            if (not scheduler.cancel(waiter) and future.done() and not future.cancelled()
                    and future.result()):
                group.release(class_name)
            raise
        finally:
            timer.cancel()
        if not admitted:
            gateway.count_class("shed", class_name)
            self._unavailable(ladder, ex)
            return False
        self._signal(ladder, ex)
        return True

    def _signal(self, ladder: DegradeLadder, ex: Exchange) -> None:
        """Dispatch time: the request carries the class's signal level as it stands now."""
        level = ladder.signal_level(ex.class_name)
        ex.degrade = level
        if level:
            self.gateway.count_class("signal", ex.class_name)
            ladder.record(ex.class_name, 2)

    def _unavailable(self, ladder: DegradeLadder, ex: Exchange) -> None:
        """Refuse `ex`: 503 with Retry-After, or a valid WebSocket handshake closed with 1013."""
        retry_after = ladder.retry_after(ex.class_name)
        if ex.upgrade:
            accept = handshake_accept(ex.method, ex.headers)
            if accept is not None:
                self._refuse_upgrade(accept, retry_after)
                return
        self._answer(ex, 503, "Service Unavailable", b"Retry-After: %d\r\n" % retry_after)

    def _refuse_upgrade(self, accept: bytes, retry_after: int) -> None:
        """Complete the handshake and close with 1013: a browser's WebSocket cannot read the
        status of a failed handshake, only a close code, and 1013 tells it to come back later
        where a 503 would look like a broken server (1006).

        The connection parses nothing more (the parser goes: what follows are WebSocket
        frames) and is half-closed after the answer, so the client's close frame still finds
        it open; the client then closes, or the grace deadline does."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.write(try_again_later(accept, retry_after))
        self.parser = None
        self.rejection = None  # what the client sent after its handshake were frames, not HTTP
        if self.held is not None:  # dropped too; reading goes on, for the client's close frame
            self.held = None
            self._paused = False
            transport.resume_reading()
        transport.write_eof()
        self.idle_deadline = self.loop.time() + WS_REFUSAL_GRACE
        self._arm(self.idle_deadline)

    async def _discard_body(self, ex: Exchange, status: int) -> None:
        """`ex` was answered `status` by the gateway: read and drop the rest of its body (a
        body timeout then closes without a 408, the answer having gone out)."""
        ex.status = status
        if ex.body_withheld():
            return  # it never comes: the answer said close (see `_answer`)
        while not ex.body_done and not self.closed:
            self.take_body(ex)
            await ex.wait_body()
        self.take_body(ex)

    async def _forward(self, group: Group, ex: Exchange, tried: set[str], first: int) -> None:
        """Attempts `first`.. of `ex` (the first may come with its backend picked, in
        `ex.backend`); `tried` names the backends that failed it already."""
        gateway = self.gateway
        retries = group.retries if ex.method in IDEMPOTENT else 0
        key: str | None = None
        for attempt in range(first, retries + 1):
            backend, ex.backend = ex.backend, None
            if backend is None:
                if key is None:  # as in `_dispatch`
                    key = gateway.affinity_key(group, ex, self) if group.hashed else ""
                backend = group.pick(key, self.client_ip, exclude=tried)
            if backend is None:
                if tried:
                    break  # what failed upstream is the answer: 502
                # Nothing failed: no backend takes work (all down, ejected or drained).
                gateway.count("upstream_unavailable")
                self._answer(ex, 503, "Service Unavailable", body=b"503 Service Unavailable: "
                             b"no backend of group '%s' is available\n" % group.name.encode())
                await self._discard_body(ex, 503)
                return
            tried.add(backend.name)
            pool = backend_pool(backend)
            try:
                upstream = pool.try_getconn("any") or await pool.getconn(
                    "any", timeout=group.config.connect_timeout)
            except (BackendError, OSError) as exc:
                group.connect_failed(backend, exc)
                continue
            except PoolError:
                continue  # the backend's pool is busy, not broken: try another backend
            backend.outstanding += 1
            self.response_deadline = 0.0  # a past attempt's; this one's starts once it is sent
            if ex.expect_continue and not ex.body_done:
                self._body_due()  # the client waited for 100 Continue: it sends from now
            try:
                await upstream.exchange(ex, self, via=gateway.via,
                                        forwarded_proto=b"http", retryable=attempt < retries,
                                        on_sent=functools.partial(self._response_due,
                                                                  group.response_timeout),
                                        on_answered=functools.partial(_answered, group, ex))
            except UpstreamFailed as exc:
                group.connect_failed(backend, exc)
                await pool.putconn(upstream, error=exc)
                if exc.retryable:
                    gateway.count("http_retries")
                    continue
                self._upstream_failed(ex)
                return
            except BaseException as exc:
                # The client went away (or we were cancelled) mid-exchange: the upstream's
                # state is unknown, so close it and give its slot back.
                upstream.reusable = False
                upstream.close()
                gateway.spawn(pool.putconn(upstream, error=exc))
                raise
            finally:
                backend.outstanding -= 1
            self._backend_answered(group, backend, ex)
            if upstream.upgraded:
                self._start_relay(group, backend, pool, upstream, ex)
                return
            self._give_back(pool, upstream, None)
            return
        gateway.count("http_502")
        self._answer(ex, 502, "Bad Gateway")
        await self._discard_body(ex, 502)


class _Rejected(Exception):
    """Raised inside a parser callback after the client was answered and closed."""


def _bad_gateway(ex: Exchange) -> bytes:
    """The 502 (with a close) to `ex`, without a body if it is a HEAD request."""
    return simple_response(502, "Bad Gateway", close=True, head=ex.method == b"HEAD")


def _answered(group: Group, ex: Exchange) -> None:
    """The backend's answer is complete: its admission slot goes to the next waiter at once
    (one loop iteration sooner than the exchange's task could give it back)."""
    if not ex.released:
        ex.released = True
        group.release(ex.class_name)


def _expire(scheduler: Any, waiter: Any, future: asyncio.Future[bool]) -> None:
    """A queued request reached its deadline: if still waiting, it is refused (503)."""
    if scheduler.cancel(waiter) and not future.done():
        future.set_result(False)


class _Grant:
    """The scheduler's token for a request `HttpClient._queue` queued: the grant dispatches
    it; expiry at its deadline and displacement answer 503."""

    __slots__ = ("client", "ex", "group", "timer", "waiter")

    def __init__(self, client: HttpClient, group: Group, ex: Exchange) -> None:
        self.client = client
        self.group = group
        self.ex = ex
        self.waiter: Waiter | None = None
        self.timer: asyncio.TimerHandle | None = None

    def granted(self) -> bool:
        client = self.client
        if client.queued is not self or client.closed:
            return False
        self._stop()
        client._granted(self.group, self.ex)
        return True

    def displaced(self) -> None:
        if self.client.queued is self:
            self._stop()
            self.client._refuse(self.group.admission, self.ex)

    def expire(self) -> None:
        """The deadline: if still waiting, 503."""
        self.timer = None
        if self.waiter is not None and self.group.scheduler.cancel(self.waiter):
            self.displaced()

    def cancel(self) -> None:
        """The client went away while queued: leave the queue."""
        waiter = self.waiter
        self._stop()
        if waiter is not None:
            self.group.scheduler.cancel(waiter)

    def _stop(self) -> None:
        """Done waiting: the timer goes, and the waiter, whose token this is (a reference
        cycle the garbage collector would otherwise free, one per queued request)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.waiter = None


class _FutureToken:
    """The scheduler's token for an HTTP waiter: `granted()` resolves its future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self.future = future

    def granted(self) -> bool:
        if self.future.done():
            return False
        self.future.set_result(True)
        return True

    def displaced(self) -> None:
        if not self.future.done():
            self.future.set_result(False)


def backend_pool(backend: Backend) -> Any:
    pool = getattr(backend, "pool", None)
    if pool is None:
        raise UpstreamFailed(f"backend {backend.name} has no upstream pool", retryable=True)
    return pool

