"""ingest_speed: nginx access-log lines per second, parsed into connection records.

Claim (issue 4): `connwise ingest nginx` reads >= 200k lines/s on this machine.

The log is generated with a fixed seed: `combined` + ` $request_time` lines, 5,000 client
addresses, a dozen user agents, ~40 requests per second of log time, 1% malformed lines. Each
figure is the best of `--repeat` runs over the same file, per second of wall time and per second
of CPU time of this process and its worker processes together (the machine is shared: CPU time
is the figure other programs do not move, wall time the one the target is about):

* `parse`: the serial ingest driver (parse, segment, batch) into a sink that discards them;
* `sqlite`: `ingest_sqlite` into a new store, what `connwise ingest nginx` does: `--workers`
  processes (default: one per CPU) parse chunks into SQLite images that this process splices
  into the store, which is built aside without a journal and put in place when complete;
* `sqlite_serial`: the same with one worker, i.e. parsed and inserted in this process;
* anchors, run in the same program: `anchor_regex` reads the file and matches the compiled
  log_format regex, nothing else (the ceiling of a Python parser of this format here);
  `anchor_sqlite_insert` inserts the already parsed rows into a fresh store (SQLite's own
  ceiling for these rows through Python's sqlite3).

Prints JSON (with the load average before and after, as the wall figures depend on it) and
writes benchmarks/results/ingest_speed.json.

    .venv/bin/python benchmarks/ingest_speed.py [--lines 500000] [--repeat 3] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connwise.telemetry.ingest import NginxParser, ingest, ingest_sqlite
from connwise.telemetry.ingest.parallel import default_workers
from connwise.telemetry.record import Row
from connwise.telemetry.store_sqlite import SqliteStore

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 200_000

AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.4.0",
    "okhttp/4.12.0",
    "python-requests/2.31.0",
    "-",
)
PATHS = ("/", "/api/items", "/api/items/42", "/api/cart", "/static/app.js", "/static/app.css",
         "/login", "/checkout", "/healthz")
STATUSES = (200,) * 40 + (204, 301, 304, 304, 404, 404, 499, 500, 502, 408)


def generate(path: Path, lines: int, seed: int = 4) -> None:
    rng = random.Random(seed)
    addresses = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
                 f"{rng.randrange(1, 255)}" for _ in range(5000)]
    start = 1_700_000_000
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            if i % 100 == 99:
                out.write(f"garbage line {i} that is not an access log entry\n")
                continue
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(start + i // 40))
            out.write(f'{rng.choice(addresses)} - - [{stamp}] "GET {rng.choice(PATHS)} '
                      f'HTTP/1.1" {rng.choice(STATUSES)} {rng.randrange(0, 40000)} '
                      f'"https://shop.example/" "{rng.choice(AGENTS)}" '
                      f'{rng.expovariate(20):.3f}\n')


class NullSink:
    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        pass


def cpu_time() -> float:
    """CPU seconds of this process and of its children that ended (the ingest's workers)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Rate:
    """Lines per second of wall time and of CPU time (with the workers') over a `with` block."""

    def __init__(self) -> None:
        self.lines = 0
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Rate:
        self._wall, self._cpu = time.perf_counter(), cpu_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = cpu_time() - self._cpu

    @property
    def per_s(self) -> float:
        return self.lines / self.wall

    @property
    def per_cpu_s(self) -> float:
        return self.lines / self.cpu


def anchor_regex(path: Path) -> Rate:
    match = NginxParser().pattern.match
    with Rate() as rate, path.open(encoding="utf-8") as lines:
        for line in lines:
            m = match(line)
            if m is not None:
                m.groups()
            rate.lines += 1
    return rate


def anchor_insert(path: Path, db: Path) -> Rate:
    parse = NginxParser().start_file(path.name)
    with path.open(encoding="utf-8") as lines:
        rows = [row for row in map(parse, lines) if row is not None]
    store = SqliteStore(db)
    try:
        with Rate() as rate:
            for i in range(0, len(rows), 5000):
                store.write(rows[i:i + 5000], NginxParser.columns)
            rate.lines = len(rows)
    finally:
        store.close()
    return rate


def timed_ingest(path: Path, sink: Any) -> tuple[Rate, int, int]:
    with Rate() as rate:
        summary = ingest(NginxParser(), [path], sink, progress=False)
        rate.lines = summary.lines
    return rate, summary.records, summary.malformed


def timed_ingest_sqlite(path: Path, db: Path, workers: int) -> Rate:
    with Rate() as rate:
        summary = ingest_sqlite(NginxParser(), [path], db, workers=workers, progress=False)
        rate.lines = summary.lines
    return rate


def best(rates: list[Rate]) -> dict[str, Any]:
    return {"lines_per_s": round(max(r.per_s for r in rates)),
            "lines_per_cpu_s": round(max(r.per_cpu_s for r in rates)),
            "runs_lines_per_s": [round(r.per_s) for r in rates]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="parse processes of the `sqlite` figure (default: one per CPU)")
    parser.add_argument("--no-write", action="store_true", help="do not write results/")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        generate(log, args.lines)
        regexes, inserts, parses, sqlites, serials = [], [], [], [], []
        records = malformed = 0
        for run in range(args.repeat):
            regexes.append(anchor_regex(log))
            inserts.append(anchor_insert(log, Path(tmp) / f"anchor{run}.db"))
            rate, records, malformed = timed_ingest(log, NullSink())
            parses.append(rate)
            sqlites.append(timed_ingest_sqlite(log, Path(tmp) / f"store{run}.db", args.workers))
            serials.append(timed_ingest_sqlite(log, Path(tmp) / f"serial{run}.db", 1))
        parse, sqlite = best(parses), best(sqlites)
        result = {
            "benchmark": "ingest_speed",
            "lines": args.lines,
            "records": records,
            "malformed": malformed,
            "target_lines_per_s": TARGET,
            "workers": args.workers,
            "parse": parse,
            "sqlite": sqlite,
            "sqlite_serial": best(serials),
            "anchor_regex": best(regexes),
            "anchor_sqlite_insert": best(inserts),
            "parse_meets_target": parse["lines_per_cpu_s"] >= TARGET,
            "sqlite_meets_target": sqlite["lines_per_s"] >= TARGET,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "sqlite_version": sqlite3.sqlite_version,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus (shared)",
        }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ingest_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
