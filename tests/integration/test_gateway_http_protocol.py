"""HTTP/1.1 details over raw sockets, where a real client would hide them: the interim
`100 Continue` reaches a client that waits for it before sending its body, and a chunked body
that grows past `limits.max_body_bytes` is refused with 413 while others are still served."""

from __future__ import annotations

import asyncio

from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway import raw, web_config


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)


async def test_interim_100_continue_comes_before_the_body_is_sent(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins[:1]))
    host, port = gateway.listeners["web"].address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        await writer.drain()
        interim = await read_head(reader)  # nothing of the body has been sent yet
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        writer.write(b"hello")
        await writer.drain()
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(reader.readexactly(5), 3.0) == b"hello"
    finally:
        writer.close()


async def test_a_chunked_body_past_the_limit_gets_413(make_gateway: GatewayFactory,
                                                      origins: list[HttpOrigin]) -> None:
    gateway = await make_gateway(**web_config(origins[:1],
                                              limits={"max_body_bytes": 10_000}))
    chunk = b"%x\r\n%s\r\n" % (4_000, b"z" * 4_000)
    answer = await raw(gateway, b"POST /echo HTTP/1.1\r\nHost: a\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3 + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert gateway.counters["http_413"] == 1
    fine = await raw(gateway, b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
                              b"\r\nConnection: close\r\n\r\n" + chunk + b"0\r\n\r\n")
    assert fine.startswith(b"HTTP/1.1 200 ") and fine.endswith(b"z" * 4_000)
