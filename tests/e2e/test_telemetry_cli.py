"""The telemetry commands as people run them: `ingest nginx|haproxy`, `assess`, `telemetry
export|retain`, through typer's CliRunner and through `python -m connwise.analysis`."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest
from typer.testing import CliRunner

from connwise.analysis.cli import app

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "telemetry"
CUSTOM = ('$remote_addr [$time_iso8601] "$request" $status $bytes_sent $request_time '
          'uct=$upstream_connect_time uht=$upstream_header_time conn=$connection '
          'req=$connection_requests region=$http_x_region ua="$http_user_agent"')
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.output


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A store filled from all three sample logs."""
    path = str(tmp_path / "t.db")
    regions = str(DATA / "regions.txt")
    code, out = invoke("ingest", "nginx", str(DATA / "nginx_combined.log"), "--store", path,
                       "--regions", regions, "--no-progress")
    assert code == 0, out
    assert "12 records from 16 lines; 3 malformed lines skipped" in out
    assert re.search(r"nginx_combined\.log\s+│\s+16\s+│\s+12\s+│\s+3\s+│\s+4, 11, 13", out), out
    assert "$status 'abc' is not a number" in out
    code, out = invoke("ingest", "haproxy", str(DATA / "haproxy.log"), "--store", path,
                       "--regions", regions, "--no-progress")
    assert code == 0 and "7 records from 9 lines; 2 malformed lines skipped" in out, out
    code, out = invoke("ingest", "nginx", str(DATA / "nginx_custom.log"), "--store", path,
                       "--log-format", CUSTOM, "--region-var", "http_x_region")
    assert code == 0 and "5 records from 6 lines" in out, out
    return path


def test_assess_prints_the_baseline_and_writes_the_report(store: str, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    code, out = invoke("assess", "--store", store, "--html", str(report),
                       "--segment", "region,device")
    assert code == 0, out
    for needle in ("Baseline", "Establishment time p50 / p95 / p99", "Error rate",
                   "Zombie share", "Peak concurrency", "Connection reuse ratio",
                   "Segments", "Recommendations", "pool size", f"report written to {report}"):
        assert needle in out, needle
    assert "eu-west / desktop" in out
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


def test_assess_window_and_hour_segments(store: str) -> None:
    code, out = invoke("assess", "--store", store, "--no-html", "--segment", "hour",
                       "--since", "2024-03-12T08:00", "--until", "2024-03-12T08:01",
                       "--tz", "Europe/Paris")
    assert code == 0, out
    assert "09h" in out and "report written" not in out


def test_export_and_retain(store: str, tmp_path: Path) -> None:
    code, out = invoke("telemetry", "export", "--store", store, "--format", "parquet",
                       "-o", str(tmp_path / "t.parquet"))
    assert code == 0 and "wrote 24 records" in out, out
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 24
    code, out = invoke("telemetry", "export", "--store", store, "--format", "csv",
                       "-o", str(tmp_path / "t.csv"), "--since", "2024-03-12T08:01")
    assert code == 0 and "(csv)" in out
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 1 + int(
        re.search(r"wrote (\d+)", out).group(1))  # type: ignore[union-attr]
    code, out = invoke("telemetry", "retain", "--store", store, "--max-age", "1d",
                       "--max-size", "50MB")
    assert code == 0 and "deleted 24 records" in out  # the sample logs are from 2024


@pytest.mark.parametrize(("args", "message"), [
    (("assess", "--store", "{tmp}/missing.db"), "does not exist; check the path"),
    (("assess", "--store", "{tmp}/empty.db", "--no-html"), "holds no records"),
    (("assess", "--store", "{tmp}/empty.db", "--segment", "planet"), "unknown dimension"),
    (("assess", "--store", "{tmp}/empty.db", "--since", "yesterday"), "not a time"),
    (("telemetry", "export", "--store", "{tmp}/empty.db", "--format", "xml", "-o", "x"),
     "unknown export format"),
    (("telemetry", "retain", "--store", "{tmp}/empty.db"), "nothing to retain by"),
    # Both used to delete every record; the config refuses them as telemetry.retention.
    (("telemetry", "retain", "--store", "{tmp}/empty.db", "--max-age", "0"),
     "--max-age = '0': an age of 0 would delete every record"),
    (("telemetry", "retain", "--store", "{tmp}/empty.db", "--max-size", "1000"),
     "--max-size = '1000': a store smaller than 64 KiB cannot hold its own schema"),
    (("assess", "--store", "{tmp}/empty.db", "--since", "2024-03-13", "--until", "2024-03-12"),
     "--since/--until = '2024-03-13 .. 2024-03-12': --since must be before --until"),
    (("telemetry", "export", "--store", "{tmp}/empty.db", "-o", "{tmp}/x.parquet",
      "--since", "1d", "--until", "2d"), "--since must be before --until"),
    (("telemetry", "export", "--store", "{tmp}/empty.db", "-o", "{tmp}"),
     "cannot write it: it is a directory"),
    (("telemetry", "export", "--store", "{tmp}/missing.db", "-o", "{tmp}/x.parquet"),
     "does not exist; check the path"),
    (("ingest", "nginx", "{data}/nginx_combined.log", "--store", "{tmp}/x.db",
      "--log-format", "$remote_addr"), "logs no time"),
    (("ingest", "haproxy", "{tmp}/nope.log", "--store", "{tmp}/x.db"),
     "no log file could be read"),
    (("ingest", "nginx", "{data}/haproxy.log", "--store", "{tmp}/no/such/dir.db"),
     "does not exist; create it first"),
])
def test_bad_input_is_one_sentence_and_exit_status_2(tmp_path: Path, args: tuple[str, ...],
                                                     message: str) -> None:
    from connwise.telemetry.store_sqlite import SqliteStore

    SqliteStore(tmp_path / "empty.db").close()
    argv = [a.format(tmp=tmp_path, data=DATA) for a in args]
    code, out = invoke(*argv)
    assert code == 2, out
    assert message in " ".join(out.split())
    assert "Traceback" not in out
    assert not list(tmp_path.glob("*.parquet")) and not list(tmp_path.glob(".*.partial"))


def test_one_unreadable_file_does_not_stop_the_others(tmp_path: Path) -> None:
    code, out = invoke("ingest", "nginx", str(tmp_path / "gone.log"),
                       str(DATA / "nginx_combined.log"), "--store", str(tmp_path / "x.db"))
    assert code == 1
    assert "cannot open" in out and "12 records from 16 lines" in out


def test_a_log_in_the_wrong_format_gets_a_hint(tmp_path: Path) -> None:
    code, out = invoke("ingest", "nginx", str(DATA / "haproxy.log"), "--store",
                       str(tmp_path / "x.db"))
    assert code == 0
    assert "no line matched; is the log format right?" in " ".join(out.split())


def test_postgres_store_from_the_command_line(postgres_dsn: str) -> None:
    schema = f"cw_e2e_{uuid.uuid4().hex[:10]}"
    spec = f"{postgres_dsn}?schema={schema}"
    try:
        code, out = invoke("ingest", "haproxy", str(DATA / "haproxy.log"), "--store", spec)
        assert code == 0 and "7 records from 9 lines" in out, out
        assert f"(schema {schema})" in " ".join(out.split())
        code, out = invoke("assess", "--store", spec, "--no-html")
        assert code == 0 and "Records / requests" in out, out
    finally:
        async def drop() -> None:
            conn = await asyncpg.connect(postgres_dsn)
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await conn.close()

        asyncio.run(drop())


def test_python_m_entry_runs_ingest_assess_export(tmp_path: Path) -> None:
    env = {**os.environ, **ENV}
    db, report = str(tmp_path / "s.db"), str(tmp_path / "r.html")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "connwise.analysis", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, env=env, check=False)

    done = run("ingest", "nginx", str(DATA / "nginx_combined.log"), "--store", db)
    assert done.returncode == 0, done.stderr
    assert "3 malformed lines skipped" in done.stdout
    done = run("assess", "--store", db, "--html", report)
    assert done.returncode == 0, done.stderr
    assert "Baseline" in done.stdout and Path(report).stat().st_size > 10_000


def test_help_lists_the_commands() -> None:
    code, out = invoke("--help")
    assert code == 0 and all(word in out for word in ("ingest", "assess", "telemetry"))
    code, out = invoke("ingest", "nginx", "--help")
    assert code == 0 and "--log-format" in out and "combined_rt" in out


def test_assess_of_a_single_record_says_the_data_is_insufficient(tmp_path: Path) -> None:
    """`python -m connwise assess` in a process of its own, on a store of one pool record:
    tables, no sizing from that record, and a report that names no external address."""
    from connwise.telemetry.store_sqlite import SqliteStore

    db, report = tmp_path / "one.db", tmp_path / "one.html"
    store = SqliteStore(db)
    store.write([("1", "pool", 1710115200.0, 1710115260.0, 3, 0, 45.0)],
                ("conn_id", "kind", "started_at", "ended_at", "requests", "errors",
                 "tail_idle_s"))
    store.close()
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "connwise", "assess", "--store", str(db),
                           "--html", str(report)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "keep the current pool sizes and warm targets" in done.stdout
    assert "only 1 record" in done.stdout and "warm target 1" not in done.stdout
    page = report.read_text()
    assert page.count("<svg") == 6
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= {"http://www.w3.org/2000/svg",
                                                              "http://www.w3.org/1999/xlink"}


def test_a_bad_k_names_the_option_the_user_typed(tmp_path: Path) -> None:
    code, out = invoke("assess", "--store", str(tmp_path / "none.db"), "--k", "0.5",
                       "--no-html")
    assert code == 2
    assert "--k = 0.5: a multiple below 1 flags healthy connections" in out
    assert "zombies.k" not in out
