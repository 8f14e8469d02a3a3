"""A real HTTP/1.1 origin on loopback for gateway tests, parsed with httptools.

Endpoints: `/fast` answers at once; `/slow?ms=N` after N ms; `/echo` answers with the request
body (content-length or chunked); `/headers` answers with the request headers as JSON;
`/close` answers without a length and closes; `/health` answers 200. Every answer names the
origin (`X-Origin`) so tests can see where a request went. A request with
`Expect: 100-continue` gets the interim `100 Continue` once its head is read, as servers that
read the body on demand send it.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs, urlparse

import httptools


class _Handler(asyncio.Protocol):
    def __init__(self, origin: HttpOrigin) -> None:
        self.origin = origin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.origin.connections += 1

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode().lower(), value.decode()))

    def on_headers_complete(self) -> None:
        if ("expect", "100-continue") in self.headers and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.origin.requests += 1
        url = urlparse(self.url.decode())
        task = asyncio.ensure_future(self.answer(url.path, parse_qs(url.query),
                                                 dict(self.headers), self.body,
                                                 self.parser.get_method()))
        self.origin.tasks.add(task)
        task.add_done_callback(self.origin.tasks.discard)

    async def answer(self, path: str, query: dict[str, list[str]], headers: dict[str, str],
                     body: bytes, method: bytes) -> None:
        self.origin.in_flight += 1
        self.origin.max_in_flight = max(self.origin.max_in_flight, self.origin.in_flight)
        try:
            if path == "/slow":
                await asyncio.sleep(int(query.get("ms", ["100"])[0]) / 1000)
            if path == "/health" and self.origin.unhealthy:
                transport = self.transport
                if transport is not None and not transport.is_closing():
                    transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0"
                                    b"\r\n\r\n")
                return
            if path == "/fail":
                transport = self.transport
                if transport is not None and not transport.is_closing():
                    transport.write(b"HTTP/1.1 500 Internal Server Error\r\nX-Origin: %s\r\n"
                                    b"Content-Length: 0\r\n\r\n" % self.origin.name.encode())
                return
            if path == "/echo":
                payload = body
            elif path == "/headers":
                payload = json.dumps(headers).encode()
            else:
                payload = f"{path} from {self.origin.name}".encode()
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if path == "/close":
                transport.write(b"HTTP/1.1 200 OK\r\nX-Origin: %s\r\nConnection: close\r\n\r\n%s"
                                % (self.origin.name.encode(), payload))
                transport.close()
                return
            payload_out = b"" if method == b"HEAD" else payload
            transport.write(b"HTTP/1.1 200 OK\r\nX-Origin: %s\r\nContent-Length: %d\r\n\r\n%s"
                            % (self.origin.name.encode(), len(payload), payload_out))
        finally:
            self.origin.in_flight -= 1


class HttpOrigin:
    def __init__(self, name: str = "origin") -> None:
        self.name = name
        self.port = 0
        self.requests = 0
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.unhealthy = False
        self._server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> HttpOrigin:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Handler(self), "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"
