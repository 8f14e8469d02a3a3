"""Simulator speed: connection lifecycles per minute of wall time (target >= 1,000,000).

A lifecycle is one client connection from arrival to close, through the real core objects
(balancer, `PoolPolicy` with its `Scheduler`, ladder ticks). Workload: a steady 5,000 sessions/s
of one request each over 4 backends with warm pools, the `static` and `connwise` policies.
Prints JSON.
"""

from __future__ import annotations

import json
import sys
import time

from connwise.sim.engine import Simulation
from connwise.sim.scenario import load_scenario

SCENARIO = {
    "run": {"name": "sim_speed", "duration": 60.0, "tick": 0.25},
    "arrivals": {"rate": 5000.0},
    "classes": {"critical": {"share": 0.1, "service_ms": 5},
                "interactive": {"share": 0.6, "service_ms": 5},
                "bulk": {"share": 0.3, "service_ms": 20}},
    "backends": {"count": 4, "pool_size": 64, "capacity": 64, "connect_ms": 1},
    "policies": {"static": {"base": "static"},
                 "connwise": {"base": "connwise", "pool_min": 64, "warm": False}},
}


def main() -> None:
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    data = dict(SCENARIO)
    data["run"] = {**SCENARIO["run"], "duration": duration}  # type: ignore[dict-item]
    scenario = load_scenario(data)
    out: dict[str, object] = {"benchmark": "sim_speed", "target_per_minute": 1_000_000}
    for name in ("static", "connwise"):
        sim = Simulation(scenario, scenario.resolve(name))
        started = time.perf_counter()
        result = sim.run()
        wall = time.perf_counter() - started
        lifecycles = result.closed
        out[name] = {"lifecycles": lifecycles, "events": result.events,
                     "wall_s": round(wall, 3),
                     "lifecycles_per_minute": round(lifecycles / wall * 60.0),
                     "meets_target": lifecycles / wall * 60.0 >= 1_000_000}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
