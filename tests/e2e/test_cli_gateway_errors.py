"""`connwise gateway` refusing what it cannot run with one line and exit 2, never a traceback:
an address in use (a listener's or the admin API's, one process or workers), and what
`--check` must refuse; and `--check` printing no secrets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_cli_gateway import config_text, problems, run_cli
from tests.integration.http_origin import HttpOrigin


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port held by a listening socket without SO_REUSEPORT: nobody else binds it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


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
    assert len(lines) == int(workers), err  # one line (per worker)
    assert all(f"listeners[0].bind = '127.0.0.1:{held_port}': listener 'web' cannot listen on "
               "it (Address already in use); stop what holds the address" in line
               for line in lines), err


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
