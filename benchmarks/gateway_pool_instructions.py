"""Instructions per acquire + release of an upstream keep-alive connection through the gateway's
shell (valgrind's callgrind): `pool.try_getconn("any")` then `pool.try_putconn(conn,
error=None)`, as the `http` listener does per keep-alive request, on the pool `Group.open` builds.

Why: `gateway_instructions` counts a whole proxied request (~140k instructions); the upstream
pool's share of it is too small there to judge a change of ~1k, and a run of that takes a minute.
Here a child process opens a group with one backend (a loopback server that accepts and stays
silent), takes one connection, and switches callgrind's instrumentation on (`callgrind_control
-i on`) around `--loops` acquire + release pairs and, separately, around an empty loop of the
same length; the figure is the difference per pair. Deterministic within a few instructions.
No target: it judges changes to the pool's hot path.

    .venv/bin/python benchmarks/gateway_pool_instructions.py [--loops N] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.gateway_harness import require_tools
from benchmarks.gateway_instructions import callgrind_total
from benchmarks.harness import emit, environment, table

NAME = "gateway_pool_instructions"


def instrument(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   check=True, capture_output=True)


async def child(loops: int, mode: str) -> None:
    """Under callgrind: instrument `loops` pairs (`mode` "pairs") or an empty loop ("empty")."""
    from connwise.config import GroupConfig
    from connwise.core.classes import DEFAULT_CLASSES, ClassTable
    from connwise.core.clock import MonotonicClock
    from connwise.gateway.upstreams import Group

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = GroupConfig(backends=[f"127.0.0.1:{port}"], warm_target=1)
    clock = MonotonicClock()
    group = Group("bench", config, ClassTable(DEFAULT_CLASSES), clock.now)
    await group.open()
    pool = group.backends[0].pool
    assert pool is not None
    for _ in range(200):
        if pool.policy.idle:
            break
        await asyncio.sleep(0.01)
    # The gateway's connection is never None here (one idle connection, nobody else).
    try_getconn: Callable[[str], Any] = pool.try_getconn
    try_putconn = pool.try_putconn
    for _ in range(1000):  # warm: caches, specialisation of the interpreter
        conn = try_getconn("any")
        try_putconn(conn, error=None)
    assert conn is not None
    if mode == "pairs":
        instrument(True)
        for _ in range(loops):
            conn = try_getconn("any")
            try_putconn(conn, error=None)
        instrument(False)
    else:
        instrument(True)
        for _ in range(loops):
            pass
        instrument(False)
    await group.close()
    server.close()


def measure(loops: int, mode: str, out: Path) -> int:
    """Total instructions counted by callgrind for `mode`."""
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", sys.executable, __file__, "--child", mode,
                    "--loops", str(loops)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    return callgrind_total(out, mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=20_000, help="measured pairs per run")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", choices=("pairs", "empty"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        asyncio.run(child(options.loops, options.child))
        return
    require_tools("valgrind")
    with tempfile.TemporaryDirectory() as tmp:
        pairs = measure(options.loops, "pairs", Path(tmp) / "cg-pairs.out")
        empty = measure(options.loops, "empty", Path(tmp) / "cg-empty.out")
    per_pair = round((pairs - empty) / options.loops)
    table(f"{NAME}: instructions per try_getconn + try_putconn (callgrind), "
          f"{options.loops} pairs", ["pairs total", "empty loop total", "per pair"],
          [[pairs, empty, per_pair]])
    payload: dict[str, Any] = {"benchmark": NAME, "loops": options.loops,
                               "environment": environment(),
                               "results": {"per_acquire_release": per_pair}}
    emit(NAME, payload, write=not options.no_write)


if __name__ == "__main__":
    main()
