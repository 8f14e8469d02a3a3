"""What a run measured, and the KPIs computed from it.

Definitions (all over requests arriving after `run.warmup`):

* *served*: completed within its class deadline (possibly degraded) — the claim-3 measure;
* *errors*: requests or connections the client saw fail: refused connections (over
  `max_connections`), requests timed out waiting, rejected (queue full or displaced) and shed
  by the ladder. A shed request carries a `Retry-After`; it is still a failure to the user.
* *establishment*: the time from a request's arrival to holding a backend connection (waiting
  for a free one or for one being opened) — the claim-2 measure, "at peak" over requests that
  arrived while the rate was at least `peak_fraction` of its maximum;
* *cross-instance*: requests of a client that landed on another backend than its previous one;
* *load max/mean*: requests per backend, the busiest over the mean;
* *connection-seconds*: seconds client connections were held open, zombies' share apart;
* *reclaim precision*: reclaimed connections that were planted zombies, over all reclaimed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) by nearest rank; 0 for no values. Sorts `values` in place."""
    if not values:
        return 0.0
    values.sort()
    i = min(len(values) - 1, max(0, int(q * len(values) + 0.5) - 1))
    return values[i]


class ClassStats:
    __slots__ = ("completed", "degraded", "latencies", "name", "peak_waits", "refused",
                 "rejected", "requests", "served", "shed", "timed_out", "waits")

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.completed = 0
        self.served = 0
        self.shed = 0
        self.timed_out = 0
        self.rejected = 0
        self.refused = 0
        self.degraded = 0
        self.latencies: list[float] = []
        self.waits: list[float] = []
        self.peak_waits: list[float] = []

    def summary(self) -> dict[str, Any]:
        n = self.requests
        lat = self.latencies
        waits = self.waits
        peak = self.peak_waits
        return {
            "requests": n, "completed": self.completed, "served": self.served,
            "served_share": self.served / n if n else 0.0,
            "shed": self.shed, "shed_share": self.shed / n if n else 0.0,
            "timed_out": self.timed_out, "rejected": self.rejected, "refused": self.refused,
            "degraded": self.degraded,
            "errors": self.shed + self.timed_out + self.rejected + self.refused,
            "latency_mean": sum(lat) / len(lat) if lat else 0.0,
            "latency_p50": percentile(lat, 0.5), "latency_p99": percentile(lat, 0.99),
            "wait_mean": sum(waits) / len(waits) if waits else 0.0,
            "wait_p99": percentile(waits, 0.99),
            "peak_wait_mean": sum(peak) / len(peak) if peak else 0.0,
            "peak_requests": len(peak),
        }


@dataclass
class Series:
    """Samples every `run.sample` seconds, for the plots."""

    t: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    open_sessions: list[int] = field(default_factory=list)
    pool_open: list[int] = field(default_factory=list)
    in_use: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    level: list[int] = field(default_factory=list)


@dataclass
class PolicyResult:
    policy: str
    base: str
    scenario: str
    classes: list[ClassStats]
    series: Series = field(default_factory=Series)
    sessions: int = 0
    next_id: int = 0
    refused: int = 0
    reconnects: int = 0
    closed: int = 0
    closes: list[int] = field(default_factory=lambda: [0] * 5)
    conn_seconds: float = 0.0
    zombie_seconds: float = 0.0
    zombies_planted: int = 0
    reclaimed: int = 0
    reclaimed_zombies: int = 0
    connects: int = 0
    connect_failures: int = 0
    affinity_chances: int = 0
    cross_instance: int = 0
    backend_requests: list[int] = field(default_factory=list)
    #: Sessions opened per client segment (`region/device`).
    segments: dict[str, int] = field(default_factory=dict)
    events: int = 0
    duration: float = 0.0
    wall: float = 0.0
    plan_peak: int | None = None
    ladder: list[dict[str, Any]] = field(default_factory=list)
    pool_counters: dict[str, int] = field(default_factory=dict)
    _kpis: dict[str, Any] | None = None

    def kpis(self) -> dict[str, Any]:
        """The KPIs (see the module docstring), computed once."""
        if self._kpis is not None:
            return self._kpis
        per_class = {c.name: c.summary() for c in self.classes}
        requests = sum(c["requests"] for c in per_class.values())
        served = sum(c["served"] for c in per_class.values())
        shed = sum(c["shed"] for c in per_class.values())
        errors = sum(c["errors"] for c in per_class.values())
        waits = [w for c in self.classes for w in c.waits]
        peak = [w for c in self.classes for w in c.peak_waits]
        br = self.backend_requests
        mean_load = sum(br) / len(br) if br else 0.0
        zombie_closes = self.zombies_planted
        self._kpis = {
            "policy": self.policy, "base": self.base, "scenario": self.scenario,
            "sessions": self.sessions, "lifecycles": self.closed, "events": self.events,
            "requests": requests, "served": served,
            "served_share": served / requests if requests else 0.0,
            "shed": shed, "shed_share": shed / requests if requests else 0.0,
            "errors": errors, "error_share": errors / (requests + self.refused_total())
            if requests or errors else 0.0,
            "refused": self.refused_total(), "reconnects": self.reconnects,
            "wait_mean": sum(waits) / len(waits) if waits else 0.0,
            "peak_wait_mean": sum(peak) / len(peak) if peak else 0.0,
            "peak_wait_p99": percentile(peak, 0.99),
            "peak_waited_share": sum(1 for w in peak if w > 0.001) / len(peak) if peak else 0.0,
            "peak_requests": len(peak),
            "connects": self.connects, "connect_failures": self.connect_failures,
            "conn_seconds": self.conn_seconds, "zombie_seconds": self.zombie_seconds,
            "zombies_planted": zombie_closes, "reclaimed": self.reclaimed,
            "reclaimed_zombies": self.reclaimed_zombies,
            "reclaim_precision": self.reclaimed_zombies / self.reclaimed if self.reclaimed
            else None,
            "reclaim_recall": self.reclaimed_zombies / zombie_closes if zombie_closes else None,
            "cross_instance_share": self.cross_instance / self.affinity_chances
            if self.affinity_chances else 0.0,
            "load_max_over_mean": max(br) / mean_load if mean_load else 0.0,
            "plan_peak": self.plan_peak, "pool": self.pool_counters,
            "sessions_by_segment": dict(self.segments),
            "duration": self.duration, "wall": self.wall,
            "classes": per_class,
        }
        return self._kpis

    def refused_total(self) -> int:
        return sum(c.refused for c in self.classes)
