"""The drift monitor triggers at the exact period; shadow evaluation promotes only on evidence."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from connwise.errors import ConfigError
from connwise.forecast.drift import DriftMonitor, DriftTrigger, relative_error
from connwise.forecast.shadow import ShadowEvaluation, ShadowRules


def test_drift_triggers_on_the_third_consecutive_miss_exactly(
        caplog: pytest.LogCaptureFixture) -> None:
    fired: list[DriftTrigger] = []
    monitor = DriftMonitor(segment="api", on_trigger=fired.append)
    forecast = 100.0
    # errors:  ok   miss  miss  ok   miss  miss  miss  miss  miss  miss
    actuals = [110, 130, 70, 95, 80, 75, 130, 140, 60, 150]
    caplog.set_level(logging.WARNING, logger="connwise.forecast.drift")
    triggered = [monitor.observe(a, forecast, at=float(i)) for i, a in enumerate(actuals)]
    assert [i for i, t in enumerate(triggered) if t] == [6, 9]
    assert monitor.triggers == 2 and len(fired) == 2
    assert fired[0].at == 6.0 and fired[0].count == 1
    assert fired[0].errors == pytest.approx((20 / 80, 25 / 75, 30 / 130))
    assert "forecast drift in segment 'api' at 6.0: 3 consecutive periods" in caplog.text
    assert "trigger #2" in caplog.text


def test_drift_threshold_and_periods_are_configurable() -> None:
    monitor = DriftMonitor(threshold=0.5, periods=2)
    assert not monitor.observe(100, 140)  # 40% is within 50%
    assert not monitor.observe(100, 150)  # exactly 50% is not beyond it
    assert not monitor.observe(100, 160)
    assert monitor.observe(100, 170)
    assert monitor.consecutive == 0
    # exactly at the threshold is not a miss
    assert relative_error(100, 120) == pytest.approx(0.2)
    edge = DriftMonitor(periods=1)
    assert not edge.observe(100.0, 120.0)
    assert relative_error(0, 0) == 0.0 and relative_error(0, 1) == float("inf")
    with pytest.raises(ConfigError, match=r"drift.periods"):
        DriftMonitor(periods=0)
    with pytest.raises(ConfigError, match=r"drift.threshold"):
        DriftMonitor(threshold=0)


ACTUAL = np.array([10.0, 20.0, 30.0, 40.0])


def _window(shadow: ShadowEvaluation, champion_error: float, challenger_error: float) -> None:
    shadow.record(ACTUAL, {"champion": ACTUAL + champion_error,
                           "challenger": ACTUAL + challenger_error})


def test_challenger_promoted_after_beating_the_champion_by_the_margin_over_n_windows() -> None:
    shadow = ShadowEvaluation("champion", ["challenger"], ShadowRules(windows=3, margin=0.1))
    _window(shadow, 10.0, 5.0)
    _window(shadow, 10.0, 5.0)
    assert shadow.decide() is None  # two windows are not enough evidence
    _window(shadow, 10.0, 5.0)
    promotion = shadow.decide()
    assert promotion is not None
    assert (promotion.challenger, promotion.champion) == ("challenger", "champion")
    assert promotion.challenger_error == 5.0 and promotion.champion_error == 10.0
    assert shadow.champion == "challenger" and shadow.challengers == ["champion"]
    # History starts again: the old champion cannot win back on old windows.
    assert shadow.decide() is None


def test_challenger_within_the_margin_is_not_promoted() -> None:
    shadow = ShadowEvaluation("champion", ["challenger"], ShadowRules(windows=3, margin=0.1))
    for _ in range(5):
        _window(shadow, 10.0, 9.5)  # 5% better, but the margin asks for 10%
    assert shadow.decide() is None
    assert shadow.champion == "champion"


def test_a_bad_window_in_the_last_n_can_block_promotion() -> None:
    shadow = ShadowEvaluation("champion", ["challenger"], ShadowRules(windows=3, margin=0.1))
    _window(shadow, 10.0, 1.0)
    _window(shadow, 10.0, 1.0)
    _window(shadow, 10.0, 40.0)  # mean over the last 3: 14 vs 10
    assert shadow.decide() is None
    _window(shadow, 10.0, 1.0)  # the bad window is still among the last 3: 14 vs 10
    assert shadow.decide() is None
    _window(shadow, 10.0, 1.0)
    _window(shadow, 10.0, 1.0)
    assert shadow.decide() is not None


def test_shadow_rules_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"shadow.margin"):
        ShadowRules(margin=1.0).validate()
    with pytest.raises(ConfigError, match="champion cannot also be a challenger"):
        ShadowEvaluation("a", ["a"])
    shadow = ShadowEvaluation("a", ["b"])
    with pytest.raises(ConfigError, match="has no forecast"):
        shadow.record(ACTUAL, {"b": ACTUAL})


@pytest.mark.parametrize(("actual", "forecast", "message"), [
    ([], [], "no actuals"),
    ([1.0, 2.0, 3.0], [1.0], r"'v1'.*1 periods.*3 actuals"),
    ([1.0, 2.0, 3.0], [1.0, float("nan"), 3.0], r"'v1'.*not finite"),
    ([1.0, float("inf"), 3.0], [1.0, 2.0, 3.0], r"actuals.*not finite"),
])
def test_a_window_without_matching_finite_forecasts_is_refused(
        actual: list[float], forecast: list[float], message: str) -> None:
    shadow = ShadowEvaluation("v1", ["v2"], ShadowRules(windows=1))
    with pytest.raises(ConfigError, match=message):
        shadow.record(np.array(actual), {"v1": np.array(forecast),
                                         "v2": np.array(actual)})
    # nothing was recorded: a good window afterwards decides on its own
    shadow.record(np.array([1.0, 2.0]), {"v1": np.array([3.0, 4.0]),
                                         "v2": np.array([1.0, 2.0])})
    assert shadow.decide() is not None
