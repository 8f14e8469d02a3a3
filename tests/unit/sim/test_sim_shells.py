"""The engine drives the core as the real shells do (`connwise.Pool`, the gateway's admission,
the forecast applier): each test pins one way in which it once drove it differently."""

from __future__ import annotations

from typing import Any

from connwise.sim import Simulation, load_scenario


def overload(**parts: Any) -> dict[str, Any]:
    """One backend of 2 warm connections offered 10x what they serve, one class."""
    data: dict[str, Any] = {
        "run": {"name": "t", "duration": 0.95, "tick": 1.0},
        "arrivals": {"rate": 200.0},
        "classes": {"bulk": {"share": 1, "service_ms": 100, "service_sigma": 0,
                             "deadline": 60.0, "max_wait": 1.0}},
        "backends": {"count": 1, "pool_size": 2, "connect_ms": 0, "capacity": 100},
        "policies": {"gw": {"base": "connwise", "pool_min": 2, "warm": False,
                            "zombies": "timeout", "balance": "round_robin"}},
    }
    data.update(parts)
    return data


def test_ladder_moves_on_admission_events_not_only_on_ticks() -> None:
    # The gateway moves a group's ladder when a request queues or a slot is freed while others
    # wait (at most every 10 ms), besides its tick: under a queue that forms at once it climbs
    # to shed within the first second. A ladder moved only by ticks (here 1 s apart) has not
    # left level 0 by then.
    s = load_scenario(overload())
    sim = Simulation(s, s.resolve("gw"))
    k = sim.run().kpis()
    assert sim.ladders is not None
    entered = sim.ladders[0].stats()["bulk"]["entered"]
    assert entered["shed"] == 1, entered
    assert k["classes"]["bulk"]["shed"] > 0


def test_queue_step_counts_only_requests_that_queued() -> None:
    # The gateway counts the queue step once the request is queued: a full queue refuses it,
    # and that refusal is no application of the queue step.
    s = load_scenario(overload(policies={"gw": {
        "base": "connwise", "pool_min": 2, "warm": False, "zombies": "timeout",
        "balance": "round_robin", "max_waiters": 3}}))
    sim = Simulation(s, s.resolve("gw"))
    bulk = sim.run().kpis()["classes"]["bulk"]
    assert sim.ladders is not None
    applied = sim.ladders[0].stats()["bulk"]["applied"]
    assert bulk["rejected"] > 0 and applied["queue"] > 0
    assert applied["queue"] + bulk["rejected"] <= bulk["requests"], (applied, bulk)
