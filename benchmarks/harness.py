"""Shared harness of the pool benchmarks: the closed-loop workload, statistics, output.

The workload is the one of the pool issue: `tasks` coroutines share one pool; each loops
acquire -> work -> release and yields once (`await asyncio.sleep(0)`) between the release and
its next acquire, so that a pool which hands a released connection straight back to the task
that released it (barging) shows up as unfairness rather than as speed.

Each contender runs `warmup` seconds unmeasured, then `duration` seconds measured: the counters
are reset at the start of the window and frozen at its end. An operation counts if it starts
and ends inside the window. Acquire latency runs from the call to the pool until the
connection is in hand; the release and the work are outside it, but inside ops/s.

Everything runs under uvloop (`run()`), the event loop production services use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg_pool
import uvloop
from rich.console import Console
from rich.table import Table

import connwise

DSN = os.environ.get("CONNWISE_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/test")
RESULTS = Path(__file__).resolve().parent / "results"

#: A task is *starved* when it completed fewer than this fraction of the mean per-task ops
#: (0 ops is always starved). 10% of its fair share is far outside any scheduling noise.
STARVED_FRACTION = 0.1

clock = time.perf_counter


# -- statistics -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between closest ranks; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def jain(counts: Sequence[float]) -> float:
    """Jain's fairness index, (sum x)^2 / (n * sum x^2): 1.0 is perfectly even, 1/n is one
    task taking everything. 1.0 for an empty or all-zero sample (nobody was treated worse)."""
    n = len(counts)
    squares = sum(c * c for c in counts)
    if n == 0 or squares == 0:
        return 1.0
    total = sum(counts)
    return total * total / (n * squares)


def starved(counts: Sequence[int]) -> int:
    """Tasks with no op, or with fewer than STARVED_FRACTION of the mean."""
    if not counts:
        return 0
    mean = sum(counts) / len(counts)
    return sum(1 for c in counts if c == 0 or c < STARVED_FRACTION * mean)


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 4) if not math.isnan(seconds) else math.nan


# -- the closed-loop workload -------------------------------------------------------------------


@dataclass
class Contender:
    """One pool under test.

    `acquire(task_index)` returns the async context manager that holds a connection (the pool's
    idiomatic API); `work(conn)` is what a holder does, None for nothing; `close()` shuts it.
    """

    name: str
    acquire: Callable[[int], Any]
    work: Callable[[Any], Awaitable[Any]] | None
    close: Callable[[], Awaitable[None]]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """The figures of one measured window."""

    name: str
    duration_s: float
    ops: int
    ops_per_s: float
    acquire_p50_ms: float
    acquire_p99_ms: float
    acquire_max_ms: float
    jain: float
    starved: int
    per_task_min: int
    per_task_max: int
    errors: int
    #: CPU time of this (client) process per op, in microseconds: less sensitive than ops/s
    #: to other load on the machine, and it leaves out the server's share.
    client_cpu_us_per_op: float = math.nan
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recorder:
    """Per-task op counts and acquire latencies, counted only while `on` is set."""

    def __init__(self, tasks: int) -> None:
        self.counts = [0] * tasks
        self.latencies: list[list[float]] = [[] for _ in range(tasks)]
        self.errors = 0
        self.on = False
        self.stop = False

    def reset(self) -> None:
        self.counts = [0] * len(self.counts)
        self.latencies = [[] for _ in self.counts]
        self.errors = 0


async def _loop_task(index: int, contender: Contender, rec: Recorder) -> None:
    acquire = contender.acquire
    work = contender.work
    sleep = asyncio.sleep
    while not rec.stop:
        counting = rec.on
        start = clock()
        try:
            async with acquire(index) as conn:
                waited = clock() - start
                if work is not None:
                    await work(conn)
        except Exception:
            if counting and rec.on:
                rec.errors += 1
            await sleep(0.001)
            continue
        if counting and rec.on:
            rec.latencies[index].append(waited)
            rec.counts[index] += 1
        await sleep(0)


async def run_closed_loop(contender: Contender, *, tasks: int, duration: float, warmup: float,
                          groups: Mapping[str, Sequence[int]] | None = None) -> Result:
    """Run `tasks` looping tasks against `contender`; measure `duration` s after `warmup` s.

    `groups` names subsets of task indices (e.g. priority classes) whose latencies are also
    reported on their own.
    """
    rec = Recorder(tasks)
    runners = [asyncio.ensure_future(_loop_task(i, contender, rec)) for i in range(tasks)]
    try:
        await asyncio.sleep(warmup)
        rec.reset()
        rec.on = True
        started, cpu_started = clock(), time.process_time()
        await asyncio.sleep(duration)
        rec.on = False
        elapsed, cpu = clock() - started, time.process_time() - cpu_started
        rec.stop = True
        done, pending = await asyncio.wait(runners, timeout=max(5.0, duration))
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
    result = summarize(contender.name, rec.counts, rec.latencies, elapsed, rec.errors, groups)
    if result.ops:
        result.client_cpu_us_per_op = round(cpu / result.ops * 1e6, 2)
    return result


def summarize(name: str, counts: Sequence[int], latencies: Sequence[Sequence[float]],
              elapsed: float, errors: int = 0,
              groups: Mapping[str, Sequence[int]] | None = None) -> Result:
    flat = [x for per_task in latencies for x in per_task]
    ops = sum(counts)
    result = Result(
        name=name, duration_s=round(elapsed, 4), ops=ops, ops_per_s=round(ops / elapsed, 1),
        acquire_p50_ms=ms(percentile(flat, 50)), acquire_p99_ms=ms(percentile(flat, 99)),
        acquire_max_ms=ms(max(flat) if flat else math.nan), jain=round(jain(counts), 5),
        starved=starved(counts), per_task_min=min(counts, default=0),
        per_task_max=max(counts, default=0), errors=errors,
    )
    for group, members in (groups or {}).items():
        values = [x for i in members for x in latencies[i]]
        result.groups[group] = {
            "tasks": len(members), "ops": sum(counts[i] for i in members),
            "acquire_p50_ms": ms(percentile(values, 50)),
            "acquire_p99_ms": ms(percentile(values, 99)),
            "acquire_max_ms": ms(max(values) if values else math.nan),
            "jain": round(jain([counts[i] for i in members]), 5),
        }
    return result


def median_result(results: Sequence[Result]) -> Result:
    """The repetition with the median ops/s (a real run, not a blend of several)."""
    ordered = sorted(results, key=lambda r: r.ops_per_s)
    return ordered[(len(ordered) - 1) // 2]


# -- running and reporting ----------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="short run (1 s windows, fewer repetitions): a smoke test, not a figure")
    p.add_argument("--dsn", default=DSN, help=f"PostgreSQL DSN (default {DSN})")
    p.add_argument("--no-write", action="store_true",
                   help="print the JSON but do not write benchmarks/results/NAME.json")
    return p


def run(main: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Run `main` on a uvloop event loop and return what it returned."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "loop": f"uvloop {metadata.version('uvloop')}",
        "connwise": getattr(connwise, "__version__", "dev"), "asyncpg": asyncpg.__version__,
        "psycopg": psycopg.__version__, "psycopg_pool": psycopg_pool.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # Other work on the machine moves wall-clock figures: the load at the start of the run.
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def finish(env: dict[str, Any]) -> dict[str, Any]:
    """`env` with the load at the end of the run added."""
    env["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return env


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table: rich's when stdout is a terminal, aligned plain text otherwise."""
    cells = [[_cell(v) for v in row] for row in rows]
    if sys.stdout.isatty():
        t = Table(title=title)
        for i, col in enumerate(columns):
            t.add_column(col, justify="left" if i == 0 else "right")
        for row in cells:
            t.add_row(*row)
        Console().print(t)
        return
    widths = [max(len(str(c)), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(title)
    print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                    for i, (c, w) in enumerate(zip(columns, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)


def emit(name: str, payload: dict[str, Any], *, write: bool = True) -> None:
    """Print the JSON (as the last line of stdout) and write benchmarks/results/NAME.json."""
    text = json.dumps(payload, sort_keys=False, default=_json_default, allow_nan=False)
    if write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.json").write_text(
            json.dumps(payload, indent=2, default=_json_default, allow_nan=False) + "\n")
    print(text, flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, Result):
        return value.as_dict()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def clean(value: Any) -> Any:
    """Replace NaN and infinities by None, recursively, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, Result):
        return clean(value.as_dict())
    return value


def spread(values: Sequence[float]) -> dict[str, float]:
    """Min, median and max of repeated measurements, for judging the noise."""
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1)}
