"""The pools under test, each opened full (min = max) on real PostgreSQL connections and used
through its idiomatic API:

* connwise: `connwise.Pool(AsyncpgDriver(dsn))`, `async with pool.acquire(class) as conn`;
* psycopg_pool: `AsyncConnectionPool(kwargs={"autocommit": True})`, `async with
  pool.connection() as conn` (psycopg's recommended way; it commits nothing in autocommit);
* asyncpg: `asyncpg.create_pool()`, `async with pool.acquire() as conn`, with its default
  release behaviour (it sends a reset query on every release: that is what users get).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import psycopg_pool
from psycopg import AsyncConnection

import connwise
from benchmarks.harness import (
    STARVED_FRACTION,
    Contender,
    Result,
    clean,
    environment,
    finish,
    median_result,
    run_closed_loop,
    spread,
    table,
)
from connwise.pool.drivers.asyncpg import AsyncpgDriver

Work = Callable[[Any], Awaitable[Any]] | None


# -- what a holder does ---------------------------------------------------------------------------


async def asyncpg_select1(conn: Any) -> None:
    await conn.fetchval("SELECT 1")


async def yield_once(conn: Any) -> None:
    """Hold the connection across one event-loop turn: no I/O, but every pool now queues."""
    await asyncio.sleep(0)


async def psycopg_select1(conn: Any) -> None:
    cur = await conn.execute("SELECT 1")
    await cur.fetchone()


def asyncpg_sleep(seconds: float) -> Callable[[Any], Awaitable[None]]:
    query = f"SELECT pg_sleep({seconds})"

    async def work(conn: Any) -> None:
        await conn.execute(query)

    return work


def psycopg_sleep(seconds: float) -> Callable[[Any], Awaitable[None]]:
    query = f"SELECT pg_sleep({seconds})"

    async def work(conn: Any) -> None:
        await conn.execute(query)

    return work


# -- the pools ------------------------------------------------------------------------------------


async def connwise_pool(dsn: str, size: int, work: Work, *, name: str = "connwise",
                        classes: Sequence[str] | None = None,
                        **pool_kwargs: Any) -> Contender:
    """connwise.Pool over asyncpg; task i acquires as `classes[i]` (default class if None)."""
    pool: connwise.Pool[Any] = connwise.Pool(AsyncpgDriver(dsn), name="bench", min_size=size,
                                             max_size=size, **pool_kwargs)
    await pool.open(wait=True, timeout=30.0)
    names = list(classes) if classes is not None else None

    def acquire(i: int) -> Any:
        return pool.acquire(names[i] if names is not None else None)

    async def close() -> None:
        await pool.close()

    return Contender(name, acquire, work, close, {"pool": pool})


async def psycopg_pool_(dsn: str, size: int, work: Work, *,
                        name: str = "psycopg_pool") -> Contender:
    pool: Any = psycopg_pool.AsyncConnectionPool(
        dsn, min_size=size, max_size=size, kwargs={"autocommit": True},
        connection_class=AsyncConnection, open=False, timeout=60.0)
    await pool.open(wait=True, timeout=30.0)

    def acquire(_: int) -> Any:
        return pool.connection()

    async def close() -> None:
        await pool.close()

    return Contender(name, acquire, work, close, {"pool": pool})


async def asyncpg_pool(dsn: str, size: int, work: Work, *, name: str = "asyncpg.pool") -> Contender:
    pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)

    def acquire(_: int) -> Any:
        return pool.acquire()

    async def close() -> None:
        await pool.close()

    return Contender(name, acquire, work, close, {"pool": pool})


# -- the throughput benchmarks (pool_overhead, pool_query) -----------------------------------------


async def throughput(*, benchmark: str, description: str, dsn: str, quick: bool,
                     connwise_work: Work, psycopg_work: Work, asyncpg_work: Work,
                     work_label: str, target_ratio: float | None, min_jain: float | None,
                     tasks: int = 100, size: int = 10) -> dict[str, Any]:
    """Run connwise, psycopg_pool and asyncpg.pool on the closed-loop workload, interleaved,
    `reps` times each; report each one's median repetition and the connwise/psycopg_pool ratio.
    With `target_ratio` None the run is informative only (no target)."""
    duration, warmup, reps = (1.0, 0.3, 1) if quick else (5.0, 1.0, 5)
    env = environment()
    builders = {
        "connwise": lambda: connwise_pool(dsn, size, connwise_work),
        "psycopg_pool": lambda: psycopg_pool_(dsn, size, psycopg_work),
        "asyncpg.pool": lambda: asyncpg_pool(dsn, size, asyncpg_work),
    }
    runs: dict[str, list[Result]] = {name: [] for name in builders}
    for _ in range(reps):
        for name, build in builders.items():
            contender = await build()
            try:
                runs[name].append(await run_closed_loop(contender, tasks=tasks,
                                                        duration=duration, warmup=warmup))
            finally:
                await contender.close()
    best = {name: median_result(rs) for name, rs in runs.items()}
    cw, pg = best["connwise"], best["psycopg_pool"]
    ratio = cw.ops_per_s / pg.ops_per_s if pg.ops_per_s else math.inf
    cpu_ratio = pg.client_cpu_us_per_op / cw.client_cpu_us_per_op
    met = target_ratio is not None and ratio >= target_ratio and (
        min_jain is None or cw.jain >= min_jain)
    rows = [[r.name, r.ops_per_s, r.acquire_p50_ms, r.acquire_p99_ms, r.acquire_max_ms, r.jain,
             r.starved, r.errors, r.client_cpu_us_per_op] for r in best.values()]
    table(f"{benchmark}: {tasks} tasks, pool size {size}, {work_label}, median of {reps} x "
          f"{duration:g} s", ["pool", "ops/s", "acq p50 ms", "acq p99 ms", "acq max ms", "Jain",
                              "starved", "errors", "client CPU us/op"], rows)
    if target_ratio is None:
        condition = "none (informative)"
        verdict = ""
    else:
        condition = f"connwise ops/s >= {target_ratio}x psycopg_pool ops/s"
        if min_jain is not None:
            condition += f" at Jain's fairness >= {min_jain}"
        verdict = "MET" if met else "MISSED"
    print(f"figure: connwise / psycopg_pool ops/s = {ratio:.3f}   target: {condition}   "
          f"{verdict}")
    print(f"        psycopg_pool / connwise client CPU per op = {cpu_ratio:.3f}")
    print(f"        connwise / asyncpg.pool ops/s = "
          f"{cw.ops_per_s / best['asyncpg.pool'].ops_per_s:.3f}")
    payload: dict[str, Any] = clean({
        "benchmark": benchmark,
        "description": description,
        "config": {"tasks": tasks, "pool_size": size, "work": work_label,
                   "duration_s": duration, "warmup_s": warmup, "repetitions": reps,
                   "quick": quick, "yield_between_ops": "await asyncio.sleep(0)",
                   "starved_threshold": f"0 ops or < {STARVED_FRACTION:.0%} of mean per-task ops",
                   "dsn": dsn},
        "environment": finish(env),
        "figure": {"name": "connwise ops/s / psycopg_pool ops/s", "value": round(ratio, 4),
                   "connwise_ops_per_s": cw.ops_per_s, "connwise_jain": cw.jain,
                   "client_cpu_per_op_psycopg_pool_over_connwise": round(cpu_ratio, 4)},
        "target": {"condition": condition, "ratio": target_ratio, "min_jain": min_jain,
                   "met": met if target_ratio is not None else None},
        "anchors": {"psycopg_pool_ops_per_s": pg.ops_per_s,
                    "asyncpg_pool_ops_per_s": best["asyncpg.pool"].ops_per_s,
                    "connwise_over_asyncpg_pool": round(
                        cw.ops_per_s / best["asyncpg.pool"].ops_per_s, 4)},
        "results": {name: r.as_dict() for name, r in best.items()},
        "repetitions": {name: {"ops_per_s": [r.ops_per_s for r in rs],
                               "jain": [r.jain for r in rs],
                               "spread": spread([r.ops_per_s for r in rs])}
                        for name, rs in runs.items()},
    })
    return payload
