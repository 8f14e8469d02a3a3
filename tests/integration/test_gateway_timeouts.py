"""The http listener's body and response timeouts over real loopback sockets: a client that
stops sending a body gets 408 and gives its admission slot back, a backend that never answers
gets the client a 504 (not retried, a passive failure of the backend) on both the task path and
the path without a task, and slow work within the timeouts still succeeds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httptools
import httpx
import pytest
import websockets

from connwise.config import load_gateway_config
from connwise.errors import ConfigError
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway_http_fastpath import KeepAlive, gateway_tasks, until


def web_config(backends: list[str], *, limits: dict[str, Any] | None = None,
               **group: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"app": {"backends": backends, "health": {"kind": "none"}, **group}},
        "limits": limits or {},
    }


async def connect(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = gateway.listeners["web"].address
    return await asyncio.open_connection(host, port)


class _Scripted(asyncio.Protocol):
    """One connection of `ScriptedBackend`."""

    def __init__(self, backend: ScriptedBackend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.backend.opened += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.backend.closed += 1

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        path = self.url.decode()
        self.backend.requests.append(path)
        transport = self.transport
        assert transport is not None
        if path == "/hang":
            return  # accepted, read, never answered
        if path == "/slowbody":  # the head at once, the body after 0.6 s
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
            asyncio.get_running_loop().call_later(0.6, transport.write, b"late")
            return
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


class ScriptedBackend:
    """A backend whose answer the path picks: `/hang` gets none, `/slowbody` its head at once
    and its body late, anything else `ok`; it counts requests and connections."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.opened = 0
        self.closed = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> ScriptedBackend:
        self.server = await asyncio.get_running_loop().create_server(
            lambda: _Scripted(self), "127.0.0.1", 0)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def scripted() -> AsyncIterator[list[ScriptedBackend]]:
    backends = [await ScriptedBackend().start() for _ in range(2)]
    yield backends
    for backend in backends:
        assert backend.server is not None
        backend.server.close()


@pytest.fixture
async def origin() -> AsyncIterator[HttpOrigin]:
    started = await HttpOrigin("o0").start()
    yield started
    await started.stop()


# -- body_timeout ----------------------------------------------------------------------------


async def test_a_stalled_body_gets_408_and_gives_the_slot_back(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    gateway = await make_gateway(**web_config([origin.address], max_in_flight=1,
                                              limits={"body_timeout": 0.3}))
    reader, writer = await connect(gateway)
    started = time.monotonic()
    writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx")
    answer = await asyncio.wait_for(reader.read(), 5)  # until the gateway closes
    waited = time.monotonic() - started
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"Connection: close" in answer
    assert 0.25 <= waited < 2.0, waited
    assert gateway.counters["http_body_timeout"] == 1
    group = gateway.groups["app"]
    await until(lambda: group.scheduler.in_use == 0 and group.backends[0].outstanding == 0)
    # The slot is free: with max_in_flight = 1 the next request is admitted at once (it would
    # otherwise wait its class's 10 s in the queue).
    host, port = gateway.listeners["web"].address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=2.0) as client:
        assert (await client.get("/fast")).status_code == 200
    assert origin.requests == 1, "the partial request never reached the origin's handler"


async def test_a_body_that_keeps_coming_is_not_cut(make_gateway: GatewayFactory,
                                                   origin: HttpOrigin) -> None:
    """The timeout is between two reads, not for the whole body."""
    gateway = await make_gateway(**web_config([origin.address], limits={"body_timeout": 0.3}))
    reader, writer = await connect(gateway)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    for _ in range(5):  # 0.75 s in all, 0.15 s apart
        await asyncio.sleep(0.15)
        writer.write(b"ab")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    body = await asyncio.wait_for(reader.readexactly(10), 5)
    assert head.startswith(b"HTTP/1.1 200") and body == b"ababababab"
    # The body's deadline ended with it: the keep-alive connection outlives it.
    await asyncio.sleep(0.5)
    writer.write(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert gateway.counters["http_body_timeout"] == 0


async def test_a_body_stalled_after_the_gateway_answered_closes_without_a_408(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    config = web_config([origin.address], limits={"body_timeout": 0.3})
    config["routes"][0]["path_prefix"] = "/api"
    gateway = await make_gateway(**config)
    reader, writer = await connect(gateway)
    writer.write(b"POST /other HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 404") and answer.count(b"HTTP/1.1") == 1, answer
    assert gateway.counters["http_body_timeout"] == 1


async def test_a_client_that_reads_nothing_either_is_aborted(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """A stalled body behind an answer the client does not read: a plain close would wait for
    the send buffer to drain, for ever, with the slot held; the connection is aborted."""
    gateway = await make_gateway(**web_config([origin.address], max_in_flight=1,
                                              limits={"body_timeout": 1.0}))
    _reader, writer = await connect(gateway)  # never read from
    big = 8 * 1024 * 1024  # more than the socket buffers hold: the gateway's writing pauses
    writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % big
                 + b"x" * big
                 + b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx")
    group = gateway.groups["app"]
    try:
        await until(lambda: gateway.counters["http_body_timeout"] == 1)
        await until(lambda: group.scheduler.in_use == 0, timeout=3.0)
    finally:
        writer.close()
    assert gateway.counters["http_body_timeout"] == 1


async def test_100_continue_clients_wait_in_the_queue_without_a_body_timeout(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """A client that sent `Expect: 100-continue` sends its body once the request goes
    upstream; its wait in the admission queue is not the client's silence."""
    gateway = await make_gateway(**web_config([origin.address], max_in_flight=1,
                                              limits={"body_timeout": 0.4}))
    holder = await KeepAlive.open(gateway)
    reader, writer = await connect(gateway)
    try:
        holder.send(b"GET /slow?ms=900 HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: gateway.groups["app"].scheduler.in_use == 1)
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        head = await asyncio.wait_for(holder.reader.readuntil(b"\r\n\r\n"), 5)  # at ~0.9 s
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.1)
        writer.write(b"abc")
        answer = await asyncio.wait_for(reader.readuntil(b"abc"), 5)
    finally:
        holder.close()
        writer.close()
    assert b"HTTP/1.1 200 OK" in answer, answer
    assert gateway.counters["http_body_timeout"] == 0


async def test_a_body_not_read_while_pipelining_pauses_is_not_timed_out(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """Reading pauses with more than PIPELINE_DEPTH requests queued: the body of the last one
    cannot arrive meanwhile, and that is no fault of the client."""
    gateway = await make_gateway(**web_config([origin.address], limits={"body_timeout": 0.3}))
    client = await KeepAlive.open(gateway)
    try:
        client.send(b"GET /slow?ms=800 HTTP/1.1\r\nHost: a\r\n\r\n"
                    + b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n" * 3
                    + b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
        await asyncio.sleep(0.5)
        client.send(b"abc")
        answers = b""
        while answers.count(b"HTTP/1.1 200") < 5 or not answers.endswith(b"abc"):
            chunk = await asyncio.wait_for(client.reader.read(65536), 5)
            assert chunk, answers
            answers += chunk
    finally:
        client.close()
    assert b"408" not in answers
    assert gateway.counters["http_body_timeout"] == 0


# -- response_timeout --------------------------------------------------------------------


async def test_a_backend_that_never_answers_gets_504_not_retried(
        make_gateway: GatewayFactory, scripted: list[ScriptedBackend]) -> None:
    """The task path (the first request connects upstream): 504 after response_timeout, no
    retry on the other backend although GET is idempotent, the slot back, a passive failure."""
    gateway = await make_gateway(**web_config([b.address for b in scripted], max_in_flight=1,
                                              response_timeout=0.3))
    reader, writer = await connect(gateway)
    started = time.monotonic()
    writer.write(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    waited = time.monotonic() - started
    writer.close()
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"), answer
    assert b"Connection: close" in answer and answer.count(b"HTTP/1.1") == 1
    assert 0.25 <= waited < 2.0, waited
    assert [b.requests for b in scripted].count(["/hang"]) == 1
    assert sum(len(b.requests) for b in scripted) == 1, "not retried"
    group = gateway.groups["app"]
    assert sorted(b.failures for b in group.backends) == [0, 1]
    assert gateway.counters["http_504"] == 1 and gateway.counters["http_retries"] == 0
    await until(lambda: sum(b.closed for b in scripted) == 1)  # the upstream connection closed
    await until(lambda: group.scheduler.in_use == 0)
    client = await KeepAlive.open(gateway)
    try:
        assert await client.get("/ok") == (200, b"ok")  # the slot is free again
    finally:
        client.close()


async def test_504_on_the_path_without_a_task(make_gateway: GatewayFactory,
                                              scripted: list[ScriptedBackend]) -> None:
    backend = scripted[0]
    gateway = await make_gateway(**web_config([backend.address], response_timeout=0.3))
    client = await KeepAlive.open(gateway)
    try:
        assert await client.get("/ok") == (200, b"ok")  # connects: the upstream is idle now
        with gateway_tasks() as created:
            started = time.monotonic()
            assert (await client.get("/hang"))[0] == 504
            waited = time.monotonic() - started
        assert "HttpClient._serve" not in created  # (the pool closes the broken upstream in one)
        assert await asyncio.wait_for(client.reader.read(), 5) == b""  # closed after it
    finally:
        client.close()
    assert 0.25 <= waited < 2.0, waited
    group = gateway.groups["app"]
    assert group.backends[0].failures == 1
    await until(lambda: backend.closed == 1 and group.scheduler.in_use == 0)
    assert group.backends[0].outstanding == 0


async def test_504_for_a_request_with_a_body(make_gateway: GatewayFactory,
                                             scripted: list[ScriptedBackend]) -> None:
    """The deadline starts once the body is sent (by the task that streams it)."""
    backend = scripted[0]
    gateway = await make_gateway(**web_config([backend.address], response_timeout=0.3))
    reader, writer = await connect(gateway)
    writer.write(b"POST /hang HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
    await asyncio.sleep(0.4)  # longer than the response timeout: the body is not yet sent
    writer.write(b"abc")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 504"), answer
    assert gateway.groups["app"].backends[0].failures == 1
    await until(lambda: gateway.groups["app"].scheduler.in_use == 0)


async def test_slow_answers_within_the_timeout_succeed(
        make_gateway: GatewayFactory, origin: HttpOrigin,
        scripted: list[ScriptedBackend]) -> None:
    config = web_config([origin.address], response_timeout=0.5)
    config["groups"]["late"] = {"backends": [scripted[0].address], "health": {"kind": "none"},
                                "response_timeout": 0.3}
    config["routes"].insert(0, {"listener": "web", "group": "late", "path_prefix": "/slowbody"})
    gateway = await make_gateway(**config)
    client = await KeepAlive.open(gateway)
    try:
        for _ in range(3):  # the first connects (a task), the others go without one
            assert await client.get("/slow?ms=250") == (200, b"/slow from o0")
        # The head came in time; a body slower than the timeout is not cut.
        assert await client.get("/slowbody") == (200, b"late")
    finally:
        client.close()
    assert gateway.counters["http_504"] == 0
    assert gateway.groups["app"].backends[0].failures == 0


async def test_a_past_requests_deadline_does_not_time_out_the_next_one(
        make_gateway: GatewayFactory, scripted: list[ScriptedBackend]) -> None:
    """A request sent without a task leaves its deadline behind; the next one on the
    connection, a body the client sends slowly, is not answered 504 by it: its own deadline
    starts once its body is sent."""
    gateway = await make_gateway(**web_config([scripted[0].address], response_timeout=0.3))
    client = await KeepAlive.open(gateway)
    try:
        assert await client.get("/ok") == (200, b"ok")  # connects
        assert await client.get("/ok") == (200, b"ok")  # without a task: a deadline stays
        client.send(b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
        await asyncio.sleep(0.5)
        client.send(b"cd")
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        client.close()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert gateway.counters["http_504"] == 0


async def test_a_websocket_relay_is_not_subject_to_the_response_timeout(
        make_gateway: GatewayFactory) -> None:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    server = await websockets.serve(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gateway = await make_gateway(**web_config([f"127.0.0.1:{port}"], response_timeout=0.2))
    host, gport = gateway.listeners["web"].address
    try:
        async with websockets.connect(f"ws://{host}:{gport}/ws") as ws:
            await asyncio.sleep(0.5)
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    finally:
        server.close()
    assert gateway.counters["http_504"] == 0


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"limits": {"body_timeout": 0}},
     "limits.body_timeout = 0: input should be greater than 0"),
    ({"limits": {"body_timeout": -1.5}},
     "limits.body_timeout = -1.5: input should be greater than 0"),
    ({"groups": {"app": {"backends": ["127.0.0.1:9"], "response_timeout": 0}}},
     "groups.app.response_timeout = 0: input should be greater than 0"),
    ({"groups": {"app": {"backends": ["127.0.0.1:9"], "response_timeout": float("inf")}}},
     "groups.app.response_timeout = inf: input should be a finite number"),
])
def test_timeouts_must_be_positive(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_gateway_config({**web_config(["127.0.0.1:9"]), **change})
    assert str(caught.value).startswith(message), str(caught.value)


def test_timeouts_default_to_nginx_s() -> None:
    config = load_gateway_config(web_config(["127.0.0.1:9"]))
    assert config.limits.body_timeout == 60.0
    assert config.groups["app"].response_timeout == 60.0
