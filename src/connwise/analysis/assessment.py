"""The baseline: KPIs, segments, concurrency, zombies — computed from connection records.

Theory of operation
-------------------
Everything here is a pure function of a `Frame` (records as columns) and the zombie rules, so
the same code assesses a week of nginx logs, a gateway's records or a pool's, and tests feed it
frames with a known answer.

* *Establishment time* is the upstream connect time where the record has one (gateway, HAProxy
  `Tc`, nginx `$upstream_connect_time`), else the time in the connecting phase (pool).
* *Concurrency* is the number of record intervals [started_at, ended_at] open at once: open
  connections for connection records, requests in flight for log records. It is swept exactly
  (every start and end, ends before starts at equal times, so a connection closing as another
  opens is not counted with it; a record of no duration, such as a request logged with
  `$request_time` 0.000, counts at its instant) and kept per time bin as the bin's maximum, so
  a one-second spike in a five-minute bin is not averaged away.
* *Busy concurrency* weighs each record by its busy share, active time over lifetime: 1 for a
  request (exact), the utilisation of a connection for pool and gateway records (its uses
  spread over its life). Warm targets are sized on busy concurrency, not on open connections,
  which would only repeat whatever the current pool size is.
* *Reuse ratio* is the share of uses that found a connection already open: `requests - 1` of
  every connection record, and requests with `conn_seq > 1` of a log that records
  `$connection_requests`. Its complement per segment is the *reconnection rate*.
* *Each request once* in the figures that size pools: concurrency (open and busy, the peak,
  the windows and the week profile), establishment time and the reuse ratio leave the `client`
  records out when the store has `upstream` records. A gateway records each proxied request
  twice, on its client connection and on the upstream connection that carried it: counted
  together, the busy concurrency (and with it every pool size and warm target) came out twice
  the backends' real load, and a client record's `upstream_connect_s` repeated its upstream
  record's connect. `Kpis.layer` says which records these figures count.
* *Zombies* follow the core rules (`connwise.core.zombies`): thresholds are learned per
  (kind, region, device) from healthy gaps (`max_gap_s`) as `k x p99`, with the same fallbacks
  (a segment still learning keeps the default, or the longer of all segments' threshold and
  `k x` its own longest gap) and the floor the live watch of the kind applies (`kind_floor`:
  30 s for pool records, 10 s for client records), and a record is a zombie when its
  `tail_idle_s` passes its threshold or a live watch flagged or reclaimed it. The report has
  every sample, so it takes exact quantiles instead of the live histogram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, timezone
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from connwise.analysis.frame import CONNECTION_KINDS, Floats, Frame, local_hours
from connwise.core.zombies import ZombieRules, kind_floor, learned_threshold

#: Bin widths the concurrency series may use, in seconds.
BIN_WIDTHS = (1, 5, 10, 30, 60, 300, 900, 3600)
#: The series aims at this many bins at most (more only for spans past 2000 hours).
MAX_BINS = 2000
#: A segment needs this many records before its figures are compared with the others.
MIN_SEGMENT_RECORDS = 30
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def quantile(values: Floats, q: float) -> float:
    """The `q` quantile (0..1) of the finite values, NaN if there are none."""
    finite = values[np.isfinite(values)]
    return float(np.quantile(finite, q)) if finite.size else math.nan


@dataclass(frozen=True, slots=True)
class Kpis:
    records: int
    requests: int
    establish_p50: float
    establish_p95: float
    establish_p99: float
    establish_samples: int
    error_rate: float
    zombies: int
    zombie_share: float
    #: Connection-seconds zombies held while serving nothing.
    zombie_seconds: float
    leaks: int
    half_open: int
    peak_concurrency: int
    peak_at: float
    #: None when the records cannot tell (a log without `$connection_requests`).
    reuse_ratio: float | None
    #: How many records the concurrency figures count (those of `layer`).
    layer_records: int
    #: Which records the concurrency, establishment and reuse figures count (see the module
    #: doc): `backend connections` or `all records`.
    layer: str = "all records"


@dataclass(frozen=True, slots=True)
class SegmentStats:
    key: str
    #: The kind most of the segment's records have: segments are compared within a kind.
    kind: str
    records: int
    requests: int
    error_rate: float
    establish_p50: float
    establish_p95: float
    lifespan_p50: float
    lifespan_p95: float
    #: Share of uses that opened a new connection; NaN when unknown.
    reconnection_rate: float
    zombies: int
    zombie_share: float
    zombie_seconds: float


@dataclass(frozen=True, slots=True)
class Concurrency:
    """Peak concurrency per bin: bin i covers [start + i*width, start + (i+1)*width)."""

    start: float
    width: float
    peaks: Floats
    #: The first moment the level reached its maximum (exact, not its bin's start).
    peak_at: float = math.nan

    @property
    def times(self) -> Floats:
        return self.start + self.width * np.arange(len(self.peaks), dtype=np.float64)


@dataclass(slots=True)
class Assessment:
    store: str
    tz: str
    segments_by: tuple[str, ...]
    first: float
    last: float
    kpis: Kpis
    segments: list[SegmentStats]
    #: Open connections (or requests in flight), and busy concurrency (see the docstring).
    concurrency: Concurrency
    busy: Concurrency
    peak_windows: list[tuple[float, float, int]]
    #: 7 x 24 (Monday first, local hours): p95 and max of busy concurrency; NaN = no data.
    week_p95: Floats
    week_max: Floats
    establish: Floats
    lifespans: dict[str, Floats]
    #: Healthy idle gaps per kind: what idle and keep-alive timeouts are set from.
    gaps: dict[str, Floats]
    #: Gaps between requests on one connection (`gaps["request"]`) per `region / device`.
    request_gaps: dict[str, Floats]
    #: Idle tails of connections that ended idle, per kind.
    tails: dict[str, Floats]
    thresholds: dict[str, float]
    #: Healthy gaps each threshold segment learned from (below `rules.min_samples`, its
    #: threshold is a fallback, not its own).
    threshold_samples: dict[str, int]
    kinds: dict[str, int]
    #: Reuse ratio of the request records alone (None: the log does not say).
    request_reuse: float | None
    #: Per kind: (zombies, records, connection-seconds zombies held).
    zombies_by_kind: dict[str, tuple[int, int, float]]
    #: Per kind with zombies: the segment where its zombies held the most connection-seconds,
    #: and how many of them are there (a segment holds records of every kind).
    worst_zombie_segment: dict[str, tuple[str, int]]
    rules: ZombieRules
    recommendations: list[Recommendation] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Recommendation:
    topic: str
    scope: str
    action: str
    reason: str


# -- the pieces -----------------------------------------------------------------------------------


def sizing_layer(frame: Frame) -> tuple[npt.NDArray[np.bool_], str]:
    """The records that count in the figures that size pools, and what to call them: all but
    the gateway's client connections when it recorded its upstream ones (the same requests),
    else all."""
    kind = frame.text("kind")
    if (kind == "upstream").any():
        return kind != "client", "all records but client connections (their requests are " \
                                 "counted on the upstream connections that carried them)"
    return np.ones(frame.n, dtype=bool), "all records"


def establishment(frame: Frame) -> Floats:
    upstream = frame.num("upstream_connect_s")
    connecting = frame.num("connecting_s")
    own = np.where(connecting > 0, connecting, np.nan)
    return np.where(np.isfinite(upstream), upstream, own)


def segment_keys(frame: Frame, dims: tuple[str, ...], tz: ZoneInfo | timezone) -> list[str]:
    parts: list[list[str]] = []
    for dim in dims:
        if dim == "hour":
            hours = np.floor(local_hours(frame.num("started_at"), tz) % 24).astype(int)
            parts.append([f"{h:02d}h" for h in hours])
        else:
            parts.append([v or "unknown" for v in frame.text(dim)])
    if not parts:
        return ["all"] * frame.n
    return [" / ".join(values) for values in zip(*parts, strict=True)]


def threshold_keys(frame: Frame) -> npt.NDArray[np.object_]:
    """Each record's zombie segment, `kind|region|device`."""
    return np.array([f"{k}|{r or 'unknown'}|{d or 'unknown'}"
                     for k, r, d in zip(frame.text("kind"), frame.text("region"),
                                        frame.text("device"), strict=True)], dtype=object)


def healthy_gaps(frame: Frame) -> npt.NDArray[np.bool_]:
    """The records whose longest gap was healthy (it ended in traffic; not flagged live)."""
    healthy: npt.NDArray[np.bool_] = (frame.num("max_gap_s") > 0) & (frame.text("flag") == "")
    return healthy


def zombie_verdicts(frame: Frame, rules: ZombieRules) -> tuple[npt.NDArray[np.bool_],
                                                             npt.NDArray[np.bool_],
                                                             dict[str, float]]:
    """(zombie, leak, thresholds): the core rule over all records at once.

    Mirrors `core.zombies.judge` record by record (a test holds them equal): half-open and
    zombie flags of live watches count as zombies, and so does a connection a live watch
    reclaimed (`close_reason` zombie: a pool's records carry no flag); a leak is a flagged leak
    or a pool record held past the leak threshold; otherwise a zombie idles past its learned
    threshold.
    """
    kind, flag = frame.text("kind"), frame.text("flag")
    unique, inverse = np.unique(threshold_keys(frame), return_inverse=True)
    gaps = frame.num("max_gap_s")
    healthy = healthy_gaps(frame)
    everything = gaps[healthy]
    fallback = learned_threshold(rules, quantile(everything, rules.quantile), everything.size)
    thresholds: dict[str, float] = {}
    per_key = np.empty(len(unique))
    for i, key in enumerate(unique):
        sample = gaps[healthy & (inverse == i)]
        floored = replace(rules, floor=kind_floor(str(key).split("|", 1)[0], rules))
        value = learned_threshold(floored, quantile(sample, rules.quantile), sample.size,
                                  fallback, float(sample.max()) if sample.size else 0.0)
        thresholds[str(key)] = value
        per_key[i] = value
    limit = per_key[inverse] if frame.n else np.empty(0)
    flagged = (flag == "half_open") | (flag == "zombie") | (frame.text("close_reason") == "zombie")
    leak = flag == "leak"
    if rules.leak_threshold is not None:
        leak |= (kind == "pool") & (frame.num("max_held_s") >= rules.leak_threshold)
    leak &= ~flagged
    zombie = flagged | (~leak & (frame.num("tail_idle_s") > limit))
    return zombie, leak, thresholds


def sweep(starts: Floats, ends: Floats,
          weights: Floats | None = None) -> tuple[Floats, Floats]:
    """Event times and the concurrency level just after each (ends first at equal times, but
    the end of a record of no duration after the starts: it counts at its instant); each
    interval counts `weights[i]` (1 by default)."""
    ends = np.maximum(ends, starts)
    times = np.concatenate([starts, ends])
    w = np.ones(len(starts)) if weights is None else weights
    deltas = np.concatenate([w, -w])
    rank = np.concatenate([np.ones(len(starts)), np.where(ends > starts, 0.0, 2.0)])
    order = np.lexsort((rank, times))
    return times[order], np.cumsum(deltas[order])


def concurrency(starts: Floats, ends: Floats, weights: Floats | None = None) -> Concurrency:
    if len(starts) == 0:
        return Concurrency(0.0, 1.0, np.zeros(0))
    times, level = sweep(starts, ends, weights)
    first, last = float(times[0]), float(times[-1])
    span = max(last - first, 1.0)
    width = next((w for w in BIN_WIDTHS if span / w <= MAX_BINS), BIN_WIDTHS[-1])
    start = math.floor(first / width) * width
    bins = int((last - start) // width) + 1
    edges = start + width * np.arange(bins + 1, dtype=np.float64)
    lo = np.searchsorted(times, edges[:-1], side="left")
    hi = np.searchsorted(times, edges[1:], side="left")
    entering = np.where(lo > 0, level[np.maximum(lo - 1, 0)], 0.0)
    within = np.maximum.reduceat(level, np.minimum(lo, len(level) - 1))
    peaks = np.where(hi > lo, np.maximum(within, entering), entering)
    return Concurrency(float(start), float(width), peaks, float(times[int(level.argmax())]))


def peak_windows(series: Concurrency, top: int = 5) -> list[tuple[float, float, int]]:
    """Runs of bins at >= 90% of the peak, highest first: (start, end, peak)."""
    peaks = series.peaks
    if peaks.size == 0 or peaks.max() <= 0:
        return []
    hot = peaks >= 0.9 * peaks.max()
    windows: list[tuple[float, float, int]] = []
    i = 0
    while i < len(peaks):
        if not hot[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(peaks) and hot[j + 1]:
            j += 1
        windows.append((series.start + i * series.width, series.start + (j + 1) * series.width,
                        int(peaks[i:j + 1].max())))
        i = j + 1
    windows.sort(key=lambda w: (-w[2], w[0]))
    return windows[:top]


def week_profile(series: Concurrency, tz: ZoneInfo | timezone) -> tuple[Floats, Floats]:
    p95 = np.full((7, 24), np.nan)
    peak = np.full((7, 24), np.nan)
    if series.peaks.size == 0:
        return p95, peak
    hours = local_hours(series.times + series.width / 2, tz)
    slots = ((np.floor(hours / 24).astype(int) + 3) % 7) * 24 + (np.floor(hours) % 24).astype(int)
    for slot in np.unique(slots):
        values = series.peaks[slots == slot]
        p95.flat[slot] = float(np.quantile(values, 0.95))
        peak.flat[slot] = float(values.max())
    return p95, peak


def reuse(frame: Frame, mask: npt.NDArray[np.bool_] | None = None) -> float | None:
    kind, requests, seq = frame.text("kind"), frame.num("requests"), frame.num("conn_seq")
    if mask is None:
        mask = np.ones(frame.n, dtype=bool)
    conn = mask & np.isin(kind, list(CONNECTION_KINDS)) & (requests > 0)
    logged = mask & ~np.isin(kind, list(CONNECTION_KINDS)) & np.isfinite(seq)
    uses = float(requests[conn].sum()) + float(logged.sum())
    if uses == 0:
        return None
    reused = float(np.maximum(requests[conn] - 1, 0).sum()) + float((seq[logged] > 1).sum())
    return reused / uses


def request_gaps(frame: Frame) -> tuple[Floats, npt.NDArray[np.object_]]:
    """Gaps between consecutive requests on one connection, from logs that record
    `$connection_requests` (and `$connection`, which names the connection), and the segment
    (`region / device`) of each."""
    seq = frame.num("conn_seq")
    mask = np.isfinite(seq) & ~np.isin(frame.text("kind"), list(CONNECTION_KINDS))
    if mask.sum() < 2:
        return np.zeros(0), np.empty(0, dtype=object)
    keys = np.array([f"{n}|{s}|{c}" for n, s, c in zip(frame.text("node")[mask],
                                                       frame.text("source")[mask],
                                                       frame.text("conn_id")[mask],
                                                       strict=True)], dtype=object)
    where = np.array([f"{r or 'unknown'} / {d or 'unknown'}"
                      for r, d in zip(frame.text("region")[mask], frame.text("device")[mask],
                                      strict=True)], dtype=object)
    starts, ends = frame.num("started_at")[mask], frame.num("ended_at")[mask]
    order = np.lexsort((starts, keys))
    keys, where, starts, ends = keys[order], where[order], starts[order], ends[order]
    same = keys[1:] == keys[:-1]
    gaps = starts[1:] - ends[:-1]
    return np.asarray(np.maximum(gaps[same], 0.0), dtype=np.float64), where[1:][same]


# -- the whole assessment -------------------------------------------------------------------------


def assess(frame: Frame, *, store: str = "", segments_by: tuple[str, ...] = ("region", "device",
                                                                             "hour"),
           tz: ZoneInfo | timezone = UTC, rules: ZombieRules | None = None) -> Assessment:
    """The baseline of `frame`; see the module docstring. Recommendations are added by
    `connwise.analysis.recommend.recommend`."""
    rules = (rules or ZombieRules()).validate()
    starts, ends = frame.num("started_at"), frame.num("ended_at")
    ends = np.maximum(ends, starts)
    n = frame.n
    requests = frame.num("requests")
    errors = frame.num("errors") > 0
    layer, layer_name = sizing_layer(frame)
    establish = establishment(frame)
    zombie, leak, thresholds = zombie_verdicts(frame, rules)
    tail = frame.num("tail_idle_s")
    lifespan = ends - starts
    series = concurrency(starts[layer], ends[layer])
    peak = int(series.peaks.max()) if series.peaks.size else 0
    log_record = ~np.isin(frame.text("kind"), list(CONNECTION_KINDS))
    share = np.divide(frame.num("active_s"), lifespan, out=np.ones(n), where=lifespan > 0)
    weights = np.where(log_record, 1.0, np.clip(share, 0.0, 1.0))
    busy = concurrency(starts[layer], ends[layer], weights[layer])
    week_p95, week_max = week_profile(busy, tz)
    kpis = Kpis(
        records=n,
        requests=int(np.nansum(requests)),
        establish_p50=quantile(establish[layer], 0.50),
        establish_p95=quantile(establish[layer], 0.95),
        establish_p99=quantile(establish[layer], 0.99),
        establish_samples=int(np.isfinite(establish[layer]).sum()),
        error_rate=float(errors.mean()) if n else math.nan,
        zombies=int(zombie.sum()),
        zombie_share=float(zombie.mean()) if n else math.nan,
        zombie_seconds=float(tail[zombie].sum()),
        leaks=int(leak.sum()),
        half_open=int((frame.text("flag") == "half_open").sum()),
        peak_concurrency=peak,
        peak_at=series.peak_at,
        reuse_ratio=reuse(frame, layer),
        layer_records=int(layer.sum()),
        layer=layer_name,
    )
    keys = np.array(segment_keys(frame, segments_by, tz), dtype=object)
    kind = frame.text("kind")
    segments: list[SegmentStats] = []
    lifespans: dict[str, Floats] = {}
    for key in np.unique(keys) if n else []:
        mask = keys == key
        rate = reuse(frame, mask)
        count = int(mask.sum())
        kinds_here, counts = np.unique(kind[mask], return_counts=True)
        segments.append(SegmentStats(
            key=str(key), kind=str(kinds_here[counts.argmax()]), records=count,
            requests=int(np.nansum(requests[mask])),
            error_rate=float(errors[mask].mean()),
            establish_p50=quantile(establish[mask], 0.5),
            establish_p95=quantile(establish[mask], 0.95),
            lifespan_p50=quantile(lifespan[mask], 0.5),
            lifespan_p95=quantile(lifespan[mask], 0.95),
            reconnection_rate=1.0 - rate if rate is not None else math.nan,
            zombies=int(zombie[mask].sum()), zombie_share=float(zombie[mask].mean()),
            zombie_seconds=float(tail[mask & zombie].sum())))
        lifespans[str(key)] = lifespan[mask]
    segments.sort(key=lambda s: -s.records)
    gaps: dict[str, Floats] = {}
    tails: dict[str, Floats] = {}
    kinds: dict[str, int] = {}
    zombies_by_kind: dict[str, tuple[int, int, float]] = {}
    worst_zombie_segment: dict[str, tuple[str, int]] = {}
    healthy_gap = (frame.num("max_gap_s") > 0) & ~zombie
    for name in np.unique(kind) if n else []:
        of_kind = kind == name
        kinds[str(name)] = int(of_kind.sum())
        zombies_by_kind[str(name)] = (int((zombie & of_kind).sum()), int(of_kind.sum()),
                                      float(tail[zombie & of_kind].sum()))
        if (zombie & of_kind).any():
            where, inverse = np.unique(keys[zombie & of_kind], return_inverse=True)
            held = np.bincount(inverse, weights=np.nan_to_num(tail[zombie & of_kind]))
            found = np.bincount(inverse)
            top = int(np.lexsort((found, held))[-1])
            worst_zombie_segment[str(name)] = (str(where[top]), int(found[top]))
        if name in CONNECTION_KINDS:
            gaps[str(name)] = frame.num("max_gap_s")[of_kind & healthy_gap]
            tails[str(name)] = tail[of_kind & (tail > 0)]
    learned_keys, learned_counts = np.unique(threshold_keys(frame)[healthy_gaps(frame)],
                                             return_counts=True)
    logged_gaps, logged_where = request_gaps(frame)
    if logged_gaps.size:
        gaps["request"] = logged_gaps
    return Assessment(
        store=store, tz=str(tz), segments_by=segments_by,
        first=float(starts.min()) if n else math.nan, last=float(ends.max()) if n else math.nan,
        kpis=kpis, segments=segments, concurrency=series, busy=busy,
        peak_windows=peak_windows(series),
        week_p95=week_p95, week_max=week_max, establish=establish[layer & np.isfinite(establish)],
        lifespans=lifespans, gaps=gaps,
        request_gaps={str(k): logged_gaps[logged_where == k] for k in np.unique(logged_where)},
        tails=tails, thresholds=thresholds,
        threshold_samples={str(k): int(n) for k, n in zip(learned_keys, learned_counts,
                                                          strict=True)},
        kinds=kinds,
        request_reuse=reuse(frame, kind == "request"), zombies_by_kind=zombies_by_kind,
        worst_zombie_segment=worst_zombie_segment,
        rules=rules)
