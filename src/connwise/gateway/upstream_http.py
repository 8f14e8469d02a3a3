"""Keep-alive HTTP/1.1 connections to a backend, pooled by `connwise.Pool`.

`UpstreamConnection` is the protocol of one upstream socket. For each exchange it writes the
rewritten request head (hop-by-hop headers removed, those the Connection header names too;
X-Forwarded-For, X-Forwarded-Proto and Via added; `Connwise-Degrade` when the ladder signals),
streams the request body, parses the response with httptools and streams it to the client with
the client's own framing (the same hop-by-hop headers removed, a Date added if the backend sent
none; a body of unknown length chunked for an HTTP/1.1 client, sent as it is to an HTTP/1.0 one
and ended by the close), then goes back to its backend's pool if both sides allow keep-alive.
A `101` answer turns it into a byte relay. `UpstreamDriver` lets a `connwise.Pool` open, check
and close these connections.

With telemetry on, each upstream connection is one record (`kind = upstream`, source the group,
`backend` the backend): from its connect (a failed connect is a failed record) to its close,
its requests with their active and idle time, bytes each way (`bytes_in` what the backend
sent), the first answer's latency. It also tells the client's record what the client waited
for: the connect of a fresh connection (`upstream_connect_s`) and the first answer byte
(`first_byte_s`).

An exchange ends through one callback, `on_done(upstream, failure)`, called once from the
protocol callbacks, after what the last chunk produced for the client was written: `begin`
serves a bodiless request without a task (the client's callback carries on from there), and
`exchange` wraps the same callback in a future for a task that streams a request body.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, TypeAlias, cast

import httptools

from connwise.errors import BackendUnavailable, ConnectionBroken
from connwise.gateway.wsframes import FrameTracker
from connwise.telemetry.record import requests_done

if TYPE_CHECKING:
    from connwise.core.clock import Clock
    from connwise.gateway.http import Exchange, HttpClient
    from connwise.gateway.upstreams import Backend
    from connwise.telemetry.record import ConnRecord
    from connwise.telemetry.recorder import Recorder

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authorization"})

#: Fields a trailer section must not carry (RFC 9110 6.5.1: framing, routing, authentication,
#: response control and content processing), and the hop-by-hop ones: dropped when a backend's
#: trailer section is relayed.
NOT_TRAILERS = HOP_BY_HOP | frozenset({
    b"content-length", b"host", b"content-type", b"content-encoding", b"content-range",
    b"authorization", b"set-cookie", b"www-authenticate", b"age", b"cache-control", b"date",
    b"expires", b"location", b"retry-after", b"vary"})


class UpstreamFailed(Exception):
    """The upstream failed during an exchange; `retryable` if no response byte was sent."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


#: How an exchange ends: the connection and its failure (None when the answer is complete).
OnDone: TypeAlias = "Callable[[UpstreamConnection, UpstreamFailed | None], None]"


#: Upstream record ids, unique in the process (a group's backends share its source).
_upstream_ids = itertools.count(1)


class UpstreamRecording:
    """What telemetry needs of a backend's upstream connections: the recorder, its clock, the
    names, and whether each connection is a record itself (`records`) or is only timed, for
    the client records that wait for its connect."""

    __slots__ = ("backend", "clock", "recorder", "records", "source")

    def __init__(self, recorder: Recorder, clock: Clock, source: str, backend: str, *,
                 records: bool = True) -> None:
        self.recorder = recorder
        self.clock = clock
        self.source = source
        self.backend = backend
        self.records = records

    def begin(self, started: float) -> ConnRecord:
        return self.recorder.begin_upstream(str(next(_upstream_ids)), self.source, started,
                                            self.backend)

    def failed(self, started: float, reason: str) -> None:
        """A connect that began at `started` failed: a record of its own, with the error."""
        rec = self.begin(started)
        rec.errors = 1
        self.recorder.end(rec, self.clock.now(), reason, failed=True)


class UpstreamTiming:
    """An upstream connection's telemetry state, one object (and one slot of the protocol)
    only when telemetry is on: a gateway without it keeps every WebSocket's upstream half as
    small as before."""

    __slots__ = ("busy_at", "close_reason", "connect_s", "connected_at", "fresh", "recording")

    def __init__(self, recording: UpstreamRecording, connected_at: float,
                 connect_s: float) -> None:
        self.recording = recording
        self.connected_at = connected_at
        self.connect_s = connect_s
        #: No exchange yet: the first one tells its client's record about the connect.
        self.fresh = True
        #: When the exchange in hand began, for the record (0.0: none).
        self.busy_at = 0.0
        self.close_reason = ""


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; see the module docstring."""

    __slots__ = (
        "_chunked_out",
        "_client",
        "_ended",
        "_exchange",
        "_failure",
        "_head_fed",
        "_head_request",
        "_head_sent",
        "_headers",
        "_on_done",
        "_out",
        "_parser",
        "_status",
        "_until_close",
        "_writable",
        "_write_paused",
        "address",
        "closed",
        "frames",
        "record",
        "relay_backend",
        "relay_client",
        "reusable",
        "timing",
        "transport",
        "upgraded",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.upgraded = False
        self.relay_client: HttpClient | None = None
        #: The backend whose load (`outstanding`) a relay (an upgraded connection, detached
        #: from its pool) counts in until it ends: a slot rather than a callback object.
        self.relay_backend: Backend | None = None
        self.frames = FrameTracker()
        #: Released (None) once the connection is a relay (`start_relay`).
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._client: HttpClient | None = None
        self._exchange: Exchange | None = None
        #: How the current exchange ends (None between exchanges); see the module docstring.
        self._on_done: OnDone | None = None
        #: The answer completed (or failed) inside `data_received`: the end is reported once
        #: what the chunk produced was written, so nothing the callback writes overtakes it.
        self._ended = False
        self._failure: UpstreamFailed | None = None
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._chunked_out = False
        self._until_close = False
        self._head_sent = False
        #: Bytes of the response head read in chunks that did not end it (`_head_read`).
        self._head_fed = 0
        self._head_request = False
        self._write_paused = False
        self._writable: asyncio.Future[None] | None = None
        #: While a chunk from the backend is parsed, what it produces for the client is
        #: collected here and written once (one writev, not one send per head and body).
        self._out: list[bytes] | None = None
        #: With telemetry (set by the driver): this connection's record (None when upstream
        #: records are off) and its timing.
        self.record: ConnRecord | None = None
        self.timing: UpstreamTiming | None = None

    # -- transport ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        rec, timing = self.record, self.timing
        if rec is not None and timing is not None:
            self.record = None
            if self.upgraded:
                rec.msgs_in = self.frames.messages
                if self.relay_client is not None:  # the session's last traffic ends its use
                    rec.unuse(self.relay_client.last_active)
            recording = timing.recording
            now = recording.clock.now()
            ex = self._exchange
            if timing.busy_at and ex is not None:
                rec.request_done(timing.busy_at, now, ex.class_name, ex.degrade > 0,
                                 self._status or 502)
            reason = timing.close_reason or ("reset" if exc else "backend closed")
            recording.recorder.end(rec, now, reason, exc is not None)  # positional: cheaper
        client = self.relay_client
        if client is not None:
            client._closing_for("backend reset" if exc else "backend closed")
            client.close()
        backend, self.relay_backend = self.relay_backend, None
        if backend is not None:
            backend.outstanding -= 1
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._on_done is not None:
            if self._until_close and self._head_sent and exc is None:
                # The close ends a body of unknown length (a reset does not: it cut it off).
                self._finish_client_body()
                self._finish(None, 0.0)
            else:
                self._finish(UpstreamFailed(
                    f"backend {self.address} closed the connection before answering"
                    if not self._head_sent else f"backend {self.address} closed mid-response",
                    retryable=not self._head_sent), 0.0)
        # The parser holds bound methods of this protocol: without this, a reference cycle
        # that only the garbage collector frees (see HttpClient.connection_lost).
        self._parser = None

    def pause_writing(self) -> None:
        """The backend does not read fast enough: a request body waits (`_send_body`), and a
        relay stops reading its client until `resume_writing`."""
        self._write_paused = True
        client = self.relay_client
        if client is not None and client.transport is not None:
            client.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        client = self.relay_client
        if client is not None and client.throttle is not None:
            client.throttle.resume_client()

    def write(self, data: bytes | bytearray) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            if self.record is not None:
                self.record.bytes_out += len(data)

    def close(self, *, abort: bool = False) -> None:
        if self.transport is not None and not self.closed:
            timing = self.timing
            if timing is not None and not timing.close_reason:
                timing.close_reason = "gateway closed"
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def start_relay(self, client: HttpClient) -> None:
        """After a 101: relay bytes to and from `client`; the response parser is freed, and
        reading, stopped at the 101, goes on (unless the client's backpressure holds it)."""
        self.relay_client = client
        self._parser = None
        rec, timing = self.record, self.timing
        if rec is not None and timing is not None:
            rec.phase("active", timing.recording.clock.now())  # relaying is its use now
        if self.transport is not None and not self.closed and not client._write_paused:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.record is not None:
            self.record.bytes_in += len(data)
        client = self.relay_client
        if client is not None:
            self.frames.feed(data)
            client.write(data)
            if client.throttle is not None:
                client.throttle.upstream_sent(len(data))
            return
        parser = self._parser
        if parser is None:
            return
        client = self._client
        out: list[bytes] = []
        self._out = out
        try:
            parser.feed_data(data)
            if not self._head_sent and self._on_done is not None and not self._ended:
                self._head_read(client, len(data))  # the head goes on past this chunk
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            rest = data[offset:]
            if rest and client is not None:
                self.frames.feed(rest)
                out.append(rest)
            if self.transport is not None:
                # Until the exchange's task starts the relay (`start_relay`), a later read would
                # reach the spent parser and be lost: what the backend sends next waits in the
                # socket. (uvloop reads again at once when a read filled its buffer.)
                self.transport.pause_reading()
        except httptools.HttpParserError as exc:
            self.reusable = False
            if self._on_done is not None and not self._ended:  # a complete answer stands
                self._ended = True
                self._failure = UpstreamFailed(f"backend {self.address} sent an invalid "
                                               f"response: {exc}", retryable=False)
            self.close()
        finally:
            self._out = None
            written_at = 0.0
            if out and client is not None:
                if len(out) == 1:
                    client.write(out[0])
                else:
                    client.writelines(out)
                if not client.closed:  # the write read the clock (`last_active`)
                    written_at = client.last_active
        if self._ended:
            # The answer ended with what was just written: that write's time is its end.
            self._finish(self._failure, written_at)

    def _head_read(self, client: HttpClient | None, size: int) -> None:
        """`size` more bytes of a response head that has not ended: over `max_header_bytes`
        (counted per chunk, as a request head's), the answer is invalid, 502. (httptools
        holds a header line back until it ends: an endless one would grow in memory.)"""
        fed = self._head_fed = self._head_fed + size
        if client is not None and fed > client.gateway.limits.max_header_bytes:
            self.reusable = False
            self._ended = True
            self._failure = UpstreamFailed(
                f"backend {self.address} sent a response head over "
                f"limits.max_header_bytes ({client.gateway.limits.max_header_bytes})",
                retryable=False)
            self.close()

    def _emit(self, client: HttpClient, data: bytes) -> None:
        """Send `data` to the client now, or with the rest of the chunk being parsed."""
        out = self._out
        if out is None:
            client.write(data)
        else:
            out.append(data)

    # -- one exchange -------------------------------------------------------------------------

    def begin(self, ex: Exchange, client: HttpClient, *, via: bytes, forwarded_proto: bytes,
              on_done: OnDone) -> None:
        """Write the head of `ex` and relay the answer to `client`; `on_done` is called once,
        when the answer is complete or the exchange failed. The caller sends any body."""
        self._client = client
        self._exchange = ex
        self._on_done = on_done
        self._ended = False
        self._failure = None
        self._status = 0
        self._head_sent = False
        self._head_fed = 0
        self._until_close = False
        self._head_request = ex.method == b"HEAD"
        client.active_upstream = self
        timing = self.timing
        if timing is not None:
            if timing.fresh:
                self._first_use(timing, client, ex)
            if self.record is not None:
                # The use starts at the request's admission (the client's clock reading), or
                # at the connect the request waited for.
                start = ex.started_at
                connected_at = timing.connected_at
                timing.busy_at = start if start > connected_at else connected_at
                ex.ended_at = 0.0  # a retry's attempt ends later than the one that failed
        self.write(self._request_head(ex, client, via, forwarded_proto))

    def _first_use(self, timing: UpstreamTiming, client: HttpClient, ex: Exchange) -> None:
        """The first exchange of this connection: the client's record learns whether it
        waited for the connect."""
        timing.fresh = False
        client_rec = client.record
        if client_rec is not None and ex.started_at:
            client_rec.upstream_connected(ex.started_at, timing.connected_at, timing.connect_s)

    async def exchange(self, ex: Exchange, client: HttpClient, *, via: bytes,
                       forwarded_proto: bytes, retryable: bool,
                       on_sent: Callable[[], None] | None = None,
                       on_answered: Callable[[], None] | None = None) -> None:
        """Send `ex` with its body and relay the answer to `client`; `on_sent` is called once
        the request's last byte is written (the response timeout starts there), `on_answered`
        (in the protocol callback) as soon as the answer is complete. Raises UpstreamFailed."""
        if self.closed:
            raise UpstreamFailed(f"backend {self.address} connection is closed", retryable=True)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.begin(ex, client, via=via, forwarded_proto=forwarded_proto,
                   on_done=functools.partial(_resolve, done, on_answered))
        try:
            await self._send_body(ex, client)
            if done.done():
                # Answered before its body was all sent: the backend may not have read the
                # body, and would then read it as a request of its own and send its answer
                # to whoever is next on this connection (request smuggling). Not reused.
                self.reusable = False
            if on_sent is not None:
                on_sent()
            await done
        except UpstreamFailed as exc:
            exc.retryable = exc.retryable and retryable and ex.body_size == 0
            raise
        finally:
            if self._exchange is ex:
                self.detach()  # cancelled before the end: nothing more goes to this client
            # A failure raised from `done` has this frame in its traceback: without this, the
            # future, the exception and the frames would be a cycle for the collector.
            del done

    def awaiting_head(self) -> bool:
        """An exchange is in hand and its response head has not come yet."""
        return self._on_done is not None and not self._head_sent

    def write_blocked(self) -> bool:
        """The backend is not reading what was written (writing paused)."""
        return self._write_paused and not self.closed

    def fail(self, failure: UpstreamFailed) -> None:
        """End the exchange in hand now with `failure` (its `on_done` is called) and close
        this connection: whatever the backend sends later belongs to no request. One that
        does not read what was written is aborted (a close would wait for it to)."""
        self.reusable = False
        self.close(abort=self._write_paused)
        self._finish(failure, 0.0)

    def detach(self) -> None:
        """Forget the current exchange without calling its `on_done` (the end of the answer,
        or its client is gone); this connection's record counts the request's use."""
        self._detach(False, 0.0)

    def _detach(self, answered: bool, now: float) -> None:
        """`detach` at `now` (0.0: read the clock); `answered`: the exchange ends with its
        answer whole (`_finish` without a failure), so its client's request ends here too,
        and both records count it in one call (`requests_done`), which the client's
        `_settle` then finds done. Not after a failure: a retry may still answer the
        request."""
        timing = self.timing
        if timing is not None and timing.busy_at:
            busy_at = timing.busy_at
            timing.busy_at = 0.0
            rec = self.record
            ex = self._exchange
            if rec is not None and ex is not None:
                if not now:
                    now = timing.recording.clock.now()
                client = self._client
                client_rec = client.record if client is not None else None
                if answered and client_rec is not None and ex.started_at:
                    requests_done(client_rec, rec, ex.started_at, busy_at, now, ex.class_name,
                                  ex.degrade > 0, ex.status or 502, self._status or 502)
                    ex.started_at = 0.0
                else:
                    rec.request_done(busy_at, now, ex.class_name, ex.degrade > 0,
                                     self._status or 502)
                ex.ended_at = now  # the client's record ends the request there too
        client = self._client
        if client is not None:
            client.active_upstream = None
            if client._write_paused and self.transport is not None and not self.upgraded:
                # The client's backpressure may have stopped reading (`HttpClient.pause_writing`)
                # in the chunk that ended the answer, and its `resume_writing` resumes only its
                # active upstream: paused, this connection would go back to its pool deaf, and
                # the next request on it, from any client, would never get its answer. (A relay
                # keeps its client's backpressure. A client not paused now resumed this one
                # when it drained, or never paused it.)
                self.transport.resume_reading()
        self._client = None
        self._exchange = None
        self._on_done = None
        self._ended = False
        self._failure = None

    def _finish(self, failure: UpstreamFailed | None, now: float) -> None:
        """Detach the exchange and call its `on_done`; `now`: the clock reading of the
        answer's last write to the client, when this callback made it, else 0.0."""
        on_done = self._on_done
        if on_done is not None:
            self._detach(failure is None, now)
            on_done(self, failure)

    def _request_head(self, ex: Exchange, client: HttpClient, via: bytes,
                      proto: bytes) -> bytes:
        # Pieces joined once, not `%` formatting: bytes' `%` parses its format string per call
        # (~1,600 instructions for this line and the X-Forwarded-For one, callgrind).
        lines = [ex.method, b" ", ex.url, b" HTTP/1.1\r\n"]
        append = lines.append
        forwarded_for = b""
        connection = ex.connection
        if connection is None or connection.lower() in _PLAIN_CONNECTION:
            drop: frozenset[bytes] = _DROPPED  # the common requests: no set built per request
        else:
            drop = _DROPPED | connection_options(connection)
        for name, value in ex.headers:
            lower = name.lower()
            if lower in drop:
                if lower == b"x-forwarded-for":  # each line is part of one list (RFC 9110 5.3)
                    forwarded_for += value + b", "
                continue
            if 95 in lower and lower.replace(b"_", b"-") in drop:  # 95: `_`, by value (cheap)
                # CGI and WSGI read `Connwise_Degrade` as Connwise-Degrade (both become
                # HTTP_CONNWISE_DEGRADE): it would pass for a header the gateway sets or drops.
                continue
            lines += (name, b": ", value, b"\r\n")  # no formatting: joined once below
        if not ex.host and ex.header(b"host") is None:
            # An HTTP/1.0 request without one goes on as HTTP/1.1, which requires a Host (RFC
            # 9112 3.2): the backend's authority, as nginx's default `Host $proxy_host`.
            append(b"Host: %s\r\n" % self.address.encode())
        lines += (b"X-Forwarded-For: ", forwarded_for, client.client_ip_bytes,
                  b"\r\nX-Forwarded-Proto: ", proto, b"\r\nVia: ",
                  _VERSIONS.get(ex.version) or ex.version.encode(), b" ", via, b"\r\n")
        if ex.degrade:
            lines.append(b"Connwise-Degrade: %d\r\n" % ex.degrade)
        if ex.upgrade:
            upgrade = ex.header(b"upgrade") or b"websocket"
            lines.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade)
        elif ex.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _send_body(self, ex: Exchange, client: HttpClient) -> None:
        """Stream the body of `ex` as `client` reads it: what was read since the last write
        goes in one write (one chunk, if chunked), and while the backend does not take it
        (writing paused) the client's reading stops at `BODY_BUFFER` and the backend has
        `body_timeout` to take more (`HttpClient.body_send_due`)."""
        chunked = ex.chunked and not ex.upgrade
        while True:
            if ex.body:
                chunk = client.take_body(ex)
                self.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self._write_paused and not self.closed:
                    client.body_send_due()
                    self._writable = asyncio.get_running_loop().create_future()
                    await self._writable
                    client.send_deadline = 0.0
                continue
            if ex.body_done or ex.upgrade:
                break
            await ex.wait_body()
        if chunked:
            self.write(b"0\r\n\r\n")

    # -- response parsing (httptools callbacks) -----------------------------------------------

    def on_message_begin(self) -> None:
        if self._on_done is None or self._head_sent:
            # An answer no request in hand asked for: bytes after the end of the last one (in
            # its chunk, or while idle). They must reach no client, which would read them as
            # the answer to its next request, and the connection ends: kept, the next answer
            # on it, to any client, would be read after them. The parser error closes it.
            raise UpstreamFailed(f"backend {self.address} sent bytes after its answer",
                                 retryable=False)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The head's headers are needed only here: an idle connection keeps none of them.
        headers, self._headers = self._headers, []
        client = self._client
        ex = self._exchange
        parser = self._parser
        if client is None or ex is None or parser is None:
            self.reusable = False
            return
        status = parser.get_status_code()
        self._status = status
        client_rec, rec, timing = client.record, self.record, self.timing
        if ((client_rec is not None and client_rec.first_byte_s is None)
                or (rec is not None and rec.first_byte_s is None)):
            self._first_byte(client, ex, timing)
        if status < 200:
            if status < 100:
                # llhttp reads `000` as 0: no status a client can be sent (nor one that
                # counts as an answer). An invalid answer, 502.
                raise UpstreamFailed(f"backend {self.address} sent status {status}",
                                     retryable=False)
            if status != 101:
                if ex.version != "1.0":  # RFC 9110 15.2: never a 1xx to an HTTP/1.0 client
                    self._emit(client, _interim(status, headers))
                return
        if status == 101 and not ex.upgrade:
            # A protocol switch the request did not ask for: the client would get a 101 while
            # the gateway went on with HTTP. An invalid answer (502); the parser error this
            # raises ends the connection.
            raise UpstreamFailed(f"backend {self.address} switched protocols (101) for a "
                                 "request that asked for no upgrade", retryable=False)
        keep_alive = parser.should_keep_alive()
        if not keep_alive:
            self.reusable = False
        # One pass over the headers: framing, the Upgrade value, Date, and the lines to forward.
        length = None
        chunked = False
        dated = False
        upgrade = b"websocket"
        named = _NO_NAMES
        status_line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
        lines = [status_line]
        append = lines.append
        for name, value in headers:
            lower = name.lower()
            if lower in _ANSWER_READ:  # one set lookup for the common fields
                if lower == b"content-length":
                    length = value
                elif lower == b"date":
                    dated = True
                else:  # hop-by-hop: not forwarded
                    if lower == b"transfer-encoding":
                        if (chunked or (value != b"chunked"
                                        and value.lower().rstrip(b" ") != b"chunked")) and not (
                                self._head_request or status in (204, 304)):
                            # The gateway sent no TE header: a backend may apply no transfer
                            # coding but chunked (RFC 9112 7.4), the only one the gateway
                            # decodes. Any other one would reach the client dropped (its coded
                            # bytes read as the content), or, not last, ending the body at the
                            # close (llhttp) where the gateway expected a last chunk. (An
                            # answer without a body may name the codings it would have had.)
                            raise UpstreamFailed(
                                f"backend {self.address} sent Transfer-Encoding other than "
                                f"chunked alone: {value[:200]!r}", retryable=False)
                        chunked = True
                    elif lower == b"upgrade":
                        upgrade = value
                    elif lower == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                        named |= connection_options(value)
                    continue
            lines += (name, b": ", value, b"\r\n")  # no formatting: joined once below
        if named:  # the backend made more headers hop-by-hop (RFC 9110 7.6.1): drop them
            lines = [status_line]
            for name, value in headers:
                lower = name.lower()
                if lower not in HOP_BY_HOP and lower not in named:
                    lines += (name, b": ", value, b"\r\n")
            append = lines.append
            dated = dated and b"date" not in named
        if not dated and status != 101:
            # RFC 9110 6.6.1: a recipient with a clock that forwards a response without Date
            # MUST add one (most backends send theirs: this is rarely reached).
            append(date_field())
        no_body = self._head_request or status in (204, 304)
        self._until_close = not no_body and length is None and not chunked and status != 101
        self._chunked_out = chunked and not no_body
        close_client = (not ex.keep_alive or (client.draining and client.serves_last(ex))
                        or self._until_close)
        if self._chunked_out and ex.version == "1.0":
            # An HTTP/1.0 client knows no chunks: the body of unknown length goes to it as it
            # is, and the close of its connection ends it (RFC 9112 6.3, 7.1).
            self._chunked_out = False
            close_client = True
        if close_client:
            ex.keep_alive = False
        if status == 101:
            append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade)
            self.upgraded = True
            self.reusable = False
        else:
            if self._chunked_out:
                append(b"Transfer-Encoding: chunked\r\n")
            append(b"Connection: close\r\n" if close_client else b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        out = self._out  # `_emit`, inlined: once per answer
        if out is None:
            client.write(b"".join(lines))
        else:
            out.append(b"".join(lines))
        ex.status = status
        self._head_sent = True
        if client._write_paused and self.transport is not None:
            # The client has not read what came before (its backpressure outlives the answer
            # that caused it): the rest of this one waits, as `pause_writing` would have made
            # it, until `resume_writing` resumes the active upstream. Read now, all of it, and
            # of each answer after it, would pile up in the gateway. (Paused only once the
            # head came: the response timeout is the backend's, not the client's.)
            self.transport.pause_reading()
        if status == 101:
            self._complete()
        elif self._head_request:
            self._parser = httptools.HttpResponseParser(self)
            self._complete()

    def _first_byte(self, client: HttpClient, ex: Exchange,
                    timing: UpstreamTiming | None) -> None:
        """The answer's head arrived: the first one of either record sets its `first_byte_s`
        (the client's from the request's admission, this connection's from its send)."""
        now = client.gateway.clock.now()
        client_rec, rec = client.record, self.record
        if client_rec is not None and client_rec.first_byte_s is None and ex.started_at:
            client_rec.first_byte_s = now - ex.started_at
        if rec is not None and rec.first_byte_s is None and timing is not None and timing.busy_at:
            rec.first_byte_s = now - timing.busy_at

    def on_body(self, body: bytes) -> None:
        if self._head_request:
            # A body to a HEAD request, read by the parser that had the head (it knows no HEAD,
            # and reads the rest of its chunk by the answer's framing): bytes after the answer,
            # for nobody (see on_message_begin).
            raise UpstreamFailed(f"backend {self.address} sent a body to a HEAD request",
                                 retryable=False)
        client = self._client
        if client is None:
            return
        if self._chunked_out:
            body = b"%x\r\n%s\r\n" % (len(body), body)
        out = self._out
        if out is None:
            client.write(body)
        else:
            out.append(body)

    def on_message_complete(self) -> None:
        status = self._status
        if 100 <= status < 200 and status != 101:
            self._status = 0
            return
        # Fields the parser handed over since the head are the trailer section's: they go
        # with this answer or nowhere, never into the next answer's head on this connection.
        trailers, self._headers = self._headers, []
        if self._chunked_out:
            self._finish_client_body(trailers)
        if self._out is not None and self._on_done is not None:
            self._ended = True  # the common case of `_complete`, without the call
        else:
            self._complete()

    def _finish_client_body(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """The last chunk, with the backend's trailer fields (RFC 9112 7.1.2) but those that
        must not be trailers or are hop-by-hop (RFC 9110 6.5.1), which are dropped."""
        if self._chunked_out and self._client is not None:
            last = b"0\r\n"
            if trailers:
                last += b"".join(b"%s: %s\r\n" % (name, value) for name, value in trailers
                                 if name.lower() not in NOT_TRAILERS)
            self._emit(self._client, last + b"\r\n")
            self._chunked_out = False

    def _complete(self) -> None:
        if self._on_done is None:
            return
        if self._out is not None:
            self._ended = True  # reported by data_received once the chunk's output is written
        else:
            self._finish(None, 0.0)


def _resolve(done: asyncio.Future[None], on_answered: Callable[[], None] | None,
             upstream: UpstreamConnection, failure: UpstreamFailed | None) -> None:
    """`exchange`'s end: wake its task; an answer (not a 101) also calls `on_answered`."""
    if done.done():
        return
    if failure is not None:
        done.set_exception(failure)
        return
    # The waiting task's wake-up is queued before whatever `on_answered` wakes, so it gives
    # this connection back to the pool before a woken waiter asks for one.
    done.set_result(None)
    if on_answered is not None and not upstream.upgraded:
        on_answered()


#: Request headers not forwarded as they came: hop-by-hop ones, and those the gateway sets
#: (X-Forwarded-For is extended, X-Forwarded-Proto and Connwise-Degrade replaced); nor is
#: any of them spelled with underscores.
_DROPPED = HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"connwise-degrade"}

#: Response fields `on_headers_complete` reads (or drops): one set lookup per field.
_ANSWER_READ = HOP_BY_HOP | {b"content-length", b"date"}

#: The fields a response's Connection header names when it names none (the common case): a
#: constant, not a `frozenset()` call per response.
_NO_NAMES: frozenset[bytes] = frozenset()


class _DateField:
    """The `Date` field line for the current second (RFC 9110 6.6.1), formatted once a
    second: `date_field()`."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def __call__(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.line = b"Date: %s\r\n" % formatdate(second, usegmt=True).encode()
            self.second = second
        return self.line


#: `date_field()`: `Date: <IMF-fixdate>\r\n` for now.
date_field = _DateField()

#: What `connection_options` leaves out: the headers a Connection header cannot make
#: hop-by-hop, the framing of a message whose body the gateway streams (without Content-Length a
#: request body would reach the backend unframed: a smuggled request) and the Host the request
#: was routed by; and the tokens that are dropped anyway or name no header.
_NOT_OPTIONS = HOP_BY_HOP | {b"content-length", b"host", b"close", b""}

#: Connection header values (lowercased) that name no header to drop: the common answers skip
#: `connection_options`.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})


def connection_options(value: bytes) -> frozenset[bytes]:
    """The header names a Connection header's value lists (RFC 9110 7.6.1: those headers are
    hop-by-hop, not forwarded), less `_NOT_OPTIONS`."""
    return frozenset(t.strip().lower() for t in value.split(b",")) - _NOT_OPTIONS


#: Status lines by status, precomputed (an HTTPStatus lookup per response costs ~0.7 us).
#: A request's HTTP version as `Via` names it, without an `encode()` per request.
_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}

_STATUS_LINES: dict[int, bytes] = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode())
                                   for s in HTTPStatus}


def _interim(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A 1xx answer as the client gets it: its own status and its fields (a 103's `Link`
    headers are what it is for), hop-by-hop ones dropped and those its Connection header names
    (RFC 9110 15.2: a proxy forwards 1xx answers; 7.6.1)."""
    lines = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Informational\r\n" % status]
    drop = HOP_BY_HOP
    for name, value in headers:
        if name.lower() == b"connection" and value.lower() not in _PLAIN_CONNECTION:
            drop = drop | connection_options(value)
    for name, value in headers:
        if name.lower() not in drop:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class UpstreamDriver:
    """Lets `connwise.Pool` open and close keep-alive connections to one backend."""

    name = "http-upstream"
    #: An exchange cut short leaves `reusable` false, which `is_broken` reads.
    settles_interrupts = True

    def __init__(self, host: str, port: int, recording: UpstreamRecording | None = None) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        #: Set when telemetry is on: each connect is timed, and with `recording.records` every
        #: connection (and failed connect) is a record.
        self.recording = recording

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        recording = self.recording
        started = recording.clock.now() if recording is not None else 0.0
        try:
            _, protocol = await loop.create_connection(
                lambda: UpstreamConnection(self.address), self.host, self.port)
        except OSError as exc:
            reason = f"could not connect to backend {self.address}: {exc.strerror or exc}"
            if recording is not None and recording.records:
                recording.failed(started, reason)
            raise BackendUnavailable(reason) from exc
        except asyncio.CancelledError:  # the pool's connect timeout, or shutdown
            if recording is not None and recording.records:
                recording.failed(started, "connect cancelled (timed out, or the pool closed)")
            raise
        if recording is not None:
            now = recording.clock.now()
            protocol.timing = UpstreamTiming(recording, now, now - started)
            if recording.records:
                rec = protocol.record = recording.begin(started)
                rec.upstream_connect_s = now - started
                rec.phase("idle", now)
        return protocol

    async def check(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            raise ConnectionBroken(f"backend {self.address} closed an idle connection")

    def needs_reset(self, conn: UpstreamConnection) -> bool:
        return False

    async def reset(self, conn: UpstreamConnection, *, full: bool) -> None:
        return None

    def is_connection_error(self, exc: BaseException) -> bool:
        return isinstance(exc, (UpstreamFailed, OSError))

    def is_broken(self, conn: UpstreamConnection) -> bool:
        return conn.closed or not conn.reusable

    async def close(self, conn: UpstreamConnection) -> None:
        conn.close()
