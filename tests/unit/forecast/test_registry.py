"""The registry saves plain data (no pickle), loads the same forecasts, and logs promotions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.unit.forecast.synth import seasonal, with_events

from connwise.errors import ConfigError
from connwise.forecast.forecaster import Forecaster, ForecasterConfig
from connwise.forecast.registry import Registry
from connwise.forecast.series import DemandSeries
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


@pytest.mark.parametrize(("file", "text"), [
    ("v1/meta.json", "{not json"),
    ("v1/meta.json", ""),
    ("v1/meta.json", "[1]"),
    ("v1/meta.json", '{"format": 1, "config": {"models": ["snaive_daily"]}}'),
    ("v1/events.json", "{"),
    ("v1/data.csv", "garbage\n"),
    ("v1/events.json", '[{"colour": "red"}]'),
    ("champion.json", "{"),
    ("champion.json", '{"version": "latest"}'),
])
def test_a_damaged_version_is_refused_with_a_sentence(tmp_path: Path, file: str,
                                                      text: str) -> None:
    registry = Registry(tmp_path)
    registry.save("api", _fitted(("snaive_daily",)))
    (tmp_path / "api" / file).write_text(text)
    with pytest.raises(ConfigError, match=r"damaged.*(refit|promote a version)"):
        registry.load("api", None if file == "champion.json" else 1)


def test_a_missing_saved_file_is_refused_with_a_sentence(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.save("api", _fitted(("snaive_daily", "lightgbm")))
    (tmp_path / "api" / "v1" / "lightgbm.txt").write_text("tree\nnot a booster\n")
    with pytest.raises(ConfigError, match=r"api v1.*damaged"):
        registry.load("api", 1)
    (tmp_path / "api" / "v1" / "events.json").unlink()
    with pytest.raises(ConfigError, match=r"api v1.*damaged"):
        registry.load("api", 1)


def test_a_save_that_fails_midway_leaves_no_version(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    forecaster = _fitted(("snaive_daily",))
    registry = Registry(tmp_path)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pandas.DataFrame.to_csv", disk_full)
    with pytest.raises(ConfigError, match=r"cannot save.*No space left"):
        registry.save("api", forecaster)
    assert registry.versions("api") == [] and registry.champion("api") is None
    assert [p.name for p in (tmp_path / "api").iterdir()] == []  # nothing half written
    monkeypatch.undo()
    assert registry.save("api", forecaster) == 1


def test_an_interrupted_save_leaves_no_version(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    forecaster = _fitted(("snaive_daily",))

    write_text = Path.write_text

    def interrupted(self: Path, *args: Any, **kwargs: Any) -> int:
        if self.name == "meta.json":  # the last file: everything else is already written
            raise KeyboardInterrupt
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Registry(tmp_path).save("api", forecaster)
    assert list((tmp_path / "api").iterdir()) == []


def test_two_savers_racing_for_a_version_both_succeed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    forecaster = _fitted(("snaive_daily",))
    first, second = Registry(tmp_path), Registry(tmp_path)
    assert first.save("api", forecaster) == 1
    # The second process listed the versions before the first one's v1 appeared.
    monkeypatch.setattr(second, "versions", lambda name: [])
    assert second.save("api", forecaster) == 2
    monkeypatch.undo()
    assert first.versions("api") == [1, 2]
    assert first.meta("api", 2)["version"] == 2 and first.champion("api") == 1
    assert first.load("api", 2).predict()["shop"].mean.size


def test_an_unwritable_registry_is_refused_with_a_sentence(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"registry.*cannot save"):
        Registry(root).save("api", _fitted(("snaive_daily",)))


def test_update_refuses_history_of_another_resolution() -> None:
    series = seasonal(days=15)
    forecaster = Forecaster(ForecasterConfig(models=["snaive_daily"], windows=1))
    forecaster.fit([series])
    half_hourly = DemandSeries(series.segment, series.start, 1800, series.values)
    with pytest.raises(ConfigError, match=r"1800.*fitted on 3600-second periods"):
        forecaster.update([half_hourly])
