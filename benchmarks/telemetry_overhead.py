"""telemetry_overhead: gateway throughput with SQLite telemetry on against off, same run.

An nginx origin with a tiny body; three connwise gateways (`http` listener) in front of it, one
without `[telemetry]`, one with a SQLite store and a control identical to the first, all up for
the whole workload and loaded by wrk in rotating windows (off, on, control, control, on, off,
...). `ratio_control` (control over off) is what the benchmark reads when nothing differs: the
noise floor a ratio must stand out of. The machine is a shared VM whose speed drifts by
+-15% from one run to the next: gateways restarted per repetition, minutes apart, gave ratios
from 0.77 to 1.10 for one build; short rotating windows put the contenders under the same
drift. Two workloads: keep-alive (50 connections, a record per connection, the
per-request cost is the record's counters) and `Connection: close` (a record per request).
The figure is requests per gateway CPU-second with telemetry over without, summed over the
windows; the target is >= 0.95x. The gateway's store is written by a child process
(`ProcessWriter`): the figure counts the gateway process, whose event loop serves the requests
and is what the overhead slows down; the child's CPU is added in `ratio_total_cpu` (all CPU
spent, both processes), and `ratio_req_per_s` is the plain throughput ratio. `ratio_paired` is
the median of the on/off ratios of adjacent windows. `recorded` counts the client records in
the store after the gateway's drain: every request of the measured windows and the warm-up.
Prints a table and JSON, writes benchmarks/results/telemetry_overhead.json.

    .venv/bin/python benchmarks/telemetry_overhead.py [--quick] [--seconds S] [--repeat N]
        [--workload keep_alive|connection_close]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Iterator
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
from benchmarks.harness import emit
from connwise.telemetry.schema import TABLE

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


#: CPUs for (everything else, the measured gateway's event loop), when the machine has two or
#: more: pinned, a gateway's efficiency depends less on where the OS put it and what ran there
#: before (unpinned, the control differed from `off` by 3-7% over whole runs; pinned, 2-4%).
PINNED: list[int] = sorted(os.sched_getaffinity(0))[:2] if len(os.sched_getaffinity(0)) >= 2 \
    else []


def children_cpu(pid: int) -> float:
    """CPU seconds of the live children of `pid` (the telemetry writer process)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            with contextlib.suppress(FileNotFoundError):
                total += cpu_seconds(int(child))
    return total


class Contender:
    """One gateway, started once per workload and kept up: off (no `[telemetry]`) or on."""

    def __init__(self, procs: Processes, origin: int, store: Path | None, close: bool,
                 label: str, extra: str = "") -> None:
        telemetry = f'[telemetry]\nstore = "{store}"\n{extra}' if store else ""
        self.store = store
        self.close = close
        self.gateway, ports = procs.connwise(
            GATEWAY_TOML.format(origin=origin, telemetry=telemetry),
            name=f"connwise-{label}-{int(close)}")
        self.url = f"http://127.0.0.1:{ports['web']}/"
        self.windows: list[dict[str, Any]] = []
        if PINNED:
            # The gateway's event loop (its main thread) alone on the last CPU; its writer
            # process and housekeeping thread, started before, stay with wrk and nginx.
            os.sched_setaffinity(self.gateway.pid, {PINNED[1]})
        wrk(self.url, 10, 1.0, close)  # warm up: upstream pool, caches, the writer process

    def window(self, seconds: float) -> None:
        """One measured window of wrk at 50 connections."""
        before = children_cpu(self.gateway.pid)
        with measuring(self.gateway) as used:
            result = wrk(self.url, 50, seconds, self.close)
        cpu = used[self.gateway.name]
        child_cpu = round(children_cpu(self.gateway.pid) - before, 3)
        self.windows.append({
            "req_per_s": result.req_per_s, "p99_ms": result.p99_ms, "cpu_s": cpu,
            "writer_cpu_s": child_cpu, "requests": result.requests, "non_2xx": result.non_2xx,
            "per_cpu_s": round(result.requests / cpu, 1) if cpu else None,
            "per_total_cpu_s": round(result.requests / (cpu + child_cpu), 1) if cpu else None})

    def finish(self, procs: Processes) -> dict[str, Any]:
        """Stop the gateway (its drain flushes the store); totals over all windows."""
        procs.stop(self.gateway)
        recorded = None
        if self.store is not None and self.store.exists():
            with contextlib.closing(sqlite3.connect(self.store)) as db:
                recorded = db.execute(f"SELECT count(*) FROM {TABLE} WHERE kind = 'client'"
                                      ).fetchone()[0]
        requests = sum(w["requests"] for w in self.windows)
        cpu = sum(w["cpu_s"] for w in self.windows)
        child = sum(w["writer_cpu_s"] for w in self.windows)
        return {"windows": self.windows, "requests": requests, "cpu_s": round(cpu, 3),
                "writer_cpu_s": round(child, 3), "recorded": recorded,
                "per_cpu_s": round(requests / cpu, 1) if cpu else None,
                "per_total_cpu_s": round(requests / (cpu + child), 1) if cpu else None}


def selected_workloads(only: str | None) -> Iterator[tuple[str, bool]]:
    """(name, whether requests carry `Connection: close`) of the workloads to run: both, or
    `only`."""
    for close in (False, True):
        name = "connection_close" if close else "keep_alive"
        if only is None or only == name:
            yield name, close


def run_workload(procs: Processes, origin: int, close: bool, seconds: float,
                 reps: int, extra: str = "") -> dict[str, Any]:
    """Three gateways up at once, measured in rotating windows (off, on, control, control, on,
    off, ...): the machine's drift (it is shared) hits all alike at the scale of a window. The
    control is a second gateway without telemetry: its ratio to `off` is what the benchmark
    reads when nothing differs, the noise a difference must stand out of."""
    off = Contender(procs, origin, None, close, "plain")
    on = Contender(procs, origin, procs.path(f"telemetry-{int(close)}.db"), close, "telemetry",
                   extra)
    control = Contender(procs, origin, None, close, "control")
    for rep in range(reps):
        for contender in ((off, on, control) if rep % 2 == 0 else (control, on, off)):
            contender.window(seconds)
    a, b, c = off.finish(procs), on.finish(procs), control.finish(procs)
    paired = statistics.median(y["per_cpu_s"] / x["per_cpu_s"]
                               for x, y in zip(a["windows"], b["windows"], strict=True))
    ratio = b["per_cpu_s"] / a["per_cpu_s"]
    return {"off": a, "on": b, "control": c,
            "ratio_per_cpu_s": round(ratio, 3),
            "ratio_paired": round(paired, 3),
            "ratio_total_cpu": round(b["per_total_cpu_s"] / a["per_total_cpu_s"], 3),
            # Windows of equal length: the throughput ratio is the ratio of requests served.
            "ratio_req_per_s": round(b["requests"] / a["requests"], 3),
            "ratio_control": round(c["per_cpu_s"] / a["per_cpu_s"], 3),
            "met": ratio >= TARGET}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 windows of 2 s each")
    parser.add_argument("--seconds", type=float, help="seconds per window (default 3)")
    parser.add_argument("--repeat", type=int, help="windows per contender (default 10)")
    parser.add_argument("--workload", choices=("keep_alive", "connection_close"),
                        help="run only this workload")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-upstream-records", action="store_true",
                        help="record client connections only (`[telemetry] upstream_records = "
                             "false`)")
    parser.add_argument("--no-pin", action="store_true",
                        help="let the OS place every process (default: the measured gateway's "
                             "event loop alone on one CPU, everything else on another)")
    options = parser.parse_args()
    require_tools("wrk", "nginx")
    raise_nofile()
    if options.no_pin:
        PINNED.clear()
    elif PINNED:
        # This process and all it starts (nginx, wrk, the gateways until each is moved) share
        # the first CPU; see `Contender`.
        os.sched_setaffinity(0, {PINNED[0]})
    seconds, reps = (2.0, 2) if options.quick else (3.0, 10)
    seconds = options.seconds or seconds
    reps = options.repeat or reps
    report: dict[str, Any] = {"benchmark": "telemetry_overhead", "pinned": bool(PINNED),
                              "upstream_records": not options.no_upstream_records,
                              "seconds": seconds,
                              "repetitions": reps, "target": f">= {TARGET}x", "workloads": {}}
    with Processes() as procs:
        origin = free_port()
        procs.nginx(origin)
        for name, close in selected_workloads(options.workload):
            report["workloads"][name] = run_workload(
                procs, origin, close, seconds, reps,
                "upstream_records = false\n" if options.no_upstream_records else "")
    print(f"{'workload':<18}{'off req/s':>11}{'on req/s':>11}{'off req/CPU-s':>15}"
          f"{'on req/CPU-s':>14}{'ratio':>8}{'paired':>8}{'total':>8}{'control':>9}"
          f"  target {TARGET}x")
    for name, w in report["workloads"].items():
        off, on = w["off"], w["on"]
        span = seconds * reps
        print(f"{name:<18}{off['requests'] / span:>11.0f}{on['requests'] / span:>11.0f}"
              f"{off['per_cpu_s']:>15.0f}{on['per_cpu_s']:>14.0f}"
              f"{w['ratio_per_cpu_s']:>8.3f}{w['ratio_paired']:>8.3f}{w['ratio_total_cpu']:>8.3f}"
              f"{w['ratio_control']:>9.3f}  {'met' if w['met'] else 'MISSED'}")
    emit("telemetry_overhead", report, write=not options.no_write)


if __name__ == "__main__":
    main()
