"""Figures shared by the demos: nearest-rank percentiles and millisecond formatting."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float, *, presorted: bool = False) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of `values`; None when empty.

    Nearest rank rather than interpolation: every figure printed is a wait that really happened.
    """
    if not values:
        return None
    ordered = values if presorted else sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def to_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.1f}"
