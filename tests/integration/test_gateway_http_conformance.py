"""More edges of the http listener over raw loopback sockets: the gateway's own answers (to HEAD
requests, after an answer began, while it drains), the Host header (missing, an IPv6 literal),
the trailer section of a chunked body, and what a WebSocket client sends before the 101."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway_admission import until
from tests.integration.test_gateway_http_edges import (
    Answer,
    RawBackend,
    connect,
    exchange,
    header_of,
    hosts_config,
    ok,
    read_answer,
    web_config,
)

Start = Callable[[Answer], Awaitable[RawBackend]]


@pytest.fixture
async def raw() -> AsyncIterator[Start]:
    """`await raw(answer)`: a started `RawBackend`, stopped when the test ends."""
    started: list[RawBackend] = []

    async def start(answer: Answer) -> RawBackend:
        backend = await RawBackend(answer).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


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
    assert head == get_head  # Content-Length as for a GET, and no body after it
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
    """The one backend drops the HEAD, which is retried, and no backend is left to retry it
    on: 502, and the connection goes on."""
    async def drop_heads(head: bytes) -> bytes | None:
        return None if head.startswith(b"HEAD") else await ok(head)

    backend = await raw(drop_heads)
    gateway = await make_gateway(**app_only(backend.address))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"HEAD /app HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 502"), head
        assert header_of(head, b"connection") == [b"keep-alive"]
        await next_is_served(reader, writer)
    finally:
        writer.close()
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
    backend = await raw(ok)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"GET /old HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]


@pytest.mark.parametrize(("target", "host", "forwarded"), [
    (b"/x", b"[::1]:8080", b"[::1]:8080"),
    (b"/x", b"[::1]", b"[::1]"),
    (b"/x", b"[0:0:0:0:0:0:0:1]:8080", b"[0:0:0:0:0:0:0:1]:8080"),  # another spelling...
    (b"http://[::1]:8080/x", b"public.example", b"[::1]:8080"),
    (b"http://[::1]/x", b"public.example", b"[::1]"),
])
async def test_an_ipv6_literal_host_routes_with_its_brackets(
        make_gateway: GatewayFactory, raw: Start, target: bytes, host: bytes,
        forwarded: bytes) -> None:
    """Routes see the host without its port, an IPv6 literal with its brackets, from a Host
    header or an absolute-form target alike (it used to route as `[`)."""
    public, internal = await raw(ok), await raw(ok)
    config = hosts_config(public.address, internal.address)
    config["routes"][0]["host"] = "[::1]"
    gateway = await make_gateway(**config)
    answer = await exchange(gateway, b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                                     % (target, host))
    if host.startswith(b"[0:"):  # ...is another host to a route: no route matches it
        assert answer.startswith(b"HTTP/1.1 404"), answer[:80]
        return
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert public.heads == []
    [head] = internal.heads
    assert head.startswith(b"GET /x HTTP/1.1\r\n")
    assert header_of(head, b"host") == [forwarded]
