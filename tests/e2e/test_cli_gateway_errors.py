"""`connwise gateway` refusing what it cannot run with one line and exit 2, never a traceback:
an address in use (a listener's or the admin API's, one process or workers; a listener's by
another gateway, which SO_REUSEPORT would let it share), and what `--check` must refuse; and
`--check` printing no secrets."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_cli_gateway import config_text, problems, run_cli
from tests.e2e.test_cli_gateway_workers import free_port, gateway, ready_lines
from tests.integration.http_origin import HttpOrigin


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port held by a listening socket without SO_REUSEPORT: nobody else binds it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
async def serving() -> AsyncIterator[HttpOrigin]:
    """An origin that answers."""
    server = await HttpOrigin("o").start()
    yield server
    await server.stop()


def origin9() -> HttpOrigin:
    origin = HttpOrigin()
    origin.port = 9
    return origin


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_listener_address_in_use_is_one_line_and_exit_2(
        tmp_path: Path, held_port: int, workers: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin9(), bind=f"127.0.0.1:{held_port}"))
    code, out, err = await run_cli("gateway", "-c", str(path), "--workers", workers)
    assert code == 2, (out, err)
    assert "Traceback" not in err and "ready" not in out
    lines = problems(err)
    assert len(lines) == 1, err  # said once, by the process that starts, before any worker
    assert (f"listeners[0].bind = '127.0.0.1:{held_port}': listener 'web' cannot listen on "
            f"it: another socket listens on 127.0.0.1:{held_port} (Address already in use)"
            in lines[0]), err


@pytest.mark.parametrize(("first", "second"), [("1", "1"), ("2", "1"), ("1", "2")])
async def test_a_second_gateway_on_a_port_in_use_is_refused(
        tmp_path: Path, serving: HttpOrigin, first: str, second: str) -> None:
    """Both bind with SO_REUSEPORT, so the kernel let the second one in and the two split the
    port's connections. The second is refused, and the first serves on, alone."""
    port = free_port()
    path = tmp_path / "gw.toml"
    path.write_text(config_text(serving, bind=f"127.0.0.1:{port}"))
    async with gateway("-c", str(path), "--workers", first) as running:
        await ready_lines(running, int(first))
        code, out, err = await run_cli("gateway", "-c", str(path), "--workers", second)
        assert code == 2, (out, err)
        assert "Traceback" not in err and "ready" not in out, (out, err)
        lines = problems(err)
        assert len(lines) == 1, err
        assert (f"error: listeners[0].bind = '127.0.0.1:{port}': listener 'web' cannot listen "
                f"on it: another socket listens on 127.0.0.1:{port} (Address already in use)"
                in lines[0]), err
        assert "stop the other gateway" in lines[0], err
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(20):
                assert (await client.get("/fast")).status_code == 200
        os.kill(running.pid, signal.SIGTERM)
        assert await asyncio.wait_for(running.wait(), 20) == 0
        assert running.stdout is not None
        drained = (await running.stdout.read()).decode()
    assert drained.count(" drained: ") == int(first), drained


async def test_an_admin_address_in_use_is_one_line_and_exit_2(
        tmp_path: Path, held_port: int) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin9()) +
                    f'[admin]\nbind = "127.0.0.1:{held_port}"\ntoken = "t0k3n"\n')
    code, out, err = await run_cli("gateway", "-c", str(path))
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(problems(err)) == 1, err
    assert f"admin.bind = '127.0.0.1:{held_port}': the admin API cannot listen on it" in err
    assert "INFO connwise.gateway" in err, err  # the listener it had started, logged
    code, out, err = await run_cli("gateway", "-c", str(path), "--log-level", "warning")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "INFO" not in err, err
    code, out, err = await run_cli("gateway", "-c", str(path), "--log-level", "loud")
    assert code == 2 and "--log-level" in err and "'loud' is not one of" in err, err


@pytest.mark.parametrize(("extra", "message"), [
    ("[escalation]\n[[escalation.activity]]\nname = \"hot\"\nto_class = \"vip\"\n",
     "escalation.activity[0].to_class = 'vip'"),
    ("[admin]\ntoken = \"\"\n", "admin.token = ''"),
])
async def test_check_refuses_what_start_would(tmp_path: Path, extra: str,
                                              message: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin9()) + extra)
    code, _, err = await run_cli("gateway", "--check", "-c", str(path))
    assert code == 2 and message in err and "Traceback" not in err, err


async def test_check_prints_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin9()) + """
[admin]
bind = "0.0.0.0:9901"
token = "admin-s3cret"
[telemetry]
store = "postgresql://connwise:db-s3cret@db.internal:5432/records?password=q-s3cret"
[forecast]
store = "postgres://reader:fc-s3cret@db.internal/records"
""")
    code, out, err = await run_cli("gateway", "--check", "-c", str(path))
    assert code == 0, err
    assert "s3cret" not in out, out
    assert '"token": "***"' in out
    assert "postgresql://connwise:***@db.internal:5432/records?password=***" in out
    assert "postgres://reader:***@db.internal/records" in out
