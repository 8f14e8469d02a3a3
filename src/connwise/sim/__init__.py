"""The discrete-event simulator: scenarios replayed against policies built of the core objects.

Public API: `load_scenario`, `Scenario`, `simulate`, `Simulation`, `compare`, `PolicyResult`.
"""

from connwise.sim.engine import Simulation, simulate
from connwise.sim.kpi import PolicyResult
from connwise.sim.run import compare
from connwise.sim.scenario import PolicyConfig, Resolved, Scenario, load_scenario

__all__ = ["PolicyConfig", "PolicyResult", "Resolved", "Scenario", "Simulation", "compare",
           "load_scenario", "simulate"]
