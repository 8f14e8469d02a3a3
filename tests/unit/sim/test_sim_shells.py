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


class ConnectLog(Simulation):
    """Records when each connect starts and when each one fails."""

    starts: list[float]
    failures: list[tuple[float, float]]  # (when, the pool's next connect time after it)

    def _actions(self, b: int, actions: list[Any], now: float) -> None:
        self.starts.extend(now for a in actions if type(a).__name__ == "Connect")
        super()._actions(b, actions, now)

    def _connected(self, b: int, extra: tuple[int, float, bool], now: float) -> None:
        super()._connected(b, extra, now)
        if not extra[2]:
            self.failures.append((now, self.pools[b]._next_connect_at))


def test_connects_retry_when_the_backoff_ends() -> None:
    # `connwise.Pool` re-arms its maintenance timer after a failed connect for the pool's next
    # wake-up, which includes the end of the backoff: with nobody asking meanwhile, the retry
    # starts then, not at the next whole second.
    s = load_scenario({
        "run": {"name": "t", "duration": 20.0}, "arrivals": {"rate": 1e-6},
        "backends": {"count": 1, "pool_size": 2, "connect_ms": 200, "connect_sigma": 0,
                     "connect_fail": 0.9},
        "policies": {"static": {"base": "static"}}})
    sim = ConnectLog(s, s.resolve("static"))
    sim.starts, sim.failures = [], []
    sim.run()
    assert sim.failures
    for when, due in sim.failures:
        # Next start: at once (a connect beside it succeeded, which ends the backoff) or when
        # the backoff ends.
        later = [t for t in sim.starts if t >= when]
        assert later[0] == when or abs(later[0] - due) < 1e-9, (when, due, later[0])


def test_warm_plan_scales_in_on_observed_demand_only() -> None:
    # Production applies a plan through `WarmController` (the forecast applier): scale-out on
    # the plan, scale-in only as far as the demand it observes allows. Here the plan knows a
    # spike (60-120 s) but not a lift that triples the demand from then on: after the spike
    # the plan asks for 12 connections, the pool serves ~30 at once, and the target must not
    # fall below what it serves.
    s = load_scenario({
        "run": {"name": "t", "duration": 200.0},
        "arrivals": {"rate": 20.0, "spikes": [
            {"at": 60, "duration": 60, "factor": 2},
            {"at": 60, "duration": 1000, "factor": 3, "kind": "lift", "predictable": False}]},
        "classes": {"interactive": {"share": 1, "service_ms": 500, "service_sigma": 0}},
        "backends": {"count": 1, "pool_size": 100, "capacity": 100, "connect_ms": 10},
        "policies": {"cw": {"base": "connwise", "warm_lead": 5, "zombies": "timeout",
                            "degrade": False}}})
    sim = Simulation(s, s.resolve("cw"))
    sim.run()
    assert sim.plan is not None
    planned = sim.plan.target_at(199.0, "backend")
    assert planned < 20
    assert sim.pools[0].target >= 20, (planned, sim.pools[0].target)
