"""Demand series from the telemetry store: the history the forecaster learns from in production.

The store holds one record per connection (start, end, requests, kind, source, backend, class,
region...). `StoreSource` turns it into one `DemandSeries` per segment, on a grid of 1 minute
to 1 hour, for one of three metrics:

- ``connections``: connections opened per period (records whose start falls in it);
- ``requests``: requests per period, each record's ``requests`` spread evenly over its life
  ``[started_at, ended_at)`` — a keep-alive connection's requests arrive over its life, not all
  at its start, and a long WebSocket would otherwise put a day's messages into one minute;
- ``concurrency``: the time-weighted mean number of connections open during the period.

Theory of operation
-------------------
Everything is aggregated in SQL, in one pass over the window, the same on SQLite and
PostgreSQL: only a few rows per period and segment come back, never the records. Concurrency
and spread requests need each record's overlap with every period it spans, which a join of
records with the grid would compute in O(records x periods). Instead let
``B(t) = sum_r w_r * clamp(t - s_r, 0, e_r - s_r)`` (busy time up to ``t``, weighted by
``w_r``: 1 for concurrency, ``requests / (e_r - s_r)`` for requests). At a period boundary
``t_k``, ``B(t_k) = t_k * (W_s - W_e) - (WS_s - WS_e)`` where ``W_s`` and ``WS_s`` sum ``w``
and ``w * s`` over the records started before ``t_k`` (``W_e``, ``WS_e`` the same over those
ended before it). SQL groups those four sums by the period of the start and of the end; a
cumulative sum in NumPy gives ``B`` at every boundary, and the period's value is
``B(t_{k+1}) - B(t_k)`` (divided by the period for concurrency). Times are taken relative to the
window's start, so the sums keep their precision.

The mean hold time Little's law needs comes from the same records: for ``requests``, the time
connections spent active per request (``sum(active_s) / sum(requests)``); for the other two
metrics, the mean connection lifetime.

Periods without records count as zero demand: the store cannot tell "nothing happened" from
"nothing was recorded" (the node was down), so keep telemetry on wherever you forecast from it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from connwise.config import GatewayConfig
from connwise.core.plan import DemandKind
from connwise.errors import ConfigError
from connwise.forecast.series import MAX_STEP, MIN_STEP, DemandSeries
from connwise.telemetry.stores import StoreSpec

Metric = Literal["connections", "requests", "concurrency"]
METRICS: tuple[str, ...] = get_args(Metric)
#: What a segment can be made of: a record column, or `group` (the gateway backend group of the
#: record's backend, from a `groups` mapping).
DIMENSIONS = ("group", "source", "backend", "class_name", "region", "kind", "node", "device")
#: How far before the window a connection may have started and still count towards concurrency
#: and spread requests: one day bounds the scan (the index is on `started_at`) at the cost of
#: ignoring connections open for more than a day before the window.
DEFAULT_LOOKBACK = 86400.0
#: A record with no duration is taken to last this long (its requests still count).
MIN_DURATION = 1e-3
#: Joins the dimension values of a segment name (`api/eu`); an empty value reads as `-`.
SEPARATOR = "/"


@dataclass(frozen=True)
class HoldStats:
    """What a segment's records say about how long demand holds a connection."""

    records: int
    lifetime: float
    requests: float
    active: float

    def hold_time(self, metric: Metric) -> float | None:
        """Mean seconds one unit of `metric` holds a connection (Little's law W), or None."""
        if metric == "requests" and self.requests > 0:
            busy = self.active if self.active > 0 else self.lifetime
            return busy / self.requests
        return self.lifetime / self.records if self.records else None


def metric_kind(metric: Metric) -> DemandKind:
    """How the planner reads a metric: a count per period, or connections at once."""
    return "concurrency" if metric == "concurrency" else "arrivals"


def backend_groups(config: GatewayConfig) -> dict[str, str]:
    """Backend address -> group name of a gateway configuration (the `group` dimension). A
    backend listed in several groups counts for the first."""
    out: dict[str, str] = {}
    for name, group in config.groups.items():
        for backend in group.backends:
            out.setdefault(backend, name)
    return out


def parse_dimensions(text: str | Sequence[str]) -> tuple[str, ...]:
    """`"group,class_name"` -> ``("group", "class_name")``, checked against `DIMENSIONS`."""
    names = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    if not names:
        raise ConfigError("segment_by", text, "a segment needs at least one dimension",
                          f"use one or more of {', '.join(DIMENSIONS)}")
    for name in names:
        if name not in DIMENSIONS:
            raise ConfigError("segment_by", name, "unknown segment dimension",
                              f"use one or more of {', '.join(DIMENSIONS)}")
    if len(set(names)) != len(names):
        raise ConfigError("segment_by", text, "a dimension is named twice", "name each once")
    return tuple(names)


class _Params:
    """Placeholders in the store's dialect, collecting the values in order."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.values: list[Any] = []

    def __call__(self, value: float | str) -> str:
        self.values.append(value)
        if self.dialect == "sqlite":
            return "?"
        return f"${len(self.values)}::{'text' if isinstance(value, str) else 'float8'}"


class StoreSource:
    """A `DemandSource` over a telemetry store (see the module docstring).

    `store` is a SQLite path or a PostgreSQL DSN (or a `StoreSpec`); `step` the resolution in
    seconds (60..3600); `segment_by` the dimensions a segment is made of; `since`/`until` the
    window in Unix seconds (default: the records' first and last start, on the grid); `kinds`
    keeps only records of those kinds (default: all — a store holding both a pool's and a
    gateway's records would count the same demand twice); `groups` maps backend addresses to
    gateway groups for the `group` dimension (see `backend_groups`).

    The store is queried once, on first use. Raises `ConfigError` for bad arguments or an empty
    window, `StoreError` when the store cannot be opened or read.
    """

    def __init__(self, store: str | StoreSpec, *, metric: Metric = "connections",
                 step: int = 60, segment_by: str | Sequence[str] = ("source",),
                 since: float | None = None, until: float | None = None,
                 kinds: Iterable[str] = (), groups: Mapping[str, str] | None = None,
                 lookback: float = DEFAULT_LOOKBACK) -> None:
        self.spec = store if isinstance(store, StoreSpec) else StoreSpec.parse(store)
        if metric not in METRICS:
            raise ConfigError("metric", metric, "unknown demand metric",
                              f"use one of {', '.join(METRICS)}")
        if not isinstance(step, int) or not MIN_STEP <= step <= MAX_STEP:
            raise ConfigError("resolution", step, f"the resolution must be whole seconds in "
                              f"{MIN_STEP}..{MAX_STEP}", "use e.g. 60 (a minute) or 3600")
        self.metric: Metric = metric
        self.step = step
        self.segment_by = parse_dimensions(segment_by)
        self.groups = dict(groups or {})
        if "group" in self.segment_by and not self.groups:
            raise ConfigError("segment_by", "group", "the group dimension needs the gateway's "
                              "backend groups", "pass groups= (backend_groups(config)), or "
                              "--gateway-config on the command line")
        if since is not None and until is not None and not until > since:
            raise ConfigError("until", until, f"the window ends before it starts ({since})",
                              "give until > since")
        if not lookback >= 0:
            raise ConfigError("lookback", lookback, "it cannot be negative", "use seconds >= 0")
        self.kinds = tuple(kinds)
        self.lookback = lookback
        self._since = since
        self._until = until
        self._series: dict[str, DemandSeries] | None = None
        self._hold: dict[str, HoldStats] = {}

    @property
    def kind(self) -> DemandKind:
        return metric_kind(self.metric)

    @property
    def window(self) -> tuple[float, float]:
        """The window the series cover, ``[since, until)`` in Unix seconds."""
        self._load()
        assert self._since is not None and self._until is not None
        return self._since, self._until

    def segments(self) -> list[str]:
        return sorted(self._load())

    def series(self, segment: str) -> DemandSeries:
        loaded = self._load()
        if segment not in loaded:
            raise ConfigError("segment", segment, f"the store {self.spec} has no records of "
                              f"that segment in the window (it has "
                              f"{', '.join(sorted(loaded))})", "name one of those")
        return loaded[segment]

    def hold_time(self, segment: str | None = None) -> float:
        """Mean seconds one unit of the metric holds a connection, for Little's law: of
        `segment`, or of all segments together."""
        self._load()
        if segment is None:
            stats = HoldStats(*(sum(getattr(s, f) for s in self._hold.values())
                                for f in ("records", "lifetime", "requests", "active")))
        elif segment in self._hold:
            stats = self._hold[segment]
        else:
            raise ConfigError("segment", segment, "no records of that segment started in the "
                              "window", f"name one of {', '.join(sorted(self._hold))}")
        hold = stats.hold_time(self.metric)
        if hold is None or not hold > 0:
            raise ConfigError("hold_time", hold, f"the records of {segment or 'the store'} "
                              "do not show how long connections are held",
                              "pass the mean hold time yourself (--hold-time)")
        return hold

    # -- SQL ------------------------------------------------------------------------------------

    def _filters(self, p: _Params) -> str:
        if not self.kinds:
            return ""
        return f" AND kind IN ({', '.join(p(k) for k in self.kinds)})"

    def _segment_sql(self, p: _Params) -> str:
        parts = []
        for dim in self.segment_by:
            if dim == "group":
                cases = " ".join(f"WHEN {p(b)} THEN {p(g)}" for b, g in self.groups.items())
                parts.append(f"(CASE backend {cases} ELSE NULL END)")
            else:
                parts.append(f"(CASE WHEN COALESCE({dim}, '') = '' THEN '-' ELSE {dim} END)")
        return f" || '{SEPARATOR}' || ".join(parts)

    def _records_sql(self, p: _Params, since: float, until: float) -> str:
        """A CTE `w` of the window's records: segment, start, end, requests, active time,
        weight."""
        greatest = "max" if self.spec.kind == "sqlite" else "GREATEST"
        weight = "n / (e - s)" if self.metric == "requests" else "1.0"
        return (
            f"WITH r AS (SELECT {self._segment_sql(p)} AS seg, started_at AS s, "
            f"{greatest}(COALESCE(ended_at, started_at), started_at + {MIN_DURATION}) AS e, "
            f"COALESCE(requests, 0) AS n, COALESCE(active_s, 0) AS a "
            f"FROM {self.spec.table} WHERE started_at >= {p(since - self.lookback)} "
            f"AND started_at < {p(until)}{self._filters(p)}), "
            f"w AS (SELECT seg, s, e, n, a, {weight} AS w FROM r "
            f"WHERE seg IS NOT NULL AND e > {p(since)}) ")

    def _period_sql(self, p: _Params, column: str, since: float) -> str:
        # SQLite numbers `?` in the order of the text: build the placeholders in that order.
        before = f"CASE WHEN {column} < {p(since)} THEN -1 ELSE "
        rel = f"({column} - {p(since)}) / {p(float(self.step))}"
        if self.spec.kind == "sqlite":
            index = f"CAST({rel} AS INTEGER)"  # non-negative here: CAST truncates = floor
        else:
            index = f"CAST(floor({rel}) AS BIGINT)"
        return f"{before}{index} END"

    def _queries(self, since: float, until: float) -> list[tuple[str, list[Any]]]:
        sums = _Params(self.spec.kind)
        head = self._records_sql(sums, since, until)
        start = self._period_sql(sums, "s", since)
        start_rel = sums(since)
        end = self._period_sql(sums, "e", since)
        end_rel = sums(since)
        end_limit = sums(until)
        periods = (
            f"{head}SELECT seg, 0, {start}, count(*), sum(w), sum(w * (s - {start_rel})) "
            f"FROM w GROUP BY 1, 2, 3 UNION ALL "
            f"SELECT seg, 1, {end}, count(*), sum(w), sum(w * (e - {end_rel})) "
            f"FROM w WHERE e < {end_limit} GROUP BY 1, 2, 3")
        holds = _Params(self.spec.kind)
        head = self._records_sql(holds, since, until)
        hold = (f"{head}SELECT seg, count(*), sum(e - s), sum(n), sum(a) FROM w "
                f"WHERE s >= {holds(since)} GROUP BY 1")
        return [(periods, sums.values), (hold, holds.values)]

    def _bounds(self) -> tuple[float, float]:
        since, until = self._since, self._until
        if since is None or until is None:
            p = _Params(self.spec.kind)
            sql = (f"SELECT min(started_at), max(started_at) FROM {self.spec.table} "
                   f"WHERE started_at IS NOT NULL{self._filters(p)}")
            [[(first, last)]] = self.spec.fetch([(sql, p.values)])
            if first is None:
                raise ConfigError("store", str(self.spec), self._nothing("in it"),
                                  "record telemetry there first (or check --kind)")
            if since is None:
                since = float(first) if until is None else min(float(first), until - self.step)
            if until is None:
                until = (math.floor(max(float(last), since) / self.step) + 1) * self.step
        since = math.floor(since / self.step) * self.step
        periods = max(1, math.ceil((until - since) / self.step - 1e-9))
        return float(since), float(since + periods * self.step)

    def _nothing(self, where: str) -> str:
        kinds = f" of kind {', '.join(self.kinds)}" if self.kinds else ""
        return f"the store has no connection records{kinds} {where}"

    def _load(self) -> dict[str, DemandSeries]:
        if self._series is not None:
            return self._series
        since, until = self._bounds()
        periods, holds = self.spec.fetch(self._queries(since, until))
        n = round((until - since) / self.step)
        self._hold = {str(seg): HoldStats(int(c), float(life or 0.0), float(req or 0.0),
                                          float(act or 0.0))
                      for seg, c, life, req, act in holds}
        by_segment: dict[str, list[tuple[int, int, int, float, float]]] = {}
        for seg, side, index, count, weight, weighted in periods:
            by_segment.setdefault(str(seg), []).append(
                (int(side), int(index), int(count), float(weight or 0.0),
                 float(weighted or 0.0)))
        series = {}
        for seg, rows in by_segment.items():
            if seg not in self._hold:
                continue  # only connections open from before the window: no demand of its own
            values = self._values(rows, n)
            series[seg] = DemandSeries(seg, since, self.step, values)
        if not series:
            window = f"in the window {_stamp(since)} .. {_stamp(until)}"
            raise ConfigError("store", str(self.spec), self._nothing(window),
                              "widen the window (--since/--until) or check --kind")
        self._since, self._until = since, until
        self._series = series
        return series

    def _values(self, rows: list[tuple[int, int, int, float, float]], n: int) -> np.ndarray:
        if self.metric == "connections":
            counts = np.zeros(n)
            for side, index, count, _, _ in rows:
                if side == 0 and 0 <= index < n:
                    counts[index] += count
            return counts
        # B(t_k) at the n + 1 boundaries; slot k + 1 sums what started (or ended) in period k,
        # slot 0 what started before the window.
        weights = np.zeros((2, n + 1))
        weighted = np.zeros((2, n + 1))
        for side, index, _, weight, moment in rows:
            if -1 <= index < n:
                weights[side, index + 1] += weight
                weighted[side, index + 1] += moment
        open_weight = np.cumsum(weights[0] - weights[1])
        open_moment = np.cumsum(weighted[0] - weighted[1])
        busy = np.arange(n + 1) * self.step * open_weight - open_moment
        values = np.diff(busy)
        if self.metric == "concurrency":
            values = values / self.step
        out: np.ndarray = np.maximum(np.round(values, 9), 0.0)
        return out


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_resolution(text: str | int) -> int:
    """``"5m"`` -> 300, ``"1h"`` -> 3600, ``"90"`` or ``"90s"`` -> 90; 1 m .. 1 h only."""
    raw = str(text).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(raw[-1:], 1)
    number = raw[:-1] if raw[-1:] in ("s", "m", "h") else raw
    if not number.isdigit():
        raise ConfigError("resolution", text, "not a duration", "write e.g. 60, 5m or 1h")
    seconds = int(number) * scale
    if not MIN_STEP <= seconds <= MAX_STEP:
        raise ConfigError("resolution", text, f"the resolution must lie in {MIN_STEP}.."
                          f"{MAX_STEP} seconds", "use 1m .. 1h")
    return seconds


def parse_time(text: str, key: str) -> float:
    """Unix seconds, or an ISO 8601 time (UTC unless it says otherwise) -> Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(key, text, "not a time", "write ISO 8601 (2024-05-01T00:00:00Z) "
                          "or Unix seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()
