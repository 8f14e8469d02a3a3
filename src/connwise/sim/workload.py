"""Workload models: when sessions arrive, of which class, from which client.

Arrivals are a non-homogeneous Poisson process with rate `rate x daily(t) x weekly(t) x
spikes(t)`, drawn by thinning (Lewis and Shedler, 1979): candidates at the peak rate, each kept
with probability rate(t)/peak. A replay instead takes the sessions of telemetry records or of
an access log: start times and, where recorded, class, region, device, client, requests and
hold time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from connwise.errors import ConfigError
from connwise.sim.scenario import Arrivals, Spike

#: A web service's day, by hour: trough at 4h, peak in the evening (multipliers of `rate`).
DEFAULT_DAILY: tuple[float, ...] = (
    0.35, 0.28, 0.24, 0.21, 0.20, 0.22, 0.30, 0.45, 0.60, 0.70, 0.75, 0.78,
    0.80, 0.78, 0.76, 0.76, 0.78, 0.82, 0.88, 0.95, 1.00, 0.92, 0.70, 0.50)
#: Monday first; the weekend is quieter.
DEFAULT_WEEKLY: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 0.95, 0.7, 0.7)


def spike_factor(spike: Spike, t: float) -> float:
    """The multiplier of one spike at `t` (1 outside it), ramping linearly in and out."""
    start, end = spike.at, spike.at + spike.duration
    if t < start or t >= end:
        return 1.0
    ramp = spike.ramp
    weight = 1.0
    if ramp > 0:
        weight = min(1.0, (t - start) / ramp, (end - t) / ramp)
    return 1.0 + (spike.factor - 1.0) * weight


def _spike_lift(spikes: Sequence[Spike]) -> float:
    """The largest product of the spikes' factors at any time, a bound for thinning.

    Overlapping spikes multiply; disjoint ones do not (multiplying them all made ten 10x spikes
    a bound of 1e10, and thinning a hang). The spikes active at any t are all active at the
    latest start among them, so the largest product is found at some spike's start.
    """
    lift = 1.0
    for spike in spikes:
        at = spike.at
        product = 1.0
        for other in spikes:
            if other.at <= at < other.at + other.duration:
                product *= max(1.0, other.factor)
        lift = max(lift, product)
    return lift


class RateProfile:
    """rate(t) in sessions per second; `peak` bounds it (for thinning)."""

    __slots__ = ("_daily", "_day", "_spikes", "_weekly", "base", "peak", "profile")

    def __init__(self, arrivals: Arrivals, *, predictable_only: bool = False) -> None:
        self.base = arrivals.rate
        self.profile = arrivals.profile
        self._day = arrivals.day_length
        self._daily = tuple(arrivals.daily or DEFAULT_DAILY)
        self._weekly = tuple(arrivals.weekly or DEFAULT_WEEKLY)
        self._spikes = tuple(s for s in arrivals.spikes if s.predictable or not predictable_only)
        shape = 1.0
        if self.profile in ("daily", "weekly"):
            shape = max(self._daily)
        if self.profile == "weekly":
            shape *= max(self._weekly)
        self.peak = self.base * shape * _spike_lift(self._spikes)

    def __call__(self, t: float) -> float:
        rate = self.base
        if self.profile != "flat":
            day = self._day
            hour_pos = (t % day) / day * 24.0
            h = int(hour_pos)
            frac = hour_pos - h
            daily = self._daily
            # Linear between hourly points: no step at the top of each hour.
            rate *= daily[h] + (daily[(h + 1) % 24] - daily[h]) * frac
            if self.profile == "weekly":
                rate *= self._weekly[int(t // day) % 7]
        for spike in self._spikes:
            rate *= spike_factor(spike, t)
        return rate

    def mean(self, start: float, end: float, step: float = 1.0) -> float:
        n = max(1, int((end - start) / step))
        return sum(self(start + (i + 0.5) * step) for i in range(n)) / n


#: Record kinds that are a client's connection or request: what arrived. `pool` and `upstream`
#: records are connections the recording side opened itself and would count traffic twice.
ARRIVAL_KINDS = frozenset({"client", "request", "session"})
_COLUMNS = ("started_at", "ended_at", "kind", "class_name", "region", "device", "client_addr",
            "requests")
_Row = tuple[float, float | None, str, str, str, str, int]


@dataclass(frozen=True, slots=True)
class ReplayArrival:
    """One recorded session: when it opened (replay seconds), its class and client, the
    requests it made (at least 1) and how long it held its connection (None: not recorded)."""

    at: float
    class_name: str
    region: str
    device: str
    client: str
    requests: int
    hold: float | None


def replay_arrivals(arrivals: Arrivals, classes: Sequence[str]) -> list[ReplayArrival]:
    """Arrivals from recorded telemetry or an access log, rebased to start at 0 and sped up by
    `replay_speed`. A recorded class unknown to the scenario becomes its first class; only
    records of `ARRIVAL_KINDS` are arrivals."""
    rows: list[_Row] = []
    if arrivals.replay is not None:
        # Replay only: the stores pull in database drivers.
        from connwise.telemetry.stores import StoreSpec  # noqa: PLC0415
        spec = StoreSpec.parse(arrivals.replay)
        if spec.kind == "sqlite" and not Path(spec.path).is_file():
            raise ConfigError("arrivals.replay", arrivals.replay, "no such telemetry store",
                              "name a SQLite file or a postgresql:// DSN written by connwise")
        for chunk in spec.read(columns=_COLUMNS):
            for row in chunk:
                if row[2] in ARRIVAL_KINDS:
                    rows.append(_row(row))
    elif arrivals.replay_log is not None:
        rows = _read_log(Path(arrivals.replay_log), arrivals.replay_format)
    else:
        raise ConfigError("arrivals.replay", None, "nothing to replay",
                          "set arrivals.replay or arrivals.replay_log")
    if not rows:
        key = "arrivals.replay" if arrivals.replay is not None else "arrivals.replay_log"
        raise ConfigError(key, arrivals.replay or arrivals.replay_log,
                          "the source holds no client connection or request records",
                          "record or ingest some traffic first")
    rows.sort(key=lambda r: r[0])
    t0 = rows[0][0]
    known = set(classes)
    speed = arrivals.replay_speed
    return [ReplayArrival((at - t0) / speed, c if c in known else classes[0], region or "local",
                          device or "desktop", client, requests,
                          None if end is None else max(0.0, end - at) / speed)
            for at, end, c, region, device, client, requests in rows]


def _row(row: Sequence[object]) -> _Row:
    """A record's columns as `_COLUMNS` lists them, to a replay row (NULLs to defaults)."""
    started, ended, _, cls, region, device, client, requests = row
    return (float(str(started)), None if ended is None else float(str(ended)),
            str(cls or ""), str(region or ""), str(device or ""), str(client or ""),
            max(1, int(str(requests or 1))))


def _read_log(path: Path, fmt: str) -> list[_Row]:
    from connwise.telemetry.ingest.haproxy import HaproxyParser  # noqa: PLC0415
    from connwise.telemetry.ingest.nginx import NginxParser  # noqa: PLC0415
    parser = NginxParser() if fmt == "nginx" else HaproxyParser()
    cols = list(parser.columns)
    if "started_at" not in cols:
        raise ConfigError("arrivals.replay_format", fmt, "the parser yields no start times",
                          "replay a telemetry store instead")
    get = [cols.index(name) if name in cols else -1 for name in _COLUMNS]
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError("arrivals.replay_log", str(path), f"cannot read it ({exc.strerror})",
                          "pass the path of an access log") from exc
    parse = parser.start_file(path.name)
    out: list[_Row] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = parse(line)
        except ValueError:
            continue
        if row is None:
            continue
        values = [row[i] if i >= 0 else None for i in get]
        if values[2] in ARRIVAL_KINDS:
            out.append(_row(values))
    return out


def lognormal_params(mean: float, sigma: float) -> tuple[float, float]:
    """(mu, sigma) of a lognormal with the given mean."""
    return math.log(mean) - sigma * sigma / 2.0, sigma
