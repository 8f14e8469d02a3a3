"""Balancing and affinity through the http listener over loopback: where a retry goes when no
other backend is left, the answer when no backend is available, and the affinity key read from
the request."""

from __future__ import annotations

import httpx

from tests.integration.conftest import GatewayFactory, Start
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway import url
from tests.integration.test_gateway import web_config as origins_config
from tests.integration.test_gateway_http_edges import exchange, ok, web_config


async def test_a_retry_in_a_group_of_one_backend_goes_to_that_backend(
        make_gateway: GatewayFactory, raw: Start) -> None:
    """The backend closes the connection a GET came on unanswered (a keep-alive connection it
    timed out as the request went): the retry goes to the same backend, the only one, rather
    than failing with a 502 for want of another."""
    dropped: list[bytes] = []

    async def drop_first(head: bytes) -> bytes | None:
        if not dropped:
            dropped.append(head)
            return None
        return await ok(head)

    backend = await raw(drop_first)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    assert gateway.counters["http_retries"] == 1
    assert len(backend.heads) == 2


async def test_no_backend_available_is_a_503_naming_the_group(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    """Every backend drained (or down, or ejected): nothing failed upstream, so not a 502
    but a 503 that says which group has no backend, and the connection goes on."""
    gateway = await make_gateway(**origins_config(origins))
    group = gateway.groups["app"]
    for origin in origins:
        group.health.drain(origin.address, gateway.clock.now())
    async with httpx.AsyncClient(base_url=url(gateway)) as client:
        for path in ("/fast", "/echo"):   # the callback path, and a body on the task path
            answer = await client.post(path, content=b"x" * 10) if path == "/echo" else \
                await client.get(path)
            assert answer.status_code == 503
            assert "no backend of group 'app' is available" in answer.text
        group.health.undrain(origins[0].address, gateway.clock.now())
        assert (await client.get("/fast")).status_code == 200
    assert gateway.counters["http_502"] == 0
    assert group.scheduler.in_use == 0
