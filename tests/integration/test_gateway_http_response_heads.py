"""The response heads the http listener sends its clients, over raw loopback sockets: the
framing a backend's answer may use, its status and the size of its head."""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime

import pytest

from tests.integration.conftest import GatewayFactory, Start
from tests.integration.test_gateway_http_edges import (
    Answer,
    connect,
    exchange,
    header_of,
    read_answer,
    still_serves,
    web_config,
)

CLOSE_GET = b"GET /r HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
FINE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answering(answer: bytes) -> Answer:
    """A backend's answer: `answer` to /r, 200 ok to anything else (`still_serves`)."""
    async def respond(head: bytes) -> bytes:
        return answer if head.find(b" /r ") >= 0 else FINE
    return respond


# -- Transfer-Encoding: chunked alone, or the answer is invalid -----------------------------

@pytest.mark.parametrize("coding", [
    b"Transfer-Encoding: gzip, chunked\r\n",  # de-chunked, the gzip coding would be lost
    b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",  # the same on two lines
    b"Transfer-Encoding: chunked, gzip\r\n",  # chunked not last: the body ends at the close
    b"Transfer-Encoding: chunked\t\r\n",      # llhttp: not chunked
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
])
async def test_a_transfer_coding_besides_chunked_in_an_answer_gets_502(
        make_gateway: GatewayFactory, raw: Start, coding: bytes) -> None:
    """The gateway sends its backends no TE header, so they may apply no transfer coding but
    chunked (RFC 9112 7.4); and it decodes only chunked. Relayed, such a body reached the
    client re-chunked with its coding dropped (the client read coded bytes as the content),
    or, when chunked was not the last coding, framed as chunks that never ended."""
    backend = await raw(answering(b"HTTP/1.1 200 OK\r\n" + coding
                                  + b"\r\n2\r\nok\r\n0\r\n\r\n"))
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, CLOSE_GET)
    assert answer.startswith(b"HTTP/1.1 502"), answer[:80]
    assert answer.count(b"HTTP/1.1 ") == 1
    await still_serves(gateway)
    assert backend.connections == 2  # the invalid answer's connection is not reused


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
    b"2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 20\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok",  # obs-fold
    b"HTTP/1.1 200 OK\r\nX-A: o\x00ne\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nX-A: o\rne\r\nContent-Length: 2\r\n\r\nok",
])
async def test_an_answer_of_unsure_framing_or_fields_gets_502(make_gateway: GatewayFactory,
                                                               raw: Start, answer: bytes) -> None:
    """Relayed, each would be read differently by some client or cache behind the gateway
    (response splitting); llhttp refuses them, and this keeps it so."""
    backend = await raw(answering(answer))
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, CLOSE_GET)
    assert answer.startswith(b"HTTP/1.1 502"), answer[:80]
    assert answer.count(b"HTTP/1.1 ") == 1
    await still_serves(gateway)
    assert backend.connections == 2


@pytest.mark.parametrize("coding", [b"chunked", b"Chunked", b"chunked  "])
async def test_chunked_in_any_case_is_relayed(make_gateway: GatewayFactory, raw: Start,
                                              coding: bytes) -> None:
    backend = await raw(answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n"
                                  b"2\r\nok\r\n0\r\n\r\n" % coding))
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, CLOSE_GET)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer[:80]
    assert header_of(head, b"transfer-encoding") == [b"chunked"]
    assert body == b"2\r\nok\r\n0\r\n\r\n"


@pytest.mark.parametrize(("request_head", "status"), [
    (b"HEAD /r HTTP/1.1\r\nHost: a\r\n\r\n", b"200 OK"),
    (b"GET /r HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\n\r\n", b"304 Not Modified"),
])
async def test_a_transfer_coding_in_an_answer_without_a_body_is_no_error(
        make_gateway: GatewayFactory, raw: Start, request_head: bytes, status: bytes) -> None:
    """RFC 9112 6.1: the answer to a HEAD, or a 304, may name the codings the body would
    have had; it has none to decode."""
    backend = await raw(answering(b"HTTP/1.1 %s\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                                  % status))
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        for _ in range(2):  # and the connection goes on, both sides
            writer.write(request_head)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 " + status), head
            assert header_of(head, b"transfer-encoding") == []
    finally:
        writer.close()
    assert backend.connections == 1


# -- the status ----------------------------------------------------------------------------

async def test_a_status_below_100_gets_502(make_gateway: GatewayFactory, raw: Start) -> None:
    """llhttp reads `000` as status 0: it went to the client as `HTTP/1.1 0 Unknown`, no
    valid status line, and counted as no answer at all."""
    backend = await raw(answering(b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok"))
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, CLOSE_GET)
    assert answer.startswith(b"HTTP/1.1 502"), answer[:80]
    await still_serves(gateway)


# -- the size of a response head -----------------------------------------------------------

@pytest.mark.parametrize("flood", [
    b"X-Big: " + b"a" * 200_000,                      # one endless line
    b"".join(b"X-%d: v\r\n" % i for i in range(40_000)),  # very many fields
])
async def test_a_response_head_over_the_limit_gets_502(make_gateway: GatewayFactory,
                                                       raw: Start, flood: bytes) -> None:
    """Bound everything: a backend's head was read, and held, for as long as it went on
    (until `response_timeout`)."""
    async def endless(head: bytes) -> bytes:
        if not head.startswith(b"GET /r "):
            return FINE
        return b"HTTP/1.1 200 OK\r\n" + flood  # and never the head's end

    backend = await raw(endless)
    gateway = await make_gateway(**web_config([backend.address],
                                              limits={"max_header_bytes": 16384}))
    answer = await exchange(gateway, CLOSE_GET)
    assert answer.startswith(b"HTTP/1.1 502"), answer[:80]
    assert gateway.counters["http_502"] == 1
    await still_serves(gateway)


# -- Date ----------------------------------------------------------------------------------

def a_date_of_now(head: bytes) -> None:
    """`head` has one Date field, an IMF-fixdate within a few seconds of now."""
    [value] = header_of(head, b"date")
    assert value.endswith(b" GMT"), value
    assert abs(parsedate_to_datetime(value.decode()).timestamp() - time.time()) < 5


async def test_an_answer_without_a_date_gets_one(make_gateway: GatewayFactory,
                                                 raw: Start) -> None:
    """RFC 9110 6.6.1: a recipient with a clock forwarding a response without Date MUST add
    one; one with a Date keeps it, alone."""
    dated = b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"

    async def answer(head: bytes) -> bytes:
        date = dated if head.startswith(b"GET /dated ") else b""
        return b"HTTP/1.1 200 OK\r\n%sContent-Length: 2\r\n\r\nok" % date

    backend = await raw(answer)
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        writer.write(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        head, _ = await read_answer(reader)
        a_date_of_now(head)
        writer.write(b"GET /dated HTTP/1.1\r\nHost: a\r\n\r\n")
        head, _ = await read_answer(reader)
        assert header_of(head, b"date") == [dated[6:-2]]
    finally:
        writer.close()


@pytest.mark.parametrize("request_head", [
    b"GET /nowhere HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",  # 404
    b"GET /r HTTP/1.1\r\nConnection: close\r\n\r\n",  # 400: no Host
])
async def test_the_gateways_own_answers_have_a_date(make_gateway: GatewayFactory, raw: Start,
                                                    request_head: bytes) -> None:
    """RFC 9110 6.6.1: an origin server with a clock MUST send Date in its 2xx-4xx answers
    (the gateway sends it in all of its own)."""
    backend = await raw(answering(FINE))
    config = web_config([backend.address])
    config["routes"][0]["host"] = "a"
    gateway = await make_gateway(**config)
    answer = await exchange(gateway, request_head)
    assert answer[:12] in (b"HTTP/1.1 404", b"HTTP/1.1 400"), answer[:80]
    a_date_of_now(answer.partition(b"\r\n\r\n")[0])


# -- interim answers -----------------------------------------------------------------------

async def test_an_interim_answer_drops_the_fields_its_connection_header_names(
        make_gateway: GatewayFactory, raw: Start) -> None:
    """RFC 9110 7.6.1 holds for a 1xx as for the final answer."""
    backend = await raw(answering(
        b"HTTP/1.1 103 Early Hints\r\nConnection: X-Secret\r\nX-Secret: s\r\n"
        b"Link: </s.css>; rel=preload\r\n\r\n" + FINE))
    gateway = await make_gateway(**web_config([backend.address]))
    answer = await exchange(gateway, CLOSE_GET)
    interim, _, final = answer.partition(b"\r\n\r\n")
    assert interim == b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload"
    assert final.startswith(b"HTTP/1.1 200"), answer[:200]


# -- keep-alive, each side its own ----------------------------------------------------------

@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nconnection: X-A, CLOSE\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",  # HTTP/1.0 without keep-alive
])
async def test_an_answer_that_ends_its_connection_leaves_the_clients_open(
        make_gateway: GatewayFactory, raw: Start, answer: bytes) -> None:
    """The backend's close is its hop's: the upstream connection is not used again (even
    if the backend keeps it open), the client's stays open."""
    backend = await raw(answering(answer))
    gateway = await make_gateway(**web_config([backend.address]))
    reader, writer = await connect(gateway)
    try:
        for _ in range(2):
            writer.write(b"GET /r HTTP/1.1\r\nHost: a\r\n\r\n")
            head, body = await read_answer(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"ok", head
            assert header_of(head, b"connection") == [b"keep-alive"]
    finally:
        writer.close()
    assert backend.connections == 2
