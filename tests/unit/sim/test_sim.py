"""The simulator: scenario validation, workload models, and the engine driving core objects."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from connwise.core.affinity import BoundedLoadRing
from connwise.core.degrade import DegradeLadder
from connwise.core.pooling import PoolPolicy
from connwise.errors import ConfigError
from connwise.sim import Simulation, compare, load_scenario, simulate
from connwise.sim.kpi import percentile
from connwise.sim.scenario import Arrivals, Spike
from connwise.sim.workload import RateProfile, spike_factor

THREE = {"critical": {"share": 0.1, "service_ms": 20, "deadline": 0.5},
         "interactive": {"share": 0.6, "service_ms": 30, "deadline": 1.0},
         "bulk": {"share": 0.3, "service_ms": 500, "deadline": 30.0}}


def scenario(**parts: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"run": {"name": "t", "duration": 60.0},
                            "arrivals": {"rate": 50.0}, "classes": THREE,
                            "backends": {"count": 1, "pool_size": 10, "connect_ms": 10}}
    for key, value in parts.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "classes":
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


# -- scenarios ---------------------------------------------------------------------------------

def test_toml_text_and_defaults() -> None:
    s = load_scenario("[run]\nduration = 5\n\n[arrivals]\nrate = 3\n")
    assert s.run.duration == 5 and s.arrivals.rate == 3
    assert set(s.policies) == {"static", "reactive", "connwise"}
    static, cw = s.resolve("static"), s.resolve("connwise")
    assert static.pool_min == static.pool_max == s.backends.pool_size
    assert static.scheduling == "fifo" and static.balance == "round_robin"
    assert cw.scheduling == "priority" and cw.degrade and cw.warm and cw.balance == "hash"
    assert cw.pool_max == static.pool_max  # same capacity: only the policy differs


def test_mix_overrides_base() -> None:
    s = load_scenario(scenario(policies={"mix": {"base": "static", "balance": "hash",
                                                 "degrade": True}}))
    mix = s.resolve("mix")
    assert (mix.balance, mix.degrade, mix.scheduling) == ("hash", True, "fifo")


@pytest.mark.parametrize(("data", "key"), [
    (scenario(arrivals={"rate": -1}), "arrivals.rate"),
    (scenario(classes={"vip": {"share": 1.0}}), "classes.vip.rank"),
    (scenario(policies={"p": {"base": "static", "pool_min": 9, "pool_max": 3}}),
     "policies.p.pool_min"),
    (scenario(backends={"colour": "red"}), "backends.colour"),
])
def test_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(data)
    assert info.value.key == key


def test_unknown_policy_and_bad_toml() -> None:
    s = load_scenario(scenario())
    with pytest.raises(ConfigError, match="no such policy"):
        s.resolve("nope")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario("[run\nx=1\n")


# -- workload ----------------------------------------------------------------------------------

def test_profiles_and_spikes() -> None:
    flat = RateProfile(Arrivals(rate=10))
    assert flat(0) == flat(1e6) == flat.peak == 10
    daily = RateProfile(Arrivals(rate=10, profile="daily", day_length=24.0))
    assert daily(4.0) == pytest.approx(2.0)  # the trough, at 4h
    assert daily(20.0) == pytest.approx(10.0) == daily.peak
    assert daily(4.5) == pytest.approx(10 * (0.20 + 0.22) / 2)  # interpolated
    spike = Spike(at=10, duration=10, factor=3, ramp=2)
    assert [spike_factor(spike, t) for t in (9, 10, 11, 15, 19.5, 20)] == \
        pytest.approx([1, 1, 2, 3, 1.5, 1])
    hidden = Spike(at=0, duration=5, factor=4, predictable=False)
    assert RateProfile(Arrivals(rate=1, spikes=[hidden]), predictable_only=True)(1) == 1
    assert RateProfile(Arrivals(rate=1, spikes=[hidden]))(1) == 4


def test_poisson_arrival_count() -> None:
    s = load_scenario(scenario(run={"duration": 200.0},
                               arrivals={"rate": 20.0, "spikes": [
                                   {"at": 100, "duration": 50, "factor": 3}]}))
    result = simulate(s, "static")
    expected = 20 * 150 + 60 * 50
    assert abs(result.sessions - expected) < 4 * math.sqrt(expected)


def test_percentile() -> None:
    assert percentile([], 0.99) == 0.0
    values = [float(i) for i in range(1, 101)]
    random.Random(1).shuffle(values)
    assert percentile(values, 0.99) == 99.0 and percentile(values, 0.5) == 50.0


# -- the engine ----------------------------------------------------------------------------------

def test_engine_drives_the_core_objects() -> None:
    s = load_scenario(scenario(backends={"count": 3}))
    sim = Simulation(s, s.resolve("connwise"))
    assert all(type(p) is PoolPolicy for p in sim.pools)
    assert sim.ladders is not None and all(type(x) is DegradeLadder for x in sim.ladders)
    assert type(sim.balancer) is BoundedLoadRing
    result = sim.run()
    counters = result.pool_counters
    assert counters["acquired"] >= result.kpis()["requests"] - 20
    assert result.plan_peak is not None and result.plan_peak >= 1


def test_same_seed_same_result() -> None:
    s = load_scenario(scenario())
    a, b = simulate(s, "connwise").kpis(), simulate(s, "connwise").kpis()
    a.pop("wall"), b.pop("wall")
    assert a == b


def test_priority_cuts_critical_latency_near_saturation() -> None:
    s = load_scenario(scenario(run={"duration": 120.0}, arrivals={"rate": 55.0}))
    static, cw = (r.kpis()["classes"]["critical"] for r in compare(s, ["static", "connwise"]))
    assert cw["latency_mean"] < 0.5 * static["latency_mean"]


def test_ladder_sheds_and_serves_more_under_overload() -> None:
    s = load_scenario(scenario(run={"duration": 90.0}, arrivals={"rate": 150.0}))
    static, cw = (r.kpis() for r in compare(s, ["static", "connwise"]))
    assert cw["served_share"] > static["served_share"] + 0.3
    assert cw["classes"]["bulk"]["shed"] > 0 and cw["classes"]["critical"]["shed"] == 0


def test_zombies_reclaimed_with_precision() -> None:
    s = load_scenario(scenario(
        run={"duration": 600.0, "tick": 1.0}, arrivals={"rate": 5.0},
        classes={"interactive": {"share": 1, "requests": 8, "think_s": 1.0}},
        zombies={"rate": 0.2, "hold": 3600}))
    static, cw = (r.kpis() for r in compare(s, ["static", "connwise"]))
    assert static["reclaimed"] == 0
    assert cw["reclaim_precision"] >= 0.95 and cw["reclaim_recall"] >= 0.5
    assert cw["conn_seconds"] < 0.8 * static["conn_seconds"]


def test_hash_affinity_cuts_cross_instance_within_bound() -> None:
    s = load_scenario(scenario(
        run={"duration": 60.0}, backends={"count": 4},
        classes={"interactive": {"share": 1, "requests": 5, "think_s": 0.2}},
        clients={"count": 300}))
    static, cw = (r.kpis() for r in compare(s, ["static", "connwise"]))
    assert static["cross_instance_share"] > 0.6
    assert cw["cross_instance_share"] < 0.5 * static["cross_instance_share"]
    assert cw["load_max_over_mean"] <= 1.25


def test_max_connections_refuses() -> None:
    s = load_scenario(scenario(
        classes={"interactive": {"share": 1, "requests": 50, "think_s": 1.0}},
        policies={"tight": {"base": "static", "max_connections": 20}}))
    k = simulate(s, "tight").kpis()
    assert k["refused"] > 0 and k["errors"] >= k["refused"]


def test_connect_failures_back_off_and_recover() -> None:
    s = load_scenario(scenario(backends={"connect_fail": 0.3},
                               policies={"r": {"base": "reactive"}}))
    k = simulate(s, "r").kpis()
    assert k["connect_failures"] > 0 and k["served_share"] > 0.9
