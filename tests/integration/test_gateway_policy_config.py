"""The policy sections of the gateway's TOML reach the running gateway: `[cqi]` user-context
rules change a request's class, `[degrade]` (and a group's own `degrade`) the ladder that
answers an overload, and the smaller keys (`vnodes`, `slow_start_min_weight`, escalation
bounds) the objects built from them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from connwise.config import load_gateway_config
from connwise.core.affinity import BoundedLoadRing
from connwise.core.clock import VirtualClock
from connwise.core.cqi import ClassState, Opening
from connwise.core.degrade import SHED, SIGNAL
from connwise.gateway.runtime import Gateway
from connwise.gateway.tcp import TcpClient
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway import url, web_config
from tests.integration.test_gateway_tcp_throttle import ByteService

#: A user axis weighted up (0.3 instead of 0.15): the bands are then calibrated to these
#: weights (crit/interactive edge ~0.70, interactive/bulk ~0.50), and an interactive route's
#: request scores ~0.74 with a gold tier and ~0.48 with a free one.
CQI: dict[str, Any] = {
    "weights": {"business": 0.5, "technical": 0.2, "user": 0.3, "resource": 0.15},
    "user": [{"header": "x-user-tier", "value": "gold", "score": 1.0},
             {"header": "x-user-tier", "value": "free", "score": 0.0}],
}


async def class_of(gateway: Any, client: httpx.AsyncClient, tier: str | None) -> str:
    headers = {"x-user-tier": tier} if tier else {}
    answer = await client.get("/", headers=headers)
    assert answer.status_code == 200
    newest = max(gateway.connections(), key=lambda conn: conn["id"])
    return str(newest["class"])


async def test_cqi_user_rules_move_a_request_between_classes(make_gateway: GatewayFactory,
                                                             origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins[:1], cqi=CQI))
    classes = []
    for tier in ("gold", None, "free"):
        async with httpx.AsyncClient(base_url=url(gateway)) as client:
            classes.append(await class_of(gateway, client, tier))
    assert classes == ["critical", "interactive", "bulk"]


async def test_without_cqi_rules_the_tier_header_changes_nothing(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins[:1]))
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert await class_of(gateway, client, "gold") == "interactive"


async def overload(gateway: Any, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=url(gateway), limits=limits, timeout=20) as client:
        return list(await asyncio.gather(*(client.get("/slow?ms=100") for _ in range(n))))


async def test_degrade_section_sets_the_ladder_and_a_group_may_replace_it(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    config = web_config(origins[:1], degrade={"retry_after": 17, "shed_backlog": 0,
                                              "max_level": {"bulk": "signal"}})
    config["groups"]["app"].update(max_in_flight=2, max_waiters=4)
    gateway = await make_gateway(**config)
    ladder = gateway.groups["app"].admission
    assert ladder.config.retry_after == 17
    assert ladder.state("bulk").max_level == SIGNAL
    assert ladder.state("interactive").max_level == SHED
    answers = await overload(gateway, 30)
    shed = [a for a in answers if a.status_code == 503]
    assert shed and all(a.headers["retry-after"] == "17" for a in shed)

    config["groups"]["app"]["degrade"] = {"retry_after": 9}
    gateway = await make_gateway(**config)
    assert gateway.groups["app"].admission.config.retry_after == 9
    shed = [a for a in await overload(gateway, 30) if a.status_code == 503]
    assert shed and all(a.headers["retry-after"] == "9" for a in shed)


async def test_smaller_policy_keys_reach_what_is_built_from_them(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    config = web_config(origins, escalation={
        "activity": [{"name": "busy", "threshold": 100.0}], "max_tracked": 7, "max_groups": 3})
    config["groups"]["app"].update(balance="hash", vnodes=12)
    config["groups"]["app"]["health"]["slow_start_min_weight"] = 0.25
    gateway = await make_gateway(**config)
    group = gateway.groups["app"]
    assert isinstance(group._balancer, BoundedLoadRing) and group._balancer.vnodes == 12
    assert group.health.config.slow_start_min_weight == 0.25
    assert gateway.escalation is not None
    assert (gateway.escalation.config.max_tracked, gateway.escalation.config.max_groups) == (7, 3)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/")).status_code == 200


async def test_a_keep_alive_connection_joins_the_group_its_later_request_names(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    # A page load without the key, then the document's requests with it, on one connection.
    config = web_config(origins[:1])
    config["routes"][0]["class"] = "bulk"
    config["escalation"] = {"groups": [{"name": "coedit", "min_members": 2}],
                            "max_escalated_share": 1.0}
    gateway = await make_gateway(**config)
    engine = gateway.escalation
    assert engine is not None
    doc = {"x-connwise-group": "doc-7"}
    async with httpx.AsyncClient(base_url=url(gateway)) as first, \
            httpx.AsyncClient(base_url=url(gateway)) as second:
        await first.get("/fast")
        await second.get("/fast", headers=doc)
        await first.get("/fast", headers=doc)
        assert engine.group_size("header:x-connwise-group=doc-7") == 2
        assert {c["class"] for c in gateway.connections()} == {"interactive"}


#: Resource use weighted up: calibrated edges ~0.855 (critical) and ~0.765 (interactive); a
#: fresh interactive connection scores 0.81, one moving many times `rate_half` about 0.21.
HEAVY_CQI: dict[str, Any] = {
    "weights": {"business": 0.2, "technical": 0.1, "user": 0.1, "resource": 0.6},
    "rate_half": 1000.0,
}


@pytest.fixture
async def service() -> AsyncIterator[ByteService]:
    started = await ByteService().start()
    yield started
    await started.stop()


async def test_a_tcp_connection_follows_its_cqi_class_with_escalation_rules_configured(
        make_gateway: GatewayFactory, service: ByteService) -> None:
    # Escalation tracks only HTTP connections; the resource step handed a tcp connection's
    # CQI change to the engine, which did not know it, and the change was dropped: the class
    # stayed 'interactive' and `why` called it escalated above its CQI class 'bulk'.
    gateway = await make_gateway(
        listeners=[{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "bytes"}],
        groups={"bytes": {"backends": [f"127.0.0.1:{service.port}"],
                          "health": {"kind": "none"}}},
        cqi=HEAVY_CQI, escalation={"activity": [{"name": "busy"}]})
    reader, writer = await asyncio.open_connection(*gateway.listeners["raw"].address)
    try:
        writer.write(b"D 1000000\n")
        await asyncio.wait_for(reader.readexactly(1_000_000), 10)
        gateway.observe_resources(gateway.clock.now() + 1.0)
        [conn] = gateway.connections()
        assert (conn["class"], conn["why"]["cqi_class"]) == ("bulk", "bulk")
        assert not conn["why"]["escalated"]
        history = conn["why"]["history"]
        assert (history[0]["to"], history[-1]["to"]) == ("interactive", "bulk")
    finally:
        writer.close()


async def _tcp_gateway(service: ByteService, clock: VirtualClock, cqi: dict[str, Any],
                       *, class_name: str = "interactive") -> Gateway:
    gateway = Gateway(load_gateway_config({
        "listeners": [{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "bytes",
                       "class": class_name}],
        "groups": {"bytes": {"backends": [f"127.0.0.1:{service.port}"],
                             "health": {"kind": "none"}}},
        "cqi": cqi}), clock=clock)
    await gateway.start()
    return gateway


async def _relayed(gateway: Gateway, n: int) -> list[TcpClient]:
    for _ in range(500):
        clients = [c for c in gateway.clients.values() if isinstance(c, TcpClient)]
        if len(clients) == n and all(c.peer is not None for c in clients):
            return clients
        await asyncio.sleep(0.01)
    raise AssertionError("the relays were not joined")


async def test_idle_tcp_relays_share_their_cqi_opening_until_one_moves_bytes(
        service: ByteService) -> None:
    # An idle relay held a ClassState of its own (~150 bytes) for a state that follows from
    # its listener's opening and its age: now it holds the shared opening until it moves
    # bytes, and then its own state, as if fed all along.
    clock = VirtualClock(1000.1)  # the ticker's resource step runs at whole seconds only
    gateway = await _tcp_gateway(service, clock, HEAVY_CQI)
    streams = [await asyncio.open_connection(*gateway.listeners["raw"].address)
               for _ in range(2)]
    try:
        quiet, talker = await _relayed(gateway, 2)
        for _ in range(3):
            clock.advance(1.0)
            gateway.observe_resources(clock.now())
        assert isinstance(quiet._cqi, Opening) and quiet._cqi is talker._cqi
        listed = gateway.connections()
        assert [c["class"] for c in listed] == ["interactive", "interactive"]
        why = listed[0]["why"]
        assert why["inputs"]["age"] == pytest.approx(3.0)
        assert why["inputs"]["protocol"] == "tcp"
        assert [h["to"] for h in why["history"]] == ["interactive"]
        assert isinstance(quiet._cqi, Opening)  # made for the listing, not kept
        reader, writer = streams[1]  # accepted in order: the second client is `talker`
        writer.write(b"D 100000\n")
        await asyncio.wait_for(reader.readexactly(100_000), 10)
        clock.advance(1.0)
        gateway.observe_resources(clock.now())
        assert isinstance(quiet._cqi, Opening)
        assert isinstance(talker._cqi, ClassState)
        # Fed one second after the previous feed: the byte rate of one second, not of the
        # connection's four seconds of age, moved it to bulk.
        assert talker.class_name == "interactive" and talker._cqi.class_name == "bulk"
        assert talker._cqi.rate == pytest.approx(100_009 * (1 - math.exp(-0.1)))
        [conn] = [c for c in gateway.connections() if c["id"] == talker.conn_id]
        assert conn["class"] == "bulk"
    finally:
        for _, writer in streams:
            writer.close()
        await gateway.drain(1.0)


async def test_an_idle_tcp_relay_whose_age_moves_its_class_gets_its_own_state(
        service: ByteService) -> None:
    clock = VirtualClock(1000.1)
    aging = {"duration_weight": 1.0, "duration_half": 60.0, "hysteresis": 0.0}
    gateway = await _tcp_gateway(service, clock, aging, class_name="critical")
    _, writer = await asyncio.open_connection(*gateway.listeners["raw"].address)
    try:
        [client] = await _relayed(gateway, 1)
        for _ in range(150):  # 0.825 -> 0.700: still critical
            clock.advance(1.0)
            gateway.observe_resources(clock.now())
        assert isinstance(client._cqi, Opening)
        for _ in range(20):
            clock.advance(1.0)
            gateway.observe_resources(clock.now())
        assert isinstance(client._cqi, ClassState)
        assert client._cqi.class_name == "interactive"
        assert gateway.class_counters["reclassified", "interactive"] == 1
        [conn] = gateway.connections()
        assert conn["class"] == "interactive"
        assert [h["to"] for h in conn["why"]["history"]] == ["critical", "interactive"]
    finally:
        writer.close()
        await gateway.drain(1.0)


async def test_a_keep_alive_connection_scored_afresh_keeps_its_byte_rate_age_and_history(
        origins: list[HttpOrigin]) -> None:
    # A later request with other inputs (another route) scores the connection afresh. The new
    # state counted bytes from 0, so the next resource step took every byte the connection had
    # ever moved for a burst of its last second (a long-quiet connection looked like a heavy
    # one), and its age and class history started over.
    config = web_config(origins[:1])
    config["routes"] = [
        {"listener": "web", "group": "app", "path_prefix": "/echo"},
        {"listener": "web", "group": "app", "path_prefix": "/", "latency_sensitive": True}]
    clock = VirtualClock(1000.1)  # the ticker's resource step runs at whole seconds only
    gateway = Gateway(load_gateway_config(config), clock=clock)
    await gateway.start()
    try:
        async with httpx.AsyncClient(base_url=url(gateway)) as client:
            for _ in range(3):
                await client.post("/echo", content=b"z" * 2_000_000)
            clock.advance(1.0)
            gateway.observe_resources(clock.now())
            clock.advance(600.0)      # ten quiet minutes: the byte rate decays to nothing
            gateway.observe_resources(clock.now())
            [conn] = gateway.connections()
            quiet = conn["why"]["axes"]["resource"]
            assert quiet == pytest.approx(0.85, abs=0.01)
            await client.get("/fast")
            clock.advance(1.0)
            gateway.observe_resources(clock.now())
            [conn] = gateway.connections()
        why = conn["why"]
        assert why["inputs"]["latency_sensitive"]
        assert why["inputs"]["bytes_per_s"] < 1000  # the last request and its answer
        assert why["axes"]["resource"] == pytest.approx(quiet, abs=0.01)
        assert why["inputs"]["age"] == pytest.approx(602.0)
        assert why["history"][0]["at"] == pytest.approx(1000.1)
    finally:
        await gateway.drain(1.0)


async def test_an_escalated_connection_scored_afresh_says_which_rule_lifts_it(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    # A later request with other user headers opens a new CQI state; the escalation was then
    # carried over as "escalation in force", and `why` no longer named the rule.
    config = web_config(origins[:1], cqi={
        "user": [{"header": "x-device", "value": "mobile", "score": 0.5}]})
    config["routes"][0]["class"] = "bulk"
    config["escalation"] = {"activity": [{"name": "busy", "threshold": 3, "hold": 30}],
                            "max_escalated_share": 1.0}
    gateway = await make_gateway(**config)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        for _ in range(3):
            await client.get("/fast")
        await client.get("/fast", headers={"x-device": "mobile"})
        [conn] = gateway.connections()
    why = conn["why"]
    assert (conn["class"], why["cqi_class"]) == ("interactive", "bulk")
    assert why["inputs"]["user_headers"]
    assert "activity rule 'busy'" in why["why"]
    assert [(c["from"], c["to"]) for c in why["history"]] == [(None, "bulk"),
                                                             ("bulk", "interactive")]
