"""telemetry_overhead: gateway throughput with SQLite telemetry on against off, same run.

An nginx origin with a tiny body; the connwise gateway (`http` listener) in front of it, started
twice per repetition — once without `[telemetry]`, once with a SQLite store — and loaded by wrk,
alternating so that machine noise hits both alike. Two workloads: keep-alive (50 connections,
a record per connection, the per-request cost is the record's counters) and `Connection: close`
(a record per request: the writer thread and SQLite are on the critical path of every request).
The figure is requests per gateway CPU-second with telemetry over without; the target is
>= 0.95x. The gateway's store is written by a child process (`ProcessSink`): the figure counts the
gateway process, whose event loop serves the requests and is what the overhead slows down; the
child's CPU is added in `ratio_total_cpu` (all CPU spent, both processes), and `ratio_req_per_s`
is the plain throughput ratio. `ratio_paired` is the median of each repetition's on/off ratio:
the two runs of a repetition are back to back, so when the machine's load drifts during the
benchmark (it is shared) the pairs cancel it where the ratio of the medians does not. Prints a
table and JSON, writes benchmarks/results/telemetry_overhead.json.

    .venv/bin/python benchmarks/telemetry_overhead.py [--quick] [--seconds S] [--repeat N]
        [--workload keep_alive|connection_close]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_harness import (
    Processes,
    cpu_seconds,
    free_port,
    measuring,
    parse_wrk,
    raise_nofile,
    require_tools,
)
from connwise.telemetry.schema import TABLE

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 0.95

GATEWAY_TOML = """
node_id = "bench"
[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"
[[routes]]
listener = "web"
group = "origin"
[groups.origin]
backends = ["127.0.0.1:{origin}"]
max_in_flight = 1024
warm_target = 16
[groups.origin.health]
kind = "none"
{telemetry}
"""


def wrk(url: str, connections: int, seconds: float, close: bool) -> Any:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout=10s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    run = subprocess.run([*args, url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60, start_new_session=True)
    return parse_wrk(run.stdout)


def children_cpu(pid: int) -> float:
    """CPU seconds of the live children of `pid` (the telemetry writer process)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                total += cpu_seconds(int(child))
    return total


def one(procs: Processes, origin: int, store: Path | None, seconds: float,
        close: bool) -> dict[str, Any]:
    telemetry = f'[telemetry]\nstore = "{store}"\n' if store else ""
    name = "connwise-telemetry" if store else "connwise-plain"
    gateway, ports = procs.connwise(GATEWAY_TOML.format(origin=origin, telemetry=telemetry),
                                    name=name)
    url = f"http://127.0.0.1:{ports['web']}/"
    try:
        wrk(url, 10, 1.0, close)  # warm up: upstream pool, caches
        before = children_cpu(gateway.pid)
        with measuring(gateway) as used:
            result = wrk(url, 50, seconds, close)
        cpu = used[gateway.name]
        child_cpu = round(children_cpu(gateway.pid) - before, 3)
    finally:
        procs.stop(gateway)
    recorded = None
    if store is not None and store.exists():
        with contextlib.closing(sqlite3.connect(store)) as db:
            recorded = db.execute(f"SELECT count(*) FROM {TABLE} WHERE kind = 'client'"
                                  ).fetchone()[0]
    return {"req_per_s": result.req_per_s, "p99_ms": result.p99_ms, "cpu_s": cpu,
            "writer_cpu_s": child_cpu, "requests": result.requests, "non_2xx": result.non_2xx,
            "recorded": recorded,
            "per_cpu_s": round(result.requests / cpu, 1) if cpu else None,
            "per_total_cpu_s": round(result.requests / (cpu + child_cpu), 1) if cpu else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s per point, 1 repetition")
    parser.add_argument("--seconds", type=float, help="measured seconds per point (default 8)")
    parser.add_argument("--repeat", type=int, help="repetitions per workload (default 3)")
    parser.add_argument("--workload", choices=("keep_alive", "connection_close"),
                        help="run only this workload")
    parser.add_argument("--no-write", action="store_true")
    options = parser.parse_args()
    require_tools("wrk", "nginx")
    raise_nofile()
    seconds, reps = (3.0, 1) if options.quick else (8.0, 3)
    seconds = options.seconds or seconds
    reps = options.repeat or reps
    report: dict[str, Any] = {"benchmark": "telemetry_overhead", "seconds": seconds,
                              "repetitions": reps, "target": f">= {TARGET}x", "workloads": {}}
    with Processes() as procs:
        origin = free_port()
        procs.nginx(origin)
        for close in (False, True):
            if options.workload and options.workload != ("connection_close" if close
                                                         else "keep_alive"):
                continue
            runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
            for rep in range(reps):
                store = procs.path(f"telemetry-{int(close)}-{rep}.db")
                runs["off"].append(one(procs, origin, None, seconds, close))
                runs["on"].append(one(procs, origin, store, seconds, close))
            off = statistics.median(r["per_cpu_s"] for r in runs["off"])
            on = statistics.median(r["per_cpu_s"] for r in runs["on"])
            off_rps = statistics.median(r["req_per_s"] for r in runs["off"])
            on_rps = statistics.median(r["req_per_s"] for r in runs["on"])
            off_total = statistics.median(r["per_total_cpu_s"] for r in runs["off"])
            on_total = statistics.median(r["per_total_cpu_s"] for r in runs["on"])
            paired = statistics.median(b["per_cpu_s"] / a["per_cpu_s"]
                                       for a, b in zip(runs["off"], runs["on"], strict=True))
            name = "connection_close" if close else "keep_alive"
            report["workloads"][name] = {
                "off": runs["off"], "on": runs["on"],
                "ratio_per_cpu_s": round(on / off, 3),
                "ratio_paired": round(paired, 3),
                "ratio_total_cpu": round(on_total / off_total, 3),
                "ratio_req_per_s": round(on_rps / off_rps, 3),
                "met": on / off >= TARGET}
    print(f"{'workload':<18}{'off req/s':>11}{'on req/s':>11}{'off req/CPU-s':>15}"
          f"{'on req/CPU-s':>14}{'ratio':>8}{'paired':>8}{'total':>8}  target {TARGET}x")
    for name, w in report["workloads"].items():
        off_rps = statistics.median(r["req_per_s"] for r in w["off"])
        on_rps = statistics.median(r["req_per_s"] for r in w["on"])
        off_cpu = statistics.median(r["per_cpu_s"] for r in w["off"])
        on_cpu = statistics.median(r["per_cpu_s"] for r in w["on"])
        print(f"{name:<18}{off_rps:>11.0f}{on_rps:>11.0f}{off_cpu:>15.0f}{on_cpu:>14.0f}"
              f"{w['ratio_per_cpu_s']:>8.3f}{w['ratio_paired']:>8.3f}{w['ratio_total_cpu']:>8.3f}  "
              f"{'met' if w['met'] else 'MISSED'}")
    if not options.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "telemetry_overhead.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
