"""Connection records for the store adapter's tests, and the demand they make computed the slow,
obvious way (every record against every period), to check the SQL against."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from connwise.telemetry.record import Row

COLUMNS = ("conn_id", "kind", "source", "backend", "class_name", "region", "started_at",
           "ended_at", "requests", "active_s")
T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z
BACKENDS = {"10.0.0.1:80": "api", "10.0.0.2:80": "api", "10.0.0.3:5432": "db"}


def records(n: int = 600, *, span: float = 3 * 3600.0, seed: int = 7) -> list[Row]:
    """`n` records over `span` seconds after T0 (some started up to ten minutes before it, some
    ending after the span), of two kinds, three backends, two classes and regions."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(n):
        start = T0 - 600 + rng.random() * (span + 600)
        life = rng.choice([0.0, rng.expovariate(1 / 30), rng.expovariate(1 / 900)])
        requests = rng.choice([0, 1, rng.randint(1, 40)])
        active = min(life, requests * rng.random() * 2)
        backend = rng.choice(list(BACKENDS))
        rows.append((f"c{i}", rng.choice(["client", "client", "pool"]),
                     rng.choice(["web", "ws"]), backend, rng.choice(["interactive", "bulk"]),
                     rng.choice(["eu", "us", ""]), start, start + life, requests, active))
    return rows


def expected(rows: list[Row], metric: str, since: float, step: int, n: int,
             keep: Callable[[Row], bool] = lambda r: True) -> np.ndarray:
    """The demand of the records `keep` selects, by brute force."""
    out = np.zeros(n)
    for row in rows:
        if not keep(row):
            continue
        start, end, requests = row[6], max(row[7], row[6] + 1e-3), row[8]
        if metric == "connections":
            k = int((start - since) // step)
            if start >= since and k < n:
                out[k] += 1
            continue
        weight = 1.0 / step if metric == "concurrency" else requests / (end - start)
        for k in range(n):
            lo, hi = since + k * step, since + (k + 1) * step
            overlap = min(end, hi) - max(start, lo)
            if overlap > 0:
                out[k] += weight * overlap
    return out
