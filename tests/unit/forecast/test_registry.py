"""The registry saves plain data (no pickle), loads the same forecasts, and logs promotions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.unit.forecast.synth import seasonal, with_events

from connwise.errors import ConfigError
from connwise.forecast.forecaster import Forecaster, ForecasterConfig
from connwise.forecast.registry import Registry
from connwise.forecast.shadow import ShadowEvaluation, ShadowRules


def _fitted(models: tuple[str, ...] = ("snaive_daily", "lightgbm")) -> Forecaster:
    series, calendar, _ = with_events(days=21)
    config = ForecasterConfig(models=models, windows=1, levels=(80,),
                              model_params={"lightgbm": {"rounds": 40}}
                              if "lightgbm" in models else {})
    return Forecaster(config).fit([series], calendar)


def test_save_load_round_trip_gives_the_same_forecast(tmp_path: Path) -> None:
    forecaster = _fitted()
    registry = Registry(tmp_path, wall_clock=lambda: 1000.0)
    version = registry.save("shop", forecaster)
    assert version == 1 and registry.champion("shop") == 1
    files = sorted(p.name for p in (tmp_path / "shop" / "v1").iterdir())
    assert files == ["data.csv", "events.json", "lightgbm.txt", "meta.json"]
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))
    meta = registry.meta("shop", 1)
    assert meta["window"]["shop"]["length"] == 21 * 24
    assert meta["weights"] == pytest.approx(forecaster.weights)
    loaded = registry.load("shop")
    before = forecaster.predict()["shop"]
    after = loaded.predict()["shop"]
    assert np.allclose(before.mean, after.mean)
    assert np.allclose(before.bands[80][1], after.bands[80][1])
    assert registry.promotions()[0] == {"time": 1000.0, "name": "shop", "version": 1,
                                        "previous": None, "reason": "first version"}


def test_second_version_waits_for_promotion_and_promotion_is_logged(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    first = _fitted(("snaive_daily",))
    registry.save("api", first)
    assert registry.save("api", first) == 2
    assert registry.champion("api") == 1
    # A shadow evaluation decides; the registry carries the decision out and logs it.
    shadow = ShadowEvaluation("v1", ["v2"], ShadowRules(windows=2, margin=0.05))
    actual = np.arange(1.0, 25.0)
    for _ in range(2):
        shadow.record(actual, {"v1": actual + 3, "v2": actual + 1})
    promotion = shadow.decide()
    assert promotion is not None
    registry.promote("api", 2, reason="shadow evaluation", details=promotion.to_dict())
    assert registry.champion("api") == 2
    log = [json.loads(line) for line in (tmp_path / "promotions.jsonl").read_text().splitlines()]
    assert [r["version"] for r in log] == [1, 2]
    assert log[1]["previous"] == 1 and log[1]["challenger"] == "v2"


def test_registry_errors_are_sentences(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(ConfigError, match="has no champion"):
        registry.load("api")
    with pytest.raises(ConfigError, match="no such version"):
        registry.meta("api", 3)
    with pytest.raises(ConfigError, match=r"registry.name"):
        registry.versions("../etc")
    with pytest.raises(ConfigError, match="not fitted"):
        registry.save("api", Forecaster(ForecasterConfig(models=["naive2"])))


def test_update_forecasts_from_newer_history_without_refitting_trees() -> None:
    series = seasonal(days=15)
    forecaster = Forecaster(ForecasterConfig(models=["snaive_daily", "lightgbm"], windows=1,
                                             model_params={"lightgbm": {"rounds": 30}}))
    forecaster.fit([series.head(len(series) - 24)])
    trees = forecaster.models["lightgbm"].booster_text()  # type: ignore[attr-defined]
    forecaster.update([series])
    assert forecaster.predict()["api"].start == series.end
    assert forecaster.models["lightgbm"].booster_text() == trees  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="fitted on"):
        forecaster.update([seasonal(days=15, segment="db")])
