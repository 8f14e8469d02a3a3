"""The quality record of one connection and the score that decides recycling.

A connection that still answers can be a bad one: it may fail now and then, or answer its checks
far slower than its siblings (a backend under a GC pause, a path through a congested link). The
record keeps what is cheap to observe — uses, recent failures, check latency — and the score
turns it into a number in 0..1 that the pool compares with its recycle threshold.

Failures decay with a half-life so that one bad minute does not condemn a connection forever,
and the check interval shrinks as recent failures grow: suspicious connections are looked at
more often, healthy ones are left alone (the psycopg_pool and HikariCP checks use one fixed
interval for all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Weight of the newest sample in the check-latency EWMA (about the last 5 checks matter).
LATENCY_ALPHA = 0.3
#: A recent failure loses half its weight after this many seconds.
FAILURE_HALF_LIFE = 300.0
#: A check this many times slower than the pool's typical check halves the latency factor.
SLOW_FACTOR = 4.0


@dataclass(slots=True)
class Quality:
    """What a pool knows about one connection's health; times are clock seconds."""

    created_at: float
    uses: int = 0
    failures: float = 0.0
    failures_at: float = 0.0
    checks: int = 0
    check_latency: float | None = None
    last_checked: float = field(default=0.0)

    def age(self, now: float) -> float:
        return now - self.created_at

    def recent_failures(self, now: float) -> float:
        """Failures weighted by recency: each halves every FAILURE_HALF_LIFE seconds."""
        if self.failures == 0.0:
            return 0.0
        return self.failures * math.pow(0.5, (now - self.failures_at) / FAILURE_HALF_LIFE)

    def record_failure(self, now: float) -> None:
        self.failures = self.recent_failures(now) + 1.0
        self.failures_at = now

    def record_check(self, now: float, latency: float) -> None:
        self.checks += 1
        self.last_checked = now
        if self.check_latency is None:
            self.check_latency = latency
        else:
            self.check_latency += LATENCY_ALPHA * (latency - self.check_latency)

    def score(self, now: float, typical_latency: float | None) -> float:
        """Quality in 0..1: halved by each recent failure and by checks SLOW_FACTOR x slower."""
        score = math.pow(0.5, self.recent_failures(now))
        if typical_latency and self.check_latency is not None and typical_latency > 0:
            slowness = self.check_latency / typical_latency
            if slowness > 1.0:
                score *= math.pow(0.5, math.log(slowness, SLOW_FACTOR))
        return score

    def check_interval(self, now: float, base: float, floor: float) -> float:
        """Seconds until the next check: `base` when healthy, halved per recent failure."""
        return max(floor, base * math.pow(0.5, self.recent_failures(now)))

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "age": round(self.age(now), 6),
            "uses": self.uses,
            "recent_failures": round(self.recent_failures(now), 4),
            "checks": self.checks,
            "check_latency": self.check_latency,
        }
