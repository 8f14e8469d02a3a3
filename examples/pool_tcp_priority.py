"""Critical work overtakes bulk work in a busy pool; a warm target opens connections ahead.

Self-contained: it starts its own TCP echo service on 127.0.0.1. Run it with
`python examples/pool_tcp_priority.py`.
"""

from __future__ import annotations

import asyncio
import statistics

import connwise
from connwise.pool.drivers.tcp import TcpDriver


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HELLO\n")
    while line := await reader.readline():
        await asyncio.sleep(0.002)  # the service takes 2 ms per request
        writer.write(line)
    writer.close()


async def main() -> dict[str, float]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    waits: dict[str, list[float]] = {"critical": [], "bulk": []}
    async with connwise.Pool(TcpDriver("127.0.0.1", port, greeting=b"HELLO"),
                             name="example", min_size=0, max_size=8) as pool:
        pool.set_target(8, at=pool.now() + 0.5)  # as a forecast would, before the rush
        await asyncio.sleep(0.5)

        async def request(class_name: str) -> None:
            start = pool.now()
            async with pool.acquire(class_name, timeout=10) as conn:
                waits[class_name].append(pool.now() - start)
                await conn.send(b"work\n")
                await conn.readline()

        # 3x more requests than connections; one in ten is critical.
        await asyncio.gather(*(request("critical" if i % 10 == 0 else "bulk")
                               for i in range(600)))
        print(pool)
    server.close()
    result = {name: statistics.quantiles(w, n=100)[98] * 1000 for name, w in waits.items()}
    for name, p99 in result.items():
        print(f"{name:>8}: p99 wait {p99:7.2f} ms over {len(waits[name])} requests")
    return result


if __name__ == "__main__":
    asyncio.run(main())
