"""The ladder on tcp relays over real loopback sockets: both directions are capped while the
class stands on the throttle step, a live relay follows its class up and down the ladder, and
admission at the queue and shed steps follows the core's rule and counts what it refuses as the
http listener does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from connwise.core.cqi import ClassChange
from connwise.core.degrade import (
    DEFAULT_STEPS,
    QUEUE,
    SHED,
    THROTTLE,
    DegradeConfig,
    DegradeLadder,
    Step,
)
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.tcp_relay import until

RATE, BURST = 1024 * 1024, 32 * 1024
SIZE = 1024 * 1024
#: The most one chunk may carry past the cap before its pause (a read of the relay).
CHUNK = 256 * 1024


class ByteService:
    """`D n` sends n bytes back; `U n` reads n bytes and answers `OK`."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ByteService:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                verb, n = line.split()
                if verb == b"D":
                    writer.write(b"x" * int(n))
                else:
                    await reader.readexactly(int(n))
                    writer.write(b"OK\n")
                await writer.drain()
        writer.close()


@pytest.fixture
async def service() -> AsyncIterator[ByteService]:
    started = await ByteService().start()
    yield started
    await started.stop()


async def relay_gateway(make_gateway: GatewayFactory, service: ByteService,
                        degrade: dict[str, Any] | None = None,
                        **config: Any) -> tuple[Gateway, DegradeLadder]:
    """A gateway with a tcp listener to `service`, its group's ladder replaced by one with a
    small rate, so that the cap shows in about a second, and a long dwell_down, so that the
    periodic tick (no real contention here) does not undo the step a test puts a class on.
    `degrade` adds to the ladder's configuration, `config` to the gateway's (`group` to the
    group's)."""
    group = {"backends": [f"127.0.0.1:{service.port}"], "health": {"kind": "none"},
             **config.pop("group", {})}
    gateway = await make_gateway(
        listeners=[{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "bytes"}],
        groups={"bytes": group}, **config)
    ladder = gateway.groups["bytes"].admission = DegradeLadder(
        DegradeConfig(throttle_rate=RATE, throttle_burst=BURST, dwell_down=60.0,
                      **(degrade or {})),
        gateway.classes)
    return gateway, ladder


async def download(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.monotonic()
    writer.write(b"D %d\n" % SIZE)
    await asyncio.wait_for(reader.readexactly(SIZE), 20)
    return time.monotonic() - started


async def upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.monotonic()
    writer.write(b"U %d\n" % SIZE + b"y" * SIZE)
    assert await asyncio.wait_for(reader.readline(), 20) == b"OK\n"
    return time.monotonic() - started


async def test_a_live_tcp_relay_is_capped_both_ways_while_its_class_is_throttled(
        make_gateway: GatewayFactory, service: ByteService) -> None:
    gateway, ladder = await relay_gateway(make_gateway, service)
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    floor = (SIZE - BURST - CHUNK) / RATE
    try:
        free_down = await download(reader, writer)
        free_up = await upload(reader, writer)
        class_name = gateway.connections()[0]["class"]
        assert gateway.connections()[0]["throttled"] is False
        assert free_down < floor / 3 and free_up < floor / 3, (free_down, free_up, floor)

        # The class climbs to the throttle step while the relay is open: it is capped now.
        for t in range(3):
            ladder.update_pressure(dict.fromkeys(gateway.classes.names, 1.0), float(t))
        assert ladder.level(class_name) >= THROTTLE
        capped_down = await download(reader, writer)
        capped_up = await upload(reader, writer)
        assert capped_down >= 0.9 * floor, (capped_down, floor)
        assert capped_up >= 0.9 * floor, (capped_up, floor)
        assert gateway.connections()[0]["throttled"] is True

        # The pressure goes away and the ladder descends: the cap is lifted on the same relay.
        at = 1000.0
        while ladder.level(class_name) > 0:
            ladder.update_pressure({}, at)
            at += 61.0
        lifted_down = await download(reader, writer)
        lifted_up = await upload(reader, writer)
        assert lifted_down < floor / 3 and lifted_up < floor / 3, (lifted_down, lifted_up)
        assert gateway.connections()[0]["throttled"] is False
    finally:
        writer.close()
    # One stay on the step, counted once for the relay (both halves share its bucket).
    assert gateway.class_counters["throttle", class_name] == 1
    assert ladder.stats()[class_name]["applied"]["throttle"] == 1


async def test_a_tcp_relay_follows_its_connections_class(make_gateway: GatewayFactory,
                                                         service: ByteService) -> None:
    """An escalation moves a throttled relay to a class off the step: both halves read the new
    class's step at once, and its admission slot is still given back in the class it took."""
    gateway, ladder = await relay_gateway(make_gateway, service)
    group = gateway.groups["bytes"]
    for t in range(3):  # bulk and interactive climb to the step; critical stays off it
        ladder.update_pressure({"bulk": 1.0, "interactive": 1.0}, float(t))
    assert ladder.level("interactive") >= THROTTLE and ladder.level("critical") == 0
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    floor = (SIZE - BURST - CHUNK) / RATE
    try:
        assert await download(reader, writer) >= 0.9 * floor
        [conn] = gateway.connections()
        assert conn["class"] == "interactive" and conn["throttled"] is True
        gateway.apply_changes([ClassChange(conn["id"], "interactive", "critical", "test",
                                           gateway.clock.now())])
        [conn] = gateway.connections()
        assert conn["class"] == "critical" and conn["throttled"] is False
        assert await download(reader, writer) < floor / 3
        assert await upload(reader, writer) < floor / 3
    finally:
        writer.close()
    for _ in range(100):
        if not gateway.clients:
            break
        await asyncio.sleep(0.01)
    assert group.scheduler.in_use == 0  # the slot went back in the class it was taken in


async def test_a_tcp_connection_queued_by_the_ladder_takes_a_free_slot_at_once(
        make_gateway: GatewayFactory, service: ByteService) -> None:
    """At the queue step a connection takes no fast path, but a slot free while nobody else
    waits is its own at once, not at the next release (there may be none)."""
    gateway, ladder = await relay_gateway(make_gateway, service)
    for t in range(4):  # interactive (and bulk below it) up to the queue step
        ladder.update_pressure({"bulk": 1.5, "interactive": 1.5}, float(t))
    assert ladder.level("interactive") == QUEUE
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"D 10\n")
        assert await asyncio.wait_for(reader.readexactly(10), 2) == b"x" * 10
    finally:
        writer.close()
    assert ladder.stats()["interactive"]["applied"]["queue"] == 1


def to_shed(gateway: Gateway, ladder: DegradeLadder) -> None:
    """Interactive (and bulk below it) up to the shed step, at a pressure above its exit."""
    for t in range(6):
        ladder.update_pressure({"bulk": 2.0, "interactive": 2.0}, float(t))
    assert ladder.level("interactive") == SHED


async def closed_by_the_gateway(reader: asyncio.StreamReader) -> bool:
    """Whether the connection ends without a byte (a close or a reset)."""
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except ConnectionResetError:
        return True


async def test_a_tcp_connection_at_the_shed_step_takes_a_free_slot_while_nobody_waits(
        make_gateway: GatewayFactory, service: ByteService) -> None:
    """The core's rule (`takes_free_slot`), as for http: a slot that is free while nobody
    waits serves the connection now; shedding it would leave the slot idle."""
    gateway, ladder = await relay_gateway(make_gateway, service)
    to_shed(gateway, ladder)
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"D 10\n")
        assert await asyncio.wait_for(reader.readexactly(10), 2) == b"x" * 10
    finally:
        writer.close()
    assert gateway.class_counters["shed", "interactive"] == 0
    assert ladder.stats()["interactive"]["applied"]["shed"] == 0


async def test_a_tcp_connection_at_the_shed_step_queues_within_the_backlog(
        make_gateway: GatewayFactory, service: ByteService) -> None:
    """With no free slot it queues while fewer than `shed_backlog` x capacity wait (`sheds`),
    and is relayed when the slot frees."""
    gateway, ladder = await relay_gateway(make_gateway, service, group={"max_in_flight": 1})
    group = gateway.groups["bytes"]
    to_shed(gateway, ladder)
    assert group.scheduler.try_admit("interactive")  # the test holds the only slot
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await until(lambda: group.scheduler.waiting == 1)
        group.release("interactive")
        writer.write(b"D 10\n")
        assert await asyncio.wait_for(reader.readexactly(10), 2) == b"x" * 10
    finally:
        writer.close()
    assert gateway.class_counters["queued", "interactive"] == 1
    assert gateway.class_counters["shed", "interactive"] == 0
    assert ladder.stats()["interactive"]["applied"]["queue"] == 1


async def test_a_tcp_connection_at_the_shed_step_past_the_backlog_is_closed(
        make_gateway: GatewayFactory, service: ByteService) -> None:
    """No backlog, no free slot, the pressure at or over the step's exit: closed, counted as
    shed. (The shed step's exit is 0 here: the gateway's own ladder updates, which read the
    real contention, keep the pressure over it while the test holds the slot.)"""
    steps = (*DEFAULT_STEPS[:3], Step(DEFAULT_STEPS[3].enter, 0.0))
    gateway, ladder = await relay_gateway(make_gateway, service,
                                          {"shed_backlog": 0.0, "steps": steps},
                                          group={"max_in_flight": 1})
    group = gateway.groups["bytes"]
    to_shed(gateway, ladder)
    assert group.scheduler.try_admit("interactive")
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        assert await closed_by_the_gateway(reader)
    finally:
        writer.close()
    assert group.scheduler.waiting == 0
    assert gateway.class_counters["shed", "interactive"] == 1
    assert ladder.stats()["interactive"]["applied"]["shed"] == 1


async def test_a_tcp_connection_past_its_max_wait_is_closed_and_counted_as_shed(
        make_gateway: GatewayFactory, service: ByteService) -> None:
    """As an http request that waited out its class's max wait (a 503): counted as `shed` in
    the class counters behind the admin stats and `connwise_degradation_steps_total`."""
    gateway, _ = await relay_gateway(
        make_gateway, service, group={"max_in_flight": 1},
        classes={"critical": {"rank": 2, "reserved_share": 0.0, "max_wait": 5.0},
                 "interactive": {"rank": 1, "max_wait": 0.2, "aging_rate": 0.2},
                 "bulk": {"rank": 0, "aging_rate": 0.1}})
    group = gateway.groups["bytes"]
    assert group.scheduler.try_admit("interactive")  # the test holds the only slot
    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await until(lambda: group.scheduler.waiting == 1)
        assert await closed_by_the_gateway(reader)
    finally:
        writer.close()
    group.release("interactive")
    assert group.scheduler.waiting == 0
    assert gateway.class_counters["queued", "interactive"] == 1
    assert gateway.class_counters["shed", "interactive"] == 1
    assert ("timed_out", "interactive") not in gateway.class_counters
    assert gateway.stats()["classes"]["shed:interactive"] == 1
