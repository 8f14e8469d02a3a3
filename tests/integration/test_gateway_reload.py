"""Reload (SIGHUP) over real loopback sockets: new routes and backends for new requests while
established connections go on (a WebSocket, a keep-alive connection, an answer in flight), a
refused configuration changes nothing, and escalations survive."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.server import Server

from connwise.config import load_gateway_config
from connwise.errors import ConfigError
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway_admission import until


def config(echo: Server, app: HttpOrigin, **extra: Any) -> dict[str, Any]:
    port = echo.sockets[0].getsockname()[1]
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "ws", "path_prefix": "/ws"},
                   {"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"ws": {"backends": [f"127.0.0.1:{port}"], "health": {"kind": "none"}},
                   "app": {"backends": [app.address], "health": {"kind": "none"}}}}
    data.update(extra)
    return data


async def reload(gateway: Gateway, data: dict[str, Any]) -> None:
    """Reload `data` with the running listener's bind (a reload cannot move a listener)."""
    data["listeners"][0]["bind"] = gateway.config.listeners[0].bind
    await gateway.reload(load_gateway_config(data))


def base(gateway: Gateway, scheme: str = "http") -> str:
    host, port = gateway.listeners["web"].address
    return f"{scheme}://{host}:{port}"


async def test_a_websocket_and_a_keepalive_connection_go_on_across_a_reload(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**config(echo, origins[0]))
    old_ws = gateway.groups["ws"]
    async with websockets.connect(base(gateway, "ws") + "/ws") as ws, \
            httpx.AsyncClient(base_url=base(gateway)) as client:
        await ws.send("before")
        assert await ws.recv() == "before"
        assert (await client.get("/fast")).headers["x-origin"] == "o0"
        await reload(gateway, config(echo, origins[1]))
        assert gateway.groups["ws"] is not old_ws and old_ws in gateway.retired
        # The old group retired at once (nothing queued, no request in flight): its pools are
        # closed, while the WebSocket relayed on one of their connections goes on, past the
        # second after which a force close used to cut it.
        await until(lambda: old_ws not in gateway.retired)
        await asyncio.sleep(1.2)
        for i in range(3):
            await ws.send(f"after {i}")
            assert await asyncio.wait_for(ws.recv(), 3) == f"after {i}"
        assert len(echo.connections) == 1          # its upstream connection is still open
        # The keep-alive connection stays, and its next request takes the new route.
        assert (await client.get("/fast")).headers["x-origin"] == "o1"
        assert len(gateway.clients) == 2
        assert gateway.counters["accepted"] == 2
    await until(lambda: not echo.connections)      # closed once the WebSocket ended
    await until(lambda: not gateway.clients)


async def test_a_retired_group_closes_idle_connections_at_once_and_lets_answers_finish(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    data = config(echo, origins[0])
    data["groups"]["app"]["warm_target"] = 3
    gateway = await make_gateway(**data)
    old_app = gateway.groups["app"]
    [backend] = old_app.backends
    pool = backend.pool
    assert pool is not None
    await until(lambda: pool.stats()["connections"]["idle"] == 3)
    async with httpx.AsyncClient(base_url=base(gateway)) as client:
        slow = asyncio.create_task(client.get("/slow?ms=1500", timeout=5))
        await until(lambda: pool.stats()["connections"]["in_use"] == 1)
        await reload(gateway, config(echo, origins[1]))
        # The two idle connections close now; the one in use finishes its answer...
        await until(lambda: pool.stats()["connections"]["idle"] == 0)
        assert pool.stats()["connections"]["draining"] == 1 and not slow.done()
        answer = await slow
        assert answer.status_code == 200 and answer.headers["x-origin"] == "o0"
        # ...and closes as it comes back.
        await until(lambda: pool.stats()["state"] == "closed")
        await until(lambda: old_app not in gateway.retired)
        assert (await client.get("/fast")).headers["x-origin"] == "o1"


async def test_a_drain_closes_what_retired_groups_still_relay(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**config(echo, origins[0]))
    async with websockets.connect(base(gateway, "ws") + "/ws") as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        await reload(gateway, config(echo, origins[1]))
        result = await gateway.drain(0.2)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 3)
        assert ws.close_code == 1001
    assert result == {"finished": 0, "forced": 1}
    assert not gateway.retired
    await until(lambda: not echo.connections)


async def test_a_refused_reload_leaves_the_running_configuration_whole(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    escalation = {"activity": [{"name": "busy", "threshold": 3}]}
    gateway = await make_gateway(**config(echo, origins[0], escalation=escalation))
    before = (gateway.config, gateway.classes, gateway.cqi, gateway.escalation, gateway.groups,
              gateway.routers, gateway.segments)
    bad = config(echo, origins[1], escalation={"activity": [{"name": "other", "threshold": 9}]},
                 classes={"gold": {"rank": 3}, "critical": {"rank": 2, "aging_rate": 0.5},
                          "interactive": {"rank": 1, "aging_rate": 0.5},
                          "bulk": {"rank": 0, "aging_rate": 0.5}})
    # Valid to the file's schema, refused by the core: the cap below the first ejection.
    bad["groups"]["app"]["health"] |= {"base_ejection_time": 60, "max_ejection_time": 10}
    with pytest.raises(ConfigError, match="max_ejection_time"):
        await reload(gateway, bad)
    after = (gateway.config, gateway.classes, gateway.cqi, gateway.escalation, gateway.groups,
             gateway.routers, gateway.segments)
    assert all(a is b for a, b in zip(after, before, strict=True))
    assert not gateway.retired and gateway.counters["reloads"] == 0
    async with httpx.AsyncClient(base_url=base(gateway)) as client:
        assert (await client.get("/fast")).headers["x-origin"] == "o0"


def busy_config(echo: Server, app: HttpOrigin, **escalation: Any) -> dict[str, Any]:
    data = config(echo, app, escalation={
        "activity": [{"name": "busy", "threshold": 3, "window": 10, "hold": 30}],
        "max_escalated_share": 1.0, **escalation})
    data["routes"][1]["class"] = "bulk"
    return data


async def test_an_escalated_connection_keeps_its_class_across_a_reload_with_the_same_rules(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**busy_config(echo, origins[0]))
    engine = gateway.escalation
    async with httpx.AsyncClient(base_url=base(gateway)) as client:
        for _ in range(4):
            await client.get("/fast")
        [conn] = gateway.connections()
        assert conn["class"] == "interactive"
        await reload(gateway, busy_config(echo, origins[1]))   # new backends, same rules
        assert gateway.escalation is engine
        answer = await client.get("/fast")
        assert answer.headers["x-origin"] == "o1"
        [conn] = gateway.connections()
        assert conn["class"] == "interactive"
        assert conn["why"]["escalated"] is True


async def test_changed_rules_take_live_connections_over_with_their_groups(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    """The group rule is new: the three connections sharing a key, carried over with it, are
    raised by the reload itself; the busy one's activity rule is gone, so it comes down."""
    gateway = await make_gateway(**busy_config(echo, origins[0]))
    old = gateway.escalation
    async with contextlib.AsyncExitStack() as stack:
        doc = [await stack.enter_async_context(httpx.AsyncClient(base_url=base(gateway)))
               for _ in range(3)]
        busy = await stack.enter_async_context(httpx.AsyncClient(base_url=base(gateway)))
        for client in doc:
            await client.get("/fast", headers={"x-connwise-group": "doc-7"})
        for _ in range(4):
            await busy.get("/fast")
        classes = sorted(c["class"] for c in gateway.connections())
        assert classes == ["bulk", "bulk", "bulk", "interactive"]
        data = busy_config(echo, origins[0], groups=[{"name": "coedit", "min_members": 3}])
        data["escalation"]["activity"][0]["threshold"] = 1000
        await reload(gateway, data)
        assert gateway.escalation is not old and gateway.escalation is not None
        by_id = {c["id"]: c for c in gateway.connections()}
        busy_id = max(by_id)
        assert by_id.pop(busy_id)["class"] == "bulk"
        assert {c["class"] for c in by_id.values()} == {"interactive"}
        history = gateway.connections()[0]["why"]["history"]
        assert history[-1]["reason"] == "reload: the escalation rules changed"
        assert gateway.escalation.group_size("header:x-connwise-group=doc-7") == 3


def coedit_config(echo: Server, app: HttpOrigin, group_key: str) -> dict[str, Any]:
    data = config(echo, app, escalation={
        "groups": [{"name": "coedit", "min_members": 3}], "group_key": group_key,
        "max_escalated_share": 1.0})
    data["routes"][1]["class"] = "bulk"
    return data


async def test_a_new_group_key_groups_new_requests_and_established_groups_go_on(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    """A reload that changes only `group_key` keeps the engine (escalations, windows); a group
    is its key's source and value, so a request read by the new key never joins a group read
    by the old one, even with the same value. Established connections stay in their groups
    until a request of theirs names another (a keep-alive connection's next request, as it
    takes the new routes); a connection that makes no more requests (a WebSocket) keeps its."""
    gateway = await make_gateway(**coedit_config(echo, origins[0], "header:x-doc"))
    engine = gateway.escalation
    assert engine is not None
    async with contextlib.AsyncExitStack() as stack:
        editors = [await stack.enter_async_context(httpx.AsyncClient(base_url=base(gateway)))
                   for _ in range(3)]
        for client in editors:
            await client.get("/fast", headers={"x-doc": "doc-7"})
        assert {c["class"] for c in gateway.connections()} == {"interactive"}
        await reload(gateway, coedit_config(echo, origins[0], "cookie:doc"))
        assert gateway.escalation is engine
        assert {c["class"] for c in gateway.connections()} == {"interactive"}
        assert engine.group_size("header:x-doc=doc-7") == 3

        late = await stack.enter_async_context(httpx.AsyncClient(base_url=base(gateway)))
        await late.get("/fast", headers={"cookie": "doc=doc-7"})
        late_id = max(c["id"] for c in gateway.connections())
        assert engine.group_size("cookie:doc=doc-7") == 1
        assert engine.class_of(late_id) == "bulk"            # not the old group's fourth

        for client in editors[:2]:                           # their next requests regroup
            await client.get("/fast", headers={"cookie": "doc=doc-7"})
        assert engine.group_size("cookie:doc=doc-7") == 3
        assert engine.group_size("header:x-doc=doc-7") == 1
        assert engine.class_of(late_id) == "interactive"


async def test_a_reload_applies_new_limits_and_a_refused_one_keeps_the_old(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    """The data plane reads `[limits]` from a snapshot (`Gateway.limits`) taken at start and at
    every reload: a smaller `max_body_bytes` refuses the next large body, keep-alive
    connections included, and a refused reload leaves the snapshot as it was."""
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app"}],
        "groups": {"app": {"backends": [origins[0].address], "health": {"kind": "none"}}},
    }
    gateway = await make_gateway(**data)
    host, port = gateway.listeners["web"].address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        assert (await client.post("/echo", content=b"x" * 5000)).status_code == 200
        data["limits"] = {"max_body_bytes": 1000}
        await gateway.reload(load_gateway_config(data))
        assert gateway.limits.max_body_bytes == 1000
        assert (await client.post("/echo", content=b"x" * 5000)).status_code == 413
    before = gateway.limits
    data["limits"] = {"max_body_bytes": 10}
    data["listeners"].append({"name": "extra", "kind": "http", "bind": "127.0.0.1:0"})
    refused = load_gateway_config(data)  # valid, but a reload cannot add a listener
    with pytest.raises(ConfigError):
        await gateway.reload(refused)
    assert gateway.limits is before and gateway.limits.max_body_bytes == 1000


async def test_a_reload_keeps_the_health_of_the_backends_it_keeps(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    """A reload rebuilds every group; a backend it keeps must not come back into rotation
    because of it: one ejected stays ejected until its time is over, one an operator drained
    stays drained."""
    data = config(echo, origins[0])
    dead = "127.0.0.1:1"
    app = data["groups"]["app"]
    app["backends"] = [origins[0].address, dead, origins[1].address]
    app["health"] |= {"consecutive_failures": 2, "max_ejection_percent": 100}
    gateway = await make_gateway(**data)
    old = gateway.groups["app"]
    by_name = {b.name: b for b in old.backends}
    for _ in range(2):
        old.connect_failed(by_name[dead], OSError("connection refused"))
    ejected_until = by_name[dead].health.ejected_until
    by_name[origins[1].address].health.drain(gateway.clock.now())
    data["routes"].append({"listener": "web", "group": "app", "path_prefix": "/new"})
    await reload(gateway, data)
    new = gateway.groups["app"]
    assert new is not old
    states = {b.name: b.health.state.value for b in new.backends}
    assert states == {origins[0].address: "healthy", dead: "ejected",
                      origins[1].address: "draining"}
    assert new.health[dead].ejected_until == ejected_until
    assert new.health[dead].ejections == 1
    async with httpx.AsyncClient(base_url=base(gateway)) as client:
        for _ in range(4):
            assert (await client.post("/echo", content=b"x")).headers["x-origin"] == "o0"


async def test_a_reload_during_a_drain_is_refused(
        make_gateway: GatewayFactory, echo: Server, origins: list[HttpOrigin]) -> None:
    """A SIGHUP while SIGTERM drains: the new groups would open pools (warming connections)
    and start health checks for a gateway that takes no new connection, and those made after
    the drain cancelled its tasks and closed its groups outlived it. It is refused."""
    data = config(echo, origins[0])
    gateway = await make_gateway(**data)
    groups = gateway.groups
    async with httpx.AsyncClient(base_url=base(gateway)) as client:
        slow = asyncio.create_task(client.get("/slow?ms=500", timeout=5))
        await until(lambda: gateway.groups["app"].scheduler.in_use == 1)
        drain = asyncio.create_task(gateway.drain(5.0))
        await until(lambda: gateway.draining)
        data["groups"]["app"]["warm_target"] = 2
        with pytest.raises(ConfigError, match="draining"):
            await reload(gateway, data)
        assert gateway.groups is groups and not gateway.retired
        assert (await slow).status_code == 200
        assert await drain == {"finished": 1, "forced": 0}
    assert gateway.counters["reloads"] == 0
