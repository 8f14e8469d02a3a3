"""`connwise gateway` as a process: --check, serving, SIGHUP reload, SIGTERM drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import httpx

from tests.integration.http_origin import HttpOrigin

CLI = [sys.executable, "-m", "connwise"]


def config_text(origin: HttpOrigin, bind: str = "127.0.0.1:0", prefix: str = "/") -> str:
    return f"""
node_id = "e2e"
drain_timeout = 5
[[listeners]]
name = "web"
kind = "http"
bind = "{bind}"
[[routes]]
listener = "web"
group = "app"
path_prefix = "{prefix}"
[groups.app]
backends = ["{origin.address}"]
[groups.app.health]
kind = "none"
"""


#: A log line of the gateway's (`--log-level info`, the default) on stderr.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) "
                      r"connwise[.\w]*\[\d+\]: ")


def problems(err: str) -> list[str]:
    """The lines of stderr that are not the gateway's `DEBUG` or `INFO` log lines: what the
    gateway says went wrong."""
    return [line for line in err.strip().splitlines()
            if not (m := LOG_LINE.match(line)) or m.group(1) not in ("DEBUG", "INFO")]


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*CLI, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_check_prints_resolved_config_and_names_bad_keys(tmp_path: Path) -> None:
    origin = HttpOrigin()
    origin.port = 9
    good = tmp_path / "good.toml"
    good.write_text(config_text(origin))
    code, out, err = await run_cli("gateway", "--check", "-c", str(good))
    assert code == 0 and '"balance_factor": 1.25' in out and "configuration is valid" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(config_text(origin).replace('kind = "http"', 'kind = "udp"'))
    code, out, err = await run_cli("gateway", "--check", "-c", str(bad))
    assert code == 2 and "listeners[0].kind = 'udp'" in err
    code, _, err = await run_cli("gateway", "--check", "-c", str(tmp_path / "missing.toml"))
    assert code == 2 and "cannot be read" in err
    code, _, err = await run_cli("gateway", "--workers", "0", "-c", str(good))
    assert code == 2 and "--workers" in err


async def test_check_and_start_read_the_region_table_the_config_names(tmp_path: Path) -> None:
    origin = HttpOrigin()
    origin.port = 9
    table = tmp_path / "regions.txt"
    table.write_text("10.0.0.0/8 internal\n10.0.0.0/40 broken\n")
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin) + f'\n[telemetry]\nregions = "{table}"\n')
    for args in (("--check",), ()):  # validating, and starting, refuse it alike
        code, _, err = await run_cli("gateway", *args, "-c", str(path))
        assert code == 2 and "telemetry.regions (" in err and "regions.txt:2" in err, err
        assert "not a network" in err and "Traceback" not in err
    table.write_text("10.0.0.0/8 internal\n")
    code, out, err = await run_cli("gateway", "--check", "-c", str(path))
    assert code == 0 and "configuration is valid" in err and '"regions"' in out


async def test_serve_reload_and_drain(tmp_path: Path) -> None:
    first = await HttpOrigin("first").start()
    second = await HttpOrigin("second").start()
    path = tmp_path / "gw.toml"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path.write_text(config_text(first, bind=f"127.0.0.1:{port}"))
    proc = await asyncio.create_subprocess_exec(*CLI, "gateway", "-c", str(path),
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        match = re.search(r"web=([\d.]+):(\d+)", line)
        assert match, line
        base = f"http://{match[1]}:{match[2]}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/fast")).headers["x-origin"] == "first"
        path.write_text(config_text(second, bind=f"{match[1]}:{match[2]}"))
        os.kill(proc.pid, signal.SIGHUP)
        for _ in range(100):
            async with httpx.AsyncClient(base_url=base) as client:
                if (await client.get("/fast")).headers["x-origin"] == "second":
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("reload did not apply")
        path.write_text("this is = not [valid toml")
        os.kill(proc.pid, signal.SIGHUP)
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/fast")).headers["x-origin"] == "second"
            slow = asyncio.ensure_future(client.get("/slow?ms=500"))
            await asyncio.sleep(0.2)
            os.kill(proc.pid, signal.SIGTERM)
            answer = await slow
        assert answer.status_code == 200 and answer.headers["connection"] == "close"
        code = await asyncio.wait_for(proc.wait(), 10)
        out = (await proc.stdout.read()).decode()
        assert code == 0
        assert "drained: 1 finished, 0 closed at the timeout" in out
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert "reload refused" in err
        logged = [LOG_LINE.match(line) for line in err.splitlines()]
        assert all(logged), err  # every line stamped with time, level, logger and process
        assert "INFO connwise.gateway" in err and "configuration reloaded" in err, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await first.stop()
        await second.stop()


async def test_workers_share_the_listening_socket(tmp_path: Path) -> None:
    origin = await HttpOrigin("o").start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{port}"))
    proc = await asyncio.create_subprocess_exec(*CLI, "gateway", "-c", str(path), "--workers",
                                                "2", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        for _ in range(2):
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert f"web=127.0.0.1:{port}" in line
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(10):
                assert (await client.get("/fast")).status_code == 200
        os.kill(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert all(not Path(f"/proc/{child}").exists() or
                   "zombie" in Path(f"/proc/{child}/status").read_text() for child in children)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await origin.stop()


async def test_workers_drain_and_exit_when_their_master_is_killed(tmp_path: Path) -> None:
    origin = await HttpOrigin("o").start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{port}"))
    proc = await asyncio.create_subprocess_exec(*CLI, "gateway", "-c", str(path), "--workers",
                                                "2", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    children: list[str] = []
    try:
        assert proc.stdout is not None
        for _ in range(2):
            await asyncio.wait_for(proc.stdout.readline(), 20)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        proc.kill()  # SIGKILL: the master cannot forward anything
        await proc.wait()
        for _ in range(200):
            alive = [c for c in children if Path(f"/proc/{c}").exists()
                     and "zombie" not in Path(f"/proc/{c}/status").read_text()]
            if not alive:
                break
            await asyncio.sleep(0.05)
        assert not alive, f"workers {alive} outlived their master"
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        await origin.stop()
