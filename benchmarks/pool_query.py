"""Pool with a query: acquire, `SELECT 1`, release, on real PostgreSQL connections.

100 tasks share a pool of 10; each loops acquire -> SELECT 1 -> release ->
`await asyncio.sleep(0)`. connwise and asyncpg.create_pool run the query with asyncpg's
`fetchval`; psycopg_pool with `conn.execute` and `fetchone`. Figure: connwise ops/s /
psycopg_pool ops/s. Target: >= 1.2x.

    .venv/bin/python benchmarks/pool_query.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.contenders import asyncpg_select1, psycopg_select1, throughput
from benchmarks.harness import emit, parser, run

NAME = "pool_query"
DESCRIPTION = __doc__.splitlines()[0] if __doc__ else NAME


def main() -> None:
    args = parser(DESCRIPTION).parse_args()

    async def bench() -> dict[str, Any]:
        return await throughput(
            benchmark=NAME, description=DESCRIPTION, dsn=args.dsn, quick=args.quick,
            connwise_work=asyncpg_select1, psycopg_work=psycopg_select1,
            asyncpg_work=asyncpg_select1, work_label="SELECT 1", target_ratio=1.2,
            min_jain=None)

    emit(NAME, run(bench), write=not args.no_write)


if __name__ == "__main__":
    main()
