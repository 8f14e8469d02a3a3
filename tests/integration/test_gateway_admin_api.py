"""The admin listener over raw loopback sockets: what it answers to repeated operator actions,
bad input, torn and pipelined requests, and how its connections end when it closes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connwise.config import load_gateway_config
from connwise.errors import ConfigError
from connwise.gateway.admin import AdminServer
from connwise.gateway.runtime import Gateway
from tests.integration.conftest import GatewayFactory
from tests.integration.test_gateway_admission import until

#: Nothing listens here: the group's pools warm nothing (warm_target 0, no health checks), so
#: no test connects to it.
BACKEND = "127.0.0.1:9"
AUTH = b"Authorization: Bearer t\r\n"

Answer = tuple[int, dict[str, str], bytes]


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        groups={"app": {"backends": [BACKEND], "max_in_flight": 8,
                        "health": {"kind": "none"}}})


@pytest.fixture
async def admin(gateway: Gateway) -> AsyncIterator[AdminServer]:
    server = AdminServer(gateway, "127.0.0.1:0", "t")
    await server.start()
    yield server
    await server.close()


async def send(server: AdminServer, raw: bytes, *, eof: bool = False) -> bytes:
    """Write `raw` to the admin listener (then a FIN with `eof`) and read to the end."""
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(raw)
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def call(server: AdminServer, method: str, path: str, body: bytes = b"",
               auth: bytes = AUTH) -> tuple[int, dict[str, str], Any]:
    raw = (f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n"
           .encode() + auth + b"\r\n" + body)
    status, headers, answer = parse(await send(server, raw))
    is_json = headers.get("content-type") == "application/json"
    return status, headers, json.loads(answer) if is_json else answer


async def test_drain_and_undrain_are_idempotent(admin: AdminServer, gateway: Gateway) -> None:
    for action, state in (("drain", "draining"), ("drain", "draining"),
                          ("undrain", "slow_start"), ("undrain", "slow_start")):
        status, _, answer = await call(admin, "POST", f"/backends/app/{BACKEND}/{action}")
        assert status == 200 and answer["health"]["state"] == state, (action, answer)
    status, _, answer = await call(admin, "POST", f"/backends/app/{BACKEND}/undrain")
    assert status == 200, answer
    assert gateway.groups["app"].backends[0].health.available(gateway.clock.now())


async def test_a_body_nested_too_deep_is_refused_naming_the_body(admin: AdminServer) -> None:
    status, _, answer = await call(admin, "POST", f"/backends/app/{BACKEND}/warm_target",
                                   b"[" * 20_000)
    assert status == 400 and answer["error"].startswith("the body is not JSON"), answer


async def test_an_unexpected_error_gets_500_and_the_listener_serves_on(
        admin: AdminServer, gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway, "stats", broken)
    status, _, answer = await call(admin, "GET", "/stats")
    assert status == 500 and "GET /stats" in answer["error"], answer
    assert "RuntimeError" in answer["error"]
    monkeypatch.undo()
    assert (await call(admin, "GET", "/stats"))[0] == 200


async def test_a_request_cut_short_is_answered_and_closed(admin: AdminServer) -> None:
    status, _, answer = parse(await send(admin, b"GET /sta", eof=True))
    assert status == 400 and "ended before" in json.loads(answer)["error"], answer
    assert await send(admin, b"", eof=True) == b""  # nothing sent: closed, nothing to say


async def test_garbage_gets_400_naming_the_problem(admin: AdminServer) -> None:
    status, headers, answer = parse(await send(admin, b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n"))
    assert status == 400 and headers["content-type"] == "application/json"
    assert "not an HTTP/1.1 request" in json.loads(answer)["error"], answer
    assert (await call(admin, "GET", "/stats"))[0] == 200


async def test_pipelined_requests_get_the_first_answered(admin: AdminServer) -> None:
    one = b"GET /stats HTTP/1.1\r\nHost: a\r\n" + AUTH + b"\r\n"
    two = b"POST /backends/app/" + BACKEND.encode() + b"/drain HTTP/1.1\r\nHost: a\r\n\r\n"
    status, headers, answer = parse(await send(admin, one + two))
    assert status == 200 and headers["connection"] == "close"
    assert json.loads(answer)["node_id"] == "gw1"


async def test_an_upgrade_request_is_answered_without_upgrading(admin: AdminServer) -> None:
    # What `curl --http2` sends to an http:// URL.
    raw = (b"GET /stats HTTP/1.1\r\nHost: a\r\n" + AUTH + b"Connection: Upgrade, HTTP2-Settings"
           b"\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
    status, _, answer = parse(await send(admin, raw))
    assert status == 200 and json.loads(answer)["node_id"] == "gw1"


async def test_a_request_over_the_limit_gets_413_naming_it(admin: AdminServer) -> None:
    status, _, answer = await call(admin, "POST", f"/backends/app/{BACKEND}/warm_target",
                                   b'{"n": 1}' + b" " * 1_000_000)
    assert status == 413 and "65536 bytes" in answer["error"], answer


async def test_a_slow_request_gets_408(admin: AdminServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("connwise.gateway.admin.ADMIN_REQUEST_TIMEOUT", 0.2)
    raw = b"POST /backends/app/" + BACKEND.encode() + b"/drain HTTP/1.1\r\nContent-Length: 9\r\n"
    status, _, answer = parse(await send(admin, raw + AUTH + b"\r\n{"))
    assert status == 408 and "0.2 s" in json.loads(answer)["error"], answer


def handlers() -> list[asyncio.Task[Any]]:
    """The admin connection handlers running now."""
    return [t for t in asyncio.all_tasks() if "AdminServer._handle" in repr(t.get_coro())]


async def test_closing_the_admin_server_ends_its_connections(gateway: Gateway) -> None:
    server = AdminServer(gateway, "127.0.0.1:0", "t")
    await server.start()
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(b"GET /stats HTTP/1.1\r\n")  # and no more: the handler waits to read
        await until(lambda: bool(handlers()))
        await asyncio.wait_for(server.close(), 2)
        with contextlib.suppress(ConnectionResetError):  # aborted: a reset, or EOF
            assert await asyncio.wait_for(reader.read(), 2) == b""
        assert not handlers()
    finally:
        writer.close()


@pytest.mark.parametrize(("authorization", "status"), [
    (b"Authorization: t\r\n", 401),             # the token without its scheme
    (b"Authorization: Basic t\r\n", 401),
    (b"Authorization: Bearer\r\n", 401),
    (b"Authorization: Bearer tt\r\n", 401),
    (b"", 401),
    (b"Authorization: bearer t\r\n", 200),      # the scheme is case-insensitive (RFC 9110)
    (b"Authorization: Bearer  t \r\n", 200),
])
async def test_only_a_bearer_token_is_accepted(admin: AdminServer, authorization: bytes,
                                               status: int) -> None:
    for method, path in (("GET", "/metrics"), ("POST", f"/backends/app/{BACKEND}/drain")):
        got, headers, answer = await call(admin, method, path, auth=authorization)
        assert got == status, (authorization, method, answer)
        if status == 401:
            assert headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer <admin.token>" in answer["error"]


async def test_a_token_outside_ascii_is_compared_as_utf8(gateway: Gateway) -> None:
    server = AdminServer(gateway, "127.0.0.1:0", "pässwörd")
    await server.start()
    try:
        auth = "Authorization: Bearer pässwörd\r\n".encode()
        assert (await call(server, "GET", "/stats", auth=auth))[0] == 200
    finally:
        await server.close()


def test_a_blank_token_is_refused(gateway: Gateway) -> None:
    with pytest.raises(ConfigError, match=r"admin\.token"):
        AdminServer(gateway, "127.0.0.1:0", " ")


async def test_percent_encoded_names_reach_their_backend(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        groups={"my app": {"backends": ["[::1]:9"], "health": {"kind": "none"}}})
    server = AdminServer(gateway, "127.0.0.1:0", "t")
    await server.start()
    try:
        for path in ("/backends/my%20app/%5B%3A%3A1%5D%3A9/drain",  # as httpx sends it
                     "/backends/my%20app/[::1]:9/undrain"):
            status, _, answer = await call(server, "POST", path)
            assert status == 200 and answer["name"] == "[::1]:9", (path, answer)
    finally:
        await server.close()


async def test_a_drained_backend_stays_drained_across_a_reload(
        admin: AdminServer, gateway: Gateway) -> None:
    other = "127.0.0.1:10"
    status, _, _ = await call(admin, "POST", f"/backends/app/{BACKEND}/drain")
    assert status == 200
    data = {"listeners": [{"name": "web", "kind": "http",
                           "bind": gateway.config.listeners[0].bind}],
            "groups": {"app": {"backends": [BACKEND, other], "max_in_flight": 8,
                               "health": {"kind": "none"}}}}
    await gateway.reload(load_gateway_config(data))
    status, _, answer = await call(admin, "GET", "/backends")
    states = {b["name"]: b["health"]["state"] for b in answer["app"]["backends"]}
    assert states == {BACKEND: "draining", other: "healthy"}, states


async def test_metrics_declare_their_utf8(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        groups={"café": {"backends": [BACKEND], "health": {"kind": "none"}}})
    server = AdminServer(gateway, "127.0.0.1:0", "t")
    await server.start()
    try:
        status, headers, body = await call(server, "GET", "/metrics")
    finally:
        await server.close()
    media_type, *params = (p.strip() for p in headers["content-type"].split(";"))
    assert status == 200 and media_type == "text/plain"
    assert "version=0.0.4" in params and "charset=utf-8" in params, params
    samples = {s.labels.get("group"): s.value for family in
               text_string_to_metric_families(body.decode("utf-8"))
               for s in family.samples if s.name == "connwise_warm_target"}
    assert samples == {"café": 0.0}


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"/backends/app/{BACKEND}/drain"), ("HEAD", "/metrics"), ("POST", "/stats"),
    ("GET", "/nope")])
async def test_no_such_endpoint_says_which_there_are(admin: AdminServer, method: str,
                                                     path: str) -> None:
    raw = f"{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n".encode() + AUTH
    status, _, answer = parse(await send(admin, raw + b"\r\n"))
    assert status == 404
    if method == "HEAD":
        assert answer == b""  # an answer to HEAD has no body
    else:
        error = json.loads(answer)["error"]
        assert error.startswith(f"no admin endpoint {method} {path}; use GET /stats"), error
        assert "POST /backends/<group>/<backend>/drain" in error
