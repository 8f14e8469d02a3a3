"""Shared harness of the gateway benchmarks: processes, configs, CPU and memory readings, wrk.

Every program under test runs as its own process, started here in its own session (process
group), so that its CPU time (`/proc/PID/stat`, utime + stime) and its memory (`VmRSS` in
`/proc/PID/status`) are its own, and so that `Processes.stop_all()` leaves nothing behind: each
group gets SIGTERM, then SIGKILL after a grace period. The programs:

* nginx (the origin of `gateway_throughput`), `master_process off`: one process, one worker;
* HAProxy, foreground (`-db`), `nbthread 1`: the anchor;
* the connwise gateway, `.venv/bin/connwise gateway -c FILE` (one worker: the process itself);
* the benchmarks' own Python helpers (origins, backends, load generators).

Load goes to 127.0.0.1 only. The open-file limit is raised to its hard limit for this process
and, by inheritance, for every child (`raise_nofile`).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
CONNWISE = VENV_BIN / "connwise"
PYTHON = VENV_BIN / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# -- limits, ports, /proc -------------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise the soft open-file limit to the hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: Proc | None = None) -> None:
    """Wait until something accepts on 127.0.0.1:port (and `proc`, if given, still runs)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None:
            proc.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after "
                                   f"{timeout} s") from None
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    # After "pid (comm) ": state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tool_versions() -> dict[str, str]:
    """Versions of haproxy, nginx and wrk, as they print them."""
    out: dict[str, str] = {}
    for name, args in (("haproxy", ["haproxy", "-v"]), ("nginx", ["nginx", "-v"]),
                       ("wrk", ["wrk", "-v"])):
        if shutil.which(name) is None:
            out[name] = "missing"
            continue
        run = subprocess.run(args, capture_output=True, text=True, check=False)
        text = (run.stdout + run.stderr).strip().splitlines()
        out[name] = text[0] if text else "?"
    return out


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not found; install with "
                 f"`apt-get install -y {' '.join(missing)}`")


# -- processes ------------------------------------------------------------------------------------


@dataclass
class Proc:
    """One started program in its own process group; stdout and stderr go to files."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        out = []
        for path in (self.stdout, self.stderr):
            with contextlib.suppress(OSError):
                out.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(out)

    def wait_output(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until stdout matches `pattern` (a regex); return the match."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.stdout.read_text(errors="replace"))
            if match:
                return match
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {pattern!r} after {timeout} s:\n"
                                   f"{self.tail()}")
            time.sleep(0.05)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_kib(self.pid)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to the process group, SIGKILL after `grace` s; return the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # Whatever is left in the group (the leader exited, or ignored SIGTERM): kill it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        return self.popen.returncode


class Processes:
    """Starts programs in a scratch directory and stops all of them, whatever happens.

    Use as a context manager; SIGTERM and SIGHUP to the benchmark become SystemExit so the
    `finally` blocks (and this manager's exit) run.
    """

    def __init__(self, keep: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="connwise-bench-"))
        self.procs: list[Proc] = []
        self.keep = keep

    def __enter__(self) -> Processes:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, name: str) -> Path:
        return self.dir / name

    def start(self, name: str, args: Sequence[str | Path], *, stdin: int | None = None,
              env: dict[str, str] | None = None) -> Proc:
        out, err = self.dir / f"{name}.out", self.dir / f"{name}.err"
        with open(out, "wb") as fout, open(err, "wb") as ferr:
            popen = subprocess.Popen([str(a) for a in args], stdout=fout, stderr=ferr,
                                     stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                     start_new_session=True, cwd=ROOT,
                                     env={**os.environ, **(env or {})})
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> int | None:
        code = proc.stop()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return code

    def stop_all(self) -> None:
        while self.procs:
            self.stop(self.procs[-1])

    # -- the programs -------------------------------------------------------------------------

    def nginx(self, port: int, body: str = "ok\n") -> Proc:
        """nginx as a keep-alive origin answering every request with `body` (one process)."""
        prefix = self.dir / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port,
                                          body=body.replace("\n", "\\n")))
        proc = self.start("nginx", ["nginx", "-p", prefix, "-c", conf, "-e", "stderr"])
        wait_port(port, proc=proc)
        return proc

    def haproxy(self, config: str, ports: Sequence[int], name: str = "haproxy") -> Proc:
        path = self.dir / f"{name}.cfg"
        path.write_text(config)
        check = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True,
                               text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its config:\n{check.stdout}{check.stderr}")
        proc = self.start(name, ["haproxy", "-db", "-f", path])
        for port in ports:
            wait_port(port, proc=proc)
        return proc

    def connwise(self, toml: str, name: str = "connwise") -> tuple[Proc, dict[str, int]]:
        """`connwise gateway -c FILE`; returns the process and each listener's port."""
        path = self.dir / f"{name}.toml"
        path.write_text(toml)
        proc = self.start(name, [CONNWISE, "gateway", "-c", path])
        match = proc.wait_output(r"ready: (.*)\n", timeout=30)
        ports = {}
        for item in match.group(1).split(", "):
            listener, _, address = item.partition("=")
            ports[listener] = int(address.rpartition(":")[2])
        return proc, ports

    def python(self, name: str, script: Path, *args: str | int | float | Path) -> Proc:
        return self.start(name, [PYTHON, script, *[str(a) for a in args]])


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log stderr error;
events {{ worker_connections 19000; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""


def haproxy_maxconn() -> int:
    """The largest `maxconn` HAProxy accepts under our open-file limit: it needs two sockets
    per proxied connection plus a few (it refuses to start otherwise)."""
    return (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 60) // 2


def haproxy_global(maxconn: int) -> str:
    """The global and defaults sections shared by the benchmarks' HAProxy configs."""
    maxconn = min(maxconn, haproxy_maxconn())
    return f"""\
global
    nbthread 1
    maxconn {maxconn}
    tune.bufsize 16384

defaults
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout tunnel 1h
    timeout queue 2s
    maxconn {maxconn}

"""


# -- wrk ------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unknown wrk duration {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2)], 3)


def parse_wrk(text: str) -> WrkResult:
    def grab(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text)
        if match is None:
            raise RuntimeError(f"wrk output without {pattern!r}:\n{text}")
        return match

    done = grab(r"(\d+) requests in ([\d.]+)(us|ms|s|m)")
    dist = {p: _ms(grab(rf"\s{p}%\s+(\S+)").group(1)) for p in ("50", "90", "99")}
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if match:
        errors = dict(zip(errors, map(int, match.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(done.group(1)), seconds=_ms(done.group(2) + done.group(3)) / 1000.0,
        req_per_s=float(grab(r"Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=dist["50"], p90_ms=dist["90"], p99_ms=dist["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0, socket_errors=errors)


def run_wrk(url: str, connections: int, seconds: float, threads: int = 1,
            timeout: float = 10.0) -> tuple[WrkResult, str]:
    """Run wrk (keep-alive, --latency) for `seconds`; return the parsed figures and the text."""
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
            f"--timeout={timeout:g}s", "--latency", url]
    run = subprocess.run(args, capture_output=True, text=True, check=False,
                         timeout=seconds + 60, start_new_session=True)
    if run.returncode != 0:
        raise RuntimeError(f"wrk failed ({run.returncode}):\n{run.stdout}{run.stderr}")
    return parse_wrk(run.stdout), run.stdout


# -- misc ---------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


@contextlib.contextmanager
def measuring(*procs: Proc) -> Iterator[dict[str, Any]]:
    """CPU seconds each of `procs` used inside the block, and the wall time: `out[name]`."""
    before = {p.name: p.cpu() for p in procs}
    started = time.monotonic()
    out: dict[str, Any] = {}
    yield out
    out["wall_s"] = round(time.monotonic() - started, 3)
    for p in procs:
        out[p.name] = round(p.cpu() - before[p.name], 3)
