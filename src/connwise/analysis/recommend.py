"""Recommendations with their reasons, from an `Assessment`.

Each recommendation names what to set, for which scope, and why in numbers taken from the
records, so an operator can check the reasoning instead of trusting it:

* *Pool size and warm target per time-of-week window*: the warm target covers the p95 of busy
  concurrency in the window, the maximum size the window's peak plus 25% headroom (room for a
  peak a little above the one observed without sizing for a surge that never came). Sizes are
  rounded up to the 1-1.5-2-2.5-3-4-5-6-8 series (steps of 20-33%), so that adjacent hours with
  similar load merge into one window instead of 168 slightly different ones; the warm target,
  though, never above the window's peak (rounded up to a whole connection). Fewer than
  `MIN_SEGMENT_RECORDS` records size nothing: the advice is to keep the current sizes.
* *Idle timeouts* from the healthy-gap distribution: past the zombie threshold of the kind
  (`k x p99` of gaps after which connections were used again), an idle connection almost never
  serves again; the connection-seconds idled past it are what the timeout saves. Never below
  the floor the live watch of the kind applies (`kind_floor`: 30 s for pools, 10 s for client
  connections), under which that watch keeps an idle connection as warm capacity. A segment
  whose own threshold (learned from `min_samples` gaps or more) is longer raises the timeout to
  it: a slow segment with under 1% of the kind's gaps is invisible in the kind's p99, and a
  timeout under its threshold would close its healthy connections between two uses.
* *Keep-alive* from the gaps between requests on one connection (covering every segment with
  `min_samples` of them, as idle timeouts do) and the reconnection rate; and keeping TCP
  keep-alive probes on when they found half-open connections.
* *Segment differences*: segments whose establishment time, error rate or reconnection rate is
  far from the others (x2 and more, on at least `MIN_SEGMENT_RECORDS` records).
"""

from __future__ import annotations

import math

import numpy as np

from connwise.analysis.assessment import (
    MIN_SEGMENT_RECORDS,
    WEEKDAYS,
    Assessment,
    Recommendation,
    quantile,
)
from connwise.analysis.fmt import count, were
from connwise.analysis.fmt import duration as _duration
from connwise.core.zombies import kind_floor

HEADROOM = 1.25


_NICE = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def nice(value: float) -> int:
    """The smallest whole number of the 1-1.5-2-2.5-3-4-5-6-8 x 10^k series >= `value`."""
    if value <= 1:
        return 1
    scale = 10.0 ** math.floor(math.log10(value))
    for step in _NICE:
        candidate = math.ceil(step * scale - 1e-9)
        if candidate >= value - 1e-9:
            return int(candidate)
    return int(10 * scale)


def _slot(slot: int) -> str:
    slot %= 7 * 24
    return f"{WEEKDAYS[slot // 24]} {slot % 24:02d}:00"


def _window(first: int, last: int) -> str:
    """Slots first..last (hours of the week, Monday 00:00 = 0) as `Mon 08:00-12:00`."""
    start = _slot(first)
    if first // 24 == last // 24:
        end = (last + 1) % 24
        return f"{start}-{end:02d}:00" if end else f"{start}-24:00"
    return f"{start} to {_slot(last + 1)}"


def sizing(result: Assessment) -> list[Recommendation]:
    p95, peak = result.week_p95.ravel(), result.week_max.ravel()
    seen = np.isfinite(peak)
    if not seen.any():
        return []
    counted = result.kpis.layer_records
    if counted < MIN_SEGMENT_RECORDS:
        return [Recommendation(
            "pool size", "every window", "keep the current pool sizes and warm targets",
            f"only {count(counted, 'record')} to measure concurrency from; "
            f"{MIN_SEGMENT_RECORDS} are needed before a time-of-week window's peak says more "
            "than what these few did")]
    plans: list[tuple[int, int, int, int, float, float]] = []  # first, last, warm, max, p95, peak
    for slot in range(7 * 24):
        if not seen[slot]:
            continue
        # Never above the window's peak: rounding up to the series must not hold warm
        # connections that not even the busiest moment used (1 where nothing was busy).
        warm = min(nice(float(p95[slot])), math.ceil(float(peak[slot]) - 1e-9))
        size = max(warm, nice(float(peak[slot]) * HEADROOM))
        if plans and plans[-1][1] == slot - 1 and plans[-1][2:4] == (warm, size):
            first, _, _, _, top95, top = plans[-1]
            plans[-1] = (first, slot, warm, size, max(top95, float(p95[slot])),
                         max(top, float(peak[slot])))
        else:
            plans.append((slot, slot, warm, size, float(p95[slot]), float(peak[slot])))
    out = []
    for first, last, warm, size, top95, top in plans:
        out.append(Recommendation(
            "pool size", _window(first, last), f"warm target {warm}, max_size {size}",
            f"busy concurrency there: p95 {top95:.1f}, peak {top:.1f}; the warm target covers "
            f"the p95, max_size the peak plus {HEADROOM - 1:.0%} headroom"))
    return out


def idle_timeouts(result: Assessment) -> list[Recommendation]:
    out = []
    rules = result.rules
    for kind, gaps in sorted(result.gaps.items()):
        if kind == "request":
            continue
        tails = result.tails.get(kind, np.zeros(0))
        if gaps.size < rules.min_samples:
            out.append(Recommendation(
                "idle timeout", kind, "keep the current idle timeout",
                f"only {count(gaps.size, 'idle gap')} ended in reuse; {rules.min_samples} are "
                "needed to learn from them"))
            continue
        p99 = quantile(gaps, rules.quantile)
        floor = kind_floor(kind, rules)
        timeout = math.ceil(max(floor, rules.k * p99))
        # Under the floor, the live watch of the kind keeps an idle connection as warm
        # capacity: a shorter timeout would close what the watch never calls a zombie.
        floored = (f"; raised to the live watch's floor of {floor:g} s, under which an idle "
                   f"{kind} connection is warm capacity, not waste"
                   if floor > rules.k * p99 else "")
        own = [(value, key) for key, value in result.thresholds.items()
               if key.split("|", 1)[0] == kind
               and result.threshold_samples.get(key, 0) >= rules.min_samples]
        slowest, segment = max(own, default=(0.0, ""))
        raised = ""
        if slowest > timeout:
            timeout = math.ceil(slowest)
            raised = (f"; raised for {segment.split('|', 1)[1].replace('|', ' / ')}, whose own "
                      f"connections came back within {_duration(slowest / rules.k)} (99%)")
        wasted = float(np.maximum(tails - timeout, 0).sum())
        longer = int((tails > timeout).sum())
        longest = float(tails.max()) if tails.size else 0.0
        out.append(Recommendation(
            "idle timeout", kind, f"idle_timeout {timeout} s",
            f"99% of reused {kind} connections came back within {_duration(p99)}; one idle "
            f"{rules.k:g}x longer was almost never used again. {longer} of "
            f"{count(result.kinds.get(kind, 0), 'connection')} idled past {timeout} s before "
            f"{'it' if longer == 1 else 'they'} closed (longest {_duration(longest)}), "
            f"holding {wasted / 3600:.1f} connection-hours for nothing{floored}{raised}"))
    return out


def keepalive(result: Assessment) -> list[Recommendation]:
    out = []
    gaps = result.gaps.get("request")
    reuse = result.kpis.reuse_ratio
    if result.kinds.get("request") and result.request_reuse is None:
        out.append(Recommendation(
            "keep-alive", "logs", "log $connection and $connection_requests",
            "these logs cannot tell a new connection from a reused one, so neither the reuse "
            "ratio nor a keep-alive timeout can be measured; add both variables to log_format"))
    if gaps is not None and gaps.size < result.rules.min_samples:
        out.append(Recommendation(
            "keep-alive", "client connections", "keep the current keepalive_timeout",
            f"only {count(gaps.size, 'follow-up request')} on a connection; "
            f"{result.rules.min_samples} "
            "are needed to learn from them"))
    elif gaps is not None:
        p95, p99 = quantile(gaps, 0.95), quantile(gaps, 0.99)
        # A segment with under 1% of the follow-ups does not show in their p99: each one with
        # enough of its own is covered too, or its clients would all reconnect.
        own = [(quantile(g, 0.99), segment) for segment, g in result.request_gaps.items()
               if g.size >= result.rules.min_samples]
        slowest, segment = max(own, default=(0.0, ""))
        raised = (f"; raised for {segment}, whose follow-ups came within {_duration(slowest)} "
                  "(99%)" if slowest > p99 else "")
        timeout = max(5, min(600, math.ceil(max(p99, slowest) * 1.2)))
        out.append(Recommendation(
            "keep-alive", "client connections", f"keepalive_timeout {timeout} s",
            f"95% of follow-up requests on a connection came within {_duration(p95)} and 99% "
            f"within {_duration(p99)}; a longer timeout only holds idle connections, a shorter "
            f"one forces reconnects{raised}"))
    if reuse is not None and reuse < 0.5 and result.kpis.requests >= result.rules.min_samples:
        out.append(Recommendation(
            "keep-alive", "all", "enable or lengthen keep-alive and connection reuse",
            f"only {reuse:.0%} of requests reused an open connection: each of the others paid "
            f"a connection set-up (p95 {_duration(result.kpis.establish_p95)})"))
    if result.kpis.half_open:
        # A record is flagged half-open only when keep-alive probes found its peer gone (the
        # gateway's, on by default): the probes are on already, and they are what to keep.
        out.append(Recommendation(
            "keep-alive", "TCP", "keep TCP keep-alive probes on (the gateway's keepalive_idle, "
            "keepalive_interval, keepalive_count); a shorter keepalive_idle frees such "
            "connections sooner",
            f"{count(result.kpis.half_open, 'connection')} {were(result.kpis.half_open)} "
            "half-open (the peer vanished without "
            "closing) and were found by keep-alive probes; without probes an idle one is held "
            "for ever, and with Linux's default probe timing for 2 h 11 min"))
    return out


def _ratio(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or min(a, b) <= 0:
        return 1.0
    return max(a, b) / min(a, b)


def segment_differences(result: Assessment, top: int = 5) -> list[Recommendation]:
    big = [s for s in result.segments if s.records >= MIN_SEGMENT_RECORDS]
    if len(big) < 2:
        return []
    findings: list[tuple[float, Recommendation]] = []

    def compare(metric: str, value: str, fmt: str, advice: str,
                minimum: float = 0.0) -> None:
        # Within one kind: a pool's connect time says nothing about a client's.
        for kind in sorted({s.kind for s in big}):
            ranked = [s for s in big if s.kind == kind and math.isfinite(getattr(s, value))]
            if len(ranked) < 2:
                continue
            worst = max(ranked, key=lambda s: getattr(s, value))
            best = min(ranked, key=lambda s: getattr(s, value))
            a, b = getattr(worst, value), getattr(best, value)
            ratio = _ratio(a, b)
            if ratio >= 2.0 and a - b >= minimum:
                findings.append((ratio, Recommendation(
                    "segments", worst.key, advice,
                    f"{metric} of {kind} records is {fmt.format(a)} for {worst.key} against "
                    f"{fmt.format(b)} for {best.key} ({ratio:.1f}x; {worst.records} and "
                    f"{best.records} records)")))

    compare("p95 establishment time", "establish_p95", "{:.3f} s",
            "longer connect timeout and warmer pool for this segment, or an edge closer to it")
    compare("error rate", "error_rate", "{:.1%}", "investigate errors of this segment first",
            minimum=0.01)
    compare("reconnection rate", "reconnection_rate", "{:.0%}",
            "longer keep-alive for this segment's clients", minimum=0.05)
    compare("zombie share", "zombie_share", "{:.1%}",
            "shorter idle timeout or zombie reclaim for this segment", minimum=0.02)
    findings.sort(key=lambda f: -f[0])
    return [r for _, r in findings[:top]]


#: A zombie share at or above this calls for reclaim rather than reports only (the essay's
#: case found 15% lingering; a few percent is the noise of clients that just went away), on
#: at least `MIN_SEGMENT_RECORDS` records of the kind: a share of a handful says nothing.
RECLAIM_SHARE = 0.05


def zombies(result: Assessment) -> list[Recommendation]:
    out = []
    for kind, (found, records, seconds) in sorted(result.zombies_by_kind.items()):
        if not found:
            continue
        share = found / records
        worst = result.worst_zombie_segment.get(kind)
        where = f"; most in {worst[0]} ({worst[1]})" if worst is not None else ""
        few = records < MIN_SEGMENT_RECORDS
        action = ("report zombies (the default) and watch" if few or share < RECLAIM_SHARE
                  else "turn on zombie reclaim (reclaim = true, grace 30 s)")
        thin = (f"; too few records to call for reclaim ({MIN_SEGMENT_RECORDS} are needed)"
                if few else "")
        out.append(Recommendation(
            "zombies", kind, action,
            f"{found} of {count(records, f'{kind} record')} ({share:.1%}) idled past "
            f"{'its' if found == 1 else 'their'} segment's threshold or {were(found)} "
            f"half-open, holding {seconds / 3600:.1f} connection-hours "
            f"serving nothing{where}{thin}"))
    return out


def recommend(result: Assessment) -> list[Recommendation]:
    """Every recommendation for `result`, also stored in `result.recommendations`."""
    result.recommendations = [*sizing(result), *idle_timeouts(result), *keepalive(result),
                              *zombies(result), *segment_differences(result)]
    return result.recommendations

