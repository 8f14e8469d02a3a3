"""A pool of asyncpg connections with priority classes, a warm target and a clean drain.

Needs PostgreSQL; pass a DSN: `python examples/pool_asyncpg.py postgresql://postgres@127.0.0.1/test`.
"""

from __future__ import annotations

import asyncio
import sys

import connwise
from connwise.pool.drivers.asyncpg import AsyncpgDriver


async def main(dsn: str) -> None:
    async with connwise.Pool(AsyncpgDriver(dsn), name="main", min_size=2, max_size=10) as pool:
        pool.set_target(6, at=pool.now() + 5)
        async with pool.acquire("critical", timeout=2.0) as conn:
            print("server says", await conn.fetchval("SELECT version()"))
        async with pool.acquire("bulk") as conn, conn.transaction():
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
        print(pool, pool.stats()["counters"])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1/test"))
