"""How the reports write durations, times, shares and counts (one place, so both reports
agree)."""

from __future__ import annotations

import math
from datetime import UTC, datetime


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and its noun, singular for exactly one: "1 record", "0 records", "2 records"."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def were(n: int) -> str:
    """The verb agreeing with a count of `n`: "1 connection was", "2 connections were"."""
    return "was" if n == 1 else "were"


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def share(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.1%}"


def stamp(ts: float) -> str:
    if not math.isfinite(ts):
        return "n/a"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
