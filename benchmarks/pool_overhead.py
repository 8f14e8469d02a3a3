"""Pool overhead: acquire and release, no query, on real PostgreSQL connections.

100 tasks share a pool of 10; each loops acquire -> release -> `await asyncio.sleep(0)`.
Contenders: connwise.Pool(AsyncpgDriver), psycopg_pool.AsyncConnectionPool (autocommit),
asyncpg.create_pool, all min = max = 10. Figure: connwise ops/s / psycopg_pool ops/s.
Target: >= 1.5x at Jain's fairness index >= 0.99.

With nothing done while holding, a pool whose acquire and release never suspend when a
connection is idle serves one holder at a time and nobody queues. A second, informative run
(no target) holds each connection across one `await asyncio.sleep(0)`, so that the 100 tasks
really queue for the 10 connections and every pool's wait path is measured.

    .venv/bin/python benchmarks/pool_overhead.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.contenders import throughput, yield_once
from benchmarks.harness import emit, parser, run

NAME = "pool_overhead"
DESCRIPTION = __doc__.splitlines()[0] if __doc__ else NAME


def main() -> None:
    args = parser(DESCRIPTION).parse_args()

    async def bench() -> dict[str, Any]:
        payload = await throughput(
            benchmark=NAME, description=DESCRIPTION, dsn=args.dsn, quick=args.quick,
            connwise_work=None, psycopg_work=None, asyncpg_work=None,
            work_label="no query", target_ratio=1.5, min_jain=0.99)
        variant = await throughput(
            benchmark=f"{NAME} (variant)", description=DESCRIPTION, dsn=args.dsn,
            quick=args.quick, connwise_work=yield_once, psycopg_work=yield_once,
            asyncpg_work=yield_once, work_label="hold across one asyncio.sleep(0)",
            target_ratio=None, min_jain=None)
        payload["variant_yield_while_holding"] = {
            key: variant[key] for key in ("config", "figure", "anchors", "results",
                                          "repetitions")}
        return payload

    emit(NAME, run(bench), write=not args.no_write)


if __name__ == "__main__":
    main()
