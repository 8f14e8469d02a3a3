"""Edges of the http listener over raw loopback sockets: a request head that never ends, an
upstream that fails before answering, absolute-form request targets, HTTP/1.0 clients and
Connection-named headers, and a bad request pipelined behind one still in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import pytest

from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway_http_fastpath import gateway_tasks, until

#: A backend's answer to one request head (its raw bytes): the bytes to send back, or None to
#: close the connection without answering.
Answer = Callable[[bytes], Awaitable[bytes | None]]


class LoopbackServer:
    """An asyncio stream server on loopback for the tests' backends: `start`, `address`,
    `stop`; a subclass answers in `_serve`."""

    server: asyncio.Server | None = None

    async def start(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class RawBackend(LoopbackServer):
    """A keep-alive HTTP backend on loopback that keeps every request head it reads (the
    bytes as they came) and body (Content-Length only), and answers what `answer` says."""

    def __init__(self, answer: Answer, *, close_after: bool = False,
                 read_bodies: bool = True) -> None:
        self.answer = answer
        #: Close the connection after each answer (a partial one stays partial).
        self.close_after = close_after
        #: False: answer as soon as a head is read, leaving its body in the stream, where
        #: it is read as the next request (a backend that answers early).
        self.read_bodies = read_bodies
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        #: Connections the gateway opened to it.
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                for length in header_of(head, b"content-length") if self.read_bodies else ():
                    self.bodies.append(await reader.readexactly(int(length)))
                answer = await self.answer(head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def flood(gateway: Gateway, start: bytes) -> int:
    """Send `start`, then one endless line in 64 KiB pieces until the gateway closes (at most
    64 MiB); the bytes of the line sent."""
    _, writer = await connect(gateway)
    sent = 0
    piece = b"a" * 65536
    writer.write(start)
    with pytest.raises(ConnectionError):  # the gateway closed: our writes fail
        while sent < 64 * 1024 * 1024:
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(piece)
    writer.close()
    return sent


def header_of(head: bytes, name: bytes) -> list[bytes]:
    """The values of the header `name` in a raw head."""
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
            if line.split(b":", 1)[0].strip().lower() == name]


def undated(message: bytes) -> bytes:
    """`message` without the Date line of its head (the gateway adds one to an answer whose
    backend sent none, and to its own: it changes each second)."""
    head, end, rest = message.partition(b"\r\n\r\n")
    return b"\r\n".join(line for line in head.split(b"\r\n")
                         if line[:5].lower() != b"date:") + end + rest


async def ok(head: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[Answer], Awaitable[RawBackend]]]:
    started: list[RawBackend] = []

    async def start(answer: Answer, *, close_after: bool = False) -> RawBackend:
        backend = await RawBackend(answer, close_after=close_after).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


def web_config(backends: list[str], **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"app": {"backends": backends, "health": {"kind": "none"},
                           "balance": "round_robin"}},
    }
    config.update(extra)
    return config


async def connect(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gateway.listeners["web"].address
    return await asyncio.open_connection(host, port)


async def exchange(gateway: Gateway, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on a new connection; everything read until the gateway closes it."""
    reader, writer = await connect(gateway)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer with a Content-Length: (head, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    [length] = header_of(head, b"content-length")
    return head, await asyncio.wait_for(reader.readexactly(int(length)), 5)


async def still_serves(gateway: Gateway) -> None:
    answer = await exchange(gateway, b"GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]


# -- a request head over max_header_bytes, before its line ends ---------------------------

@pytest.mark.parametrize("pieces", [
    [3000],            # the whole head in one read, over the limit, without an end of line
    [700, 700],        # two reads, each under the limit, together over it
    [300, 300, 300, 300],  # over it with the last (no write meets the closed socket)
])
async def test_a_header_line_over_the_limit_gets_431_before_it_ends(
        make_gateway: GatewayFactory, backends: Any, pieces: list[int]) -> None:
    backend = await backends(ok)
    gateway = await make_gateway(**web_config([backend.address],
                                              limits={"max_header_bytes": 1024,
                                                      "header_timeout": 30.0}))
    reader, writer = await connect(gateway)
    try:
        # The first piece comes with the request line: the read in which the head begins
        # counts too.
        writer.write(b"GET /big HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * pieces[0])
        for size in pieces[1:]:
            await asyncio.sleep(0.05)  # each piece its own read
            writer.write(b"a" * size)  # never a CRLF
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer
    assert (gateway.counters["http_431"], gateway.counters["http_400"]) == (1, 0)
    await still_serves(gateway)
    assert [h.split(b"\r\n")[0] for h in backend.heads] == [b"GET /fine HTTP/1.1"]


async def test_an_endless_header_line_is_cut_off_early(make_gateway: GatewayFactory,
                                                       backends: Any) -> None:
    """The audit's attack: one header line of tens of MiB without a CRLF. The gateway stops
    reading it at the limit (plus one read), not at the header timeout."""
    backend = await backends(ok)
    gateway = await make_gateway(**web_config([backend.address],
                                              limits={"header_timeout": 30.0}))
    sent = await flood(gateway, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
    # What the kernel buffers on both sides is all it took before the close: far below 64 MiB.
    assert sent < 32 * 1024 * 1024
    assert gateway.counters["http_431"] == 1
    await still_serves(gateway)


# -- 502 when the upstream fails before answering --------------------------------------------

async def close_on_post(head: bytes) -> bytes | None:
    """GETs are answered (the connection stays pooled), a POST gets a close."""
    return None if head.startswith(b"POST") else await ok(head)


async def test_a_post_the_upstream_drops_gets_502_from_the_callback_path(
        make_gateway: GatewayFactory, backends: Any) -> None:
    """A bodiless POST goes to the idle upstream connection from the parser callback
    (`_forwarded`); the backend closes it unanswered, and a POST is not retried."""
    backend = await backends(close_on_post)
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n")
        head, body = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        with gateway_tasks() as created:
            writer.write(b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert "HttpClient._serve" not in created, "the callback path, not a task"
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer[:80]
    assert b"Connection: close" in answer
    assert gateway.counters["http_502"] == 1
    assert gateway.groups["app"].scheduler.in_use == 0


async def test_a_post_with_a_body_the_upstream_drops_gets_502(make_gateway: GatewayFactory,
                                                              backends: Any) -> None:
    backend = await backends(close_on_post)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                     b"\r\nhello")
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer[:80]
    assert b"Connection: close" in answer
    assert gateway.groups["app"].scheduler.in_use == 0
    await still_serves(gateway)


async def test_the_last_retry_of_a_get_that_fails_gets_502(make_gateway: GatewayFactory,
                                                          backends: Any) -> None:
    async def drop(head: bytes) -> bytes | None:
        return None

    dropping = [await backends(drop) for _ in range(2)]
    gateway = await make_gateway(**web_config([b.address for b in dropping]))
    answer = await exchange(gateway, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n"), answer[:80]
    assert gateway.counters["http_retries"] == 1
    assert sum(len(b.heads) for b in dropping) == 2


async def test_an_answer_cut_off_midway_is_not_followed_by_a_502(make_gateway: GatewayFactory,
                                                                 backends: Any) -> None:
    async def half(head: bytes) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"

    backend = await backends(half, close_after=True)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    # The head went out before the backend failed: the client sees the body cut short.
    assert undated(answer) == (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n"
                               b"Connection: keep-alive\r\n\r\n0123456789")
    assert gateway.counters["http_502"] == 0


# -- absolute-form request targets ------------------------------------------------------------

def hosts_config(public: str, internal: str) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [
            {"listener": "web", "group": "internal", "host": "internal.example"},
            {"listener": "web", "group": "public", "host": "public.example"},
        ],
        "groups": {"public": {"backends": [public], "health": {"kind": "none"}},
                   "internal": {"backends": [internal], "health": {"kind": "none"}}},
    }


@pytest.mark.parametrize(("target", "line", "host"), [
    (b"http://internal.example/abs?x=1", b"GET /abs?x=1 HTTP/1.1", b"internal.example"),
    (b"http://INTERNAL.example:8080/a/b#frag", b"GET /a/b HTTP/1.1", b"INTERNAL.example:8080"),
    (b"https://internal.example", b"GET / HTTP/1.1", b"internal.example"),
])
async def test_an_absolute_form_target_routes_by_its_authority(
        make_gateway: GatewayFactory, backends: Any, target: bytes, line: bytes,
        host: bytes) -> None:
    """RFC 9112 3.2.2: the target's authority is the host (the Host header is ignored), and
    the request goes on in origin-form with a Host header made from that authority."""
    public, internal = await backends(ok), await backends(ok)
    gateway = await make_gateway(**hosts_config(public.address, internal.address))
    answer = await exchange(gateway, b"GET %s HTTP/1.1\r\nHost: public.example\r\n"
                                     b"Connection: close\r\n\r\n" % target)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert public.heads == []
    [head] = internal.heads
    assert head.split(b"\r\n")[0] == line
    assert header_of(head, b"host") == [host]


async def test_an_absolute_form_target_without_a_route_gets_404(make_gateway: GatewayFactory,
                                                                backends: Any) -> None:
    public, internal = await backends(ok), await backends(ok)
    gateway = await make_gateway(**hosts_config(public.address, internal.address))
    answer = await exchange(gateway, b"GET http://elsewhere.example/ HTTP/1.1\r\n"
                                     b"Host: public.example\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404"), answer[:80]
    assert public.heads == internal.heads == []


@pytest.mark.parametrize("request_head", [
    b"GET ftp://internal.example/x HTTP/1.1\r\nHost: public.example\r\n\r\n",
    b"GET http://user:pw@internal.example/x HTTP/1.1\r\nHost: public.example\r\n\r\n",
    b"GET http://internal.example:99999/x HTTP/1.1\r\nHost: public.example\r\n\r\n",
    b"GET http:/x HTTP/1.1\r\nHost: public.example\r\n\r\n",
    b"GET http:// HTTP/1.1\r\nHost: public.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: public.example\r\nHost: internal.example\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # RFC 9112 3.2: HTTP/1.1 needs a Host header...
    b"GET http://internal.example/x HTTP/1.1\r\n\r\n",  # ...whatever the target's form
    b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",  # and a valid one
    b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [internal.example]\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: public.example:internal\r\n\r\n",  # a port is digits: the
    b"GET / HTTP/1.1\r\nHost: public.example:1:2\r\n\r\n",  # route would see one host and
    b"OPTIONS * HTTP/1.1\r\nHost: public.example:x\r\n\r\n",  # the backend another
])
async def test_a_bad_target_or_a_missing_or_bad_host_gets_400(make_gateway: GatewayFactory,
                                                      backends: Any,
                                                      request_head: bytes) -> None:
    public, internal = await backends(ok), await backends(ok)
    gateway = await make_gateway(**hosts_config(public.address, internal.address))
    answer = await exchange(gateway, request_head)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"Connection: close" in answer
    assert public.heads == internal.heads == []


# -- HTTP/1.0 clients, and headers a Connection header names ---------------------------------

async def chunked(head: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Internal"
            b"\r\nX-Internal: secret\r\nX-Public: yes\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
async def test_an_http10_client_gets_an_unknown_length_body_unchunked(
        make_gateway: GatewayFactory, backends: Any, connection: bytes) -> None:
    backend = await backends(chunked)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"GET /c HTTP/1.0\r\nHost: a\r\n%s\r\n" % connection)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:80]
    assert header_of(head, b"transfer-encoding") == []
    assert header_of(head, b"content-length") == []
    assert header_of(head, b"connection") == [b"close"]
    assert body == b"hello world"  # the gateway's close ends it
    # The upstream's own framing was whole: its connection goes back to the pool.
    again = await exchange(gateway, b"GET /c HTTP/1.0\r\nHost: a\r\n\r\n")
    assert undated(again) == undated(answer)
    assert len(backend.heads) == 2


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n",
                                        b"Connection: close\r\n",
                                        b"Proxy-Connection: keep-alive\r\n"])
async def test_via_names_the_clients_http_version(make_gateway: GatewayFactory, backends: Any,
                                                  connection: bytes) -> None:
    """Each version llhttp accepts reaches the backend's Via as the client sent it, whatever
    Connection header keeps it alive (the gateway reads the version off the keep-alive answer
    where it can); any other version is refused."""
    backend = await backends(ok)
    gateway = await make_gateway(**web_config([backend.address]))
    for version in (b"0.9", b"1.0", b"1.1", b"2.0"):
        reader, writer = await connect(gateway)
        writer.write(b"GET /v HTTP/%s\r\nHost: a\r\n%s\r\n" % (version, connection))
        head, _ = await read_answer(reader)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        [via] = header_of(backend.heads[-1], b"via")
        assert via.split(b" ")[0] == version, (version, connection, via)
    answer = await exchange(gateway, b"GET /v HTTP/1.2\r\nHost: a\r\n%s\r\n" % connection)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]


async def test_an_http10_client_gets_no_1xx(make_gateway: GatewayFactory,
                                             backends: Any) -> None:
    """RFC 9110 15.2: a 1xx from the backend goes to an HTTP/1.1 client, not to a 1.0 one."""
    async def continues(head: bytes) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\n" + await ok(head)

    backend = await backends(continues)
    gateway = await make_gateway(**web_config([backend.address]))
    for version, interim in ((b"1.0", b""), (b"1.1", b"HTTP/1.1 100 Continue\r\n\r\n")):
        answer = await exchange(gateway, b"POST /f HTTP/%s\r\nHost: a\r\nContent-Length: 1\r\n"
                                         b"Connection: close\r\n\r\nx" % version)
        assert answer.startswith(interim + b"HTTP/1.1 200 OK\r\n"), answer[:80]


async def test_an_http11_client_still_gets_chunks_and_keep_alive(make_gateway: GatewayFactory,
                                                                backends: Any) -> None:
    backend = await backends(chunked)
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        for _ in range(2):
            writer.write(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert header_of(head, b"transfer-encoding") == [b"chunked"]
            assert header_of(head, b"connection") == [b"keep-alive"]
            body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
            assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    finally:
        writer.close()


async def test_headers_the_upstream_connection_header_names_are_not_relayed(
        make_gateway: GatewayFactory, backends: Any) -> None:
    """RFC 9110 7.6.1: `Connection: X-Internal` makes X-Internal hop-by-hop."""
    backend = await backends(chunked)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0]
    assert header_of(head, b"x-internal") == []
    assert header_of(head, b"x-public") == [b"yes"]
    assert header_of(head, b"connection") == [b"close"]


async def test_headers_the_client_connection_header_names_are_not_forwarded(
        make_gateway: GatewayFactory, backends: Any) -> None:
    """The request direction drops them too; but Content-Length and Host are never dropped
    that way: the body would reach the backend unframed (a smuggled request) and the
    backend would not see the host the request was routed by."""
    backend = await backends(ok)
    gateway = await make_gateway(**web_config([backend.address]))
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    answer = await exchange(
        gateway, b"POST /form HTTP/1.1\r\nHost: a\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"
                 b"Connection: x-secret, content-length, host, close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    [head] = backend.heads
    assert head.startswith(b"POST /form HTTP/1.1\r\n")
    assert header_of(head, b"x-secret") == header_of(head, b"keep-alive") == []
    assert header_of(head, b"content-length") == [b"%d" % len(smuggled)]
    assert header_of(head, b"host") == [b"a"]
    assert backend.bodies == [smuggled]


# -- a bad request pipelined behind one in flight ---------------------------------------------

@pytest.fixture
async def origin() -> AsyncIterator[HttpOrigin]:
    started = await HttpOrigin("o0").start()
    yield started
    await started.stop()


@pytest.mark.parametrize(("bad", "status"), [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000, b"431"),  # no end of line
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n", b"413"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"800\r\n" + b"b" * 2048 + b"\r\n", b"413"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\nX-Trailer: " + b"t" * 2000, b"431"),  # a trailer line with no end
])
async def test_a_pipelined_bad_request_is_answered_after_the_ones_before_it(
        make_gateway: GatewayFactory, origin: HttpOrigin, bad: bytes, status: bytes) -> None:
    gateway = await make_gateway(**web_config([origin.address], limits={
        "max_header_bytes": 1024, "max_body_bytes": 1024}))
    answer = await exchange(gateway, b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n"
                                     b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n" + bad)
    answers = answer.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200", status], answer
    assert answers[0].endswith(b"/slow from o0") and answers[1].endswith(b"/fast from o0")
    assert b"Connection: close" in answers[2]
    assert origin.requests == 2
    assert gateway.groups["app"].scheduler.in_use == 0


async def test_a_drain_answers_the_requests_before_a_pipelined_bad_one_then_closes(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """Draining, the good requests before the bad one are answered, the last saying close:
    the bad one's 400 would follow an answer that ended the connection, so only the close."""
    gateway = await make_gateway(**web_config([origin.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n")
        await until(lambda: any(getattr(c, "rejection", None) for c in gateway.clients.values()))
        drain = asyncio.ensure_future(gateway.drain(5.0))
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    answers = answer.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200"], answer
    assert answers[0].endswith(b"/slow from o0") and answers[1].endswith(b"/fast from o0")
    assert [b"Connection: close" in a for a in answers] == [False, True]
    assert await drain == {"finished": 1, "forced": 0}


async def test_a_pipelined_head_that_times_out_is_answered_after_the_one_before_it(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    gateway = await make_gateway(**web_config([origin.address],
                                              limits={"header_timeout": 0.2}))
    answer = await exchange(gateway, b"GET /slow?ms=500 HTTP/1.1\r\nHost: a\r\n\r\n"
                                     b"GET /fast HTTP/1.1\r\nHost:")
    answers = answer.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"408"], answer
    assert answers[0].endswith(b"/slow from o0")


async def test_a_pipelined_body_before_a_head_does_not_count_as_head(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """The read in which a head begins can hold the end of the request before it: only what
    belongs to the head counts toward `max_header_bytes`."""
    gateway = await make_gateway(**web_config([origin.address],
                                              limits={"max_header_bytes": 1024}))
    reader, writer = await connect(gateway)
    try:
        body = b"c" * 3000
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                     b"GET /fast HTTP/1.1\r\nHost: a\r\nX-Pad: %s" % (len(body), body, b"p" * 100))
        await asyncio.sleep(0.05)
        writer.write(b"\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    answers = answer.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200", b"200"], answer[:200]
    assert answers[0].endswith(body) and answers[1].endswith(b"/fast from o0")
    assert gateway.counters["http_431"] == 0


@pytest.mark.parametrize("host", [b"public.example", b"public.example:8080", b"PUBLIC.example:",
                                  b"public.example:0"])
async def test_a_host_with_a_port_or_none_routes_by_its_name(make_gateway: GatewayFactory,
                                                             backends: Any, host: bytes) -> None:
    public, internal = await backends(ok), await backends(ok)
    gateway = await make_gateway(**hosts_config(public.address, internal.address))
    answer = await exchange(gateway, b"GET /x HTTP/1.1\r\nHost: %s\r\nConnection: close"
                                     b"\r\n\r\n" % host)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert len(public.heads) == 1 and internal.heads == []
    # The asterisk form reads its Host the same way: no route takes "*", but the Host is fine.
    answer = await exchange(gateway, b"OPTIONS * HTTP/1.1\r\nHost: %s\r\nConnection: close"
                                     b"\r\n\r\n" % host)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:80]


async def test_each_request_of_a_keep_alive_connection_routes_by_its_own_host(
        make_gateway: GatewayFactory, backends: Any) -> None:
    """The connection reads a Host it saw on its last request once; another one is read
    afresh, a bad one refused, whatever came before."""
    public, internal = await backends(ok), await backends(ok)
    gateway = await make_gateway(**hosts_config(public.address, internal.address))
    reader, writer = await connect(gateway)
    sent = {public: 0, internal: 0}
    for host, backend in ((b"public.example", public), (b"public.example", public),
                          (b"internal.example", internal), (b"public.example:80", public),
                          (b"public.example:80", public), (b"INTERNAL.example", internal)):
        writer.write(b"GET /k HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        head, _ = await read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200"), (host, head[:80])
        sent[backend] += 1
        assert (len(public.heads), len(internal.heads)) == (sent[public], sent[internal]), host
        assert header_of(backend.heads[-1], b"host") == [host]
    writer.write(b"GET /k HTTP/1.1\r\nHost: public.example:x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
