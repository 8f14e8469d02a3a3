"""Regression tests: a tcp relay ends when both sides have shut down, and half-close
still lets the server answer after the client's EOF."""
import asyncio

from connwise.config import load_gateway_config
from connwise.gateway.runtime import Gateway


async def _backend() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()          # until the client's EOF
        writer.write(b"got " + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_tcp_relay_half_close_then_both_closed() -> None:
    server, port = await _backend()
    gateway = Gateway(load_gateway_config({
        "listeners": [{"name": "raw", "kind": "tcp", "bind": "127.0.0.1:0", "group": "b"}],
        "groups": {"b": {"backends": [f"127.0.0.1:{port}"], "health": {"kind": "none"}}}}))
    await gateway.start()
    try:
        host, gport = gateway.listeners["raw"].address
        for _ in range(20):
            reader, writer = await asyncio.open_connection(host, gport)
            writer.write(b"hello")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"got hello"
            writer.close()
        for _ in range(50):
            if not gateway.clients:
                break
            await asyncio.sleep(0.05)
        assert not gateway.clients, "relays whose both sides shut down must be closed"
        assert gateway.groups["b"].scheduler.in_use == 0
    finally:
        await gateway.drain(1.0)
        server.close()
