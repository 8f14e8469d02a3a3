"""M4 Hourly, cheaply: our metrics and Naive2 reproduce the official figures on all 414 series,
and the benchmark program runs end to end on a small subset."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from connwise.forecast import metrics
from connwise.forecast.models import Naive2

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared" / "data" / "m4-hourly"
pytestmark = pytest.mark.skipif(not (DATA / "Hourly-train.csv").is_file(),
                                reason=f"M4 Hourly data not found in {DATA}")
_spec = importlib.util.spec_from_file_location("forecast_m4", ROOT / "benchmarks" /
                                               "forecast_m4.py")
assert _spec is not None and _spec.loader is not None
forecast_m4 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forecast_m4)


def test_naive2_and_snaive_reproduce_the_official_m4_hourly_figures() -> None:
    panel, actual = forecast_m4.load(DATA, None)
    assert len(panel) == 414
    model = Naive2()
    model.fit(panel)
    naive2 = model.predict(48)
    s2, m2 = forecast_m4.score(panel, actual, naive2)
    assert (round(s2, 3), round(m2, 3)) == (18.383, 2.395)
    smapes, mases = [], []
    for series in panel:
        f = np.resize(series.values[-24:], 48)
        smapes.append(metrics.smape(actual[series.segment], f))
        mases.append(metrics.mase(actual[series.segment], f, series.values, 24))
    assert (round(float(np.mean(smapes)), 3), round(float(np.mean(mases)), 3)) == (13.912, 1.193)


def test_benchmark_runs_on_a_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m4.json"
    code = forecast_m4.main(["--series", "8", "--calibration", "8", "--jobs", "1",
                             "--models", "snaive_daily,naive2", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["series"] == 8 and report["horizon"] == 48
    assert report["combination"] in ("mean", "median")
    other = "median" if report["combination"] == "mean" else "mean"
    assert set(report["results"]) == {"snaive_daily", "ensemble", "naive2",
                                      f"ensemble ({other}, not chosen)"}
    assert report["results"]["ensemble"]["owa"] < report["results"]["naive2"]["owa"]
    assert any(r["method"] == "Slawek Smyl" for r in report["official"])
    assert "wall time" in capsys.readouterr().out
