"""Normalised paths over raw loopback sockets: a request routes by the path its backend will
read, and that backend gets the same path, so neither `..`, an escaped character nor a double
slash carries a request past the route meant for it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import GatewayFactory, Start
from tests.integration.test_gateway_http_edges import RawBackend, exchange, ok, still_serves


async def two_routes(make_gateway: GatewayFactory, raw: Start,
                     **http: Any) -> tuple[Any, RawBackend, RawBackend]:
    """`/admin` goes to one backend, everything else to another."""
    admin, public = await raw(ok), await raw(ok)
    config: dict[str, Any] = {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "admin", "path_prefix": "/admin"},
                   {"listener": "web", "group": "public", "path_prefix": "/"}],
        "groups": {name: {"backends": [backend.address], "health": {"kind": "none"}}
                   for name, backend in (("admin", admin), ("public", public))},
    }
    if http:
        config["http"] = http
    return await make_gateway(**config), admin, public


def request(target: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % target


@pytest.mark.parametrize(("target", "forwarded"), [
    (b"/public/../admin", b"/admin"),
    (b"/public/%2e%2E/admin/x", b"/admin/x"),
    (b"/%61dmin", b"/admin"),
    (b"//admin", b"/admin"),
    (b"/./admin?next=/../x", b"/admin?next=/../x"),            # the query is left as it is
    (b"http://a/public/../admin", b"/admin"),                  # absolute-form too
])
async def test_a_request_routes_and_goes_on_by_its_normalised_path(
        make_gateway: GatewayFactory, raw: Start, target: bytes, forwarded: bytes) -> None:
    gateway, admin, public = await two_routes(make_gateway, raw)
    answer = await exchange(gateway, request(target))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert public.heads == []
    assert admin.heads[0].split(b"\r\n")[0] == b"GET %s HTTP/1.1" % forwarded


async def test_a_path_that_needs_nothing_goes_on_byte_for_byte(make_gateway: GatewayFactory,
                                                              raw: Start) -> None:
    gateway, admin, public = await two_routes(make_gateway, raw)
    answer = await exchange(gateway, request(b"/caf%C3%A9/a%2Fb?q=%2e%2e"))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert admin.heads == []
    assert public.heads[0].split(b"\r\n")[0] == b"GET /caf%C3%A9/a%2Fb?q=%2e%2e HTTP/1.1"


@pytest.mark.parametrize("target", [b"/100%", b"/%zz/admin"])
async def test_a_malformed_escape_gets_400(make_gateway: GatewayFactory, raw: Start,
                                           target: bytes) -> None:
    gateway, admin, public = await two_routes(make_gateway, raw)
    answer = await exchange(gateway, request(target))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert admin.heads == public.heads == []
    await still_serves(gateway)


async def test_normalising_can_be_turned_off(make_gateway: GatewayFactory, raw: Start) -> None:
    """For backends that read the target byte for byte (signed URLs): the raw path routes."""
    gateway, admin, public = await two_routes(make_gateway, raw, normalize_path=False)
    answer = await exchange(gateway, request(b"/public/../admin"))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert admin.heads == []
    assert public.heads[0].split(b"\r\n")[0] == b"GET /public/../admin HTTP/1.1"


async def test_merging_slashes_can_be_turned_off(make_gateway: GatewayFactory,
                                                 raw: Start) -> None:
    gateway, admin, public = await two_routes(make_gateway, raw, merge_slashes=False)
    answer = await exchange(gateway, request(b"//admin/./x"))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert admin.heads == []
    assert public.heads[0].split(b"\r\n")[0] == b"GET //admin/x HTTP/1.1"
