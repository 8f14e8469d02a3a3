"""Active health checks of backends: a TCP connect, or an HTTP GET expecting a status.

Results feed the core `HealthGroup` (rise/fall counts, as HAProxy's); the check itself is
bounded by the group's `health.timeout` and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib

from connwise.gateway.upstreams import Backend, Group


async def probe(group: Group, backend: Backend) -> bool:
    config = group.config.health
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(config.timeout):
            reader, writer = await asyncio.open_connection(backend.host, backend.port)
            if config.kind != "http":
                return True
            # Host is the authority as configured: its port, an IPv6 literal's brackets.
            writer.write(f"GET {config.path} HTTP/1.1\r\nHost: {backend.name}\r\n"
                         "User-Agent: connwise-health\r\nConnection: close\r\n\r\n".encode())
            status_line = await reader.readline()
            parts = status_line.split()
            return len(parts) >= 2 and parts[1] == str(config.expect_status).encode()
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def check_backend(group: Group, backend: Backend) -> None:
    group.check_result(backend, await probe(group, backend))
