"""`connwise gateway --workers N` as a master supervising its workers: a worker that cannot start
stops the others, one killed is replaced, signals that arrive while the workers start are
neither lost nor fatal, and a second SIGTERM or SIGINT ends a drain at once (also in one
process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from connwise.telemetry.store_sqlite import SqliteStore
from tests.e2e.test_cli_gateway import CLI, config_text, problems
from tests.integration.http_origin import HttpOrigin


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children_of(pid: int) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def refuses(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


@contextlib.asynccontextmanager
async def gateway(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The CLI as a subprocess; killed with its workers if the test leaves it running."""
    proc = await asyncio.create_subprocess_exec(*CLI, "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    seen: set[int] = set()
    try:
        yield proc
    finally:
        if proc.returncode is None:
            seen.update(children_of(proc.pid))
            proc.kill()
            await proc.wait()
        for child in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


async def ready_lines(proc: asyncio.subprocess.Process, n: int) -> None:
    for _ in range(n):
        await ready_line(proc)


async def ready_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line, "the gateway closed its stdout before saying it was ready"
        if " ready: " in line:
            return line


@pytest.fixture
async def origin() -> AsyncIterator[HttpOrigin]:
    server = await HttpOrigin("o").start()
    yield server
    await server.stop()


async def test_a_worker_that_cannot_start_stops_the_others(tmp_path: Path,
                                                           origin: HttpOrigin) -> None:
    """The admin API runs in worker 0 only: its address in use fails that worker alone, and the
    master used to wait for it and then for worker 1, which served on, forever."""
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        admin = holder.getsockname()[1]
        path = tmp_path / "gw.toml"
        path.write_text(config_text(origin, bind=f"127.0.0.1:{port}") +
                        f'[admin]\nbind = "127.0.0.1:{admin}"\ntoken = "t0k3n"\n')
        async with gateway("-c", str(path), "--workers", "2") as proc:
            code = await asyncio.wait_for(proc.wait(), 20)
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
    assert code == 2, err
    assert f"admin.bind = '127.0.0.1:{admin}': the admin API cannot listen on it" in err
    assert "Traceback" not in err
    assert refuses(port), "a worker still serves after its master exited"


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_store_that_cannot_be_opened_is_one_line_and_a_failure(
        tmp_path: Path, origin: HttpOrigin, workers: str) -> None:
    """Start-up errors other than ConfigError were a traceback (one process) or, in a worker,
    nothing at all and exit 0: `os._exit(0)` in a `finally` swallowed them."""
    store = tmp_path / "missing" / "records.db"
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{free_port()}") +
                    f'[telemetry]\nstore = "{store}"\n')
    async with gateway("-c", str(path), "--workers", workers) as proc:
        code = await asyncio.wait_for(proc.wait(), 20)
        assert proc.stdout is not None and proc.stderr is not None
        out = (await proc.stdout.read()).decode()
        err = (await proc.stderr.read()).decode()
    assert code == 1, (out, err)
    assert "Traceback" not in err and "ready" not in out
    lines = problems(err)
    assert len(lines) == int(workers), err
    assert all(f"cannot create telemetry store '{store}'" in line for line in lines), err


async def test_a_killed_worker_is_replaced(tmp_path: Path, origin: HttpOrigin) -> None:
    port = free_port()
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{port}"))
    async with gateway("-c", str(path), "--workers", "2") as proc:
        await ready_lines(proc, 2)
        first, second = children_of(proc.pid)
        os.kill(second, signal.SIGKILL)
        await ready_line(proc)  # its replacement
        workers = children_of(proc.pid)
        assert len(workers) == 2 and first in workers and second not in workers, workers
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(10):
                assert (await client.get("/fast")).status_code == 200
        os.kill(proc.pid, signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
    assert code == 0, err
    assert f"worker 1 (pid {second}) was killed by SIGKILL; starting another" in err


async def until_children(proc: asyncio.subprocess.Process) -> None:
    for _ in range(2000):
        if children_of(proc.pid):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no worker was forked")


async def test_sighup_while_the_workers_start_is_not_fatal(tmp_path: Path,
                                                           origin: HttpOrigin) -> None:
    """A SIGHUP before a process had its handler in place killed it (the default action): the
    master before it forwarded signals, a worker before its event loop took them."""
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{free_port()}"))
    async with gateway("-c", str(path), "--workers", "2") as proc:
        await until_children(proc)
        ready = asyncio.ensure_future(ready_lines(proc, 2))
        while not ready.done() and proc.returncode is None:
            os.kill(proc.pid, signal.SIGHUP)
            await asyncio.sleep(0.01)
        await ready
        os.kill(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_sigterm_while_the_workers_start_drains_and_exits_0(
        tmp_path: Path, origin: HttpOrigin) -> None:
    port = free_port()
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{port}"))
    async with gateway("-c", str(path), "--workers", "2") as proc:
        await until_children(proc)
        os.kill(proc.pid, signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20)
        assert proc.stdout is not None
        out = (await proc.stdout.read()).decode()
    assert code == 0, out
    assert out.count("drained: 0 finished") == 2, out
    assert refuses(port)


async def test_workers_refuse_a_listener_on_port_0(tmp_path: Path) -> None:
    """Port 0 gave each worker an ephemeral port of its own: N gateways on N ports, not N
    workers sharing one."""
    path = tmp_path / "gw.toml"
    path.write_text(config_text(HttpOrigin(), bind="127.0.0.1:0"))
    for args in (("--workers", "2"), ("--check", "--workers", "2")):
        async with gateway("-c", str(path), *args) as proc:
            code = await asyncio.wait_for(proc.wait(), 20)
            assert proc.stdout is not None and proc.stderr is not None
            out = (await proc.stdout.read()).decode()
            err = (await proc.stderr.read()).decode()
        assert code == 2 and "ready" not in out and "Traceback" not in err, (out, err)
        assert ("listeners[0].bind = '127.0.0.1:0': with --workers 2 each worker would listen "
                "on a port of its own" in err), err


async def log_lines(proc: asyncio.subprocess.Process, text: str, n: int) -> None:
    """Read stderr until `n` lines said `text`."""
    assert proc.stderr is not None
    while n:
        line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert line, f"the gateway closed its stderr before saying {text!r}"
        n -= text in line


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_ends_the_drain_at_once(
        tmp_path: Path, origin: HttpOrigin, workers: str, sig: signal.Signals) -> None:
    """A request that would hold the drain for its whole 60 s: the second signal closes it
    now, the records are written as at a drain's end, and the exit code says how it ended
    (the master's: its workers' drains end on its SIGUSR1)."""
    port = free_port()
    store = tmp_path / "records.db"
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{port}").replace(
        "drain_timeout = 5", "drain_timeout = 60") +
        f'[telemetry]\nstore = "{store}"\nflush_interval = 0.05\n')
    async with gateway("-c", str(path), "--workers", workers) as proc:
        await ready_lines(proc, int(workers))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /slow?ms=60000 HTTP/1.1\r\nHost: a\r\n\r\n")
            for _ in range(500):
                if origin.requests:
                    break
                await asyncio.sleep(0.01)
            assert origin.requests == 1
            os.kill(proc.pid, sig)
            await log_lines(proc, "draining for up to 60.0 s", int(workers))
            signalled = time.monotonic()
            os.kill(proc.pid, sig)
            code = await asyncio.wait_for(proc.wait(), 20)
            took = time.monotonic() - signalled
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
        assert proc.stdout is not None and proc.stderr is not None
        out = (await proc.stdout.read()).decode()
        err = (await proc.stderr.read()).decode()
    assert code == 128 + sig, (out, err)
    assert took < 10, took
    # A worker's drain is ended by its master's SIGUSR1 (it takes two SIGTERMs for one).
    assert f"0 finished, 1 closed at once ({sig.name if workers == '1' else 'SIGUSR1'})" in out
    assert out.count(" drained: ") == int(workers), out
    assert "Traceback" not in err, err
    sqlite = SqliteStore(store, create=False)
    try:
        rows = [row for chunk in sqlite.read(columns=("kind", "close_reason")) for row in chunk]
    finally:
        sqlite.close()
    assert ("client", "draining") in [tuple(row) for row in rows], rows


async def test_a_signal_to_the_whole_process_group_drains_the_workers_once(
        tmp_path: Path, origin: HttpOrigin) -> None:
    """Ctrl-C in a terminal, systemd's default KillMode: each worker gets the signal itself and
    from its master. Two of them are one request to drain, not a second signal. (The workers
    get theirs first here, and the master's once they drain: sent at once, as `killpg` does,
    the two often arrive as one.)"""
    port = free_port()
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{port}"))
    async with gateway("-c", str(path), "--workers", "2") as proc:
        await ready_lines(proc, 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            # Eight connections: both workers hold some (all on one: 1 chance in 128).
            slow = [asyncio.ensure_future(client.get("/slow?ms=1500")) for _ in range(8)]
            for _ in range(500):
                if origin.requests == len(slow):
                    break
                await asyncio.sleep(0.01)
            for worker in children_of(proc.pid):
                os.kill(worker, signal.SIGINT)
            await log_lines(proc, "draining for up to", 2)
            os.kill(proc.pid, signal.SIGINT)
            answers = await asyncio.gather(*slow)
        code = await asyncio.wait_for(proc.wait(), 20)
        assert proc.stdout is not None
        out = (await proc.stdout.read()).decode()
    assert [(a.status_code, a.headers["connection"]) for a in answers] == [(200, "close")] * 8
    assert code == 0, out
    drained = re.findall(r"drained: (\d+) finished, 0 closed at the timeout", out)
    assert len(drained) == 2 and sum(map(int, drained)) == 8, out
