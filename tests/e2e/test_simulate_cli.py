"""`python -m connwise.sim` (the `connwise simulate` command) as people run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "examples" / "scenarios").glob("*.toml"))


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "connwise.sim", *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_table_plots_and_json(tmp_path: Path) -> None:
    out = tmp_path / "plots"
    kpis = tmp_path / "kpis.json"
    result = run("examples/scenarios/claim1_priority.toml", "--policies", "static,connwise",
                 "--duration", "30", "--out", str(out), "--json", str(kpis))
    assert result.returncode == 0, result.stderr
    assert "static" in result.stdout and "connwise" in result.stdout
    assert "critical" in result.stdout and "p99 ms" in result.stdout
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["claim1_priority-p99.png", "claim1_priority-timeline.png"]
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    data = json.loads(kpis.read_text())
    assert [d["policy"] for d in data] == ["static", "connwise"]
    assert data[1]["classes"]["critical"]["requests"] > 0


def test_unknown_policy_is_a_config_error() -> None:
    result = run("examples/scenarios/claim1_priority.toml", "--policies", "nope", "--no-plots")
    assert result.returncode == 2
    assert "no such policy" in result.stdout


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_example_scenario_loads(path: Path) -> None:
    from connwise.sim import load_scenario
    scenario = load_scenario(path)
    for name in scenario.policies:
        scenario.resolve(name)


SHORT = "[run]\nduration = 2\n\n[arrivals]\nrate = 5\n"


def assert_clean_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2 with the message naming what to fix, and no Python traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in result.stdout, result.stdout


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_duration_override_is_validated(tmp_path: Path, value: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SHORT)
    assert_clean_error(run(str(path), "--no-plots", "-q", "--duration", value), "--duration")


def test_scenario_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(b"\xff\xfe[run]\n")
    assert_clean_error(run(str(path), "--no-plots", "-q"), "UTF-8")


def test_replay_store_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "store.db").write_text("not a database\n" * 100)
    path = tmp_path / "s.toml"
    path.write_text(SHORT + 'replay = "store.db"\n')
    assert_clean_error(run(str(path), "--no-plots", "-q"), "store.db")


def test_unwritable_outputs_fail_before_the_run(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SHORT)
    (tmp_path / "a-file").write_text("")
    assert_clean_error(run(str(path), "-q", "--out", str(tmp_path / "a-file")), "--out")
    assert_clean_error(run(str(path), "-q", "--no-plots", "--json",
                           str(tmp_path / "no-such-dir" / "k.json")), "--json")
