"""Instructions per proxied HTTP request (valgrind's callgrind): connwise's `http` listener against
HAProxy `mode http`, keep-alive and `Connection: close`, connwise with and without telemetry.

Why instructions: on this machine's two shared cores a throughput or CPU-time ratio moves by
5-10% from run to run (the control gateway in `telemetry_overhead` shows it), more than most
per-request changes cost or save. Callgrind counts the user-space instructions a process
executes, whatever else the machine does: the same build and workload give the same count within
about 1%. Kernel work (the sends and receives) is not counted, so this is the figure for the
proxy's own code, not a throughput.

Each proxy runs under `valgrind --tool=callgrind --instr-atstart=no` in front of an nginx
origin (tiny body); instrumentation is switched on (`callgrind_control -i on`) only around the
measured requests, after a warm-up, so start-up is not counted. The client (this file, plain
sockets) sends `--requests` GETs, keep-alive over 4 connections or each on its own connection.
Figure: instructions per request; the ratio connwise / HAProxy, and what telemetry adds.
No target: the issue's targets are throughput ratios; this explains them and judges changes.

    .venv/bin/python benchmarks/gateway_instructions.py [--requests N] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_harness import (
    CONNWISE,
    Processes,
    free_port,
    haproxy_global,
    require_tools,
    tool_versions,
    wait_port,
)
from benchmarks.harness import emit, environment, table
from benchmarks.telemetry_overhead import GATEWAY_TOML as OVERHEAD_TOML

NAME = "gateway_instructions"
CONNECTIONS = 4

#: telemetry_overhead's gateway, on a port chosen beforehand (nothing reads its ready line here).
GATEWAY_TOML = OVERHEAD_TOML.replace('bind = "127.0.0.1:0"', 'bind = "127.0.0.1:{port}"')


def haproxy_cfg(origin: int, port: int) -> str:
    return haproxy_global(1000) + f"""\
frontend ft
    mode http
    bind 127.0.0.1:{port}
    default_backend bk

backend bk
    mode http
    server origin 127.0.0.1:{origin}
"""


def send(port: int, requests: int, close: bool) -> None:
    """`requests` GETs, keep-alive over CONNECTIONS connections in turn, or one per connection;
    each answer read whole before the next request."""
    head = (b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n"
            + (b"Connection: close\r\n" if close else b"") + b"\r\n")

    def one(sock: socket.socket) -> None:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        answer_head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in answer_head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += sock.recv(65536)

    if close:
        for _ in range(requests):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                one(sock)
        return
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    try:
        for i in range(requests):
            one(socks[i % CONNECTIONS])
    finally:
        for sock in socks:
            sock.close()


def measure(command: list[str], port: int, requests: int, close: bool, out: Path,
            env: dict[str, str] | None = None) -> int:
    """Instructions per request of `command` (a proxy listening on `port`) under callgrind."""
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                             f"--callgrind-out-file={out}", *command], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_port(port, timeout=300)
        send(port, min(200, requests), close)  # warm: pools, caches, lazy imports
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       capture_output=True)
        send(port, requests, close)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       capture_output=True)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return round(callgrind_total(out, command[0]) / requests)


def callgrind_total(out: Path, what: str) -> int:
    """The instructions callgrind counted in the files it wrote at `out` (one per process)."""
    total = 0
    for path in out.parent.glob(out.name + "*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    if not total:
        raise RuntimeError(f"callgrind wrote no totals for {what} ({out})")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per run")
    parser.add_argument("--no-write", action="store_true")
    options = parser.parse_args()
    require_tools("haproxy", "nginx", "valgrind")  # callgrind_control comes with valgrind
    results: dict[str, dict[str, int]] = {}
    with Processes() as procs:
        origin = free_port()
        procs.nginx(origin)
        for workload, close in (("keep_alive", False), ("connection_close", True)):
            figures: dict[str, int] = {}
            port = free_port()
            cfg = procs.path(f"haproxy-{workload}.cfg")
            cfg.write_text(haproxy_cfg(origin, port))
            figures["haproxy"] = measure(["haproxy", "-db", "-f", str(cfg)], port,
                                         options.requests, close,
                                         procs.path(f"cg-haproxy-{workload}.out"))
            for label in ("off", "telemetry"):
                port = free_port()
                store = procs.path(f"telemetry-{workload}.db")
                telemetry = f'[telemetry]\nstore = "{store}"\n' if label == "telemetry" else ""
                toml = procs.path(f"connwise-{label}-{workload}.toml")
                toml.write_text(GATEWAY_TOML.format(port=port, origin=origin,
                                                    telemetry=telemetry))
                figures[f"connwise {label}"] = measure(
                    [str(CONNWISE), "gateway", "-c", str(toml)], port, options.requests, close,
                    procs.path(f"cg-connwise-{label}-{workload}.out"))
            results[workload] = figures
    rows: list[list[Any]] = []
    summary: dict[str, Any] = {}
    for workload, figures in results.items():
        off, on = figures["connwise off"], figures["connwise telemetry"]
        haproxy = figures["haproxy"]
        summary[workload] = {**figures, "connwise_vs_haproxy": round(off / haproxy, 2),
                             "telemetry_extra": round(on / off - 1, 4)}
        rows.append([workload, haproxy, off, on, round(off / haproxy, 2),
                     f"{(on / off - 1) * 100:+.1f}%"])
    table(f"{NAME}: user-space instructions per request (callgrind), {options.requests} requests",
          ["workload", "haproxy", "connwise", "connwise+telemetry", "connwise/haproxy",
           "telemetry"], rows)
    env = environment()
    env["tools"] = tool_versions()
    emit(NAME, {"benchmark": NAME, "requests": options.requests, "connections": CONNECTIONS,
                "environment": env, "results": summary},
         write=not options.no_write)


if __name__ == "__main__":
    main()
