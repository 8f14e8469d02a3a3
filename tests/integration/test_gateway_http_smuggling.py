"""Request smuggling through the http listener, over raw loopback sockets: requests whose
framing the backend could read otherwise than the gateway did (an upgrade with a body, a
CONNECT, transfer codings the gateway drops, Transfer-Encoding in HTTP/1.0) are refused with
400 before anything reaches a backend, and the headers the gateway sets cannot be sent by a
client in another spelling or lost from a list."""

from __future__ import annotations

import pytest

from tests.integration.conftest import GatewayFactory, Start
from tests.integration.test_gateway_http_edges import (
    exchange,
    header_of,
    ok,
    still_serves,
    web_config,
)

#: A request the backend would answer if it read it from a body: it must reach no backend.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def refused(make_gateway: GatewayFactory, raw: Start, request: bytes) -> None:
    """`request` gets 400 with a close, no backend sees a byte of it, and the gateway goes on
    serving."""
    backend = await raw(ok)
    gateway = await make_gateway(**web_config([backend.address],
                                              groups={"app": {
                                                  "backends": [backend.address],
                                                  "health": {"kind": "none"},
                                                  "response_timeout": 2.0}}))
    answer = await exchange(gateway, request)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer
    assert backend.heads == []
    await still_serves(gateway)
    assert [h.split(b"\r\n")[0] for h in backend.heads] == [b"GET /fine HTTP/1.1"]


@pytest.mark.parametrize("framing", [
    b"Content-Length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED),
    b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
])
async def test_an_upgrade_request_with_a_body_gets_400(make_gateway: GatewayFactory,
                                                       raw: Start, framing: bytes) -> None:
    """llhttp reads no body of an upgrade request: what follows its head is held as the new
    protocol's. Forwarded, the backend got a head that announced a body (Content-Length) or
    none (Transfer-Encoding dropped as hop-by-hop) and never the body itself."""
    await refused(make_gateway, raw, UPGRADE + framing)


@pytest.mark.parametrize("target", [b"http://a/", b"http://a:80/x"])
async def test_a_connect_request_gets_400(make_gateway: GatewayFactory, raw: Start,
                                          target: bytes) -> None:
    """CONNECT asks for a tunnel, which a reverse proxy does not make; an absolute-form target
    (llhttp lets it through) went to the backend as `CONNECT /` with an Upgrade header of the
    gateway's own."""
    await refused(make_gateway, raw, b"CONNECT %s HTTP/1.1\r\nHost: a\r\n\r\n%s"
                                          % (target, SMUGGLED))


@pytest.mark.parametrize("coding", [
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: identity, chunked\r\n",
    b"Transfer-Encoding: x;y=\"a,chunked\", chunked\r\n",
    b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
])
async def test_a_transfer_coding_besides_chunked_gets_400(make_gateway: GatewayFactory,
                                                          raw: Start, coding: bytes) -> None:
    """The gateway decodes only chunked and re-frames the body as chunked: another coding
    before it was dropped, and the backend read coded bytes as the content."""
    await refused(make_gateway, raw, b"POST /up HTTP/1.1\r\nHost: a\r\n%s\r\n"
                                          b"5\r\nhello\r\n0\r\n\r\n" % coding)


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b" CHUNKED ", b",chunked"])
async def test_chunked_in_any_case_is_reframed(make_gateway: GatewayFactory, raw: Start,
                                               coding: bytes) -> None:
    backend = await raw(ok)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n"
                                     b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n" % coding)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    head, body = backend.heads  # RawBackend reads a chunked body as a second head
    assert header_of(head, b"transfer-encoding") == [b"chunked"]
    assert body == b"5\r\nhello\r\n0\r\n\r\n"


async def test_transfer_encoding_in_an_http_1_0_request_gets_400(make_gateway: GatewayFactory,
                                                                 raw: Start) -> None:
    """RFC 9112 6.1: HTTP/1.0 knows no Transfer-Encoding, and an HTTP/1.0 hop in front of the
    gateway may read the chunked body as the next request; the framing is faulty."""
    await refused(make_gateway, raw,
                  b"POST /up HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked"
                  b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED, SMUGGLED))


@pytest.mark.parametrize("name", [b"Connwise_Degrade", b"X_Forwarded_For", b"x_forwarded_proto"])
async def test_a_gateway_header_spelled_with_underscores_is_not_forwarded(
        make_gateway: GatewayFactory, raw: Start, name: bytes) -> None:
    """CGI and WSGI servers read `Connwise_Degrade` as `Connwise-Degrade` (both become
    HTTP_CONNWISE_DEGRADE): forwarded, it would read as set by the gateway."""
    backend = await raw(ok)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"GET /x HTTP/1.1\r\nHost: a\r\n%s: 3\r\n"
                                     b"X_Other: kept\r\nConnection: close\r\n\r\n" % name)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    [head] = backend.heads
    assert name not in head
    assert header_of(head, b"x_other") == [b"kept"]
    assert header_of(head, b"x-forwarded-for") == [b"127.0.0.1"]
    assert header_of(head, b"x-forwarded-proto") == [b"http"]


async def test_every_x_forwarded_for_line_is_kept(make_gateway: GatewayFactory,
                                                  raw: Start) -> None:
    """Two X-Forwarded-For lines are one list (RFC 9110 5.3): the gateway appends the client to
    all of it, not to the last line alone."""
    backend = await raw(ok)
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1"
                                     b"\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n"
                                     b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    [head] = backend.heads
    assert header_of(head, b"x-forwarded-for") == [b"10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
