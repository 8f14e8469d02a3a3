"""Rules that decide a connection is a zombie, half-open or a leak: pure, fed gaps and `now`.

Theory of operation
-------------------
A *zombie* holds resources but has served no useful traffic for longer than its segment's
threshold. What "too long" means differs by segment: a desktop browser in one region comes back to
its keep-alive connection within a second, a phone on a train within a minute, a batch worker once
an hour. One global threshold either flags the slow segments' healthy connections or misses the
fast segments' zombies, so the threshold is *learned per segment*: `k` times the `quantile`
(p99 by default) of the idle gaps of healthy connections of that segment.

A *healthy gap* is an idle stretch that ended in useful traffic: the connection was idle, then it
served again. A stretch still open is never a sample (it may be the zombie being judged), so the
learner cannot be fooled by the zombies it looks for. Gaps go into a log-bucketed histogram per
segment (4% resolution, fixed memory whatever the traffic). A segment with fewer than
`min_samples` gaps cannot tell its p99 yet: it keeps `default_threshold`, or more where the
threshold of all segments together or `k` times its own longest gap so far is longer. It never
borrows a shorter threshold: WebSockets that speak once a minute next to browsers that come back
within two seconds would all be zombies at the browsers' threshold, and reclaim would close
them before a single gap of theirs ended, so their segment could never learn.
The quantile is read at its bucket's upper edge, so estimation error errs towards fewer flags.

A *half-open* connection is one whose peer is gone without a goodbye; keep-alive probes or
TCP_INFO reveal it (`looks_half_open`), and it is a zombie at once, whatever its idle time.

A *leak* is a pool connection held past the leak threshold: it is busy, not idle, so it is judged
on the time held, not on gaps.

`judge` is the rule; `Thresholds` learns; `ZombieTracker` keeps the live bookkeeping of a pool or
a listener (which connection is idle since when) and returns findings on `scan(now)`, each
reported once per idle stretch, the finding a zombie is forgiven for when it serves again
(`busy`), and the keys whose grace period has passed for `reclaimable`. The live watches pass
the three on as events (`ZombieEvent`): found, forgiven, reclaimed.
The same rule serves the report, which learns from stored records instead of live events.
"""

from __future__ import annotations

import enum
import errno
import math
from collections.abc import Hashable
from dataclasses import dataclass

from connwise.errors import ConfigError

#: Ratio between histogram bucket edges: p99 is known to within 4%.
GROWTH = 1.04
#: The smallest gap the histogram tells apart (1 ms); shorter gaps share the first bucket.
SMALLEST = 0.001
_LOG_GROWTH = math.log(GROWTH)
#: 600 buckets span 1 ms to about 17 years; larger gaps share the last bucket.
BUCKETS = 600

#: Linux TCP states (include/net/tcp_states.h) that `looks_half_open` cares about.
TCP_ESTABLISHED = 1
TCP_CLOSE_WAIT = 8


class Verdict(enum.Enum):
    HEALTHY = "healthy"
    ZOMBIE = "zombie"
    HALF_OPEN = "half_open"
    LEAK = "leak"


#: The members, read per connection event (an enum member read goes through the enum
#: metaclass's `__getattr__` hook in Python 3.11, ~40 times the cost of a global's).
_HEALTHY, _ZOMBIE, _HALF_OPEN, _LEAK = (Verdict.HEALTHY, Verdict.ZOMBIE, Verdict.HALF_OPEN,
                                        Verdict.LEAK)


@dataclass(frozen=True, slots=True)
class ZombieRules:
    """The numbers of the rules; times in seconds. Validated by `validate()`."""

    #: Three times the p99 gap: a healthy lognormal segment crosses it about once in 3000 gaps.
    k: float = 3.0
    quantile: float = 0.99
    #: Below this many healthy gaps a segment's p99 is noise: it keeps the default (or more).
    min_samples: int = 30
    #: With no history at all: HAProxy's and nginx's keep-alive defaults are 60-75 s; five
    #: minutes of silence is well past any of them.
    default_threshold: float = 300.0
    #: Never call a connection a zombie after less than this, however fast its segment.
    floor: float = 1.0
    #: A pool connection held this long is a leak (the pool's own default); None disables it.
    leak_threshold: float | None = 30.0

    def validate(self, prefix: str = "zombies") -> ZombieRules:
        def bad(key: str, value: object, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{prefix}.{key}", value, problem, fix)

        if not self.k >= 1.0:
            raise bad("k", self.k, "a multiple below 1 flags healthy connections at their own "
                      "p99", "use k >= 1, e.g. 3")
        if not 0.5 <= self.quantile < 1.0:
            raise bad("quantile", self.quantile, "the quantile must lie in [0.5, 1)",
                      "use e.g. 0.99")
        if self.min_samples < 1:
            raise bad("min_samples", self.min_samples, "at least one gap is needed to learn",
                      "use e.g. 30")
        if not 0 < self.floor <= self.default_threshold:
            raise bad("floor", self.floor, "the floor must be positive and at most "
                      f"default_threshold ({self.default_threshold})", "use e.g. 1 s")
        if self.leak_threshold is not None and self.leak_threshold <= 0:
            raise bad("leak_threshold", self.leak_threshold, "the duration must be positive",
                      "use seconds > 0 or None to disable")
        return self


#: The live pool watch's floor: a pool connection idle for less after a burst is warm capacity
#: for the next one (reopening costs a handshake), not waste; 30 s is also the pool's default
#: check interval and leak threshold.
POOL_FLOOR = 30.0
#: The gateway's floor for client connections: browsers leave keep-alive connections silent
#: for seconds between page views by design.
CLIENT_FLOOR = 10.0
#: The live watches' floors by the kind of connection a telemetry record names, so that the
#: report never calls zombie, nor advises closing, what the live watch of that kind keeps. Kinds
#: no live watch judges take the floor of their like: an `upstream` connection sits in the
#: gateway's keep-alive pool, a `session` (a proxy's TCP session, from its logs) is a client's.
KIND_FLOORS: dict[str, float] = {"pool": POOL_FLOOR, "upstream": POOL_FLOOR,
                                 "client": CLIENT_FLOOR, "session": CLIENT_FLOOR}


def kind_floor(kind: str, rules: ZombieRules) -> float:
    """The floor for connections of `kind`, in seconds: the live watch's (`KIND_FLOORS`), or
    `rules.floor` where that is higher or the kind has none."""
    return max(rules.floor, KIND_FLOORS.get(kind, 0.0))


def judge(*, idle_for: float, threshold: float, half_open: bool = False, held_for: float = 0.0,
          leak_threshold: float | None = None) -> Verdict:
    """The rule. `idle_for`: seconds since the last useful traffic (0 while busy); `held_for`:
    seconds the current holder has had a pool connection (0 when not held)."""
    if half_open:
        return _HALF_OPEN
    if leak_threshold is not None and held_for >= leak_threshold:
        return _LEAK
    if idle_for > threshold:
        return _ZOMBIE
    return _HEALTHY


def learned_threshold(rules: ZombieRules, quantile: float, samples: int,
                      fallback: float | None = None, longest: float = 0.0) -> float:
    """The threshold of a segment whose healthy gaps have `quantile` (at `rules.quantile`) over
    `samples` gaps: `k x quantile`, at least `floor`. With fewer than `min_samples` gaps, the
    longest of `default_threshold`, `fallback` (the all-segments threshold) and `k x longest`
    (the segment's longest gap so far): what other segments learned may raise a threshold that
    is still learning, never lower it."""
    if samples < rules.min_samples:
        return max(rules.default_threshold, fallback or 0.0, rules.k * longest)
    return max(rules.floor, rules.k * quantile)


def peer_lost(exc: BaseException | None) -> bool:
    """Whether a connection ended because the kernel gave up on its peer: TCP keep-alive probes
    (or retransmissions) went unanswered, ETIMEDOUT — the peer vanished without a FIN or RST, so
    the connection was half-open until then."""
    return isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT


def looks_half_open(*, tcp_state: int, unacked: int = 0, backoff: int = 0,
                    max_backoff: int = 3) -> bool:
    """What TCP_INFO says about the peer: gone if it sent FIN and we still hold the socket
    (CLOSE_WAIT), if the socket left ESTABLISHED, or if data sits unacknowledged after
    `max_backoff` retransmission backoffs (the peer vanished without a RST)."""
    if tcp_state != TCP_ESTABLISHED:
        return True
    return unacked > 0 and backoff >= max_backoff


class GapHistogram:
    """Counts of gaps in log-spaced buckets: constant memory, quantiles to within 4%."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0

    def observe(self, gap: float) -> None:
        if gap <= SMALLEST:
            index = 0
        else:
            index = min(BUCKETS - 1, 1 + int(math.log(gap / SMALLEST) / _LOG_GROWTH))
        self.counts[index] += 1
        self.total += 1

    def merge(self, other: GapHistogram) -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.total += other.total

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket holding quantile `q` (0 if empty)."""
        if self.total == 0:
            return 0.0
        rank = q * self.total
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return SMALLEST * GROWTH ** i
        return SMALLEST * GROWTH ** (BUCKETS - 1)


class Thresholds:
    """Zombie thresholds learned per segment from healthy idle gaps."""

    __slots__ = ("_all", "_cache", "_segments", "rules")

    def __init__(self, rules: ZombieRules | None = None) -> None:
        self.rules = (rules or ZombieRules()).validate()
        self._segments: dict[str, GapHistogram] = {}
        self._all = GapHistogram()
        self._cache: dict[str, float] = {}

    def observe(self, segment: str, gap: float) -> None:
        """One healthy gap of `segment`: an idle stretch that ended in useful traffic. A gap
        that is negative (the clock stepped back between its ends) or not finite measured
        nothing and is ignored: learnt as 0 s, it would pull the threshold down to the floor."""
        if not 0.0 <= gap < math.inf:
            return
        histogram = self._segments.get(segment)
        if histogram is None:
            histogram = self._segments[segment] = GapHistogram()
        histogram.observe(gap)
        self._all.observe(gap)
        if self._cache:
            self._cache.clear()

    def samples(self, segment: str) -> int:
        histogram = self._segments.get(segment)
        return histogram.total if histogram is not None else 0

    @property
    def segments(self) -> list[str]:
        return sorted(self._segments)

    def threshold(self, segment: str) -> float:
        """Seconds of idleness after which a connection of `segment` is a zombie."""
        cached = self._cache.get(segment)
        if cached is not None:
            return cached
        rules = self.rules
        everything = self._all
        fallback = learned_threshold(rules, everything.quantile(rules.quantile), everything.total)
        histogram = self._segments.get(segment)
        if histogram is None:
            value = learned_threshold(rules, 0.0, 0, fallback)
        else:
            value = learned_threshold(rules, histogram.quantile(rules.quantile), histogram.total,
                                      fallback, histogram.quantile(1.0))
        self._cache[segment] = value
        return value


@dataclass(frozen=True, slots=True)
class ZombieFinding:
    """One connection judged a zombie, half-open or a leak: the event the watchers emit."""

    key: Hashable
    owner: str
    segment: str
    verdict: Verdict
    #: Seconds idle (zombie, half-open) or held (leak) when judged.
    seconds: float
    #: The threshold it crossed, in seconds (0 for half-open).
    threshold: float
    at: float


@dataclass(frozen=True, slots=True)
class ZombieForgiven:
    """A reported zombie that served again before reclaim closed it: it is judged afresh from
    its next idle stretch on."""

    #: What it was reported for.
    finding: ZombieFinding
    #: When the watch saw it serve again.
    at: float


@dataclass(frozen=True, slots=True)
class ZombieReclaimed:
    """A reported zombie (or half-open connection) closed by reclaim after its grace period."""

    #: What it was reported for.
    finding: ZombieFinding
    #: The grace period it was given, in seconds.
    grace: float
    at: float


#: What a live zombie watch passes to its subscribers (`subscribe`), told apart by type as a
#: pool's `LifecycleEvent` and `LeakEvent` are.
ZombieEvent = ZombieFinding | ZombieForgiven | ZombieReclaimed


class _Entry:
    __slots__ = ("busy_since", "finding", "half_open", "idle_since", "reported", "reported_at",
                 "segment")

    def __init__(self, segment: str) -> None:
        self.segment = segment
        self.idle_since: float | None = None
        self.busy_since: float | None = None
        self.half_open = False
        self.reported = _HEALTHY
        self.reported_at = 0.0
        #: The finding of `reported` (None while healthy).
        self.finding: ZombieFinding | None = None


class ZombieTracker:
    """Live bookkeeping of one owner's connections for the zombie and leak rules.

    The shell calls `idle` when a connection becomes idle (connected, released), `busy` when it
    starts serving (acquired, a request arrives), `half_open` when a probe says the peer is gone
    and `forget` when it closes; `scan(now)` returns the new findings. Cost: O(1) per event (a
    look through the few segments for a connection not found in the one given) and
    O(connections) per scan.

    Memory: most tracked connections are idle and healthy, and all such a connection needs is
    when its stretch began, in its segment: one entry of a dict of floats per segment (a
    gateway passes the connection's own `last_active` float, so none is made). A connection
    gets a full entry only when there is more to keep: a finding, a half-open peer, or (in a
    pool) the time it has been held. A tracker that judges no leaks (`pooled=False`) keeps
    nothing for a connection between its idle stretches.
    """

    __slots__ = ("_entries", "_idle", "owner", "pooled", "thresholds")

    def __init__(self, owner: str, thresholds: Thresholds | None = None, *,
                 pooled: bool = True) -> None:
        self.owner = owner
        self.thresholds = thresholds or Thresholds()
        #: Leaks are a pool notion: a gateway client connection held long is just busy.
        self.pooled = pooled
        #: Connections with more to keep than an idle stretch's start.
        self._entries: dict[Hashable, _Entry] = {}
        #: Idle, healthy connections: segment -> key -> since when.
        self._idle: dict[str, dict[Hashable, float]] = {}

    def __len__(self) -> int:
        return len(self._entries) + sum(map(len, self._idle.values()))

    def _quiet(self, key: Hashable, segment: str | None = None) -> tuple[str, float] | None:
        """Take `key` out of the idle, healthy connections (looked up in `segment` first):
        its segment and since when, or None if it is not one of them."""
        idle = self._idle
        if segment is not None:
            members = idle.get(segment)
            if members is not None and key in members:
                return segment, members.pop(key)
        for name, members in idle.items():
            if key in members:
                since = members.pop(key)
                if not members:
                    del idle[name]
                return name, since
        return None

    def idle(self, key: Hashable, segment: str, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None:
            members = self._idle.get(segment)
            if members is not None and key in members:
                return  # idle already: its stretch goes on
            found = self._quiet(key)
            since = now if found is None else found[1]
            self._idle.setdefault(segment, {})[key] = since
            return
        entry.segment = segment
        if entry.idle_since is None:
            entry.idle_since = now
            if not entry.half_open:
                entry.reported = _HEALTHY
                entry.finding = None
        entry.busy_since = None
        if entry.reported is _HEALTHY and not entry.half_open:
            del self._entries[key]  # nothing left to keep but the stretch's start
            self._idle.setdefault(segment, {})[key] = entry.idle_since

    def busy(self, key: Hashable, now: float) -> ZombieFinding | None:
        """Useful traffic started: the idle stretch, if any, was healthy; learn from it.
        Returns the zombie finding this forgives, if the connection was reported as one."""
        entry = self._entries.get(key)
        if entry is None:
            found = self._quiet(key)
            if found is None:
                return None
            segment, since = found
            self.thresholds.observe(segment, now - since)
            if self.pooled:  # a leak is judged on the time held
                entry = self._entries[key] = _Entry(segment)
                entry.busy_since = now
            return None
        if entry.idle_since is not None:
            self.thresholds.observe(entry.segment, now - entry.idle_since)
            entry.idle_since = None
        entry.busy_since = now
        reported = entry.reported
        forgiven = None
        if reported is not _HEALTHY and reported is not _HALF_OPEN:
            forgiven = entry.finding if reported is _ZOMBIE else None
            entry.reported = _HEALTHY
            entry.finding = None
        if not self.pooled and entry.reported is _HEALTHY and not entry.half_open:
            del self._entries[key]
        return forgiven

    def half_open(self, key: Hashable, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None:
            found = self._quiet(key)
            if found is None:
                return
            entry = self._entries[key] = _Entry(found[0])
            entry.idle_since = found[1]
        entry.half_open = True

    def forget(self, key: Hashable) -> None:
        if self._entries.pop(key, None) is None:
            self._quiet(key)

    def scan(self, now: float) -> list[ZombieFinding]:
        """Judge every tracked connection; return the ones newly found (each once per stretch)."""
        thresholds = self.thresholds
        leak_threshold = thresholds.rules.leak_threshold if self.pooled else None
        found: list[ZombieFinding] = []
        for key, entry in self._entries.items():
            idle_for = now - entry.idle_since if entry.idle_since is not None else 0.0
            held_for = now - entry.busy_since if entry.busy_since is not None else 0.0
            threshold = thresholds.threshold(entry.segment)
            verdict = judge(idle_for=idle_for, threshold=threshold, half_open=entry.half_open,
                            held_for=held_for, leak_threshold=leak_threshold)
            if verdict is _HEALTHY or verdict is entry.reported:
                continue
            entry.reported = verdict
            entry.reported_at = now
            if verdict is _LEAK:
                seconds, crossed = held_for, float(leak_threshold or 0.0)
            elif verdict is _HALF_OPEN:
                seconds, crossed = idle_for, 0.0
            else:
                seconds, crossed = idle_for, threshold
            finding = entry.finding = ZombieFinding(key, self.owner, entry.segment, verdict,
                                                    seconds, crossed, now)
            found.append(finding)
        for segment, members in list(self._idle.items()):
            threshold = thresholds.threshold(segment)
            zombies = [(key, since) for key, since in members.items()
                       if judge(idle_for=now - since, threshold=threshold) is _ZOMBIE]
            for key, since in zombies:  # reported: a full entry from now on
                del members[key]
                entry = self._entries[key] = _Entry(segment)
                entry.idle_since = since
                entry.reported = _ZOMBIE
                entry.reported_at = now
                finding = entry.finding = ZombieFinding(key, self.owner, segment, _ZOMBIE,
                                                        now - since, threshold, now)
                found.append(finding)
            if not members:
                del self._idle[segment]
        return found

    def finding(self, key: Hashable) -> ZombieFinding | None:
        """What `key` was reported for and not forgiven since (None if nothing)."""
        entry = self._entries.get(key)
        return entry.finding if entry is not None else None

    def flagged(self) -> list[Hashable]:
        """Connections reported (zombie, half-open, leak) and not forgiven since."""
        return [key for key, entry in self._entries.items()
                if entry.reported is not _HEALTHY]

    def reclaimable(self, now: float, grace: float) -> list[Hashable]:
        """Zombies and half-open connections reported at least `grace` seconds ago and idle since
        (a connection that served in between was forgiven by `busy`)."""
        return [key for key, entry in self._entries.items()
                if entry.reported in (_ZOMBIE, _HALF_OPEN)
                and entry.idle_since is not None and now - entry.reported_at >= grace]
