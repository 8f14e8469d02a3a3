"""More edges of the http listener over raw loopback sockets: the gateway's own answers (to HEAD
requests, after an answer began, while it drains), the Host header (missing, an IPv6 literal),
the trailer section of a chunked body, and what a WebSocket client sends before the 101."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.errors import ConfigError
from tests.integration.conftest import GatewayFactory, Start
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway_admission import until
from tests.integration.test_gateway_http_edges import (
    LoopbackServer,
    connect,
    exchange,
    flood,
    header_of,
    hosts_config,
    ok,
    read_answer,
    still_serves,
    undated,
    web_config,
)


@pytest.fixture
async def origin() -> AsyncIterator[HttpOrigin]:
    started = await HttpOrigin("o0").start()
    yield started
    await started.stop()


#: The head of a chunked POST to the echo path.
CHUNKED_POST = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


# -- the gateway's own answers: no body to a HEAD, none after an answer began -----------

def app_only(backend: str, **group: Any) -> dict[str, Any]:
    """Requests under /app go to `backend`; others get the gateway's 404."""
    config = web_config([backend])
    config["routes"][0]["path_prefix"] = "/app"
    config["groups"]["app"].update(group)
    return config


async def next_is_served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The connection is still in step: the next answer's head is where it should be."""
    writer.write(b"GET /app HTTP/1.1\r\nHost: a\r\n\r\n")
    head, body = await read_answer(reader)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == b"ok"


async def test_a_head_request_gets_the_404_head_without_its_body(make_gateway: GatewayFactory,
                                                                 raw: Start) -> None:
    backend = await raw(ok)
    gateway = await make_gateway(**app_only(backend.address))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
        get_head, get_body = await read_answer(reader)
        writer.write(b"HEAD /nowhere HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        await next_is_served(reader, writer)
    finally:
        writer.close()
    assert get_head.startswith(b"HTTP/1.1 404") and get_body
    assert undated(head) == undated(get_head)  # Content-Length as for a GET, and no body
    assert header_of(head, b"connection") == [b"keep-alive"]


async def test_a_shed_head_request_gets_the_503_head_without_its_body(
        make_gateway: GatewayFactory, raw: Start) -> None:
    backend = await raw(ok)
    gateway = await make_gateway(**app_only(backend.address, max_in_flight=1, max_waiters=4),
                                 classes={"interactive": {"rank": 1, "max_wait": 0.2}})
    group = gateway.groups["app"]
    assert group.scheduler.try_admit("interactive")  # the one slot is held: the HEAD queues
    reader, writer = await connect(gateway)
    try:
        writer.write(b"HEAD /app HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 503") and header_of(head, b"content-length") != [b"0"]
        group.release("interactive")
        await next_is_served(reader, writer)
    finally:
        writer.close()


async def test_a_head_request_no_backend_answers_gets_the_502_head_without_its_body(
        make_gateway: GatewayFactory, raw: Start) -> None:
    """The one backend drops the HEAD and its retry (on that backend, the only one): 502,
    without a body, and the connection closes as after any last attempt that failed."""
    async def drop_heads(head: bytes) -> bytes | None:
        return None if head.startswith(b"HEAD") else await ok(head)

    backend = await raw(drop_heads)
    gateway = await make_gateway(**app_only(backend.address))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"HEAD /app HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 502"), answer
    assert answer.endswith(b"\r\n\r\n") and answer.count(b"\r\n\r\n") == 1, answer
    assert header_of(answer, b"connection") == [b"close"]
    assert len(backend.heads) == 2
    assert gateway.counters["http_502"] == 1


async def test_a_head_request_that_times_out_gets_the_504_head_without_its_body(
        make_gateway: GatewayFactory, raw: Start) -> None:
    async def hang(head: bytes) -> bytes | None:
        await asyncio.sleep(2)
        return None

    backend = await raw(hang)
    gateway = await make_gateway(**app_only(backend.address, response_timeout=0.2))
    answer = await exchange(gateway, b"HEAD /app HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 504") and answer.endswith(b"\r\n\r\n"), answer
    assert answer.count(b"\r\n\r\n") == 1


async def test_a_head_request_whose_head_stalls_gets_the_408_head_without_its_body(
        make_gateway: GatewayFactory, raw: Start) -> None:
    backend = await raw(ok)
    gateway = await make_gateway(**app_only(backend.address),
                                 limits={"header_timeout": 0.2})
    answer = await exchange(gateway, b"HEAD /app HTTP/1.1\r\nHost: a\r\nX-Slow: 1")
    assert answer.startswith(b"HTTP/1.1 408") and answer.endswith(b"\r\n\r\n"), answer
    assert answer.count(b"\r\n\r\n") == 1
    assert header_of(answer, b"content-length") != [b"0"]


async def test_a_limit_passed_after_the_answer_began_only_closes(make_gateway: GatewayFactory,
                                                                 raw: Start) -> None:
    """The backend answered before the body was read: a 413 written after its answer would be
    read as the next answer; the connection closes instead, the answer whole."""
    backend = await raw(ok)
    gateway = await make_gateway(**web_config([backend.address],
                                              limits={"max_body_bytes": 1024}))
    reader, writer = await connect(gateway)
    try:
        writer.write(CHUNKED_POST + b"5\r\nhello\r\n")
        head, body = await read_answer(reader)
        writer.write(b"800\r\n" + b"b" * 2048 + b"\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
    assert rest == b""
    assert gateway.counters["http_413"] == 1


# -- while the gateway drains ----------------------------------------------------------------

async def test_the_gateways_own_answer_during_a_drain_says_close(make_gateway: GatewayFactory,
                                                                 raw: Start) -> None:
    """A request queued when the drain begins is refused at its deadline: the 503 says
    `Connection: close`, as the connection closes after it."""
    backend = await raw(ok)
    gateway = await make_gateway(**app_only(backend.address, max_in_flight=1, max_waiters=4),
                                 classes={"interactive": {"rank": 1, "max_wait": 0.3}})
    group = gateway.groups["app"]
    assert group.scheduler.try_admit("interactive")
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /app HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: group.scheduler.waiting == 1)
        drain = asyncio.ensure_future(gateway.drain(5.0))
        head, _ = await read_answer(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 503"), head
    assert header_of(head, b"connection") == [b"close"]
    group.release("interactive")
    assert await drain == {"finished": 1, "forced": 0}


# -- the Host header -------------------------------------------------------------------------

async def test_an_http10_request_needs_no_host(make_gateway: GatewayFactory, raw: Start) -> None:
    """It goes upstream as HTTP/1.1, which requires a Host header (RFC 9112 3.2): the gateway
    names the backend in it, as nginx's default `proxy_set_header Host $proxy_host` does. An
    empty Host the client sent is its own, and stays the only one."""
    backend = await raw(ok)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"GET /old HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert header_of(backend.heads[0], b"host") == [backend.address.encode()]
    answer = await exchange(gateway, b"GET /old HTTP/1.0\r\nHost:\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert header_of(backend.heads[1], b"host") == [b""]


@pytest.mark.parametrize(("target", "host", "forwarded"), [
    (b"/x", b"[::1]:8080", b"[::1]:8080"),
    (b"/x", b"[::1]", b"[::1]"),
    (b"/x", b"[0:0:0:0:0:0:0:1]:8080", b"[0:0:0:0:0:0:0:1]:8080"),  # another spelling of ::1
    (b"http://[::1]:8080/x", b"public.example", b"[::1]:8080"),
    (b"http://[::1]/x", b"public.example", b"[::1]"),
    (b"http://[0::1]/x", b"public.example", b"[::1]"),
])
@pytest.mark.parametrize("route_host", ["[::1]", "::1", "[0:0::1]"])
async def test_an_ipv6_literal_host_routes_as_one_address(
        make_gateway: GatewayFactory, raw: Start, target: bytes, host: bytes,
        forwarded: bytes, route_host: str) -> None:
    """Routes see the host without its port and an IPv6 literal in one form (`[::1]`), from
    a Host header or an absolute-form target alike, however either spells it (it used to
    route as `[`); the Host header goes upstream as the client wrote it."""
    public, internal = await raw(ok), await raw(ok)
    config = hosts_config(public.address, internal.address)
    config["routes"][0]["host"] = route_host
    gateway = await make_gateway(**config)
    answer = await exchange(gateway, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                                     % (target, host))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert public.heads == []
    [head] = internal.heads
    assert head.startswith(b"GET /x HTTP/1.1\r\n")
    assert header_of(head, b"host") == [forwarded]


def test_a_route_host_with_a_port_or_a_bad_literal_is_refused() -> None:
    for bad in ("example.com:80", "[::1]:80", "[example]", "1:2:3"):
        config = hosts_config("127.0.0.1:1", "127.0.0.1:2")
        config["routes"][0]["host"] = bad
        with pytest.raises(ConfigError) as caught:
            load_gateway_config(config)
        assert caught.value.key == "routes[0].host", bad


# -- the trailer section of a chunked body ---------------------------------------------------

@pytest.mark.parametrize("pieces", [[3000], [700, 700], [300, 300, 300, 300]])
async def test_a_trailer_line_over_the_limit_gets_431_before_it_ends(
        make_gateway: GatewayFactory, origin: HttpOrigin, pieces: list[int]) -> None:
    """httptools buffers a trailer line until its CRLF, as it does a header line: the trailer
    section is counted read by read against `max_header_bytes`. The origin answers an echo
    only once the body is whole: it never is, so nothing was answered yet."""
    gateway = await make_gateway(**web_config([origin.address], limits={
        "max_header_bytes": 1024, "body_timeout": 30.0}))
    reader, writer = await connect(gateway)
    try:
        writer.write(CHUNKED_POST + b"5\r\nhello\r\n0\r\nX-Trailer: " + b"t" * pieces[0])
        for size in pieces[1:]:
            await asyncio.sleep(0.05)  # each piece its own read
            writer.write(b"t" * size)
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer
    assert gateway.counters["http_431"] == 1
    await until(lambda: gateway.groups["app"].scheduler.in_use == 0)


async def test_an_endless_trailer_line_is_cut_off_early(make_gateway: GatewayFactory,
                                                        origin: HttpOrigin) -> None:
    """The audit's finding: 16 MiB of one trailer line were taken without an answer."""
    gateway = await make_gateway(**web_config([origin.address],
                                              limits={"body_timeout": 30.0}))
    sent = await flood(gateway, CHUNKED_POST + b"5\r\nhello\r\n0\r\nX-Trailer: ")
    assert sent < 32 * 1024 * 1024
    assert gateway.counters["http_431"] == 1
    await still_serves(gateway)


async def test_chunks_split_across_reads_are_body_not_trailers(make_gateway: GatewayFactory,
                                                               origin: HttpOrigin) -> None:
    """A read that ends right after a chunk's size line, with its data still to come, counts
    nothing toward the trailer section: a body far over `max_header_bytes` in such reads is
    served, and its trailer fields are dropped."""
    gateway = await make_gateway(**web_config([origin.address],
                                              limits={"max_header_bytes": 1024}))
    reader, writer = await connect(gateway)
    body = b""
    try:
        writer.write(CHUNKED_POST)
        for n in range(4):
            data = bytes([97 + n]) * 3000
            writer.write(b"%x\r\n" % len(data))
            await asyncio.sleep(0.05)
            for at in range(0, len(data), 1000):  # the data in reads under the limit
                writer.write(data[at:at + 1000])
                await asyncio.sleep(0.02)
            writer.write(b"\r\n")
            body += data
        writer.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        head, answered = await read_answer(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") and answered == body
    assert gateway.counters["http_431"] == 0


async def test_trailer_fields_never_join_the_head_sent_upstream(make_gateway: GatewayFactory,
                                                                origin: HttpOrigin) -> None:
    """A chunked request queued for admission while its whole body and trailer section arrive
    has its head sent afterwards: its trailer fields (a Host among them, which would make the
    backend see two) are not in it (RFC 9110 6.5.1)."""
    config = web_config([origin.address])
    config["groups"]["app"].update(max_in_flight=1, max_waiters=4)
    gateway = await make_gateway(**config)
    group = gateway.groups["app"]
    assert group.scheduler.try_admit("interactive")  # the one slot is held
    reader, writer = await connect(gateway)
    try:
        writer.write(b"POST /headers HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\nX-Trailer: yes\r\nHost: b\r\n\r\n")
        await until(lambda: group.scheduler.waiting == 1)
        await asyncio.sleep(0.05)  # the trailer section was read while the request waited
        group.release("interactive")
        head, body = await read_answer(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200"), head
    seen = {name.lower(): value for name, value in json.loads(body).items()}
    assert "x-trailer" not in seen and seen["host"] == "a"
    assert seen["transfer-encoding"] == "chunked"


async def trailered(head: bytes) -> bytes:
    """`/t` answers chunked with a trailer section; anything else answers with a length."""
    if head.startswith(b"GET /t "):
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n"
                b"0\r\nX-Checksum: abc\r\nSet-Cookie: s=1\r\nServer-Timing: db;dur=5\r\n\r\n")
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_response_trailers_go_to_their_client_and_never_to_the_next_answer(
        make_gateway: GatewayFactory, raw: Start) -> None:
    """A chunked answer's trailer section is relayed in it (without a field no trailer may
    carry: a cookie); the next answer on the same upstream connection, to another client,
    carries none of its fields."""
    backend = await raw(trailered)
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /t HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        body = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    assert body == b"4\r\nbody\r\n0\r\nX-Checksum: abc\r\nServer-Timing: db;dur=5\r\n\r\n"
    other_reader, other_writer = await connect(gateway)
    try:
        other_writer.write(b"GET /u HTTP/1.1\r\nHost: a\r\n\r\n")
        next_head, next_body = await read_answer(other_reader)
    finally:
        other_writer.close()
    assert len(backend.heads) == 2 and backend.connections == 1  # one upstream connection
    assert next_body == b"ok"
    assert b"x-checksum" not in next_head.lower() and b"cookie" not in next_head.lower()
    # An HTTP/1.0 client gets the body until the close, without the trailer section.
    answer = await exchange(gateway, b"GET /t HTTP/1.0\r\n\r\n")
    assert answer.endswith(b"\r\n\r\nbody"), answer


# -- what a WebSocket client sends before the 101 ---------------------------------------------

class UpgradeBackend(LoopbackServer):
    """An upgrading backend on loopback: `/ws` gets its 101 after `delay` seconds, then every
    byte that comes is kept (`relayed`) and echoed; `/refuse` gets a keep-alive 403. It keeps
    the request heads it read."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.heads: list[bytes] = []
        self.relayed = b""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                if not head.startswith(b"GET /ws "):
                    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
                    continue
                await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n")
                while data := await reader.read(65536):
                    self.relayed += data
                    writer.write(data)
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def upgrading() -> AsyncIterator[Callable[[float], Awaitable[UpgradeBackend]]]:
    started: list[UpgradeBackend] = []

    async def start(delay: float = 0.0) -> UpgradeBackend:
        backend = await UpgradeBackend(delay).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


def upgrade(path: bytes) -> bytes:
    return (b"GET %s HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % path)


#: A masked text frame ("hi"), then one that reads like an HTTP request: neither may be
#: parsed as one by the gateway.
FRAME = b"\x81\x82abcd" + bytes(b ^ m for b, m in zip(b"hi", b"ab", strict=True))
LOOKALIKE = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.mark.parametrize("later", [False, True])
async def test_bytes_sent_before_the_101_are_relayed_after_it(
        make_gateway: GatewayFactory, upgrading: Any, later: bool) -> None:
    """With the request, or in a later read while the backend takes its time to answer: the
    backend gets them after its 101, in order, and nothing is parsed as a request."""
    backend = await upgrading(0.3)
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(upgrade(b"/ws") + FRAME)
        if later:
            await asyncio.sleep(0.1)
            writer.write(LOOKALIKE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        expected = FRAME + (LOOKALIKE if later else b"")
        echoed = await asyncio.wait_for(reader.readexactly(len(expected)), 5)
    finally:
        writer.close()
    assert echoed == expected and backend.relayed == expected
    assert len(backend.heads) == 1
    assert gateway.counters["http_400"] == 0


async def test_bytes_held_for_a_refused_upgrade_go_with_the_connection(
        make_gateway: GatewayFactory, upgrading: Any) -> None:
    backend = await upgrading()
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, upgrade(b"/refuse") + LOOKALIKE)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.endswith(b"\r\n\r\nno")
    assert header_of(answer.partition(b"\r\n\r\n")[0], b"connection") == [b"close"]
    assert [h.split(b"\r\n")[0] for h in backend.heads] == [b"GET /refuse HTTP/1.1"]


async def test_a_refused_upgrade_with_nothing_held_goes_on_with_http(
        make_gateway: GatewayFactory, upgrading: Any) -> None:
    backend = await upgrading()
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        for _ in range(2):
            writer.write(upgrade(b"/refuse"))
            head, body = await read_answer(reader)
            assert head.startswith(b"HTTP/1.1 403") and body == b"no"
            assert header_of(head, b"connection") == [b"keep-alive"]
    finally:
        writer.close()
    assert len(backend.heads) == 2
