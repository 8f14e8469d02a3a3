"""Gateway throughput: wrk through connwise's `tcp` and `http` listeners, HAProxy and directly.

The origin is nginx (one process, keep-alive, a 3-byte body). wrk (one thread, keep-alive,
`--latency`) runs against five targets: the origin directly, HAProxy `mode tcp`, connwise's
`tcp` listener, HAProxy `mode http` and connwise's `http` listener, at 50 and at 1000
connections. HAProxy runs with `nbthread 1` and connwise with one worker, each as its own
process, so the CPU seconds each spends (utime + stime from /proc/PID/stat) during a window are
its own. Each window is preceded by an unmeasured warm-up run of wrk (upstream keep-alive pools
fill, caches settle); targets are measured in the order direct, HAProxy, connwise per mode.

Figure: requests per proxy CPU-second (requests in the window / CPU seconds the proxy used in
it), connwise's as a ratio to HAProxy's in the same mode. Targets:

* tcp:  connwise >= 0.85 x HAProxy `mode tcp`, at both connection counts;
* http: connwise >= 0.5 x HAProxy `mode http`, at both connection counts;
* p99 latency at 1000 connections <= 1.2 x HAProxy's (per mode).

connwise's config: one group with the nginx origin, `max_in_flight` and the client limits raised
above the offered connections (the defaults, 256 in flight and 256 per client IP, would queue
or refuse wrk's 1000 connections from 127.0.0.1 and measure admission, not relaying), health
checks off. HAProxy's: `option forwardfor` in `mode http`, as connwise adds X-Forwarded-For.

    .venv/bin/python benchmarks/gateway_throughput.py [--quick] [--duration S] [--reps N]
"""

from __future__ import annotations

import argparse
import operator
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_harness import (
    Proc,
    Processes,
    free_port,
    haproxy_global,
    raise_nofile,
    ratio,
    require_tools,
    run_wrk,
    tool_versions,
)
from benchmarks.harness import clean, emit, environment, finish, table

NAME = "gateway_throughput"
TARGET_TCP = 0.85
TARGET_HTTP = 0.5
TARGET_P99 = 1.2


def connwise_toml(origin_port: int) -> str:
    return f"""\
node_id = "bench"
drain_timeout = 2

[[listeners]]
name = "tcp"
kind = "tcp"
bind = "127.0.0.1:0"
group = "origin"

[[listeners]]
name = "http"
kind = "http"
bind = "127.0.0.1:0"

[[routes]]
listener = "http"
group = "origin"
path_prefix = "/"

[groups.origin]
backends = ["127.0.0.1:{origin_port}"]
max_in_flight = 4096
max_waiters = 4096

[groups.origin.health]
kind = "none"

[limits]
max_connections = 20000
max_connections_per_ip = 20000
"""


def haproxy_cfg(origin_port: int, tcp_port: int, http_port: int) -> str:
    return haproxy_global(9000) + f"""\
frontend ft_tcp
    mode tcp
    bind 127.0.0.1:{tcp_port} backlog 4096
    default_backend bk_tcp

backend bk_tcp
    mode tcp
    server origin 127.0.0.1:{origin_port}

frontend ft_http
    mode http
    bind 127.0.0.1:{http_port} backlog 4096
    option forwardfor
    default_backend bk_http

backend bk_http
    mode http
    server origin 127.0.0.1:{origin_port}
"""


def measure(name: str, port: int, proxy: Proc | None, origin: Proc, connections: int,
            seconds: float, warmup: float, threads: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/"
    if warmup > 0:
        run_wrk(url, connections, warmup, threads)
    procs = [p for p in (proxy, origin) if p is not None]
    before = {p.name: p.cpu() for p in procs}
    wrk, _ = run_wrk(url, connections, seconds, threads)
    used = {p.name: round(p.cpu() - before[p.name], 3) for p in procs}
    proxy_cpu = used[proxy.name] if proxy is not None else None
    return {
        "target": name, "connections": connections, "requests": wrk.requests,
        "seconds": wrk.seconds, "req_per_s": round(wrk.req_per_s, 1),
        "p50_ms": wrk.p50_ms, "p90_ms": wrk.p90_ms, "p99_ms": wrk.p99_ms,
        "non_2xx": wrk.non_2xx, "socket_errors": wrk.socket_errors,
        "proxy_cpu_s": proxy_cpu, "origin_cpu_s": used[origin.name],
        "proxy_cpu_share": round(proxy_cpu / wrk.seconds, 3) if proxy_cpu else None,
        "req_per_proxy_cpu_s": round(wrk.requests / proxy_cpu, 1) if proxy_cpu else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 s windows: a smoke test, not a figure")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    p.add_argument("--reps", type=int, default=1, help="repetitions; the median is reported")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--connections", default="50,1000", help="comma-separated counts")
    p.add_argument("--no-write", action="store_true", help="do not write results/NAME.json")
    args = p.parse_args()
    duration, warmup = (3.0, 1.0) if args.quick else (args.duration, args.warmup)
    counts = [int(c) for c in args.connections.split(",")]
    require_tools("wrk", "haproxy", "nginx")
    nofile = raise_nofile()
    env = environment()
    env["tools"] = tool_versions()
    env["nofile"] = nofile

    points: list[dict[str, Any]] = []
    with Processes() as ps:
        origin_port = free_port()
        origin = ps.nginx(origin_port)
        h_tcp, h_http = free_port(), free_port()
        haproxy = ps.haproxy(haproxy_cfg(origin_port, h_tcp, h_http), [h_tcp, h_http])
        connwise, ports = ps.connwise(connwise_toml(origin_port))
        targets: list[tuple[str, int, Proc | None]] = [
            ("direct", origin_port, None),
            ("haproxy tcp", h_tcp, haproxy), ("connwise tcp", ports["tcp"], connwise),
            ("haproxy http", h_http, haproxy), ("connwise http", ports["http"], connwise),
        ]
        for rep in range(args.reps):
            for connections in counts:
                for name, port, proxy in targets:
                    point = measure(name, port, proxy, origin, connections, duration, warmup,
                                    args.threads)
                    point["rep"] = rep
                    points.append(point)
                    print(f"  {name:14} c={connections:<5} {point['req_per_s']:>9,.0f} req/s  "
                          f"p99 {point['p99_ms']:>8.2f} ms  proxy CPU "
                          f"{point['proxy_cpu_s'] if point['proxy_cpu_s'] is not None else '-'}"
                          f" s", file=sys.stderr, flush=True)
        for proc in (origin, haproxy, connwise):
            proc.check_alive()
        connwise_log = connwise.tail(10)

    # The median repetition of each (target, connections) by req per proxy CPU-second.
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for name, _, _ in targets:
        for connections in counts:
            reps = [pt for pt in points if pt["target"] == name
                    and pt["connections"] == connections]
            key = "req_per_proxy_cpu_s" if name != "direct" else "req_per_s"
            reps.sort(key=operator.itemgetter(key))
            best[name, connections] = reps[(len(reps) - 1) // 2]

    figures: dict[str, Any] = {}
    checks: list[tuple[str, float | None, float, bool]] = []
    for mode, target in (("tcp", TARGET_TCP), ("http", TARGET_HTTP)):
        for connections in counts:
            cw, hap = best[f"connwise {mode}", connections], best[f"haproxy {mode}", connections]
            eff = ratio(cw["req_per_proxy_cpu_s"], hap["req_per_proxy_cpu_s"])
            figures[f"{mode}_c{connections}_efficiency_ratio"] = eff
            figures[f"{mode}_c{connections}_req_per_s_ratio"] = ratio(cw["req_per_s"],
                                                                     hap["req_per_s"])
            figures[f"{mode}_c{connections}_p99_ratio"] = ratio(cw["p99_ms"], hap["p99_ms"])
            checks.append((f"{mode} req/proxy-CPU-s vs HAProxy, c={connections}", eff, target,
                           eff is not None and eff >= target))
        if 1000 in counts:
            p99 = figures[f"{mode}_c1000_p99_ratio"]
            checks.append((f"{mode} p99 at 1000 connections vs HAProxy", p99, TARGET_P99,
                           p99 is not None and p99 <= TARGET_P99))

    rows = [[pt["target"], pt["connections"], pt["req_per_s"], pt["p50_ms"], pt["p99_ms"],
             pt["proxy_cpu_s"], pt["req_per_proxy_cpu_s"], pt["origin_cpu_s"],
             pt["non_2xx"] + sum(pt["socket_errors"].values())]
            for pt in best.values()]
    table(f"{NAME}: wrk, {duration:g} s windows, 1 thread (median of {args.reps})",
          ["target", "conns", "req/s", "p50 ms", "p99 ms", "proxy CPU s", "req/proxy-CPU-s",
           "nginx CPU s", "errors"], rows)
    table("targets", ["check", "figure", "target", "met"],
          [[name, value, f"{'<=' if 'p99' in name else '>='} {target}", met]
           for name, value, target, met in checks])
    payload = clean({
        "benchmark": NAME,
        "config": {"duration_s": duration, "warmup_s": warmup, "reps": args.reps,
                   "connections": counts, "wrk_threads": args.threads, "quick": args.quick,
                   "origin": "nginx, 1 process, keep-alive, 3-byte body",
                   "haproxy": "nbthread 1, mode tcp / mode http (option forwardfor)",
                   "connwise": "1 worker (the `connwise gateway` process), uvloop"},
        "environment": finish(env),
        "points": points,
        "median": [best[key] for key in best],
        "figures": figures,
        "targets": [{"check": name, "figure": value, "target": target, "met": met}
                    for name, value, target, met in checks],
        "all_met": all(met for *_, met in checks),
        "connwise_log_tail": connwise_log,
        "efficiency_ratio_spread": {
            f"{mode}_c{c}": [ratio(a["req_per_proxy_cpu_s"], b["req_per_proxy_cpu_s"])
                             for a, b in zip(
                                 [pt for pt in points if pt["target"] == f"connwise {mode}"
                                  and pt["connections"] == c],
                                 [pt for pt in points if pt["target"] == f"haproxy {mode}"
                                  and pt["connections"] == c], strict=True)]
            for mode in ("tcp", "http") for c in counts},
    })
    emit(NAME, payload, write=not args.no_write)


if __name__ == "__main__":
    main()
