"""The http listener's common case without a task, over real loopback sockets: keep-alive
requests forwarded from the parser callback, the task path taking over for a retry, a client
that leaves mid-request giving its slots back, and the CQI state a connection keeps until a
reload."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.gateway.http import HttpClient
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin


def web_config(addresses: list[str], **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"app": {"backends": addresses, "health": {"kind": "none"}}},
    }
    config.update(extra)
    return config


class KeepAlive:
    """One raw keep-alive client connection: a request out, its whole answer in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, gateway: Gateway) -> KeepAlive:
        host, port = gateway.listeners["web"].address
        return cls(*await asyncio.open_connection(host, port))

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, await asyncio.wait_for(self.reader.readexactly(length), 5)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def close(self) -> None:
        self.writer.close()


@contextmanager
def gateway_tasks() -> Iterator[list[str]]:
    """The names of the tasks connwise creates meanwhile (the origin's own are not counted)."""
    loop = asyncio.get_running_loop()
    created: list[str] = []
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        if "connwise" in coro.cr_code.co_filename:
            created.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield created
    finally:
        loop.set_task_factory(previous)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def origin() -> AsyncIterator[HttpOrigin]:
    started = await HttpOrigin("o0").start()
    yield started
    await started.stop()


async def test_keepalive_requests_are_forwarded_without_a_task(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    gateway = await make_gateway(**web_config([f"127.0.0.1:{origin.port}"]))
    client = await KeepAlive.open(gateway)
    try:
        # The first request connects upstream (the task path); then the connection is idle.
        assert await client.get("/fast") == (200, b"/fast from o0")
        with gateway_tasks() as created:
            for _ in range(50):
                assert await client.get("/fast") == (200, b"/fast from o0")
        assert created == []
        # A body to stream still goes to a task, and the counting above would have seen it.
        with gateway_tasks() as created:
            client.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
            head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            assert await client.reader.readexactly(5) == b"hello"
        assert created == ["HttpClient._serve"]
    finally:
        client.close()
    group = gateway.groups["app"]
    assert group.scheduler.in_use == 0
    assert group.backends[0].outstanding == 0
    assert group.backends[0].total == 52
    assert origin.requests == 52


async def test_pipelined_requests_are_answered_in_order_across_both_paths(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """Requests sent at once, some for the callback path and one with a body for the task,
    are answered in order; HEAD has no body; `Connection: close` ends the connection."""
    gateway = await make_gateway(**web_config([f"127.0.0.1:{origin.port}"]))
    client = await KeepAlive.open(gateway)
    try:
        assert (await client.get("/fast"))[0] == 200
        client.send(b"GET /slow?ms=30 HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                    b"HEAD /fast HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(client.reader.read(), 5)  # until the gateway closes
    finally:
        client.close()
    answers = rest.split(b"HTTP/1.1 ")[1:]
    assert [a[:3] for a in answers] == [b"200"] * 4
    assert answers[0].endswith(b"/slow from o0") and answers[1].endswith(b"\r\n\r\nabc")
    assert b"content-length: 13" in answers[2].lower() and answers[2].endswith(b"\r\n\r\n")
    assert answers[3].endswith(b"/fast from o0") and b"Connection: close" in answers[3]
    assert gateway.groups["app"].scheduler.in_use == 0


async def test_drain_lets_a_request_in_flight_without_a_task_finish(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    gateway = await make_gateway(**web_config([f"127.0.0.1:{origin.port}"]))
    client = await KeepAlive.open(gateway)
    try:
        assert (await client.get("/fast"))[0] == 200
        with gateway_tasks() as created:
            client.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: a\r\n\r\n")
            await until(lambda: gateway.groups["app"].scheduler.in_use == 1)
        assert created == []
        drain = asyncio.ensure_future(gateway.drain(5.0))
        rest = await asyncio.wait_for(client.reader.read(), 5)
    finally:
        client.close()
    assert rest.startswith(b"HTTP/1.1 200") and b"Connection: close" in rest
    assert rest.endswith(b"/slow from o0")
    assert await drain == {"finished": 1, "forced": 0}


def split_answers(data: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each answer in `data`, answers with a Content-Length one after another."""
    answers = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        answers.append((head, data[:length]))
        data = data[length:]
    return answers


async def test_drain_answers_the_requests_pipelined_before_it_then_closes(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """Requests the gateway received whole before the drain began are in flight: all three
    are answered, in order, only the last with `Connection: close`, then the connection
    closes (a `close` on the first would tell the client its next two were not taken)."""
    gateway = await make_gateway(**web_config([f"127.0.0.1:{origin.port}"]))
    client = await KeepAlive.open(gateway)
    try:
        client.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n"
                    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                    b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: [len(c.queue) for c in gateway.clients.values()
                             if isinstance(c, HttpClient)] == [3])
        drain = asyncio.ensure_future(gateway.drain(5.0))
        rest = await asyncio.wait_for(client.reader.read(), 5)  # until the gateway closes
    finally:
        client.close()
    answers = split_answers(rest)
    assert [body for _, body in answers] == [b"/slow from o0", b"abc", b"/fast from o0"]
    assert [head[:12] for head, _ in answers] == [b"HTTP/1.1 200"] * 3
    assert [b"Connection: close" in head for head, _ in answers] == [False, False, True]
    assert await drain == {"finished": 1, "forced": 0}


async def test_drain_takes_no_request_that_begins_after_it(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """A request sent once the drain began is not taken: the answer to the one in flight
    says `Connection: close`, and the connection closes after it."""
    gateway = await make_gateway(**web_config([f"127.0.0.1:{origin.port}"]))
    client = await KeepAlive.open(gateway)
    try:
        client.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: gateway.groups["app"].scheduler.in_use == 1)
        drain = asyncio.ensure_future(gateway.drain(5.0))
        await until(lambda: gateway.draining)
        client.send(b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
        rest = await asyncio.wait_for(client.reader.read(), 5)
    finally:
        client.close()
    answers = split_answers(rest)
    assert [body for _, body in answers] == [b"/slow from o0"]
    assert b"Connection: close" in answers[0][0]
    assert origin.requests == 1
    assert await drain == {"finished": 1, "forced": 0}


async def test_cut_drain_closes_what_is_left_now(make_gateway: GatewayFactory,
                                                origin: HttpOrigin) -> None:
    """A second SIGTERM: the drain does not wait out its timeout for a slow answer."""
    gateway = await make_gateway(**web_config([f"127.0.0.1:{origin.port}"]))
    client = await KeepAlive.open(gateway)
    try:
        client.send(b"GET /slow?ms=10000 HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: gateway.groups["app"].scheduler.in_use == 1)
        drain = asyncio.ensure_future(gateway.drain(60.0))
        await until(lambda: gateway.draining)
        assert not drain.done()
        gateway.cut_drain()
        assert await asyncio.wait_for(drain, 5) == {"finished": 0, "forced": 1}
        with contextlib.suppress(ConnectionResetError):  # aborted: a reset may come first
            assert await asyncio.wait_for(client.reader.read(), 5) == b""
    finally:
        client.close()
    assert gateway.groups["app"].scheduler.in_use == 0


async def test_a_reused_upstream_that_closes_is_retried_on_another_backend(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    """An idle upstream connection is taken without a task; when its backend closes it
    before answering, the exchange moves to a task that retries on the other backend."""

    class AnswersOnce(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.answered = False

        def data_received(self, data: bytes) -> None:
            if self.answered:
                self.transport.close()  # the second request on this connection: no answer
                return
            self.answered = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nX-Origin: once\r\nContent-Length: 4\r\n"
                                 b"\r\nonce")

    server = await asyncio.get_running_loop().create_server(AnswersOnce, "127.0.0.1", 0)
    once = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    config = web_config([once, f"127.0.0.1:{origin.port}"])
    config["groups"]["app"]["balance"] = "round_robin"
    gateway = await make_gateway(**config)
    client = await KeepAlive.open(gateway)
    try:
        answers = [await client.get("/fast") for _ in range(12)]
    finally:
        client.close()
        server.close()
    assert {status for status, _ in answers} == {200}
    assert gateway.counters["http_retries"] >= 1
    assert (200, b"/fast from o0") in answers and (200, b"once") in answers
    assert gateway.groups["app"].scheduler.in_use == 0


async def test_a_client_leaving_mid_request_gives_its_slots_back(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    config = web_config([f"127.0.0.1:{origin.port}"])
    config["groups"]["app"]["max_in_flight"] = 2
    gateway = await make_gateway(**config)
    group = gateway.groups["app"]
    pool = group.backends[0].pool
    assert pool is not None
    for _ in range(4):  # more abandoned requests than the group has slots
        client = await KeepAlive.open(gateway)
        assert (await client.get("/fast"))[0] == 200  # leaves an idle upstream connection
        client.send(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: a\r\n\r\n")
        await until(lambda: group.scheduler.in_use == 1)
        client.close()
        await until(lambda: group.scheduler.in_use == 0)
    await until(lambda: pool.stats()["connections"]["in_use"] == 0)
    assert group.backends[0].outstanding == 0
    client = await KeepAlive.open(gateway)
    try:
        assert await client.get("/fast") == (200, b"/fast from o0")
    finally:
        client.close()


async def test_a_connection_keeps_its_cqi_state_until_its_inputs_or_a_reload_change(
        make_gateway: GatewayFactory, origin: HttpOrigin) -> None:
    config = web_config([f"127.0.0.1:{origin.port}"])
    config["routes"] = [
        {"listener": "web", "group": "app", "path_prefix": "/slow", "class": "critical"},
        {"listener": "web", "group": "app", "path_prefix": "/", "class": "bulk"},
    ]
    gateway = await make_gateway(**config)
    client = await KeepAlive.open(gateway)
    try:
        await client.get("/fast")
        [conn] = gateway.clients.values()
        assert isinstance(conn, HttpClient)
        state = conn.class_state
        assert state is not None and state.class_name == "bulk"
        await client.get("/fast")
        assert conn.class_state is state  # same inputs: no new scoring
        await client.get("/slow?ms=1")
        assert conn.class_state is not state and conn.class_state.class_name == "critical"
        await client.get("/fast")
        state = conn.class_state
        assert state.class_name == "bulk"
        # A reload, even of the same configuration, brings a new policy: the state is redone.
        await gateway.reload(load_gateway_config(config))
        await client.get("/fast")
        assert conn.class_state is not state and conn.class_state.policy is gateway.cqi
        state = conn.class_state
        reloaded = dict(config, routes=[{"listener": "web", "group": "app", "path_prefix": "/",
                                         "class": "critical"}])
        await gateway.reload(load_gateway_config(reloaded))
        await client.get("/fast")
        assert conn.class_state is not state
        assert [c["class"] for c in gateway.connections()] == ["critical"]
    finally:
        client.close()
