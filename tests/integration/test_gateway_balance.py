"""Balancing and affinity through the http listener over loopback: where a retry goes when no
other backend is left, the answer when no backend is available, and the affinity key read from
the request."""

from __future__ import annotations

from tests.integration.conftest import GatewayFactory, Start
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
