"""`connwise demo pool` and the CLI skeleton, run as people run them: the real console script
(or `python -m connwise`) in a subprocess, with a real loopback backend and real pools.

The quick demo runs once per module (about 7 s) and the tests read its output and JSON figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import connwise

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "connwise"
ENV = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "connwise"]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV, check=False)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    path = tmp_path_factory.mktemp("demo") / "out.json"
    result = cli("demo", "pool", "--quick", "--json", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads(path.read_text())


def test_demo_prints_progress_lines_summary_and_findings(
        quick_demo: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = quick_demo
    # Not a terminal: periodic plain lines instead of the live panel, for both pools.
    for policy in ("traditional", "connwise"):
        assert any(line.startswith(f"{policy} ") and "connections: connecting" in line
                   for line in stdout.splitlines()), stdout
    assert "Acquire wait by class, in ms" in stdout
    assert "What priority and pre-warming changed:" in stdout
    assert "Figures written to" in stdout


def test_demo_figures_are_sane(quick_demo: tuple[str, dict[str, Any]]) -> None:
    _, figures = quick_demo
    assert figures["version"] == connwise.__version__
    assert figures["scenario"]["duration_s"] == 3.0
    runs = figures["runs"]
    assert set(runs) == {"traditional", "connwise"}
    for policy, run in runs.items():
        for name in ("critical", "bulk"):
            c = run["classes"][name]
            assert c["requests"] > 0 and c["acquired"] > 0, (policy, name, c)
            # Every request ends one way; with a healthy backend, none ends in an error.
            assert c["acquired"] + c["timeouts"] + c["refused"] + c["errors"] == c["requests"]
            assert c["errors"] == 0, (policy, name, c)
            w = c["wait_ms"]
            assert 0 <= w["p50"] <= w["p95"] <= w["p99"] <= w["max"]
        assert 0 < run["connections_created"] <= figures["scenario"]["max_size"]
    # The same seeded schedule ran against both pools.
    for name in ("critical", "bulk"):
        assert runs["traditional"]["classes"][name]["requests"] == \
            runs["connwise"]["classes"][name]["requests"]
    assert sum(c["requests"] for c in runs["connwise"]["classes"].values()) == \
        figures["scenario"]["requests"]
    assert len(figures["findings"]) == 3


def test_connwise_warms_ahead_and_serves_critical_first(
        quick_demo: tuple[str, dict[str, Any]]) -> None:
    """Deterministic by construction, not by luck: the FIFO pool meets the spike with about
    `min_size` connections and grows 8 connects (200 ms each) at a time, so its callers,
    critical ones included, wait hundreds of ms; connwise has its target warm before the spike
    and serves critical first with reserved slots, so its critical waits are under a few ms.
    Loop jitter is milliseconds; the gap is two orders of magnitude."""
    _, figures = quick_demo
    tr, cw = figures["runs"]["traditional"], figures["runs"]["connwise"]
    assert cw["ready_at_spike"] > tr["ready_at_spike"]
    tr_p99 = tr["classes"]["critical"]["wait_ms"]["p99"]
    cw_p99 = cw["classes"]["critical"]["wait_ms"]["p99"]
    assert cw_p99 < tr_p99, (cw_p99, tr_p99)
    assert tr_p99 > 100.0, "the FIFO pool should have queued critical requests behind connects"


def test_version() -> None:
    for command in ([sys.executable, "-m", "connwise", "--version"],
                    [sys.executable, "-m", "connwise.cli", "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"connwise {connwise.__version__}"


def test_help_lists_groups_and_commands() -> None:
    top = cli("--help")
    assert top.returncode == 0 and "demo" in top.stdout
    demo = cli("demo", "--help")
    assert demo.returncode == 0 and "pool" in demo.stdout
    pool = cli("demo", "pool", "--help")
    assert pool.returncode == 0
    for option in ("--duration", "--handshake-ms", "--seed", "--quick", "--json"):
        assert option in pool.stdout


@pytest.mark.parametrize(("args", "option"), [
    (["--duration", "-1"], "--duration"),
    (["--duration", "0"], "--duration"),
    (["--handshake-ms", "-5"], "--handshake-ms"),
    (["--seed", "seven"], "--seed"),
    (["--json", "/nonexistent-dir/out.json"], "--json"),
])
def test_bad_option_is_a_usage_error_naming_it(args: list[str], option: str) -> None:
    result = cli("demo", "pool", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"Invalid value for '{option}'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["demo", "gateway", "--duration", "3"],
                                  ["demo", "pool", "--duration", "1"]])
def test_a_reader_that_stops_early_ends_the_output_quietly(args: list[str],
                                                           tmp_path: Path) -> None:
    """`connwise demo | head -2`: rich turned the broken pipe into SystemExit inside the event
    loop's tasks, which bypassed their cleanup and printed a traceback per task (the pool demo:
    hundreds of lines on stderr), or left without writing --json (the gateway demo). The output
    stops, the run finishes and writes its figures, and the exit code says the output was cut."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "connwise"]
    path = tmp_path / "out.json"
    with subprocess.Popen([*command, *args, "--json", str(path)], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith(b"connwise demo ")
        proc.stdout.close()  # the reader goes away, as `head` does
        stderr = proc.stderr.read().decode()
        returncode = proc.wait(timeout=60)
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    assert returncode == 1
    assert json.loads(path.read_text())["version"] == connwise.__version__
