"""Gateway priority under 3x overload: critical latency, shedding and service, vs HAProxy.

The origin (this file, `--role origin`, asyncio + uvloop + httptools in its own process) takes
10 ms per request, 2 ms when the request carries `Connwise-Degrade: 1` or higher (an application
that honours the signal), and answers `X-Degraded: 1` when it served the cheap version. The
proxies in front hold at most 10 requests in flight to it (connwise: the group's
`max_in_flight = 10`; HAProxy: `maxconn 10` on the server line); the origin also runs requests
through a semaphore of 10 and reports the most it ever saw at once, and `busy_share`: its
service time over 10 slots x the span from the first service to the last, so what a proxy
loses between the origin's answer and the next request shows as a share below 1. Full-quality
capacity is therefore 1,000 requests/s.

The load generator (this file, `--role load`, its own process so that its CPU is not the
proxy's) is open-loop: it draws Poisson arrivals at 3x capacity (3,000/s) for 20 s (5 s with
`--quick`), 10% of them critical (header `X-Class: critical`), and sends each at its scheduled
time on an idle keep-alive connection, or on a new one when none is idle, whatever the answers
so far. 1,500 connections are opened before the load starts, so the run measures queueing, not
connection set-up. Latency runs from the *scheduled* send time to the end of the answer (no
coordinated omission); the generator reports its achieved rate and how late it sent.

Contenders, each started fresh, in one run:

* connwise: route `X-Class: critical` -> class `critical`, everything else -> `interactive`,
  default class table and degradation ladder;
* HAProxy `mode http`, FIFO queue (`timeout queue 2s`);
* HAProxy `mode http` with `http-request set-priority-class int(-10)` for critical requests.

Targets: connwise's critical p99 <= 1.2 x HAProxy-with-priority's critical p99; no critical
request shed (no 503, no error, no timeout); >= 95% of all requests served (200, degraded or not).

    .venv/bin/python benchmarks/gateway_priority.py [--quick] [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httptools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_harness import (
    Proc,
    Processes,
    free_port,
    haproxy_global,
    raise_nofile,
    ratio,
    require_tools,
    tool_versions,
    wait_port,
)
from benchmarks.harness import clean, emit, environment, finish, percentile, table

NAME = "gateway_priority"
CAPACITY = 10          # requests in flight to the origin
SERVICE_S = 0.010      # full-quality service time
DEGRADED_S = 0.002     # with Connwise-Degrade >= 1
TARGET_P99_RATIO = 1.2
TARGET_SERVED = 0.95
CLASSES = ("critical", "other")


# -- the origin -----------------------------------------------------------------------------------


class Origin:
    def __init__(self) -> None:
        self.sem = asyncio.Semaphore(CAPACITY)
        self.concurrent = 0
        self.max_concurrent = 0
        self.requests = 0
        self.degraded = 0
        #: Service times actually delivered (from the request's end to the answer), seconds.
        self.service: dict[bool, list[float]] = {False: [], True: []}
        #: When the first service began and the last ended (perf_counter; 0.0: none yet).
        self.first_at = 0.0
        self.last_at = 0.0

    def busy_share(self) -> float | None:
        """Share of the slots' time (CAPACITY x first start to last end) spent serving: what
        the proxy in front wastes between the origin's answer and its next request."""
        span = self.last_at - self.first_at
        busy = sum(self.service[False]) + sum(self.service[True])
        return round(busy / (CAPACITY * span), 4) if span > 0 else None


class OriginConnection(asyncio.Protocol):
    """One connection to the origin; requests on it are answered in order."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.degrade = False
        self.url = b""
        self.pending: list[tuple[bytes, bool]] = []
        self.busy = False
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.degrade = False
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connwise-degrade":
            try:
                self.degrade = int(value) >= 1
            except ValueError:
                self.degrade = False

    def on_message_complete(self) -> None:
        self.pending.append((self.url, self.degrade))
        if not self.busy:
            self.busy = True
            self.task = asyncio.ensure_future(self.serve())

    async def serve(self) -> None:
        origin = self.origin
        while self.pending:
            url, degrade = self.pending.pop(0)
            if url.startswith(b"/__stats"):
                body = json.dumps({
                    "requests": origin.requests, "degraded": origin.degraded,
                    "max_concurrent": origin.max_concurrent,
                    "service_ms_p50": _ms(percentile(origin.service[False], 50)),
                    "service_ms_p99": _ms(percentile(origin.service[False], 99)),
                    "degraded_service_ms_p50": _ms(percentile(origin.service[True], 50)),
                    "degraded_service_ms_p99": _ms(percentile(origin.service[True], 99)),
                    "busy_share": origin.busy_share(),
                }, allow_nan=True).encode()
                origin.requests = origin.degraded = origin.max_concurrent = 0
                origin.service = {False: [], True: []}
                origin.first_at = origin.last_at = 0.0
                self.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                continue
            origin.concurrent += 1
            origin.max_concurrent = max(origin.max_concurrent, origin.concurrent)
            try:
                async with origin.sem:
                    started = time.perf_counter()
                    origin.first_at = origin.first_at or started
                    await asyncio.sleep(DEGRADED_S if degrade else SERVICE_S)
                    origin.last_at = time.perf_counter()
                    origin.service[degrade].append(origin.last_at - started)
            finally:
                origin.concurrent -= 1
            origin.requests += 1
            origin.degraded += degrade
            self.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Degraded: %d\r\n\r\nok\n"
                       % degrade)
        self.busy = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


async def run_origin(port: int) -> None:
    origin = Origin()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: OriginConnection(origin), "127.0.0.1", port,
                                      backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"origin ready on {port}", flush=True)
    await stop.wait()
    server.close()


# -- the open-loop load generator ---------------------------------------------------------------


class Record:
    __slots__ = ("cls", "degraded", "done", "outcome", "scheduled", "sent")

    def __init__(self, cls: int, scheduled: float) -> None:
        self.cls = cls
        self.scheduled = scheduled
        self.sent = math.nan
        self.done = math.nan
        self.outcome = ""       # "200", "503", other status, "error", "" (no answer yet)
        self.degraded = False


class LoadConnection(asyncio.Protocol):
    """A keep-alive client connection: one request at a time."""

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.current: Record | None = None
        self.degraded = False
        self.closed = False
        self.queued: Record | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.queued is not None:
            record, self.queued = self.queued, None
            self.send(record)

    def send(self, record: Record) -> None:
        assert self.transport is not None
        self.current = record
        self.degraded = False
        record.sent = self.gen.clock()
        self.transport.write(self.gen.requests[record.cls])

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail()
            if self.transport is not None:
                self.transport.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        if value == b"1" and name.lower() == b"x-degraded":
            self.degraded = True

    def on_message_complete(self) -> None:
        record = self.current
        if record is None:
            return
        self.current = None
        record.done = self.gen.clock()
        record.outcome = str(self.parser.get_status_code())
        record.degraded = self.degraded
        self.gen.finished += 1
        if self.parser.should_keep_alive() and not self.closed:
            self.gen.idle.append(self)
        elif self.transport is not None:
            self.closed = True
            self.transport.close()

    def fail(self) -> None:
        record = self.current or self.queued
        self.current = self.queued = None
        if record is not None and not record.outcome:
            record.done = self.gen.clock()
            record.outcome = "error"
            self.gen.finished += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail()


class Generator:
    def __init__(self, port: int, header: str) -> None:
        self.port = port
        self.clock: Callable[[], float] = time.perf_counter
        self.idle: list[LoadConnection] = []
        self.connecting: set[asyncio.Future[None]] = set()
        self.finished = 0
        self.opened = 0
        self.requests = [
            b"GET /work HTTP/1.1\r\nHost: origin\r\n%s: critical\r\n\r\n" % header.encode(),
            b"GET /work HTTP/1.1\r\nHost: origin\r\n%s: other\r\n\r\n" % header.encode(),
        ]

    async def connect(self, record: Record | None = None) -> None:
        conn = LoadConnection(self)
        conn.queued = record
        self.opened += 1
        try:
            await asyncio.get_running_loop().create_connection(lambda: conn, "127.0.0.1",
                                                               self.port)
        except OSError:
            conn.fail()
            return
        if record is None:
            self.idle.append(conn)

    def dispatch(self, record: Record) -> None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.send(record)
                return
        task = asyncio.ensure_future(self.connect(record))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)


async def run_load(port: int, rate: float, duration: float, critical: float, seed: int,
                   preopen: int, grace: float, header: str, out: Path) -> None:
    gen = Generator(port, header)
    rng = random.Random(seed)
    schedule: list[Record] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        schedule.append(Record(0 if rng.random() < critical else 1, t))
    for first in range(0, preopen, 200):
        await asyncio.gather(*[gen.connect() for _ in range(min(200, preopen - first))])
    opened_before = gen.opened
    await asyncio.sleep(0.5)
    cpu0 = time.process_time()
    start = gen.clock() + 0.05
    for record in schedule:
        record.scheduled += start
    sleep = asyncio.sleep
    clock = gen.clock
    i, n = 0, len(schedule)
    while i < n:
        now = clock()
        while i < n and schedule[i].scheduled <= now:
            gen.dispatch(schedule[i])
            i += 1
        if i < n:
            await sleep(max(0.0, schedule[i].scheduled - clock()))
    sent_end = clock()
    deadline = sent_end + grace
    while gen.finished < n and clock() < deadline:
        await sleep(0.05)
    cpu = time.process_time() - cpu0
    text = json.dumps(summarize(schedule, start, sent_end, rate, duration, cpu, opened_before,
                                gen.opened - opened_before))
    with open(out, "w") as f:  # noqa: ASYNC230 - the run is over; nothing else waits
        f.write(text)


def summarize(schedule: list[Record], start: float, sent_end: float, rate: float,
              duration: float, cpu: float, preopened: int, opened: int) -> dict[str, Any]:
    lags = [r.sent - r.scheduled for r in schedule if not math.isnan(r.sent)]
    sent = [r for r in schedule if not math.isnan(r.sent)]
    span = max((r.sent for r in sent), default=start) - start
    per_class: dict[str, Any] = {}
    for index, name in enumerate(CLASSES):
        mine = [r for r in schedule if r.cls == index]
        ok = [r for r in mine if r.outcome == "200"]
        shed = [r for r in mine if r.outcome == "503"]
        errors = [r for r in mine if r.outcome == "error"]
        unanswered = [r for r in mine if not r.outcome]
        other = [r for r in mine if r.outcome not in ("200", "503", "error", "")]
        ok_lat = [r.done - r.scheduled for r in ok]
        shed_lat = [r.done - r.scheduled for r in shed]
        total = len(mine)
        per_class[name] = {
            "requests": total, "served": len(ok), "degraded": sum(r.degraded for r in ok),
            "shed_503": len(shed), "errors": len(errors), "timeouts": len(unanswered),
            "other_status": len(other),
            "served_share": round(len(ok) / total, 4) if total else None,
            "shed_share": round(len(shed) / total, 4) if total else None,
            "p50_ms": _ms(percentile(ok_lat, 50)), "p99_ms": _ms(percentile(ok_lat, 99)),
            "max_ms": _ms(max(ok_lat) if ok_lat else math.nan),
            "shed_p50_ms": _ms(percentile(shed_lat, 50)),
        }
    total = len(schedule)
    served = sum(c["served"] for c in per_class.values())
    # Per second of the schedule: what became of the requests due in it (both classes).
    timeline: list[dict[str, int]] = []
    for r in schedule:
        second = int(r.scheduled - start)
        while len(timeline) <= second:
            timeline.append({"sent": 0, "served": 0, "degraded": 0, "shed": 0, "other": 0})
        slot = timeline[second]
        slot["sent"] += 1
        if r.outcome == "200":
            slot["served"] += 1
            slot["degraded"] += r.degraded
        elif r.outcome == "503":
            slot["shed"] += 1
        else:
            slot["other"] += 1
    return {
        "intended_rate": rate, "intended_requests": total, "duration_s": duration,
        "achieved_rate": round(len(sent) / span, 1) if span > 0 else None,
        "send_lag_p50_ms": _ms(percentile(lags, 50)), "send_lag_p99_ms": _ms(percentile(lags, 99)),
        "send_lag_max_ms": _ms(max(lags) if lags else math.nan),
        "send_span_s": round(sent_end - start, 3), "generator_cpu_s": round(cpu, 3),
        "connections_preopened": preopened, "connections_opened_during_run": opened,
        "served_share": round(served / total, 4) if total else None,
        "classes": per_class,
        "timeline": timeline,
    }


def _ms(seconds: float) -> float:
    return math.nan if math.isnan(seconds) else round(seconds * 1000.0, 2)


# -- the benchmark --------------------------------------------------------------------------------


ADMIN_TOKEN = "bench"


def connwise_toml(origin_port: int, admin_port: int) -> str:
    return f"""\
node_id = "bench"
drain_timeout = 2

[admin]
bind = "127.0.0.1:{admin_port}"
token = "{ADMIN_TOKEN}"

[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"

[[routes]]
listener = "web"
group = "app"
class = "critical"
headers = {{ "x-class" = "critical" }}

[[routes]]
listener = "web"
group = "app"
class = "interactive"
path_prefix = "/"

[groups.app]
backends = ["127.0.0.1:{origin_port}"]
max_in_flight = {CAPACITY}

[groups.app.health]
kind = "none"

[limits]
max_connections = 20000
max_connections_per_ip = 20000
"""


def haproxy_cfg(origin_port: int, port: int, priority: bool) -> str:
    rule = ("    http-request set-priority-class int(-10) if { req.hdr(x-class) -m str critical }\n"
            if priority else "")
    return haproxy_global(20000) + f"""\
frontend ft_http
    mode http
    bind 127.0.0.1:{port} backlog 4096
    option forwardfor
    default_backend bk_http

backend bk_http
    mode http
{rule}    server origin 127.0.0.1:{origin_port} maxconn {CAPACITY}
"""


def origin_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__stats", timeout=5) as answer:
        return cast(dict[str, Any], json.loads(answer.read()))


class AdminSampler(threading.Thread):
    """Twice a second, the connwise group's in-flight, waiters and degradation levels."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.started = time.monotonic()

    def run(self) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/stats",
                                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        while not self.stop.wait(0.5):
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:
                    stats = json.loads(answer.read())
            except OSError:
                continue
            group = stats["groups"]["app"]
            self.samples.append({"t": round(time.monotonic() - self.started, 2),
                                 "in_flight": group["in_flight"], "waiting": group["waiting"],
                                 "levels": group["degradation"]})


def run_contender(ps: Processes, name: str, start: Callable[[], tuple[Proc, int, int | None]],
                  origin_port: int, args: argparse.Namespace, duration: float,
                  rate: float) -> dict[str, Any]:
    origin_stats(origin_port)  # reset
    proxy, port, admin_port = start()
    sampler = AdminSampler(admin_port) if admin_port else None
    out = ps.path(f"load-{name.replace(' ', '_')}.json")
    cpu0 = proxy.cpu()
    if sampler is not None:
        sampler.start()
    load = ps.python(f"load-{name.replace(' ', '_')}", Path(__file__), "--role", "load",
                     "--port", port, "--rate", rate, "--duration", duration,
                     "--critical", args.critical, "--seed", args.seed, "--preopen",
                     args.preopen, "--out", out)
    load.popen.wait(duration + args.grace + 120)
    if sampler is not None:
        sampler.stop.set()
        sampler.join()
    if load.popen.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{load.tail()}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["proxy_cpu_s"] = round(proxy.cpu() - cpu0, 3)
    result["origin"] = origin_stats(origin_port)
    result["proxy_log_tail"] = proxy.tail(5)
    if sampler is not None:
        result["admin_samples"] = sampler.samples
    proxy.check_alive()
    ps.stop(proxy)
    ps.stop(load)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["bench", "origin", "load"], default="bench",
                   help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="5 s of load: a smoke test")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--overload", type=float, default=3.0, help="offered load / capacity")
    p.add_argument("--critical", type=float, default=0.1, help="share of critical requests")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--preopen", type=int, default=1500, help="connections opened beforehand")
    p.add_argument("--grace", type=float, default=15.0,
                   help="seconds to wait for answers after the last send")
    p.add_argument("--only", default="", help="comma-separated contenders to run (default all)")
    p.add_argument("--no-write", action="store_true", help="do not write results/NAME.json")
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    raise_nofile()
    import uvloop

    if args.role == "origin":
        uvloop.run(run_origin(args.port))
        return
    if args.role == "load":
        uvloop.run(run_load(args.port, args.rate, args.duration, args.critical, args.seed,
                            args.preopen, args.grace, "X-Class", args.out))
        return

    require_tools("haproxy")
    duration = 5.0 if args.quick else args.duration
    capacity_rate = CAPACITY / SERVICE_S
    rate = args.overload * capacity_rate
    env = environment()
    env["tools"] = tool_versions()
    env["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    results: dict[str, dict[str, Any]] = {}
    with Processes() as ps:
        origin_port = free_port()
        origin = ps.python("origin", Path(__file__), "--role", "origin", "--port", origin_port)
        wait_port(origin_port, proc=origin)

        def start_connwise() -> tuple[Proc, int, int | None]:
            admin_port = free_port()
            proc, ports = ps.connwise(connwise_toml(origin_port, admin_port))
            wait_port(admin_port, proc=proc)
            return proc, ports["web"], admin_port

        def start_haproxy(priority: bool) -> Callable[[], tuple[Proc, int, int | None]]:
            def start() -> tuple[Proc, int, int | None]:
                port = free_port()
                name = "haproxy-priority" if priority else "haproxy-fifo"
                proc = ps.haproxy(haproxy_cfg(origin_port, port, priority), [port], name)
                return proc, port, None
            return start

        contenders = [("connwise", start_connwise),
                      ("haproxy fifo", start_haproxy(False)),
                      ("haproxy priority", start_haproxy(True))]
        only = {n.strip() for n in args.only.split(",") if n.strip()}
        for name, start in contenders:
            if only and name not in only:
                continue
            print(f"  {name}: {rate:g} req/s for {duration:g} s ...", file=sys.stderr,
                  flush=True)
            results[name] = run_contender(ps, name, start, origin_port, args, duration, rate)
            time.sleep(1.0)
        origin.check_alive()

    checks: list[tuple[str, Any, str, bool]] = []
    cw, prio = results.get("connwise"), results.get("haproxy priority")
    if cw is not None:
        crit = cw["classes"]["critical"]
        p99_ratio = (ratio(crit["p99_ms"], prio["classes"]["critical"]["p99_ms"])
                     if prio is not None else None)
        crit_unserved = crit["requests"] - crit["served"]
        checks = [
            ("critical p99 vs HAProxy with priority", p99_ratio, f"<= {TARGET_P99_RATIO}",
             p99_ratio is not None and p99_ratio <= TARGET_P99_RATIO),
            ("critical requests not served (503, error, timeout)", crit_unserved, "== 0",
             crit_unserved == 0),
            ("share of all requests served", cw["served_share"], f">= {TARGET_SERVED}",
             cw["served_share"] is not None and cw["served_share"] >= TARGET_SERVED),
        ]
    rows = []
    for name, res in results.items():
        for cls in CLASSES:
            c = res["classes"][cls]
            rows.append([name, cls, c["requests"], c["p50_ms"], c["p99_ms"], c["served_share"],
                         round(c["degraded"] / c["requests"], 4) if c["requests"] else None,
                         c["shed_share"], c["shed_503"], c["errors"] + c["timeouts"]])
    table(f"{NAME}: open-loop Poisson {rate:g} req/s ({args.overload:g}x capacity) for "
          f"{duration:g} s, {args.critical:.0%} critical",
          ["contender", "class", "requests", "p50 ms", "p99 ms", "served", "degraded", "shed",
           "shed n", "err+timeout"], rows)
    table("load generator and proxies",
          ["contender", "achieved req/s", "lag p99 ms", "lag max ms", "proxy CPU s",
           "generator CPU s", "origin max in flight", "origin svc p50 ms",
           "degraded svc p50 ms", "origin busy", "served (all)"],
          [[name, res["achieved_rate"], res["send_lag_p99_ms"], res["send_lag_max_ms"],
            res["proxy_cpu_s"], res["generator_cpu_s"], res["origin"]["max_concurrent"],
            res["origin"]["service_ms_p50"], res["origin"]["degraded_service_ms_p50"],
            res["origin"]["busy_share"], res["served_share"]] for name, res in results.items()])
    table("targets", ["check", "figure", "target", "met"], [list(c) for c in checks])
    payload = clean({
        "benchmark": NAME,
        "config": {"capacity_in_flight": CAPACITY, "service_ms": SERVICE_S * 1000,
                   "degraded_service_ms": DEGRADED_S * 1000,
                   "capacity_req_per_s": capacity_rate, "overload": args.overload,
                   "intended_rate": rate, "duration_s": duration, "critical_share": args.critical,
                   "seed": args.seed, "preopened_connections": args.preopen,
                   "grace_s": args.grace, "quick": args.quick,
                   "latency": "from the scheduled send time to the end of the answer",
                   "connwise": "critical route by X-Class header, others interactive, default "
                               "classes and ladder, max_in_flight 10",
                   "haproxy": "nbthread 1, mode http, server maxconn 10, timeout queue 2s; "
                              "priority: set-priority-class int(-10) for critical"},
        "environment": finish(env),
        "results": results,
        "targets": [{"check": n, "figure": f, "target": t, "met": m} for n, f, t, m in checks],
        "all_met": bool(checks) and all(c[3] for c in checks),
    })
    emit(NAME, payload, write=not args.no_write)


if __name__ == "__main__":
    main()
