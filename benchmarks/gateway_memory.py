"""Gateway memory per idle connection: connwise `tcp` and WebSocket-over-`http` vs HAProxy.

As many idle connections as the open-file limit allows are held open through each proxy: a
proxied connection costs the proxy two descriptors (client side and backend side), so with the
hard limit of `nofile` descriptors, N = (nofile - 200) / 2 (9,900 with 20,000). Four
contenders, each a fresh process:

* HAProxy `mode tcp` and connwise's `tcp` listener: plain TCP connections, nothing sent;
* HAProxy `mode http` and connwise's `http` listener with a `upgrade = "websocket"` route:
  each connection sends a WebSocket upgrade, gets `101 Switching Protocols` from the backend
  through the proxy, and then stays idle.

The backend (this file, `--role backend`) is a Python asyncio sink in its own process: it
answers WebSocket upgrades, echoes WebSocket frames (unmasked, as a server does) and plain
bytes. The clients (this file, `--role client`) run in their own process, so that neither
shares the proxy's memory. For each contender: start the proxy, open and close 100 connections
(one-time allocations: pools, imports, lazy tables), read the proxy's VmRSS (/proc/PID/status),
open N connections, wait until the proxy holds 2 descriptors per connection, let it settle,
read VmRSS again. Figure: (RSS after - RSS before) / N, in KiB per connection. After that, 20
connections per contender send one message each and must get it back (the connections were
really relayed), and the clients close everything (the RSS after closing is also reported).

Target: connwise <= 1.0 x HAProxy's KiB per connection, for tcp and for WebSocket (and every
connection opened, relayed - the proxy holds two descriptors for each - and 20/20 echoes).

    .venv/bin/python benchmarks/gateway_memory.py [--quick] [--connections N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_harness import (
    Proc,
    Processes,
    free_port,
    haproxy_global,
    open_fds,
    raise_nofile,
    ratio,
    require_tools,
    tool_versions,
    wait_port,
)
from benchmarks.harness import clean, emit, environment, finish, table

NAME = "gateway_memory"
TARGET = 1.0
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + WS_KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


# -- the backend: WebSocket handshake + echo, or plain echo ------------------------------------


class BackendConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.mode = ""          # "", "ws" or "tcp"
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.mode == "tcp":
            self.transport.write(data)
            return
        if self.mode == "ws":
            self.transport.write(_echo_frame(data))
            return
        self.head += data
        if not self.head.startswith(b"GET "[:len(self.head)]):
            self.mode = "tcp"
            self.transport.write(self.head)
            self.head = b""
            return
        if b"\r\n\r\n" not in self.head:
            return
        key = b""
        for line in self.head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                             b"\r\n\r\n")
        self.mode = "ws"
        self.head = b""


def _echo_frame(data: bytes) -> bytes:
    """Answer one small masked client frame with the same payload, unmasked."""
    if len(data) < 6:
        return b""
    length = data[1] & 0x7F
    mask = data[2:6]
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data[6:6 + length]))
    return bytes([data[0], len(payload)]) + payload


def _client_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return (bytes([0x81, 0x80 | len(payload)]) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


async def run_backend(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BackendConnection, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"backend ready on {port}", flush=True)
    await stop.wait()
    server.close()


# -- the clients ----------------------------------------------------------------------------------


async def open_one(port: int, ws: bool,
                   held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if ws:
            writer.write(UPGRADE)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if not head.startswith(b"HTTP/1.1 101"):
                writer.close()
                return False
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        return False
    held.append((reader, writer))
    return True


async def run_clients(port: int, count: int, ws: bool, concurrency: int, verify: int) -> None:
    """Open `count` connections, print `opened OK FAILED`, wait for a line on stdin, verify
    `verify` of them with one echo each, print `verified N`, wait for SIGTERM."""
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failed = 0
    for start in range(0, count, concurrency):
        results = await asyncio.gather(*[open_one(port, ws, held)
                                         for _ in range(min(concurrency, count - start))])
        failed += results.count(False)
    print(f"opened {len(held)} {failed}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    ok = 0
    for reader, writer in random.Random(1).sample(held, min(verify, len(held))):
        payload = b"ping"
        writer.write(_client_frame(payload) if ws else payload)
        try:
            answer = await asyncio.wait_for(reader.read(64), 5)
        except (OSError, TimeoutError):
            continue
        ok += answer == (bytes([0x81, len(payload)]) + payload if ws else payload)
    print(f"verified {ok}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


# -- the benchmark --------------------------------------------------------------------------------


def connwise_toml(backend_port: int, kind: str, connections: int) -> str:
    # A tcp connection holds a group slot for its lifetime, and the listener's class
    # (interactive) may take only 80% of max_in_flight (20% is reserved for critical): size
    # the group at twice the connections so that admission never queues one.
    common = f"""\
[groups.backend]
backends = ["127.0.0.1:{backend_port}"]
max_in_flight = {2 * connections + 1000}
max_waiters = 4096
connect_timeout = 10.0

[groups.backend.health]
kind = "none"

[limits]
max_connections = {connections + 1000}
max_connections_per_ip = {connections + 1000}
"""
    top = 'node_id = "bench"\ndrain_timeout = 1\n\n'
    if kind == "tcp":
        return top + f"""\
[[listeners]]
name = "tcp"
kind = "tcp"
bind = "127.0.0.1:0"
group = "backend"

{common}"""
    return top + f"""\
[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"

[[routes]]
listener = "web"
group = "backend"
path_prefix = "/ws"
upgrade = "websocket"

{common}"""


def haproxy_cfg(backend_port: int, port: int, kind: str) -> str:
    mode = "tcp" if kind == "tcp" else "http"
    return haproxy_global(20000) + f"""\
frontend ft
    mode {mode}
    bind 127.0.0.1:{port} backlog 4096
    default_backend bk

backend bk
    mode {mode}
    server backend 127.0.0.1:{backend_port}
"""


def wait_fds(proc: Proc, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = open_fds(proc.pid)
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.2)


def settle_rss(proc: Proc, seconds: float = 2.0) -> int:
    """VmRSS once it has not moved by more than 64 KiB for `seconds` (at most 10 s)."""
    last = proc.rss()
    stable_since = time.monotonic()
    deadline = stable_since + 10.0
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = proc.rss()
        if abs(now - last) > 64:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= seconds:
            break
    return proc.rss()


def clients(ps: Processes, name: str, port: int, count: int, ws: bool) -> Proc:
    import subprocess

    proc = ps.start(name, [sys.executable, __file__, "--role", "client", "--port", str(port),
                           "--connections", str(count), "--ws", "1" if ws else "0"],
                    stdin=subprocess.PIPE)
    return proc


def measure(ps: Processes, name: str, kind: str, backend_port: int, connections: int,
            warmup: int) -> dict[str, Any]:
    if name.startswith("haproxy"):
        port = free_port()
        proxy = ps.haproxy(haproxy_cfg(backend_port, port, kind), [port],
                           name.replace(" ", "-"))
    else:
        proxy, ports = ps.connwise(connwise_toml(backend_port, kind, connections),
                                   name.replace(" ", "-"))
        port = next(iter(ports.values()))
    ws = kind == "ws"
    fds_idle = open_fds(proxy.pid)
    warm = clients(ps, f"{name}-warmup".replace(" ", "-"), port, warmup, ws)
    warm.wait_output(r"opened \d+ \d+", timeout=60)
    ps.stop(warm)
    deadline = time.monotonic() + 15.0
    while open_fds(proxy.pid) > fds_idle + 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    before = settle_rss(proxy)
    started = time.monotonic()
    load = clients(ps, name.replace(" ", "-"), port, connections, ws)
    match = load.wait_output(r"opened (\d+) (\d+)", timeout=300)
    opened, failed = int(match.group(1)), int(match.group(2))
    open_s = time.monotonic() - started
    fds = wait_fds(proxy, fds_idle + 2 * opened, 30)
    after = settle_rss(proxy)
    relayed = (open_fds(proxy.pid) - fds_idle) // 2
    assert load.popen.stdin is not None
    load.popen.stdin.write(b"go\n")
    load.popen.stdin.flush()
    verified = int(load.wait_output(r"verified (\d+)", timeout=120).group(1))
    proxy.check_alive()
    ps.stop(load)
    time.sleep(2.0)
    closed = proxy.rss()
    ps.stop(proxy)
    growth = after - before
    return {
        "contender": name, "kind": kind, "connections_requested": connections,
        "connections_open": opened, "connections_failed": failed,
        "seconds_to_open": round(open_s, 2), "proxy_fds_idle": fds_idle,
        "proxy_fds_loaded": fds, "relayed_connections": relayed, "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_close_kib": closed, "rss_growth_kib": growth,
        "kib_per_connection": round(growth / opened, 3) if opened else None,
        "verified_echoes": verified,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["bench", "backend", "client"], default="bench",
                   help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="2,000 connections: a smoke test")
    p.add_argument("--connections", type=int, default=0,
                   help="connections per contender (default: as many as nofile allows)")
    p.add_argument("--only", default="", help="comma-separated contenders to run (default all)")
    p.add_argument("--no-write", action="store_true", help="do not write results/NAME.json")
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--ws", default="0", help=argparse.SUPPRESS)
    args = p.parse_args()
    nofile = raise_nofile()
    import uvloop

    if args.role == "backend":
        # asyncio's own loop, not uvloop: libuv accepts one connection per loop iteration,
        # and a burst of 9,900 connects from a proxy would overflow the accept queue.
        asyncio.run(run_backend(args.port))
        return
    if args.role == "client":
        uvloop.run(run_clients(args.port, args.connections, args.ws == "1", 250, 20))
        return

    require_tools("haproxy")
    connections = args.connections or (2000 if args.quick else (nofile - 200) // 2)
    if 2 * connections + 100 > nofile:
        sys.exit(f"error: {connections} connections need {2 * connections + 100} descriptors "
                 f"in the proxy; the open-file limit is {nofile}")
    env = environment()
    env["tools"] = tool_versions()
    env["nofile"] = nofile
    env["nofile_hard"] = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    results: dict[str, dict[str, Any]] = {}
    with Processes() as ps:
        backend_port = free_port()
        backend = ps.python("backend", Path(__file__), "--role", "backend", "--port",
                            backend_port)
        wait_port(backend_port, proc=backend)
        only = {n.strip() for n in args.only.split(",") if n.strip()}
        for name, kind in (("haproxy tcp", "tcp"), ("connwise tcp", "tcp"),
                           ("haproxy ws", "ws"), ("connwise ws", "ws")):
            if only and name not in only:
                continue
            print(f"  {name}: {connections} connections ...", file=sys.stderr, flush=True)
            results[name] = measure(ps, name, kind, backend_port, connections, warmup=100)
            print(f"    {results[name]['kib_per_connection']} KiB per connection",
                  file=sys.stderr, flush=True)
        backend.check_alive()

    checks = []
    for kind in ("tcp", "ws"):
        if f"connwise {kind}" not in results or f"haproxy {kind}" not in results:
            continue
        cw, hap = results[f"connwise {kind}"], results[f"haproxy {kind}"]
        r = ratio(cw["kib_per_connection"], hap["kib_per_connection"])
        complete = all(r["connections_failed"] == 0 and r["verified_echoes"] == 20
                       and r["relayed_connections"] >= r["connections_open"] for r in (cw, hap))
        checks.append((f"{kind}: KiB per connection vs HAProxy", r, f"<= {TARGET}",
                       r is not None and r <= TARGET and complete))
    table(f"{NAME}: idle connections held through each proxy",
          ["contender", "open", "failed", "open s", "relayed", "RSS before KiB",
           "RSS after KiB", "KiB/conn", "RSS closed KiB", "echo ok"],
          [[r["contender"], r["connections_open"], r["connections_failed"],
            r["seconds_to_open"], r["relayed_connections"], r["rss_before_kib"],
            r["rss_after_kib"], r["kib_per_connection"], r["rss_after_close_kib"],
            f"{r['verified_echoes']}/20"] for r in results.values()])
    table("targets", ["check", "figure", "target", "met"], [list(c) for c in checks])
    payload = clean({
        "benchmark": NAME,
        "config": {"connections": connections, "quick": args.quick, "warmup_connections": 100,
                   "haproxy": "nbthread 1, mode tcp / mode http (WebSocket tunnel)",
                   "connwise": "1 worker, tcp listener / http listener with a websocket route",
                   "backend": "Python asyncio: WebSocket handshake and echo, plain echo"},
        "environment": finish(env),
        "results": results,
        "targets": [{"check": n, "figure": f, "target": t, "met": m} for n, f, t, m in checks],
        "all_met": bool(checks) and all(c[3] for c in checks),
    })
    emit(NAME, payload, write=not args.no_write)


if __name__ == "__main__":
    main()
