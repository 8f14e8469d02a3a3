"""Running a gateway as a process: uvloop, signals, workers sharing the listening sockets.

SIGTERM (and SIGINT) drain: stop accepting, let in-flight work finish for `drain_timeout`, close
what remains, exit 0. A second SIGTERM or SIGINT during the drain ends it at once, as uvicorn's
second Ctrl-C does: what is left is closed as at the timeout, the groups are closed and the
records flushed as after any drain, and the exit code is 128 + that signal's number (130 for
SIGINT, 143 for SIGTERM), as a shell reports a process the signal stopped. SIGUSR1 ends a
drain at once the same way (or, before one, drains with no wait). SIGHUP re-reads the
configuration file: a valid one applies to new connections, a bad one is refused with its error
and the old one stays in force. With `workers > 1` the parent forks that many processes, each
with its own event loop, binding the same addresses with SO_REUSEPORT so the kernel spreads
connections; the admin API runs in the first worker only (its `/stats` and `/connections` are
that worker's; its `/metrics` covers every worker, each labelled, see `worker_metrics`). The
parent forwards signals and supervises: a worker killed by a signal is replaced; one that exits
with an error of its own (an address in use, a store that cannot be opened) stops the others,
since a replacement would fail the same way, and the parent exits with its code once all have.

In a worker, a second SIGTERM or SIGINT does not end the drain: a worker gets one of its own
as well as the parent's whenever the signal goes to the whole process group (Ctrl-C in a
terminal) or control group (systemd's default `KillMode`), so two of them are one request. The
parent counts the signals and sends SIGUSR1 on the second.

The signals are blocked from `run` until a handler is in place (the parent's after the forks,
a worker's event loop's after its start-up), and again once a worker has drained: a signal
that arrives while a process starts is delivered then, never fatal (SIGHUP's default action
kills), and one forwarded after the drain does not turn a clean exit into a death by signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

try:
    import uvloop
except ImportError:  # uvloop is optional: plain asyncio where it does not build
    uvloop = None  # type: ignore[assignment]

from connwise.config import GatewayConfig, load_gateway_config, parse_address
from connwise.errors import ConfigError, ConnwiseError
from connwise.gateway.accept import bind_failed, check_unshared
from connwise.gateway.admin import AdminServer, metrics_registry
from connwise.gateway.runtime import Gateway
from connwise.gateway.worker_metrics import MetricsSocket, WorkerSet

log = logging.getLogger("connwise.gateway")

#: prctl(2) option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1
#: What the gateway's processes handle: drain (SIGTERM, SIGINT), end the drain at once
#: (SIGUSR1; a second SIGTERM or SIGINT in one process) and reload (SIGHUP).
_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP})
#: The signal that ends a drain at once, whatever the count: the parent's to its workers.
_CUT = signal.SIGUSR1


async def serve(config: GatewayConfig, path: Path | None, *, admin: bool = True,
                ready: asyncio.Event | None = None, worker: bool = False,
                peers: WorkerSet | None = None) -> int:
    """Run one gateway until SIGTERM/SIGINT; reload on SIGHUP when `path` is given. A signal
    that came while the gateway started (blocked by `run`) takes effect once it is ready.
    `peers`: this process is one of `--workers N` with an admin API, whose `/metrics` (in
    worker 0) reads the others' (`worker_metrics`).

    Returns the exit code: 0 after a drain, 128 + N when signal N ended it at once (see the
    module docstring; in a `worker`, only SIGUSR1 does)."""
    gateway = Gateway(config)
    admin_server: AdminServer | None = None
    metrics_socket: MetricsSocket | None = None
    try:
        await gateway.start()
        if admin and config.admin is not None:
            admin_server = AdminServer(gateway, config.admin.bind, config.admin.token,
                                       workers=peers)
            await admin_server.start()
        elif peers is not None:
            metrics_socket = MetricsSocket(metrics_registry(gateway), peers)
            await metrics_socket.start()
    except BaseException:
        # An address that cannot be listened on, a store that cannot be opened: close what
        # started, and let the caller say why in one line.
        await gateway.drain(0)
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    #: The signal that ended the drain at once, if one did.
    cut_by: list[signal.Signals] = []

    def cut(signum: signal.Signals) -> None:
        if not cut_by:
            cut_by.append(signum)
            log.warning("%s: ending the drain now", signum.name)
        stop.set()
        gateway.cut_drain()

    def drain_signal(signum: signal.Signals) -> None:
        if stop.is_set() and not worker:
            cut(signum)
        stop.set()

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

    loop.add_signal_handler(signal.SIGTERM, drain_signal, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, drain_signal, signal.SIGINT)
    loop.add_signal_handler(_CUT, cut, _CUT)
    loop.add_signal_handler(signal.SIGHUP, reload)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
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
    if metrics_socket is not None:
        await metrics_socket.close()
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    for sig in _SIGNALS:
        loop.remove_signal_handler(sig)
    when = f"at once ({cut_by[0].name})" if cut_by else "at the timeout"
    _say(f"connwise gateway {config.node_id} drained: {result['finished']} finished, "
         f"{result['forced']} closed {when}")
    return 128 + cut_by[0] if cut_by else 0


async def _apply(gateway: Gateway, config: GatewayConfig) -> None:
    try:
        await gateway.reload(config)
    except ConfigError as exc:
        gateway.count("reloads_refused")
        log.error("reload refused, the running configuration stays in force: %s", exc)
    else:
        log.info("configuration reloaded")


def run(config: GatewayConfig, path: Path | None, workers: int = 1) -> int:
    """Serve in this process (workers == 1) or in `workers` forked processes until a drain;
    the exit code. A gateway that cannot start says why on stderr: one line for a
    `ConnwiseError` (exit 2 for a `ConfigError`, 1 otherwise), a traceback for anything else."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # until a handler takes them
    try:
        check_listeners_unshared(config)
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if workers == 1:
        return _serve_process(config, path, admin=True, worker=False)
    return _Master(config, path, workers).run()


def check_workers(config: GatewayConfig, workers: int) -> None:
    """Refuse what `workers` processes cannot share: a listener on port 0 would get an
    ephemeral port in each worker, N gateways on N ports rather than N workers on one."""
    if workers == 1:
        return
    for i, listener in enumerate(config.listeners):
        key = f"listeners[{i}].bind"
        if parse_address(listener.bind, key)[1] == 0:
            raise ConfigError(key, listener.bind, f"with --workers {workers} each worker would "
                              "listen on a port of its own", "give the listener a fixed port, "
                              "or run one worker")


def check_listeners_unshared(config: GatewayConfig) -> None:
    """Refuse a listener address another socket listens on (`accept.check_unshared`: with
    SO_REUSEPORT, another gateway's), naming the listener, before any worker binds."""
    for i, listener in enumerate(config.listeners):
        key = f"listeners[{i}].bind"
        host, port = parse_address(listener.bind, key)
        try:
            check_unshared(host, port)
        except OSError as exc:
            raise bind_failed(key, listener.bind, f"listener {listener.name!r}", exc) from None


class _Master:
    """The parent of `--workers` processes; see the module docstring."""

    def __init__(self, config: GatewayConfig, path: Path | None, workers: int) -> None:
        self.config = config
        self.path = path
        self.workers = workers
        self.pid = os.getpid()
        #: Live workers: pid -> index (worker 0 runs the admin API).
        self.running: dict[int, int] = {}
        self.stopping = False
        self.code = 0
        #: With an admin API: the private directory of the workers' metrics sockets.
        self.directory: Path | None = None

    def run(self) -> int:
        if self.config.admin is not None:
            self.directory = Path(tempfile.mkdtemp(prefix="connwise-workers-"))
        try:
            for index in range(self.workers):
                self._fork(index)
            for sig in _SIGNALS:
                signal.signal(sig, self._forward)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            while self.running:
                pid, status = os.wait()
                if pid in self.running:
                    self._exited(self.running.pop(pid), pid, os.waitstatus_to_exitcode(status))
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
        return self.code

    def _fork(self, index: int) -> None:
        """Start worker `index`. The worker begins with the signals blocked (see the module
        docstring), and without the master's handlers, whose list of workers is not its own."""
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with(self.pid)
                for sig in _SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                peers = None if self.directory is None else \
                    WorkerSet(index, self.workers, self.directory)
                code = _serve_process(self.config, self.path, admin=index == 0,
                                      worker=True, who=f"worker {index}: ", peers=peers)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.running[pid] = index
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _forward(self, signum: int, _frame: object) -> None:
        """SIGHUP and a first SIGTERM or SIGINT go to the workers as they came; SIGUSR1, and a
        SIGTERM or SIGINT while they drain, as SIGUSR1, which ends their drain at once (see
        the module docstring): the master then exits 128 + the number of the signal it got."""
        if signum != signal.SIGHUP:
            if self.stopping or signum == _CUT:
                self.code = self.code or 128 + signum
                signum = _CUT
            self.stopping = True
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _exited(self, index: int, pid: int, code: int) -> None:
        """A worker is gone: expected while stopping; replaced if killed (or drained alone)
        while serving; else its error (which it printed) stops the others."""
        if self.stopping:
            self.code = self.code or exit_code(code)
            return
        if code <= 0:
            how = f"was killed by {_signal_name(-code)}" if code else "drained"
            sys.stderr.write(f"connwise gateway: worker {index} (pid {pid}) {how}; starting "
                             "another\n")
            sys.stderr.flush()
            self._fork(index)
            return
        self.code = code
        self.stopping = True
        self._signal_all(signal.SIGTERM)


def exit_code(code: int) -> int:
    """A worker's `waitstatus_to_exitcode` as a process exit code: a death by signal N is
    128 + N, as a shell reports it (a negative code would become 256 - N)."""
    return 128 - code if code < 0 else code


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name of its own
        return f"signal {signum}"


def _serve_process(config: GatewayConfig, path: Path | None, *, admin: bool, worker: bool,
                   who: str = "", peers: WorkerSet | None = None) -> int:
    """Serve in this process until a drain; its exit code (see `serve`), or the code of an
    error printed on stderr."""
    try:
        return _run_loop(config, path, admin=admin, worker=worker, peers=peers)
    except ConnwiseError as exc:
        sys.stderr.write(f"error: {who}{exc}\n")
        return 2 if isinstance(exc, ConfigError) else 1
    except Exception:
        if not who:
            raise  # one process: the command line reports it
        traceback.print_exc()
        return 1


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


def _run_loop(config: GatewayConfig, path: Path | None, *, admin: bool, worker: bool,
              peers: WorkerSet | None) -> int:
    main = serve(config, path, admin=admin, worker=worker, peers=peers)
    code = asyncio.run(main) if uvloop is None else uvloop.run(main)
    sys.stdout.flush()
    return code
