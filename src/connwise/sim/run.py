"""Run several policies of one scenario, side by side, with optional progress callbacks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from connwise.sim.engine import Simulation
from connwise.sim.kpi import PolicyResult
from connwise.sim.scenario import Scenario


def compare(scenario: Scenario, policies: Sequence[str] | None = None, *,
            progress: Callable[[str, float], None] | None = None) -> list[PolicyResult]:
    """One `PolicyResult` per policy (default: all of the scenario's), same workload seed."""
    names = list(policies) if policies else list(scenario.policies)
    results: list[PolicyResult] = []
    for name in names:
        resolved = scenario.resolve(name)
        callback = None
        if progress is not None:
            def callback(fraction: float, name: str = name) -> None:
                progress(name, fraction)
        started = time.perf_counter()
        result = Simulation(scenario, resolved, progress=callback).run()
        result.wall = time.perf_counter() - started
        results.append(result)
    return results
