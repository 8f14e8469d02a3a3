"""telemetry_cost: the gateway's CPU per request without telemetry, with client records only and
with all records, same run: where `telemetry_overhead` reads a throughput ratio, this reads
microseconds.

The same three-gateway setup as `telemetry_overhead` (an nginx origin, wrk at 50 connections,
the measured gateway's event loop pinned to its own CPU), but the contenders are `off` (no
`[telemetry]`), `clients` (a SQLite store, `upstream_records = false`) and `all` (the
defaults), and the figure is the gateway process's CPU time (user + system, from /proc) per
request in each window, averaged over the windows. The difference to `off` is what the records
cost in place — two to three times what the same calls cost in a loop — and it moves less from
run to run than a throughput ratio, because the load generator's speed drops out. No target:
this explains `telemetry_overhead`'s figure. Prints a table and JSON, writes
benchmarks/results/telemetry_cost.json.

    .venv/bin/python benchmarks/telemetry_cost.py [--seconds S] [--repeat N]
        [--workload keep_alive|connection_close] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_harness import (
    Processes,
    cpu_seconds,
    free_port,
    raise_nofile,
    require_tools,
)
from benchmarks.harness import emit
from benchmarks.telemetry_overhead import PINNED, Contender, selected_workloads, wrk

#: (label, whether it has a store, extra `[telemetry]` keys)
VARIANTS = (("off", False, ""), ("clients", True, "upstream_records = false\n"),
            ("all", True, ""))


def run_workload(procs: Processes, origin: int, close: bool, seconds: float,
                 reps: int) -> dict[str, Any]:
    contenders = {label: Contender(procs, origin,
                                   procs.path(f"cost-{label}-{int(close)}.db") if store else None,
                                   close, f"cost-{label}", extra)
                  for label, store, extra in VARIANTS}
    per_request: dict[str, list[float]] = {label: [] for label in contenders}
    for rep in range(reps):
        order = list(contenders) if rep % 2 == 0 else list(reversed(contenders))
        for label in order:
            pid = contenders[label].gateway.pid
            before = cpu_seconds(pid)
            result = wrk(contenders[label].url, 50, seconds, close)
            used = cpu_seconds(pid) - before
            per_request[label].append(round(used / result.requests * 1e6, 2))
    for contender in contenders.values():
        contender.finish(procs)
    means = {label: round(statistics.fmean(v), 2) for label, v in per_request.items()}
    return {"us_per_request": means, "windows": per_request,
            "extra_us": {label: round(means[label] - means["off"], 2)
                         for label in means if label != "off"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per window")
    parser.add_argument("--repeat", type=int, default=4, help="windows per contender")
    parser.add_argument("--workload", choices=("keep_alive", "connection_close"),
                        help="run only this workload")
    parser.add_argument("--no-write", action="store_true")
    options = parser.parse_args()
    require_tools("wrk", "nginx")
    raise_nofile()
    if PINNED:
        os.sched_setaffinity(0, {PINNED[0]})
    report: dict[str, Any] = {"benchmark": "telemetry_cost", "pinned": bool(PINNED),
                              "seconds": options.seconds, "repetitions": options.repeat,
                              "workloads": {}}
    with Processes() as procs:
        origin = free_port()
        procs.nginx(origin)
        for name, close in selected_workloads(options.workload):
            report["workloads"][name] = run_workload(procs, origin, close, options.seconds,
                                                     options.repeat)
    print(f"{'workload':<18}{'off us/req':>12}{'clients':>10}{'all':>10}"
          f"{'+clients':>10}{'+all':>10}")
    for name, w in report["workloads"].items():
        us, extra = w["us_per_request"], w["extra_us"]
        print(f"{name:<18}{us['off']:>12.1f}{us['clients']:>10.1f}{us['all']:>10.1f}"
              f"{extra['clients']:>10.1f}{extra['all']:>10.1f}")
    emit("telemetry_cost", report, write=not options.no_write)


if __name__ == "__main__":
    main()
