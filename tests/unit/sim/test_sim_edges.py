"""The simulator under unusual input: every bad scenario is a `ConfigError` naming its key,
and odd but valid ones run to the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connwise.errors import ConfigError
from connwise.sim import load_scenario, simulate
from connwise.sim.kpi import ClassStats, PolicyResult
from connwise.sim.scenario import Arrivals, override_run
from connwise.sim.workload import RateProfile


def small(**parts: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"run": {"duration": 5.0}, "arrivals": {"rate": 20.0},
                            "backends": {"count": 1, "pool_size": 4, "connect_ms": 1}}
    for key, value in parts.items():
        data[key] = {**data.get(key, {}), **value}
    return data


@pytest.mark.parametrize(("data", "key"), [
    # Non-finite numbers: an infinite rate draws every arrival at t = 0, forever.
    (small(arrivals={"rate": float("inf")}), "arrivals.rate"),
    (small(run={"duration": float("nan")}), "run.duration"),
    (small(run={"duration": float("inf")}), "run.duration"),
    (small(classes={"interactive": {"share": float("inf")}}), "classes.interactive.share"),
    # A negative multiplier made the thinning loop walk back in time, forever.
    (small(arrivals={"profile": "daily", "daily": [1.0] * 23 + [-1.0]}), "arrivals.daily.23"),
    # All zero: no session can ever arrive (the peak rate was 0: a division by zero).
    (small(arrivals={"profile": "daily", "daily": [0.0] * 24}), "arrivals.daily"),
    (small(arrivals={"profile": "weekly", "weekly": [0.0] * 7}), "arrivals.weekly"),
    # Client shares: none, zero or negative ones crashed `random.choices` or skewed it.
    (small(clients={"regions": {}}), "clients.regions"),
    (small(clients={"regions": {"eu": 0.0}}), "clients.regions.eu"),
    (small(clients={"devices": {"phone": -1.0, "desktop": 2.0}}), "clients.devices.phone"),
    # A negative think-time multiplier scheduled requests in the past: the clock ran back.
    (small(clients={"device_gap": {"desktop": -1.0}}), "clients.device_gap.desktop"),
    # Each client costs ~110 bytes up front: 10^9 of them exhausted memory before the run.
    (small(clients={"count": 10**8}), "clients.count"),
    # Ignoring the whole run left every KPI at 0 without a word.
    (small(run={"warmup": 5.0}), "run.warmup"),
    # More ticks or plot samples than a run can hold: a hang, and memory growing with them.
    (small(run={"duration": 1e9}), "run.duration"),
    (small(run={"duration": 2e6, "tick": 1.0, "sample": 1.0}), "run.sample"),
])
def test_bad_scenarios_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(data)
    assert info.value.key == key


def test_override_run_is_validated() -> None:
    s = load_scenario(small())
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError) as info:
            override_run(s, duration=bad)
        assert info.value.key == "--duration"
    with pytest.raises(ConfigError) as info:
        override_run(load_scenario(small(run={"warmup": 2.0})), duration=1.0)
    assert info.value.key == "run.warmup"
    assert override_run(s, duration=2.0, seed=7).run.duration == 2.0


def test_not_utf8_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(b"\xff\xfe[run]\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_scenario(path)


def test_sessions_of_a_huge_mean_request_count() -> None:
    # 1 - 1e-17 rounds to 1, so log(1 - p) was 0: a division by zero per session.
    s = load_scenario(small(classes={"interactive": {"share": 1.0, "requests": 1e17,
                                                     "think_s": 0.5}}))
    result = simulate(s, "static")
    assert result.kpis()["requests"] > result.sessions > 0


def test_error_share_when_every_counted_client_is_refused() -> None:
    stats = ClassStats("interactive")
    stats.refused = 4
    result = PolicyResult("p", "static", "s", [stats])
    kpis = result.kpis()
    assert kpis["requests"] == 0 and kpis["errors"] == 4
    assert kpis["error_share"] == 1.0


def test_an_empty_access_log_is_named_by_its_key(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("not a log line\n\n")
    s = load_scenario(small(arrivals={"replay_log": str(log)}))
    with pytest.raises(ConfigError) as info:
        simulate(s, "static")
    assert info.value.key == "arrivals.replay_log"


def test_the_peak_rate_of_disjoint_spikes_is_one_spike_high() -> None:
    # The thinning bound multiplied every spike's factor: ten disjoint 10x spikes made it 1e10
    # times the rate, so each arrival cost ~1e9 rejected candidates (a hang).
    spikes = [{"at": 10.0 * i, "duration": 5.0, "factor": 10.0} for i in range(10)]
    profile = RateProfile(Arrivals(rate=2.0, spikes=spikes))
    assert profile.peak == 20.0
    overlapping = RateProfile(Arrivals(rate=2.0, spikes=[
        {"at": 0.0, "duration": 10.0, "factor": 3.0}, {"at": 5.0, "duration": 10.0,
                                                       "factor": 4.0},
        {"at": 20.0, "duration": 1.0, "factor": 0.5}]))
    assert overlapping.peak == 24.0
    assert max(overlapping(t / 10.0) for t in range(300)) <= overlapping.peak
