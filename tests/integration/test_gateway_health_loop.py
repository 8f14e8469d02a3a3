"""Active health checks over loopback: each group is probed at its own interval, probes of one
backend never overlap, and a backend's state changes are logged once each, not every failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import GatewayFactory


class ProbeCounter:
    """Accepts connections and holds each open until the peer closes (an http check gets no
    answer and waits for its timeout); counts them, and the most open at once."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ProbeCounter:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()


@pytest.fixture
async def counters() -> AsyncIterator[list[ProbeCounter]]:
    started = [await ProbeCounter().start() for _ in range(2)]
    yield started
    for counter in started:
        await counter.stop()


def listener() -> list[dict[str, str]]:
    return [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}]


async def test_each_group_is_checked_at_its_own_interval(
        make_gateway: GatewayFactory, counters: list[ProbeCounter]) -> None:
    fast, slow = counters
    await make_gateway(listeners=listener(), groups={
        "fast": {"backends": [fast.address], "health": {"kind": "tcp", "interval": 0.05}},
        "slow": {"backends": [slow.address], "health": {"kind": "tcp", "interval": 0.5}}})
    await asyncio.sleep(0.8)
    # 0.8 s: the fast group about 16 probes, the slow one 2 (at 0 and 0.5 s). Checked at the
    # smallest interval of all groups, the slow one had as many as the fast.
    assert fast.accepted >= 8, fast.accepted
    assert 1 <= slow.accepted <= 3, slow.accepted


async def test_probes_of_a_backend_do_not_overlap(
        make_gateway: GatewayFactory, counters: list[ProbeCounter]) -> None:
    silent = counters[0]
    await make_gateway(listeners=listener(), groups={
        "app": {"backends": [silent.address],
                "health": {"kind": "http", "interval": 0.05, "timeout": 0.3}}})
    await asyncio.sleep(0.8)
    # Each probe waits its whole 0.3 s timeout for an answer that never comes; a new one
    # every 0.05 s would have had 6 open at once.
    assert silent.max_open == 1, silent.max_open
    assert 2 <= silent.accepted <= 4, silent.accepted


async def test_a_failing_backend_logs_its_ejection_not_each_failure(
        make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture) -> None:
    gateway = await make_gateway(listeners=listener(), groups={
        "app": {"backends": ["127.0.0.1:1", "127.0.0.1:2"],
                "health": {"kind": "none", "consecutive_failures": 3,
                           "base_ejection_time": 0.2, "max_ejection_percent": 100}}})
    group = gateway.groups["app"]
    backend = group.backends[0]
    caplog.set_level(logging.DEBUG, logger="connwise.gateway")
    for _ in range(10):
        group.connect_failed(backend, OSError("answered 503"))
    await asyncio.sleep(0.6)  # the ticker logs the ejection, then its end
    lines = [(r.levelno, r.getMessage()) for r in caplog.records
             if r.name == "connwise.gateway" and "backend 127.0.0.1:1" in r.getMessage()]
    warnings = [m for level, m in lines if level >= logging.WARNING]
    assert warnings == ["group app: backend 127.0.0.1:1 healthy -> ejected: 3 consecutive "
                        "failures: ejected for 0.2 s"], lines
    assert any(level == logging.INFO and "ejected -> " in m for level, m in lines), lines
    assert sum(level == logging.DEBUG and "failed: answered 503" in m
               for level, m in lines) == 10


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_an_http_check_names_the_backend_as_its_host(
        make_gateway: GatewayFactory, host: str) -> None:
    """RFC 9110 7.2: Host is the target's authority, port included and an IPv6 literal in
    brackets; `Host: ::1` is no valid field value, and a server may answer it 400."""
    heads: asyncio.Queue[bytes] = asyncio.Queue()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.put_nowait(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(answer, host, 0)
    port = server.sockets[0].getsockname()[1]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        await make_gateway(listeners=listener(), groups={
            "app": {"backends": [address], "health": {"kind": "http", "interval": 0.05}}})
        head = await asyncio.wait_for(heads.get(), 5)
        assert f"\r\nHost: {address}\r\n".encode() in head, head
    finally:
        server.close()
