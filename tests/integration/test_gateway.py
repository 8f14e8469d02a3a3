"""The gateway over real loopback sockets with real clients: httpx, websockets, asyncpg and
redis-py through the listeners, raw bytes for the limits, drain, reload and the admin API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import websockets

from connwise.config import load_gateway_config
from connwise.errors import ConfigError
from connwise.gateway.admin import AdminServer
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin


def web_config(origins: list[HttpOrigin], **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"app": {"backends": [o.address for o in origins],
                           "health": {"kind": "none"}}},
    }
    config.update(extra)
    return config


def url(gateway: Gateway, listener: str = "web") -> str:
    host, port = gateway.listeners[listener].address
    return f"http://{host}:{port}"


async def raw(gateway: Gateway, data: bytes, listener: str = "web",
              read_timeout: float = 3.0) -> bytes:
    host, port = gateway.listeners[listener].address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()


async def test_http_keepalive_headers_and_balance(make_gateway: GatewayFactory,
                                                  origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins))
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        seen = set()
        for _ in range(20):
            answer = await client.get("/fast")
            assert answer.status_code == 200
            seen.add(answer.headers["x-origin"])
        assert seen == {"o0", "o1"}
        headers = (await client.get("/headers", headers={"Connection": "keep-alive, X-Secret",
                                                         "X-Secret": "drop-me",
                                                         "X-Forwarded-For": "10.0.0.1"})).json()
        assert headers["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["via"] == "1.1 connwise-gw1"
        assert "x-secret" not in headers and "connection" not in headers
    assert sum(o.connections for o in origins) <= 4, "upstream connections are kept alive"


async def test_http_bodies_both_ways(make_gateway: GatewayFactory,
                                     origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins))
    big = b"x" * 300_000

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        answer = await client.post("/echo", content=big)
        assert answer.content == big
        answer = await client.post("/echo", content=chunks())
        assert answer.content == b"y" * 10_000
        answer = await client.post("/echo", content=b"abc", headers={"Expect": "100-continue"})
        assert answer.content == b"abc"
        closing = await client.get("/close")  # no length: the end of the body is the close
        assert closing.content == b"/close from " + closing.headers["x-origin"].encode()
        head = await client.head("/fast")
        assert head.status_code == 200 and head.content == b""
        assert (await client.get("/fast")).status_code == 200


async def test_unrouted_request_gets_404(make_gateway: GatewayFactory,
                                         origins: list[HttpOrigin]) -> None:
    config = web_config(origins)
    config["routes"] = [{"listener": "web", "group": "app", "path_prefix": "/api",
                         "methods": ["GET"]}]
    gateway = await make_gateway(**config)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/other")).status_code == 404
        assert (await client.post("/api/x", content=b"")).status_code == 404
        assert (await client.get("/api/fast")).status_code == 200


async def test_websocket_upgrade_relayed_and_counted(make_gateway: GatewayFactory) -> None:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    server = await websockets.serve(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "ws", "path_prefix": "/ws", "upgrade": "websocket"}],
        groups={"ws": {"backends": [f"127.0.0.1:{port}"], "health": {"kind": "none"}}})
    host, gport = gateway.listeners["web"].address
    async with websockets.connect(f"ws://{host}:{gport}/ws") as ws:
        for i in range(5):
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
        conns = gateway.connections()
        assert conns[0]["kind"] == "websocket"
        client = next(iter(gateway.clients.values()))
        assert client.frames is not None and client.frames.messages == 5  # type: ignore[attr-defined]
    server.close()


async def test_postgres_and_redis_through_tcp_listeners(make_gateway: GatewayFactory,
                                                        postgres_dsn: str,
                                                        redis_url: str) -> None:
    gateway = await make_gateway(
        listeners=[{"name": "pg", "kind": "tcp", "bind": "127.0.0.1:0", "group": "pg"},
                   {"name": "redis", "kind": "tcp", "bind": "127.0.0.1:0", "group": "redis"}],
        groups={"pg": {"backends": ["127.0.0.1:5432"]},
                "redis": {"backends": ["127.0.0.1:6379"]}})
    host, port = gateway.listeners["pg"].address
    conn = await asyncpg.connect(f"postgresql://postgres@{host}:{port}/test")
    assert await conn.fetchval("SELECT 40 + 2") == 42
    rows = await conn.fetch("SELECT generate_series(1, 5000) AS n")
    assert len(rows) == 5000
    await conn.close()
    rhost, rport = gateway.listeners["redis"].address
    client = aioredis.Redis(host=rhost, port=rport)
    await client.set("connwise:gw", "through")
    assert await client.get("connwise:gw") == b"through"
    await client.aclose()
    assert gateway.counters["accepted"] >= 2


@pytest.mark.parametrize(("payload", "status"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n", b"413"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", b"400"),
    (b"GARBAGE\r\n\r\n", b"400"),
])
async def test_bad_requests_answered_and_others_still_served(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], payload: bytes,
        status: bytes) -> None:
    gateway = await make_gateway(**web_config(origins))
    answer = await raw(gateway, payload)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:80]
    assert b"Connection: close" in answer
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/fast")).status_code == 200
    assert sum(o.requests for o in origins) == 1, "nothing bad reached an origin"


async def test_slowloris_gets_408(make_gateway: GatewayFactory,
                                  origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins, limits={"header_timeout": 0.2}))
    answer = await raw(gateway, b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert answer.startswith(b"HTTP/1.1 408")
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/fast")).status_code == 200


async def test_per_ip_connection_limit(make_gateway: GatewayFactory,
                                       origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins, limits={"max_connections_per_ip": 2}))
    host, port = gateway.listeners["web"].address
    held = [await asyncio.open_connection(host, port) for _ in range(2)]
    answer = await raw(gateway, b"GET /fast HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503")
    assert gateway.counters["refused_per_ip"] == 1
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/fast")).status_code == 200


async def test_retry_idempotent_request_on_another_backend(make_gateway: GatewayFactory,
                                                           origins: list[HttpOrigin]) -> None:
    dead = HttpOrigin("dead")
    await dead.start()
    await dead.stop()
    config = web_config(origins[:1])
    config["groups"]["app"]["backends"] = [dead.address, origins[0].address]
    config["groups"]["app"]["balance"] = "round_robin"
    gateway = await make_gateway(**config)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        for _ in range(4):
            answer = await client.get("/fast")
            assert answer.status_code == 200 and answer.headers["x-origin"] == "o0"


async def test_drain_finishes_in_flight_requests(make_gateway: GatewayFactory,
                                                 origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins))
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        slow = asyncio.ensure_future(client.get("/slow?ms=300"))
        await asyncio.sleep(0.1)
        drain = asyncio.ensure_future(gateway.drain(5.0))
        answer = await slow
        assert answer.status_code == 200
        assert answer.headers["connection"] == "close"
        result = await drain
    assert result == {"finished": 1, "forced": 0}
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url(gateway)) as client:
            await client.get("/fast")


async def test_reload_applies_to_new_connections_and_refuses_bad_config(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins[:1]))
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/fast")).headers["x-origin"] == "o0"
    bound = gateway.config.listeners[0].bind
    new = web_config(origins[1:])
    new["listeners"][0]["bind"] = bound
    await gateway.reload(load_gateway_config(new))
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/fast")).headers["x-origin"] == "o1"
    moved = web_config(origins)
    moved["listeners"][0]["bind"] = "127.0.0.1:1"
    with pytest.raises(ConfigError, match="cannot add, remove or move listeners"):
        await gateway.reload(load_gateway_config(moved))
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/fast")).headers["x-origin"] == "o1"


async def test_overload_sheds_bulk_and_serves_critical(make_gateway: GatewayFactory,
                                                       origins: list[HttpOrigin]) -> None:
    config = web_config(origins[:1])
    config["routes"] = [
        {"listener": "web", "group": "app", "path_prefix": "/slow", "class": "critical",
         "headers": {"x-class": "critical"}},
        {"listener": "web", "group": "app", "path_prefix": "/slow", "class": "bulk"},
    ]
    config["groups"]["app"]["max_in_flight"] = 4
    config["groups"]["app"]["max_waiters"] = 8
    gateway = await make_gateway(**config)
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=url(gateway), limits=limits, timeout=20) as client:
        bulk = [asyncio.ensure_future(client.get("/slow?ms=50")) for _ in range(40)]
        await asyncio.sleep(0.05)
        critical = [asyncio.ensure_future(client.get("/slow?ms=50",
                                                     headers={"x-class": "critical"}))
                    for _ in range(3)]
        crit = await asyncio.gather(*critical)
        answers = await asyncio.gather(*bulk)
    assert all(a.status_code == 200 for a in crit)
    shed = [a for a in answers if a.status_code == 503]
    assert shed, "a bounded queue must shed bulk overflow"
    assert all("retry-after" in a.headers for a in shed)
    assert gateway.class_counters["shed", "bulk"] == len(shed)
    assert origins[0].max_in_flight <= 4


async def test_admin_api(make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins))
    admin = AdminServer(gateway, "127.0.0.1:0", "s3cret")
    await admin.start()
    host, port = admin.address
    base = f"http://{host}:{port}"
    auth = {"Authorization": "Bearer s3cret"}
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/stats")).status_code == 401
            async with httpx.AsyncClient(base_url=url(gateway)) as web:
                await web.get("/fast")
                connections = (await client.get("/connections", headers=auth)).json()
                [conn] = connections["connections"]
                assert conn["class"] == "interactive"
                assert set(conn["why"]["axes"]) == {"business", "technical", "user",
                                                    "resource"}
            backend = origins[0].address
            answer = await client.post(f"/backends/app/{backend}/warm_target",
                                       headers=auth, content=json.dumps({"n": 3}))
            assert answer.status_code == 200 and answer.json()["warm_target"] == 3
            bad = await client.post(f"/backends/app/{backend}/warm_target", headers=auth,
                                    content=b'{"n": "many"}')
            assert bad.status_code == 400
            drained = await client.post(f"/backends/app/{backend}/drain", headers=auth)
            assert drained.json()["health"]["state"] == "draining"
            # An operator's retry changes nothing: the backend stays drained.
            again = await client.post(f"/backends/app/{backend}/drain", headers=auth)
            assert again.status_code == 200 and again.json()["health"]["state"] == "draining"
            async with httpx.AsyncClient(base_url=url(gateway)) as web:
                for _ in range(6):
                    assert (await web.get("/fast")).headers["x-origin"] == "o1"
            await client.post(f"/backends/app/{backend}/undrain", headers=auth)
            again = await client.post(f"/backends/app/{backend}/undrain", headers=auth)
            assert again.status_code == 200 and again.json()["health"]["state"] == "slow_start"
            metrics = (await client.get("/metrics", headers=auth)).text
            assert 'connwise_warm_target{backend="' + backend + '",group="app"} 3.0' in metrics
            assert "connwise_gateway_events_total" in metrics
            assert (await client.get("/nope", headers=auth)).status_code == 404
    finally:
        await admin.close()


async def test_active_http_health_check_takes_backend_out_and_back(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    config = web_config(origins)
    config["groups"]["app"]["health"] = {"kind": "http", "path": "/health", "interval": 0.05,
                                         "timeout": 0.5, "rise": 1, "fall": 2,
                                         "slow_start": 0}
    gateway = await make_gateway(**config)
    origins[0].unhealthy = True
    group = gateway.groups["app"]
    for _ in range(100):
        if group.health.available(gateway.clock.now()) == [origins[1].address]:
            break
        await asyncio.sleep(0.02)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        for _ in range(6):
            assert (await client.get("/fast")).headers["x-origin"] == "o1"
    origins[0].unhealthy = False
    for _ in range(100):
        if len(group.health.available(gateway.clock.now())) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(group.health.available(gateway.clock.now())) == 2


async def test_consecutive_5xx_eject_backend(make_gateway: GatewayFactory,
                                             origins: list[HttpOrigin]) -> None:
    config = web_config(origins)
    config["groups"]["app"]["health"] = {"kind": "none", "consecutive_failures": 3,
                                         "max_ejection_percent": 50}
    config["groups"]["app"]["balance"] = "round_robin"
    gateway = await make_gateway(**config)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        for _ in range(6):
            await client.get("/fail")
        available = gateway.groups["app"].health.available(gateway.clock.now())
        assert len(available) == 1, "one backend ejected (the cap allows 50%)"
        snapshot = gateway.groups["app"].snapshot()
        states = sorted(b["health"]["state"] for b in snapshot["backends"])
        assert states == ["ejected", "healthy"]


def client_hello(server_name: str) -> bytes:
    """The ClientHello a real TLS client sends, from Python's ssl module."""
    import ssl

    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_sni_is_read_from_a_real_client_hello() -> None:
    from connwise.gateway.sni import SniResult, read_sni

    hello = client_hello("db.example.com")
    assert read_sni(hello) == (SniResult.FOUND, "db.example.com")
    assert read_sni(hello[:40])[0] is SniResult.NEED_MORE
    assert read_sni(b"GET / HTTP/1.1\r\n\r\n") == (SniResult.NONE, None)


async def test_tcp_listener_routes_by_sni_without_terminating_tls(
        make_gateway: GatewayFactory) -> None:
    received: dict[str, bytes] = {}

    def sink(name: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                    Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received[name] = await reader.read(65536)
            writer.write(name.encode())
            await writer.drain()
            writer.close()
        return handle

    servers = {name: await asyncio.start_server(sink(name), "127.0.0.1", 0)
               for name in ("a", "b")}
    groups = {name: {"backends": [f"127.0.0.1:{s.sockets[0].getsockname()[1]}"]}
              for name, s in servers.items()}
    gateway = await make_gateway(
        listeners=[{"name": "tls", "kind": "tcp", "bind": "127.0.0.1:0", "group": "a",
                    "sni": {"b.example.com": "b"}}],
        groups=groups)
    host, port = gateway.listeners["tls"].address
    for name, expected in (("b.example.com", "b"), ("other.example.com", "a")):
        reader, writer = await asyncio.open_connection(host, port)
        hello = client_hello(name)
        writer.write(hello)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(10), 3) == expected.encode()
        assert received[expected] == hello, "the ClientHello is relayed untouched"
        writer.close()
    # A ClientHello in two segments: the first is too short to tell, both reach the backend.
    reader, writer = await asyncio.open_connection(host, port)
    hello = client_hello("b.example.com")
    writer.write(hello[:40])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(hello[40:])
    assert await asyncio.wait_for(reader.read(10), 3) == b"b"
    assert received["b"] == hello
    writer.close()
    for server in servers.values():
        server.close()


async def test_drain_timeout_closes_websockets_with_1001(make_gateway: GatewayFactory) -> None:
    closed_codes: list[int | None] = []

    async def echo(ws: Any) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        finally:
            closed_codes.append(ws.close_code)

    server = await websockets.serve(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "ws", "path_prefix": "/ws", "upgrade": "websocket"}],
        groups={"ws": {"backends": [f"127.0.0.1:{port}"], "health": {"kind": "none"}}})
    host, gport = gateway.listeners["web"].address
    async with websockets.connect(f"ws://{host}:{gport}/ws") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        result = await gateway.drain(0.2)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 3)
        assert ws.close_code == 1001
    assert result == {"finished": 0, "forced": 1}
    for _ in range(50):
        if closed_codes:
            break
        await asyncio.sleep(0.02)
    assert closed_codes == [1001]
    server.close()


async def test_activity_escalation_raises_a_busy_connection(make_gateway: GatewayFactory,
                                                            origins: list[HttpOrigin]) -> None:
    config = web_config(origins)
    config["routes"][0]["class"] = "bulk"
    config["escalation"] = {"activity": [{"name": "busy", "threshold": 3, "window": 10,
                                          "hold": 30}], "max_escalated_share": 1.0}
    gateway = await make_gateway(**config)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        await client.get("/fast")
        [conn] = gateway.connections()
        assert conn["class"] == "bulk"
        for _ in range(3):
            await client.get("/fast")
        [conn] = gateway.connections()
        assert conn["class"] == "interactive"
        history = conn["why"]["history"]
        assert history[-1]["to"] == "interactive"
    assert gateway.class_counters["escalated", "interactive"] == 1


async def test_group_escalation_raises_connections_sharing_a_key(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    config = web_config(origins)
    config["routes"][0]["class"] = "bulk"
    config["escalation"] = {"groups": [{"name": "coedit", "min_members": 3}],
                            "max_escalated_share": 1.0}
    gateway = await make_gateway(**config)
    clients = [httpx.AsyncClient(base_url=url(gateway)) for _ in range(3)]
    try:
        for client in clients[:2]:
            await client.get("/fast", headers={"x-connwise-group": "doc-7"})
        assert {c["class"] for c in gateway.connections()} == {"bulk"}
        await clients[2].get("/fast", headers={"x-connwise-group": "doc-7"})
        assert {c["class"] for c in gateway.connections()} == {"interactive"}
    finally:
        for client in clients:
            await client.aclose()


async def test_abandoned_requests_and_ended_websockets_give_upstream_slots_back(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    server = await websockets.serve(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "ws", "path_prefix": "/ws", "upgrade": "websocket"},
                {"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"ws": {"backends": [f"127.0.0.1:{port}"], "max_in_flight": 2,
                       "health": {"kind": "none"}},
                "app": {"backends": [origins[0].address], "max_in_flight": 2,
                        "health": {"kind": "none"}}})
    for _ in range(4):  # more abandoned requests than the upstream pool has connections
        with contextlib.suppress(TimeoutError):
            await raw(gateway, b"GET /slow?ms=2000 HTTP/1.1\r\nHost: a\r\n\r\n", read_timeout=0.1)
    host, gport = gateway.listeners["web"].address
    for _ in range(4):  # more sessions over time than max_in_flight
        async with websockets.connect(f"ws://{host}:{gport}/ws") as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/fast")).status_code == 200
    app = gateway.groups["app"]
    assert app.health.available(gateway.clock.now()) == [origins[0].address]
    server.close()


async def _raw_request_then_rows(gateway: Gateway, store: Any,
                                 headers: bytes = b"") -> list[dict[str, Any]]:
    """One request through the `raw` tcp listener, then drain: every record in `store`."""
    from connwise.telemetry.record import FIELD_NAMES
    from connwise.telemetry.stores import StoreSpec

    host, port = gateway.listeners["raw"].address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /fast HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    await asyncio.sleep(0.05)
    await gateway.drain(1.0)
    return [dict(zip(FIELD_NAMES, row, strict=True))
            for chunk in StoreSpec.parse(str(store)).read() for row in chunk]


async def test_gateway_run_is_recorded_and_assessed(make_gateway: GatewayFactory,
                                                    origins: list[HttpOrigin],
                                                    tmp_path: Any) -> None:
    import sys


    store = tmp_path / "gw.db"
    config = web_config(origins)
    config["listeners"].append({"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0",
                                "group": "app"})
    config["telemetry"] = {"store": str(store), "flush_interval": 0.05}
    gateway = await make_gateway(**config)
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        for _ in range(3):
            assert (await client.get("/fast")).status_code == 200
    rows = await _raw_request_then_rows(gateway, store)
    by_source = {row["source"]: row for row in rows if row["kind"] == "client"}
    assert set(by_source) == {"web", "raw"}
    web = by_source["web"]
    assert web["kind"] == "client" and web["requests"] == 3 and web["status"] == 200
    assert web["class_name"] == "interactive" and web["cqi_score"] is not None
    assert web["bytes_out"] > 0 and web["backend"] in {o.address for o in origins}
    assert 0 < web["first_byte_s"] < 5 and web["queued_s"] == 0.0
    # The pools start cold (warm_target 0): the first request waited for a connect.
    assert 0 < web["upstream_connect_s"] < 5
    raw_row = by_source["raw"]
    assert raw_row["bytes_in"] > 0 and raw_row["upstream_connect_s"] is not None
    # The http listener's upstream keep-alive connections are records of their own.
    upstream = [row for row in rows if row["kind"] == "upstream"]
    assert upstream and {row["source"] for row in upstream} == {"app"}
    assert sum(row["requests"] for row in upstream) == 3
    assert {row["backend"] for row in upstream} <= {o.address for o in origins}
    for row in upstream:
        assert row["final_state"] == "closed" and row["close_reason"] == "gateway closed"
        assert row["upstream_connect_s"] > 0 and row["bytes_out"] > 0
        if row["requests"]:
            assert row["bytes_in"] > 0 and row["first_byte_s"] > 0 and row["active_s"] > 0
        lifetime = row["ended_at"] - row["started_at"]
        phases = sum(row[f"{p}_s"] for p in ("queued", "connecting", "active", "idle",
                                              "draining"))
        assert abs(lifetime - phases) < 1e-6
    report = tmp_path / "report.html"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "connwise", "assess", "--store", str(store), "--html", str(report),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert b"Baseline" in out and b"Connection reuse ratio" in out
    assert report.read_text().startswith("<!DOCTYPE html>")


async def test_records_carry_the_region_and_device_of_their_client(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], tmp_path: Any) -> None:

    store = tmp_path / "gw.db"
    regions = tmp_path / "regions.txt"
    regions.write_text("# the lab\n127.0.0.0/8 lab\n127.0.0.0/24 lab-rack-0\n")
    config = web_config(origins)
    config["listeners"].append({"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0",
                                "group": "app"})
    config["telemetry"] = {"store": str(store), "flush_interval": 0.05,
                           "regions": str(regions), "region_header": "X-Region",
                           "device_header": "X-Device"}
    gateway = await make_gateway(**config)
    iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) Mobile/15E148"
    clients = [  # (headers of each request, region, device)
        ({"User-Agent": iphone, "X-Region": "eu-west"}, "eu-west", "mobile"),
        ({"User-Agent": iphone}, "lab-rack-0", "mobile"),
        ({"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "X-Device": "Kiosk"}, "lab-rack-0",
         "kiosk"),
        ({"User-Agent": "curl/8.5.0", "X-Region": "r" * 500}, "r" * 64, "bot"),
    ]
    for headers, _, _ in clients:
        async with httpx.AsyncClient(base_url=url(gateway), headers=headers) as client:
            assert (await client.get("/fast")).status_code == 200
            # Later requests do not move the segment of the connection's first.
            assert (await client.get("/fast", headers={"X-Region": "elsewhere"})
                    ).status_code == 200
    rows = await _raw_request_then_rows(gateway, store, b"User-Agent: curl/8.5.0\r\n")
    web = sorted((row for row in rows if row["source"] == "web"), key=lambda r: r["started_at"])
    assert [(row["region"], row["device"]) for row in web] == [
        (region, device) for _, region, device in clients]
    assert all(row["requests"] == 2 for row in web)
    [raw_row] = [row for row in rows if row["source"] == "raw"]
    # A tcp listener reads no headers: the table's region, no device.
    assert (raw_row["region"], raw_row["device"]) == ("lab-rack-0", "")


async def test_a_reload_reads_the_region_table_again_or_is_refused_whole(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], tmp_path: Any) -> None:
    first, second, gone = (tmp_path / f"{name}.txt" for name in ("first", "second", "gone"))
    first.write_text("127.0.0.0/8 first\n")
    second.write_text("127.0.0.0/8 second\n")
    gone.write_text("127.0.0.0/8 gone\n")
    config = web_config(origins[:1])
    config["telemetry"] = {"regions": str(first)}
    gateway = await make_gateway(**config)
    assert gateway.segments.region_of_address("127.0.0.1") == "first"
    config["listeners"][0]["bind"] = gateway.config.listeners[0].bind
    config["telemetry"] = {"regions": str(second)}
    await gateway.reload(load_gateway_config(config))
    assert gateway.segments.region_of_address("127.0.0.1") == "second"
    config["telemetry"] = {"regions": str(gone)}
    config["groups"]["app"]["backends"] = [origins[1].address]
    valid = load_gateway_config(config)
    gone.unlink()  # between validation and the reload: the reload must refuse, not half-apply
    with pytest.raises(ConfigError, match=r"telemetry\.regions = .*cannot be read"):
        await gateway.reload(valid)
    assert gateway.segments.region_of_address("127.0.0.1") == "second"
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        assert (await client.get("/fast")).headers["x-origin"] == "o0"


@pytest.mark.parametrize("lines", [1, 2])
async def test_hash_affinity_keeps_a_cookie_on_one_backend(make_gateway: GatewayFactory,
                                                           origins: list[HttpOrigin],
                                                           lines: int) -> None:
    """Also with the Cookie header split over two lines (as an HTTP/2 front end may pass it
    on, RFC 9113 8.2.3): the key was read from the first line only, so every session fell
    back to the client's address, the same for all of them here."""
    config = web_config(origins)
    config["groups"]["app"].update(balance="hash", hash_key="cookie:session")
    gateway = await make_gateway(**config)
    seen: dict[str, set[str]] = {}
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        for i in range(60):  # 20 sessions: all on one of 2 backends by chance: 2 in 10^6
            session = f"s{i % 20}"
            headers = ([("Cookie", f"a=1; session={session}")] if lines == 1 else
                       [("Cookie", "a=1"), ("Cookie", f"b=2; session={session}")])
            answer = await client.get("/fast", headers=headers)
            seen.setdefault(session, set()).add(answer.headers["x-origin"])
    assert all(len(backends) == 1 for backends in seen.values()), seen
    assert {b for backends in seen.values() for b in backends} == {"o0", "o1"}


async def test_resource_axis_follows_live_traffic(make_gateway: GatewayFactory,
                                                  origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins))
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        for _ in range(3):
            await client.post("/echo", content=b"z" * 2_000_000)
        [conn] = gateway.connections()
        before = conn["why"]["axes"]["resource"]
        gateway.observe_resources(gateway.clock.now())
        [conn] = gateway.connections()
        assert conn["why"]["axes"]["resource"] < before
