"""`connwise forecast ...` end to end: through typer's CliRunner and as a real subprocess
(`python -m connwise.forecast.cli`), on the example history and calendar, bad input included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connwise.core.plan import WarmPlan
from connwise.forecast.cli import forecast_app
from connwise.telemetry.store_sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
HISTORY = ROOT / "examples" / "demand.csv"
EVENTS = ROOT / "examples" / "events.toml"
FAST = "snaive_daily,naive2"
runner = CliRunner()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "connwise.forecast.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_backtest_prints_scores_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "scores.json"
    result = runner.invoke(forecast_app, ["backtest", str(HISTORY), "--models", FAST,
                                          "--horizon", "24", "--windows", "2", "--json",
                                          str(out)])
    assert result.exit_code == 0, result.output
    assert "snaive_daily" in result.output and "ensemble" in result.output
    data = json.loads(out.read_text())
    assert data["horizon"] == 24 and data["windows"] == 2
    assert set(data["scores"]) == {"snaive_daily", "naive2", "ensemble"}
    assert data["scores"]["naive2"]["owa"] == pytest.approx(1.0)
    assert 0 <= data["scores"]["ensemble"]["accuracy"] <= 1
    assert sum(data["weights"].values()) == pytest.approx(1.0)


def test_fit_predict_plan_through_the_registry(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    fitted = runner.invoke(forecast_app, ["fit", str(HISTORY), "--registry", str(registry),
                                          "--name", "api", "--events", str(EVENTS),
                                          "--models", "snaive_daily,lightgbm",
                                          "--horizon", "24", "--windows", "1"])
    assert fitted.exit_code == 0, fitted.output
    said = " ".join(fitted.output.split())  # rich wraps long paths at the terminal width
    assert "saved api v1" in said and "champion: v1" in said
    assert (registry / "api" / "v1" / "lightgbm.txt").is_file()

    csv_out, png = tmp_path / "forecast.csv", tmp_path / "forecast.png"
    predicted = runner.invoke(forecast_app, ["predict", "--registry", str(registry), "--name",
                                             "api", "--out", str(csv_out), "--plot", str(png)])
    assert predicted.exit_code == 0, predicted.output
    header = csv_out.read_text().splitlines()[0]
    assert header == "segment,timestamp,forecast,q0.9,lo50,hi50,lo80,hi80,lo95,hi95"
    assert len(csv_out.read_text().splitlines()) == 25
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    plan_out, html = tmp_path / "plan.json", tmp_path / "plan.html"
    planned = runner.invoke(forecast_app, ["plan", str(HISTORY), "--registry", str(registry),
                                           "--name", "api", "--hold-time", "30",
                                           "--max-ramp", "0.5", "--out", str(plan_out),
                                           "--plot", str(html)])
    assert planned.exit_code == 0, planned.output
    assert "forecast only" in planned.output
    warm = WarmPlan.from_dict(json.loads(plan_out.read_text()))
    assert warm.groups == ["api"] and warm.lead == 600.0 and warm.quantile == 0.9
    assert warm.meta["mode"] == "forecast_only"
    assert warm.peak() > 0
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page
    assert "<th>target</th>" in page


def test_plan_as_a_subprocess_fitted_on_the_fly(tmp_path: Path) -> None:
    plan_out = tmp_path / "plan.json"
    # Held an hour: concurrency = arrivals per hour; an hour of lead on hourly data.
    result = cli("plan", str(HISTORY), "--models", "snaive_daily", "--hold-time", "3600",
                 "--lead", "3600", "--quantile", "0.5", "--windows", "1", "--out",
                 str(plan_out))
    assert result.returncode == 0, result.stderr
    assert "warm plan api" in result.stdout
    warm = WarmPlan.from_dict(json.loads(plan_out.read_text()))
    # The seasonal naive forecast is the last day; each step holds this hour's and the next's.
    need = [int(line.rsplit(",", 1)[1]) for line in HISTORY.read_text().splitlines()[-24:]]
    expected = [max(need[j:j + 2]) for j in range(24)]
    assert [s.target for s in warm.steps["api"]] == expected


@pytest.mark.parametrize(("args", "message"), [
    (["backtest", "missing.csv"], "the file does not exist"),
    (["backtest", "{bad}"], "is not a number"),
    (["backtest", str(HISTORY), "--models", "snaive_daily,prophet"],
     "'prophet': there is no such model"),
    (["plan", str(HISTORY), "--quantile", "0.2"], "planner.quantile"),
    (["predict", "--registry", "{tmp}", "--name", "nothing"], "has no champion"),
    (["backtest", str(HISTORY), "--models", "snaive_daily", "--horizon", "0"],
     "horizon = 0: the horizon must be at least one period"),
    (["backtest", str(HISTORY), "--models", "snaive_daily", "--horizon", "6", "--windows", "1",
      "--json", "{tmp}/no/such/dir/scores.json"], "--json = '{tmp}/no/such/dir/scores.json': "
     "cannot write it"),
    (["predict", str(HISTORY), "--models", "snaive_daily", "--horizon", "6", "--windows", "1",
      "--out", "{tmp}/no/such/dir/f.csv"], "--out = '{tmp}/no/such/dir/f.csv': cannot write it"),
    (["plan", str(HISTORY), "--models", "snaive_daily", "--horizon", "6", "--windows", "1",
      "--out", "{tmp}/no/such/dir/p.json"], "--out = '{tmp}/no/such/dir/p.json': cannot write it"),
    (["plan", str(HISTORY), "--models", "snaive_daily", "--horizon", "6", "--windows", "1",
      "--plot", "{tmp}/no/such/dir/p.png"], "--plot = '{tmp}/no/such/dir/p.png': cannot write it"),
    (["plan", str(HISTORY), "--hold-time", "inf"], "planner.hold_time = inf"),
    (["plan", str(HISTORY), "--lead", "inf"], "planner.lead = inf"),
    (["plan", str(HISTORY), "--max-ramp", "inf"], "planner.max_ramp = inf"),
    (["plan", str(HISTORY), "--headroom", "inf"], "planner.headroom = inf"),
])
def test_bad_input_exits_2_with_a_sentence(tmp_path: Path, args: list[str],
                                           message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2024-01-01T00:00:00Z,12\n2024-01-01T01:00:00Z,lots\n")
    args = [a.replace("{bad}", str(bad)).replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(forecast_app, args)
    assert result.exit_code == 2, result.output
    # rich wraps long paths at the terminal width, possibly inside a word
    assert message.replace("{tmp}", str(tmp_path)).replace(" ", "") in "".join(
        result.output.split())
    assert "Traceback" not in result.output


def test_a_bad_horizon_for_a_saved_forecaster_exits_2(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    fitted = runner.invoke(forecast_app, ["fit", str(HISTORY), "--registry", str(registry),
                                          "--models", "snaive_daily", "--horizon", "6",
                                          "--windows", "1"])
    assert fitted.exit_code == 0, fitted.output
    for horizon in ("0", "-2"):
        result = runner.invoke(forecast_app, ["predict", "--registry", str(registry),
                                              "--horizon", horizon])
        assert result.exit_code == 2, result.output
        assert f"horizon = {horizon}: the horizon is at least one period" in " ".join(
            result.output.split())


def test_bad_input_exits_2_in_a_subprocess(tmp_path: Path) -> None:
    result = cli("backtest", str(tmp_path / "missing.csv"))
    assert result.returncode == 2
    assert "the file does not exist" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    usage = cli("backtest")
    assert usage.returncode == 2 and "there is no demand history" in " ".join(
        usage.stderr.split())


T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
GATEWAY = """
[[listeners]]
name = "web"
kind = "http"
bind = "127.0.0.1:0"
[groups.api]
backends = ["10.0.0.1:80"]
[groups.db]
backends = ["10.0.0.2:5432"]
"""


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Three days of client connections in a SQLite store: 10 an hour to each group, 40 to
    api at noon; each held 6 minutes."""
    rows = []
    for hour in range(72):
        for backend, n in (("10.0.0.1:80", 40 if hour % 24 == 12 else 10),
                           ("10.0.0.2:5432", 10)):
            for i in range(n):
                start = T0 + hour * 3600 + i * 60.0
                rows.append((f"{hour}-{backend}-{i}", "client", "web", backend, start,
                             start + 360.0, 1, 360.0))
    path = tmp_path / "telemetry.db"
    sqlite = SqliteStore(path)
    sqlite.write(rows, ("conn_id", "kind", "source", "backend", "started_at", "ended_at",
                        "requests", "active_s"))
    sqlite.close()
    (tmp_path / "gateway.toml").write_text(GATEWAY)
    return path


def test_backtest_fit_and_plan_from_the_telemetry_store(tmp_path: Path, store: Path) -> None:
    source = ["--store", str(store), "--resolution", "1h", "--segment-by", "group",
              "--gateway-config", str(tmp_path / "gateway.toml"), "--record-kind", "client"]
    scored = runner.invoke(forecast_app, ["backtest", *source, "--models", FAST,
                                          "--horizon", "24", "--windows", "1"])
    assert scored.exit_code == 0, scored.output
    assert "2 segment(s)" in scored.output
    registry = tmp_path / "registry"
    fitted = runner.invoke(forecast_app, ["fit", *source, "--registry", str(registry),
                                          "--models", "snaive_daily", "--horizon", "24",
                                          "--windows", "1", "--since", "2024-01-01T00:00:00Z",
                                          "--until", str(T0 + 72 * 3600)])
    assert fitted.exit_code == 0, fitted.output
    plan_out = tmp_path / "plan.json"
    planned = runner.invoke(forecast_app, ["plan", *source, "--registry", str(registry),
                                           "--quantile", "0.5", "--lead", "3600",
                                           "--out", str(plan_out)])
    assert planned.exit_code == 0, planned.output
    assert "mean hold time from" in planned.output and "360.000 s" in planned.output
    warm = WarmPlan.from_dict(json.loads(plan_out.read_text()))
    assert warm.start == T0 + 72 * 3600 and warm.meta["kind"] == "arrivals"
    # Little's law: 40 an hour held 6 minutes is 4 at once; warm an hour before noon.
    assert [s.target for s in warm.steps["api"]][10:14] == [1, 4, 4, 1]
    assert {s.target for s in warm.steps["db"]} == {1}
    concurrency = runner.invoke(forecast_app, ["predict", *source, "--metric", "concurrency",
                                               "--models", "snaive_daily", "--windows", "1",
                                               "--horizon", "24", "--quantile", "0.5",
                                               "--out", str(tmp_path / "f.csv")])
    assert concurrency.exit_code == 0, concurrency.output
    lines = (tmp_path / "f.csv").read_text().splitlines()
    noon = next(line for line in lines if line.startswith("api,2024-01-04T12:00:00Z"))
    assert float(noon.split(",")[2]) == pytest.approx(40 * 360 / 3600)


@pytest.mark.parametrize(("args", "message"), [
    (["backtest"], "there is no demand history to forecast from"),
    (["backtest", str(HISTORY), "--store", "{store}"], "drop one of the two"),
    (["fit", "--store", "{store}", "--registry", "{tmp}", "--since", "2030-01-01",
      "--until", "2030-01-02"], "no connection records in the window 2030-01-01"),
    (["backtest", "--store", "{store}", "--metric", "bytes"], "unknown demand metric"),
    (["backtest", "--store", "{store}", "--resolution", "10s"], "must lie in 60..3600"),
    (["backtest", "--store", "{store}", "--segment-by", "group"], "--gateway-config"),
    (["backtest", "--store", "{tmp}/none.db"], "does not exist"),
])
def test_bad_store_input_exits_2_with_a_sentence(tmp_path: Path, store: Path, args: list[str],
                                                 message: str) -> None:
    args = [a.replace("{store}", str(store)).replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(forecast_app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
