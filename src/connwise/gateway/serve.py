"""Running a gateway as a process: uvloop, signals, workers sharing the listening sockets.

SIGTERM (and SIGINT) drain: stop accepting, let in-flight work finish for `drain_timeout`, close
what remains, exit 0. SIGHUP re-reads the configuration file: a valid one applies to new
connections, a bad one is refused with its error and the old one stays in force. With
`workers > 1` the parent forks that many processes, each with its own event loop, binding the
same addresses with SO_REUSEPORT so the kernel spreads connections; the admin API runs in the
first worker only (its counters are that worker's). The parent forwards signals and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
from pathlib import Path

try:
    import uvloop
except ImportError:  # uvloop is optional: plain asyncio where it does not build
    uvloop = None  # type: ignore[assignment]

from connwise.config import GatewayConfig, load_gateway_config
from connwise.errors import ConfigError
from connwise.gateway.admin import AdminServer
from connwise.gateway.runtime import Gateway

log = logging.getLogger("connwise.gateway")

#: prctl(2) option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


async def serve(config: GatewayConfig, path: Path | None, *, admin: bool = True,
                ready: asyncio.Event | None = None) -> dict[str, int]:
    """Run one gateway until SIGTERM/SIGINT; reload on SIGHUP when `path` is given."""
    gateway = Gateway(config)
    admin_server: AdminServer | None = None
    try:
        await gateway.start()
        if admin and config.admin is not None:
            admin_server = AdminServer(gateway, config.admin.bind, config.admin.token)
            await admin_server.start()
    except ConfigError:
        # An address that cannot be listened on: close what started, and let the caller say
        # why in one line.
        await gateway.drain(0)
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        if path is None:
            return
        try:
            new = load_gateway_config(path)
        except ConfigError as exc:
            gateway.count("reloads_refused")
            log.error("reload refused, the running configuration stays in force: %s", exc)
            return
        gateway.spawn(_apply(gateway, new))

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    addresses = ", ".join(f"{name}={host}:{port}" for name, lst in gateway.listeners.items()
                          for host, port in [lst.address])
    log.info("gateway %s serving %s", config.node_id, addresses)
    # What start-up made (modules, configuration, pools, listeners) lives as long as the
    # process: frozen out of the collector's sight, collections walk only what serving
    # allocates, not the whole heap again and again. And each request leaves ~16 objects of
    # cyclic garbage, so young collections are frequent: at 700 allocations (the default) they
    # find the objects of the requests in flight still alive and promote them to be walked
    # again; at 5000 most are gone by then. Measured with `Connection: close` load: garbage
    # collection fell from ~14 to ~6 us of CPU per request (~110 us in all); pauses ~1.5-2 ms.
    gc.freeze()
    gc.set_threshold(5000, *gc.get_threshold()[1:])
    _say(f"connwise gateway {config.node_id} ready: {addresses}")
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("draining for up to %.1f s", config.drain_timeout)
    result = await gateway.drain()
    if admin_server is not None:
        await admin_server.close()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    _say(f"connwise gateway {config.node_id} drained: {result['finished']} finished, "
         f"{result['forced']} closed at the timeout")
    return result


async def _apply(gateway: Gateway, config: GatewayConfig) -> None:
    try:
        await gateway.reload(config)
    except ConfigError as exc:
        gateway.count("reloads_refused")
        log.error("reload refused, the running configuration stays in force: %s", exc)
    else:
        log.info("configuration reloaded")


def run(config: GatewayConfig, path: Path | None, workers: int = 1) -> int:
    """Serve in this process (workers == 1) or in `workers` forked processes; the exit code.
    An address that cannot be listened on raises ConfigError (one process) or makes the
    worker print it and exit 2 (forked)."""
    if workers == 1:
        _run_loop(config, path, admin=True)
        return 0
    children: list[int] = []
    master = os.getpid()
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _die_with(master)
                _run_loop(config, path, admin=index == 0)
            except ConfigError as exc:
                sys.stderr.write(f"error: worker {index}: {exc}\n")
                code = 2
            finally:
                sys.stderr.flush()
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = status or os.waitstatus_to_exitcode(code)
    return status


def _say(line: str) -> None:
    """One line to stdout in one write: `print` writes the text and its newline separately
    when stdout is unbuffered (PYTHONUNBUFFERED), and workers sharing the pipe then interleave
    into one line with two texts and an empty one."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _die_with(master: int) -> None:
    """A worker drains (SIGTERM) when its master dies, even by SIGKILL, instead of serving on
    as an orphan that holds the port (Linux's PR_SET_PDEATHSIG; elsewhere only the check)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != master:  # the master died before the call above
        os._exit(0)


def _run_loop(config: GatewayConfig, path: Path | None, *, admin: bool) -> None:
    if uvloop is None:
        asyncio.run(serve(config, path, admin=admin))
    else:
        uvloop.run(serve(config, path, admin=admin))
    sys.stdout.flush()
