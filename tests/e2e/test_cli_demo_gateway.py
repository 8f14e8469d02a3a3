"""`connwise demo gateway` and plain `connwise demo`, run as people run them: the real console
script in a subprocess, with the real gateway, a real application and a WebSocket echo on
loopback.

The quick demo runs once per module (about 8 s) and the tests read its output and JSON figures.
What they assert holds by construction, not by luck:

* every class has requests: the seeded schedule (seed 7) sends 78 critical, 270 interactive and
  457 bulk requests in the quick run (tests/unit checks the schedule itself);
* no critical request is shed: the gateway sheds a critical request only if the critical ladder
  reaches `shed` (pressure 1.9, which needs a critical waiter to have waited 4.5 s, or 36 critical
  requests queued, after at least 4 s of climbing), if the queue is full of critical requests
  alone (a full queue displaces lower classes first), or if one waits its 5 s max wait; with
  20% of the capacity reserved for critical and critical work at about 5% of it, none of these
  can happen in a 5 s run;
* bulk is shed: in the overload the load is 6x the capacity for 1.75 s, and even degraded it
  needs 1.6x, so the 40-place queue fills in a fraction of a second and turns bulk away.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

import connwise
from tests.e2e.test_cli_demo import cli

CLASSES = ("critical", "interactive", "bulk")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    path = tmp_path_factory.mktemp("demo") / "out.json"
    result = cli("demo", "gateway", "--quick", "--json", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads(path.read_text())


def test_demo_prints_progress_lines_summary_and_findings(
        quick_demo: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = quick_demo
    # Not a terminal: periodic plain lines instead of the live panel.
    lines = [line for line in stdout.splitlines() if line.startswith("gateway t=")]
    assert len(lines) >= 4, stdout
    assert all("critical" in line and "bulk" in line and "backends:" in line for line in lines)
    phases = {m.group(1) for line in lines if (m := re.match(r"gateway t=\s*[\d.]+s (\w+)", line))}
    assert {"baseline", "spike", "overload", "recovery"} <= phases, lines
    for title in ("Requests by class", "p99 latency in ms, and requests shed, by phase",
                  "Degradation ladder", "Backends", "WebSocket:",
                  "What admission and the degradation ladder did:", "Figures written to"):
        assert title in stdout, (title, stdout)
    assert "No critical request was shed." in stdout


def test_demo_figures_are_sane(quick_demo: tuple[str, dict[str, Any]]) -> None:
    _, figures = quick_demo
    assert figures["version"] == connwise.__version__
    assert figures["scenario"]["duration_s"] == 5.0
    run = figures["run"]
    classes = run["classes"]
    assert sum(c["requests"] for c in classes.values()) == figures["scenario"]["requests"]
    for name in CLASSES:
        c = classes[name]
        assert c["requests"] == figures["scenario"]["requests_by_class"][name] > 0, name
        assert c["served"] > 0, (name, c)
        # Every request ends one way; with healthy backends on loopback, none in an error.
        assert c["served"] + c["shed"] + c["errors"] == c["requests"], (name, c)
        assert c["errors"] == 0, (name, c)
        lat = c["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"], (name, lat)
    assert len(figures["findings"]) >= 5
    backends = run["backends"]
    assert len(backends) == figures["scenario"]["backends"]
    assert all(b["requests"] > 0 for b in backends), "both backends served"
    # The gateway never let more than its capacity reach the application at once.
    assert all(b["peak_in_flight"] <= figures["scenario"]["capacity"] for b in backends)
    assert all(b["health"] == "healthy" for b in run["gateway"]["backends"])


def test_critical_is_served_first_and_bulk_makes_the_room(
        quick_demo: tuple[str, dict[str, Any]]) -> None:
    _, figures = quick_demo
    classes = figures["run"]["classes"]
    critical, bulk = classes["critical"], classes["bulk"]
    assert critical["shed"] == 0 and critical["served_share"] == 1.0
    assert critical["served_share"] >= classes["interactive"]["served_share"] >= \
        bulk["served_share"]
    assert bulk["shed"] > 0
    ladder = figures["run"]["ladder"]
    assert ladder["peak"]["critical"] == "none"
    assert ladder["peak"]["bulk"] != "none", "the spike and the overload move bulk's ladder"


def test_websocket_sessions_run_through_the_gateway(
        quick_demo: tuple[str, dict[str, Any]]) -> None:
    _, figures = quick_demo
    ws = figures["run"]["websocket"]
    assert ws["sessions"] == ws["opened"] == figures["scenario"]["ws_sessions"] > 0
    assert ws["errors"] == 0 and ws["messages"] > 0
    assert ws["rtt_ms"]["p99"] is not None


def test_plain_demo_runs_the_gateway_demo() -> None:
    """`connwise demo` (the README's first command) runs the gateway demo, with its options."""
    result = cli("demo", "--quick")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("connwise demo gateway (seed 7)")
    assert "What admission and the degradation ladder did:" in result.stdout


def test_help_lists_the_gateway_demo_and_its_options() -> None:
    demo = cli("demo", "--help")
    assert demo.returncode == 0
    for text in ("gateway", "pool", "--duration", "--seed", "--quick", "--json"):
        assert text in demo.stdout, text
    gateway = cli("demo", "gateway", "--help")
    assert gateway.returncode == 0
    for option in ("--duration", "--seed", "--quick", "--json"):
        assert option in gateway.stdout


@pytest.mark.parametrize(("args", "option"), [
    (["demo", "gateway", "--duration", "-1"], "--duration"),
    (["demo", "gateway", "--duration", "2"], "--duration"),
    (["demo", "gateway", "--seed", "seven"], "--seed"),
    (["demo", "gateway", "--json", "/nonexistent-dir/out.json"], "--json"),
    # A path that cannot be written was a traceback after the whole run.
    (["demo", "--quick", "--json", "/proc/out.json"], "--json"),
    (["demo", "pool", "--quick", "--json", "/proc/out.json"], "--json"),
    (["demo", "--duration", "nan"], "--duration"),
    # Options of the group before a command would be lost: a usage error that says where to go.
    (["demo", "--quick", "pool"], "--quick"),
])
def test_bad_option_is_a_usage_error_naming_it(args: list[str], option: str) -> None:
    result: subprocess.CompletedProcess[str] = cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"Invalid value for '{option}'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_option_is_a_usage_error_naming_it() -> None:
    result = cli("demo", "gateway", "--speed", "9")
    assert result.returncode == 2
    assert "--speed" in result.stderr and "Traceback" not in result.stderr

