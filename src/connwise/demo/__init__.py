"""Self-contained demonstrations behind `connwise demo ...`.

A demo needs nothing but the package: it starts its own backend on 127.0.0.1, so that the first
command a newcomer runs shows the real pool doing real I/O, not a simulation of it.
"""

from connwise.demo.pool_demo import Scenario, build_schedule, run_pool_demo

__all__ = ["Scenario", "build_schedule", "run_pool_demo"]
