"""What the gateway's records say about waiting and about its own upstream connections, over
real loopback sockets into a real SQLite store: time queued for admission, the upstream
connect a client waited for, the first answer byte, failed connects, WebSocket relays."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.asyncio.server import Server

from connwise.gateway.runtime import Gateway
from connwise.telemetry.record import FIELD_NAMES, PHASES
from connwise.telemetry.store_sqlite import SqliteStore
from connwise.telemetry.stores import StoreSpec
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.tcp_relay import free_port, until
from tests.unit.telemetry.test_store_sqlite import full_record


def _config(store: Path, backends: list[str], **telemetry: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app", "path_prefix": "/"}],
        "groups": {"app": {"backends": backends, "health": {"kind": "none"}}},
        "telemetry": {"store": str(store), "flush_interval": 0.05, **telemetry},
    }


def _url(gateway: Gateway) -> str:
    host, port = gateway.listeners["web"].address
    return f"http://{host}:{port}"


async def _rows(gateway: Gateway, store: Path) -> list[dict[str, Any]]:
    await asyncio.sleep(0.05)  # the clients' connection_lost callbacks
    await gateway.drain(1.0)
    return [dict(zip(FIELD_NAMES, row, strict=True))
            for chunk in StoreSpec.parse(str(store)).read() for row in chunk]


def _phases_add_up(row: dict[str, Any]) -> bool:
    lifetime: float = row["ended_at"] - row["started_at"]
    phases: float = sum(row[f"{phase}_s"] for phase in PHASES)
    return abs(lifetime - phases) < 1e-6


async def test_a_request_that_queued_shows_its_wait(make_gateway: GatewayFactory,
                                                    origins: list[HttpOrigin],
                                                    tmp_path: Path) -> None:
    store = tmp_path / "gw.db"
    config = _config(store, [origins[0].address])
    config["groups"]["app"]["max_in_flight"] = 1
    gateway = await make_gateway(**config)

    async def one(delay: float) -> int:
        await asyncio.sleep(delay)
        async with httpx.AsyncClient(base_url=_url(gateway)) as client:
            return (await client.get("/slow?ms=300")).status_code

    # The second client arrives while the first holds the group's only slot.
    assert list(await asyncio.gather(one(0.0), one(0.1))) == [200, 200]
    clients = sorted((row for row in await _rows(gateway, store) if row["kind"] == "client"),
                     key=lambda row: row["started_at"])
    assert len(clients) == 2
    first, second = clients
    assert first["queued_s"] == 0.0
    assert 0.1 < second["queued_s"] < 1.0  # ~0.2 s: the rest of the first one's 300 ms
    # The first answer byte is counted from admission: the wait is not in it.
    assert 0.25 < second["first_byte_s"] < 1.0
    assert all(_phases_add_up(row) for row in clients)


async def test_upstream_connections_are_recorded_and_can_be_turned_off(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], tmp_path: Path) -> None:
    store = tmp_path / "on.db"
    gateway = await make_gateway(**_config(store, [origins[0].address]))
    async with httpx.AsyncClient(base_url=_url(gateway)) as client:
        for _ in range(4):
            assert (await client.post("/echo", content=b"x" * 1000)).status_code == 200
    rows = await _rows(gateway, store)
    [upstream] = [row for row in rows if row["kind"] == "upstream"]
    assert upstream["requests"] == 4 and upstream["status"] == 200
    assert upstream["bytes_out"] > 4000 and upstream["bytes_in"] > 4000  # bodies both ways
    assert upstream["class_name"] == "interactive" and upstream["errors"] == 0
    assert upstream["active_s"] > 0 and upstream["idle_s"] > 0 and _phases_add_up(upstream)

    store = tmp_path / "off.db"
    gateway = await make_gateway(**_config(store, [origins[0].address],
                                           upstream_records=False))
    async with httpx.AsyncClient(base_url=_url(gateway)) as client:
        assert (await client.get("/fast")).status_code == 200
    [client_row] = await _rows(gateway, store)
    assert client_row["kind"] == "client"
    # What the client waited for is its own record's, with or without upstream records.
    assert client_row["first_byte_s"] > 0 and client_row["upstream_connect_s"] > 0


async def test_a_failed_connect_is_a_failed_upstream_record(make_gateway: GatewayFactory,
                                                            tmp_path: Path) -> None:
    store = tmp_path / "gw.db"
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    gateway = await make_gateway(**_config(store, [address]))
    async with httpx.AsyncClient(base_url=_url(gateway)) as client:
        assert (await client.get("/fast")).status_code == 502
    rows = await _rows(gateway, store)
    failed = [row for row in rows if row["kind"] == "upstream"]
    assert failed and all(row["final_state"] == "failed" and row["errors"] == 1
                          and "could not connect" in row["close_reason"]
                          and row["backend"] == address for row in failed)
    [client_row] = [row for row in rows if row["kind"] == "client"]
    assert client_row["status"] == 502 and client_row["errors"] == 1


async def test_a_websocket_relay_is_active_time_of_its_upstream_record(
        make_gateway: GatewayFactory, tmp_path: Path,
        echo: Server) -> None:
    port = echo.sockets[0].getsockname()[1]
    store = tmp_path / "gw.db"
    gateway = await make_gateway(**_config(store, [f"127.0.0.1:{port}"]))
    host, gport = gateway.listeners["web"].address
    async with websockets.connect(f"ws://{host}:{gport}/ws") as ws:
        for i in range(5):
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
        await asyncio.sleep(0.2)
    echo.close()
    rows = await _rows(gateway, store)
    [upstream] = [row for row in rows if row["kind"] == "upstream"]
    assert upstream["requests"] == 1 and upstream["status"] == 101
    assert upstream["msgs_in"] == 6  # the backend's frames: five echoes and its close
    assert upstream["active_s"] >= 0.2 and _phases_add_up(upstream)
    [client_row] = [row for row in rows if row["kind"] == "client"]
    assert client_row["msgs_in"] == 6 and client_row["first_byte_s"] is not None  # and its close


async def test_a_client_that_leaves_mid_request_is_recorded_whole(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], tmp_path: Path) -> None:
    store = tmp_path / "gw.db"
    gateway = await make_gateway(**_config(store, [origins[0].address]))
    host, port = gateway.listeners["web"].address
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /slow?ms=400 HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.15)
    writer.close()  # before the answer: the gateway abandons the upstream exchange
    await writer.wait_closed()
    rows = await _rows(gateway, store)
    [client_row] = [row for row in rows if row["kind"] == "client"]
    assert client_row["requests"] == 1 and client_row["first_byte_s"] is None
    assert 0.1 < client_row["active_s"] < 0.4 and _phases_add_up(client_row)
    upstream = [row for row in rows if row["kind"] == "upstream"]
    # The abandoned upstream connection is closed, its one request counted as active time.
    assert sum(row["requests"] for row in upstream) == 1
    assert all(_phases_add_up(row) for row in upstream)


async def test_the_gateway_prunes_its_store_by_telemetry_retention(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], tmp_path: Path) -> None:
    """`[telemetry.retention]` reaches the gateway's writer: a record older than `max_age`
    goes at the next pass, those of this run stay (a store grew without bound before)."""
    store = tmp_path / "gw.db"
    old = SqliteStore(store)
    old.write([full_record(0, start=time.time() - 7200)])
    old.close()
    gateway = await make_gateway(**_config(store, [origins[0].address],
                                           retention={"max_age": "1h", "interval": 0.1}))
    async with httpx.AsyncClient(base_url=_url(gateway)) as client:
        assert (await client.get("/fast")).status_code == 200

    def old_rows() -> int:
        with contextlib.closing(sqlite3.connect(store)) as db:
            (n,) = db.execute("SELECT count(*) FROM connections WHERE started_at < ?",
                              (time.time() - 3600,)).fetchone()
        return int(n)

    await until(lambda: old_rows() == 0)
    rows = await _rows(gateway, store)
    assert rows and all(row["started_at"] > time.time() - 3600 for row in rows), rows
    assert {row["kind"] for row in rows} >= {"client"}
