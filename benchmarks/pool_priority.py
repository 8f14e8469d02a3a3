"""Priority under overload: critical acquire wait with connwise vs a FIFO pool (psycopg_pool).

Demand is 3x capacity: 30 tasks share a pool of 10 real PostgreSQL connections; each loops
acquire -> `SELECT pg_sleep(0.005)` (the hold: a 5 ms server-side sleep plus one round trip) ->
release -> `await asyncio.sleep(0)`. Tasks 0-2 (10%) acquire as `critical`, tasks 3-29 as `bulk`,
under connwise's default class table. psycopg_pool serves everyone in arrival order (FIFO); its
"critical" figures are those of the same three tasks.

Targets: connwise's critical p99 acquire wait <= 0.05 x psycopg_pool's, AND the bulk class's max
wait inside its starvation bound, `promotion_delay(bulk) + serving time`, where the serving time
is that of every other task ahead of it once (at most tasks - 1 waiters, served `bulk_slots` at a
time, one hold each; `bulk_slots` is the capacity less the reservations of the classes above).

    .venv/bin/python benchmarks/pool_priority.py [--quick]
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.contenders import connwise_pool, psycopg_pool_
from benchmarks.harness import (
    Result,
    clean,
    emit,
    environment,
    finish,
    ms,
    parser,
    percentile,
    run,
    run_closed_loop,
    table,
)
from connwise.core.classes import DEFAULT_CLASSES, ClassTable

NAME = "pool_priority"
TASKS = 30
SIZE = 10
CRITICAL = 3
HOLD = 0.005
TARGET_RATIO = 0.05


def timed_hold(durations: list[float]) -> Callable[[Any], Awaitable[None]]:
    """The hold, `SELECT pg_sleep(HOLD)`, recording how long each one took."""
    query = f"SELECT pg_sleep({HOLD})"
    clock = time.perf_counter

    async def work(conn: Any) -> None:
        start = clock()
        await conn.execute(query)
        durations.append(clock() - start)

    return work


def bulk_bound(table_: ClassTable, hold: float) -> dict[str, float]:
    """The starvation bound of `bulk` on this workload, from the class table."""
    promotion = table_.promotion_delay("bulk")
    reserved = table_.reserved_slots(SIZE)
    bulk_rank = table_["bulk"].rank
    above = sum(slots for name, slots in reserved.items() if table_[name].rank > bulk_rank)
    bulk_slots = SIZE - above
    rounds = math.ceil((TASKS - 1) / bulk_slots)
    serving = rounds * hold
    return {"promotion_delay_s": promotion, "bulk_slots": bulk_slots, "serving_rounds": rounds,
            "hold_s": round(hold, 6), "serving_time_s": round(serving, 6),
            "bound_s": round(promotion + serving, 6)}


async def bench(dsn: str, quick: bool) -> dict[str, Any]:
    duration, warmup, reps = (1.0, 0.3, 1) if quick else (5.0, 1.0, 3)
    env = environment()
    classes = ["critical"] * CRITICAL + ["bulk"] * (TASKS - CRITICAL)
    groups = {"critical": range(CRITICAL), "bulk": range(CRITICAL, TASKS)}
    runs: dict[str, list[Result]] = {"connwise": [], "psycopg_pool": []}
    holds: list[float] = []  # connwise's holds: the serving time of the bound
    pg_holds: list[float] = []
    bulk_max_by_rep: list[float] = []
    for _ in range(reps):
        cw = await connwise_pool(dsn, SIZE, timed_hold(holds), classes=classes)
        try:
            runs["connwise"].append(await run_closed_loop(
                cw, tasks=TASKS, duration=duration, warmup=warmup, groups=groups))
            bulk_max_by_rep.append(runs["connwise"][-1].groups["bulk"]["acquire_max_ms"])
        finally:
            await cw.close()
        pg = await psycopg_pool_(dsn, SIZE, timed_hold(pg_holds))
        try:
            runs["psycopg_pool"].append(await run_closed_loop(
                pg, tasks=TASKS, duration=duration, warmup=warmup, groups=groups))
        finally:
            await pg.close()

    def critical_p99(r: Result) -> float:
        return r.groups["critical"]["acquire_p99_ms"]

    best = {name: sorted(rs, key=critical_p99)[(len(rs) - 1) // 2] for name, rs in runs.items()}
    cw_r, pg_r = best["connwise"], best["psycopg_pool"]
    ratio = critical_p99(cw_r) / critical_p99(pg_r)
    hold_p99 = percentile(holds, 99)
    hold_max = max(holds)
    bound = bulk_bound(ClassTable(DEFAULT_CLASSES), hold_max)
    bulk_max_ms = max(bulk_max_by_rep)  # the worst bulk wait over every repetition
    bound_ok = bulk_max_ms / 1000.0 <= bound["bound_s"]
    met = ratio <= TARGET_RATIO and bound_ok

    rows = []
    for r in best.values():
        for group in ("critical", "bulk"):
            g = r.groups[group]
            rows.append([f"{r.name} {group}", g["tasks"], round(g["ops"] / r.duration_s, 1),
                         g["acquire_p50_ms"], g["acquire_p99_ms"], g["acquire_max_ms"]])
    table(f"{NAME}: {TASKS} tasks ({CRITICAL} critical, {TASKS - CRITICAL} bulk), pool size "
          f"{SIZE}, hold pg_sleep({HOLD}), median of {reps} x {duration:g} s",
          ["pool / class", "tasks", "ops/s", "wait p50 ms", "wait p99 ms", "wait max ms"], rows)
    print(f"figure: critical p99 connwise / psycopg_pool = {ratio:.4f}   target <= {TARGET_RATIO}"
          f"   {'MET' if ratio <= TARGET_RATIO else 'MISSED'}")
    print(f"bulk max wait (worst of {reps} runs) {bulk_max_ms:.2f} ms, bound "
          f"{bound['bound_s']:.3f} s = promotion_delay {bound['promotion_delay_s']:g} s + "
          f"serving {bound['serving_rounds']} x {bound['hold_s'] * 1000:.2f} ms   "
          f"{'INSIDE' if bound_ok else 'OUTSIDE'}")
    print(f"overall: {'MET' if met else 'MISSED'}")
    payload: dict[str, Any] = clean({
        "benchmark": NAME,
        "description": __doc__.splitlines()[0] if __doc__ else NAME,
        "config": {"tasks": TASKS, "pool_size": SIZE, "critical_tasks": CRITICAL,
                   "bulk_tasks": TASKS - CRITICAL, "classes": "connwise default table "
                   "(critical rank 2, 20% reserved; interactive rank 1, 10%; bulk rank 0, "
                   "aging 0.1/s)", "hold": f"SELECT pg_sleep({HOLD}) on the held connection",
                   "duration_s": duration, "warmup_s": warmup, "repetitions": reps,
                   "quick": quick, "yield_between_ops": "await asyncio.sleep(0)", "dsn": dsn},
        "environment": finish(env),
        "figure": {"name": "connwise critical p99 wait / psycopg_pool critical p99 wait",
                   "value": round(ratio, 5), "connwise_critical_p99_ms": critical_p99(cw_r),
                   "psycopg_pool_critical_p99_ms": critical_p99(pg_r),
                   "connwise_bulk_max_wait_ms": bulk_max_ms,
                   "bulk_bound_s": bound["bound_s"]},
        "target": {"condition": f"connwise critical p99 <= {TARGET_RATIO} x psycopg_pool's, and "
                                "connwise bulk max wait <= promotion_delay(bulk) + serving time",
                   "ratio": TARGET_RATIO, "ratio_met": ratio <= TARGET_RATIO,
                   "bound_met": bound_ok, "met": met},
        "anchors": {"psycopg_pool_critical_p99_ms": critical_p99(pg_r),
                    "psycopg_pool_bulk_p99_ms": pg_r.groups["bulk"]["acquire_p99_ms"],
                    "psycopg_pool_ops_per_s": pg_r.ops_per_s},
        "bulk_bound": bound | {"observed_bulk_max_wait_s": round(bulk_max_ms / 1000.0, 6),
                               "hold_p99_ms": ms(hold_p99), "hold_max_ms": ms(hold_max),
                               "hold_median_ms": ms(statistics.median(holds))},
        "results": {name: r.as_dict() for name, r in best.items()},
        "repetitions": {name: {"critical_p99_ms": [critical_p99(r) for r in rs],
                               "bulk_max_ms": [r.groups["bulk"]["acquire_max_ms"] for r in rs],
                               "ops_per_s": [r.ops_per_s for r in rs]}
                        for name, rs in runs.items()},
    })
    return payload


def main() -> None:
    args = parser(__doc__.splitlines()[0] if __doc__ else NAME).parse_args()

    async def go() -> dict[str, Any]:
        return await bench(args.dsn, args.quick)

    emit(NAME, run(go), write=not args.no_write)


if __name__ == "__main__":
    main()
