"""Live zombie watch of the gateway's client connections: report by default, reclaim on request.

Theory of operation
-------------------
Every client connection carries one float, `last_active`, which the data path sets whenever
bytes move either way (a clock read per chunk, no allocation; a tcp relay has one per side).
Every `interval` seconds the watch walks the live connections and feeds the core's
`ZombieTracker` of their listener (all listeners share one `Thresholds`: one gap histogram per
segment):

* a connection with traffic since the previous scan is *busy*; if the tracker had it idle, the
  silence that just ended in traffic was a healthy gap and is learned, measured up to the last
  byte (at most one interval longer than the truth: the error raises the threshold, never
  lowers it);
* a connection without traffic since the previous scan is *idle* since its `last_active`;
* a connection the gateway itself holds up (an HTTP request in hand, a tcp client queued for
  admission or connecting upstream) is busy: a slow upstream is not the client's idleness.

A silence shorter than one interval is seen only when a scan falls into it, so short gaps are
under-sampled; that too can only raise the learned threshold.

`ZombieTracker.scan` then judges (k x p99 of the segment, never under the floor, the default
until enough gaps) and each finding is reported once per idle stretch: a log line,
`connwise_zombies_total{owner,verdict}` on the admin `/metrics`, the `zombie` field of
`/connections`, `flag` in the connection's telemetry record, and a `ZombieFinding` to the
watch's subscribers. With `reclaim`, a zombie still silent `grace` seconds after its report is
closed (tcp: both sides, reset; WebSocket: close frames with 1001, going away, to both sides;
HTTP keep-alive: a plain close), its record's `close_reason` is `zombie` and subscribers get a
`ZombieReclaimed`. A connection that speaks in between is forgiven: a `ZombieForgiven`.

Subscribers are called inline, in the scan, like a pool's: no queue stands between the watch and
them, so they must be quick (a `MemorySink` keeps the last N events, bounded); one that raises is
logged and the others, and the gateway, go on.

Cost: per idle connection, one dict entry of its stretch's start (about 35 bytes: the tracker
keeps the connection's own `last_active` float), a full tracker entry (about 115 bytes) only
while it is reported or half-open, and one pass over the connections per interval, nothing per
request.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from connwise.config import ZombieSection
from connwise.core.zombies import (
    Thresholds,
    Verdict,
    ZombieEvent,
    ZombieFinding,
    ZombieForgiven,
    ZombieReclaimed,
    ZombieTracker,
)
from connwise.gateway.tcp import TcpClient

if TYPE_CHECKING:
    from connwise.gateway.runtime import Client, Gateway

log = logging.getLogger("connwise.gateway")

EventCallback = Callable[[ZombieEvent], None]


def segment_values(client: Any, listener: str) -> dict[str, str]:
    """The values a segment can be made of (`zombies.segment`)."""
    if isinstance(client, TcpClient):
        backend = client.backend
        return {"listener": listener, "kind": "tcp", "class": client.class_name,
                "backend": backend.name if backend is not None else ""}
    upstream = client.relay_to or client.active_upstream
    state = client.class_state
    return {"listener": listener, "kind": "websocket" if client.relay_to is not None else "http",
            "class": state.class_name if state is not None else "",
            "backend": upstream.address if upstream is not None else ""}


class GatewayZombieWatch:
    """Watches one gateway's client connections; see the module docstring."""

    def __init__(self, gateway: Gateway, section: ZombieSection) -> None:
        self.gateway = gateway
        self.section = section
        self.thresholds = Thresholds(section.rules())
        #: One tracker per listener: the listener is the finding's owner (metrics label).
        self.trackers: dict[str, ZombieTracker] = {}
        #: Findings by (listener, verdict) and reclaims by listener, since start.
        self.found: Counter[tuple[str, str]] = Counter()
        self.reclaimed: Counter[str] = Counter()
        #: Reported connections still open and not forgiven, with their finding.
        self.flagged: dict[Hashable, ZombieFinding] = {}
        #: Reclaimed and not yet gone (a WebSocket's close handshake, a close not yet seen by
        #: the loop): not judged again, or each scan until it is gone would report it anew.
        self._closing: set[Hashable] = set()
        self._task: asyncio.Task[None] | None = None
        self._subscribers: list[EventCallback] = []
        self._last_scan = gateway.clock.now()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Scan every `interval` seconds from now on, if enabled, in a task of the gateway
        (which cancels it when it drains)."""
        if self.section.enabled and not self.running:
            self._last_scan = self.gateway.clock.now()
            self._task = self.gateway.spawn(self._run())

    def configure(self, section: ZombieSection) -> None:
        """A reload: new settings from the next scan on. Changed rules or segments start
        learning afresh (gaps learned under other rules would mislead, and segments named by
        the old keys would linger as thresholds nothing is judged by); off stops scanning and
        forgets every connection, on starts it again."""
        if section.rules() != self.thresholds.rules or section.segment != self.section.segment:
            self.thresholds = Thresholds(section.rules())
            for tracker in self.trackers.values():
                tracker.thresholds = self.thresholds
        if not section.enabled:
            self.trackers.clear()
            self.flagged.clear()
            self._closing.clear()
        self.section = section
        self.start()

    def subscribe(self, callback: EventCallback) -> Callable[[], None]:
        """Call `callback` with every event: a `ZombieFinding` when a connection is reported
        (zombie, or half-open), a `ZombieForgiven` when a reported zombie speaks again, a
        `ZombieReclaimed` when reclaim closes one. Returns an unsubscribe function. Callbacks
        run inline in the scan and must be quick; one that raises is logged and skipped."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    async def _run(self) -> None:
        while self.section.enabled:
            await asyncio.sleep(self.section.interval)
            if not self.section.enabled:
                break
            try:
                self.scan()
            except Exception:
                log.exception("zombie watch: scan failed; continuing")

    def peer_lost(self, client: Client) -> None:
        """The kernel gave up on a client's peer (keep-alive probes unanswered): the connection
        was half-open, and TCP itself found and closed it. Reported like a finding, whether or
        not the watch scans (keep-alive is on its own switch)."""
        listener = client.listener.name
        now = self.gateway.clock.now()
        idle_since = client.idle_since()
        silent = now - idle_since if idle_since is not None else 0.0
        segment = "/".join(segment_values(client, listener)[k] for k in self.section.segment)
        finding = ZombieFinding(client.conn_id, listener, segment, Verdict.HALF_OPEN, silent,
                                0.0, now)
        self.found[listener, Verdict.HALF_OPEN.value] += 1
        rec = getattr(client, "record", None)
        if rec is not None:
            rec.flag = Verdict.HALF_OPEN.value
        log.info("listener %s: client connection %s was half-open (its peer answered no "
                 "keep-alive probe after %.1f s of silence); closed", listener, client.conn_id,
                 silent)
        self._publish(finding)

    def forget(self, client: Client) -> None:
        """A client connection closed."""
        tracker = self.trackers.get(client.listener.name)
        if tracker is not None:
            tracker.forget(client.conn_id)
        self.flagged.pop(client.conn_id, None)
        self._closing.discard(client.conn_id)

    # -- scanning ------------------------------------------------------------------------------

    def scan(self) -> list[ZombieFinding]:
        """One pass: feed the trackers, report new findings, reclaim what is due."""
        gateway = self.gateway
        now = gateway.clock.now()
        since, self._last_scan = self._last_scan, now
        keys = self.section.segment
        trackers = self.trackers
        flagged = self.flagged
        # Published after the walk: a subscriber must not change the connections under it.
        forgiven: list[ZombieForgiven] = []
        closing = self._closing
        for conn_id, client in gateway.clients.items():
            if conn_id in closing:
                continue
            listener = client.listener.name
            tracker = trackers.get(listener)
            if tracker is None:
                tracker = trackers[listener] = ZombieTracker(listener, self.thresholds,
                                                             pooled=False)
            idle_since = client.idle_since()
            if idle_since is None or idle_since > since:
                finding = tracker.busy(conn_id, now if idle_since is None else idle_since)
                if finding is not None:  # a reported zombie spoke again
                    flagged.pop(conn_id, None)
                    forgiven.append(ZombieForgiven(finding, now))
            else:
                values = segment_values(client, listener)
                # Interned: thousands of idle connections share a few segment names.
                tracker.idle(conn_id, sys.intern("/".join(values[k] for k in keys)),
                             idle_since)
        for event in forgiven:
            self._publish(event)
        found: list[ZombieFinding] = []
        for tracker in trackers.values():
            findings = tracker.scan(now)
            for finding in findings:
                flagged[finding.key] = finding
                self._report(finding)
            found.extend(findings)
            if self.section.reclaim:
                self._reclaim(tracker, now)
        return found

    def _report(self, finding: ZombieFinding) -> None:
        self.found[finding.owner, finding.verdict.value] += 1
        rec = getattr(self._client(finding.key), "record", None)
        if rec is not None:
            rec.flag = finding.verdict.value
        log.info("listener %s: client connection %s has moved no bytes for %.1f s, past the "
                 "zombie threshold of its segment %r (%.1f s)%s", finding.owner, finding.key,
                 finding.seconds, finding.segment, finding.threshold,
                 f"; closing it in {self.section.grace:.0f} s unless it speaks"
                 if self.section.reclaim else "")
        self._publish(finding)

    def _publish(self, event: ZombieEvent) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("zombie watch: subscriber %r failed", callback)

    def _reclaim(self, tracker: ZombieTracker, now: float) -> None:
        grace = self.section.grace
        for key in tracker.reclaimable(now, grace):
            finding = tracker.finding(key)
            tracker.forget(key)
            self.flagged.pop(key, None)
            client = self._client(key)
            if client is None:
                continue
            rec = getattr(client, "record", None)
            if rec is not None:
                rec.close_reason = "zombie"
            self.reclaimed[tracker.owner] += 1
            self._closing.add(key)
            log.info("listener %s: closed zombie client connection %s after a grace of %.0f s",
                     tracker.owner, key, grace)
            client.reclaim()
            if finding is not None:
                self._publish(ZombieReclaimed(finding, grace, now))

    def _client(self, key: Hashable) -> Client | None:
        return self.gateway.clients.get(key) if isinstance(key, int) else None

    # -- observation ---------------------------------------------------------------------------

    def describe(self, client: Client, now: float) -> dict[str, Any]:
        """What the admin API's connection list shows: seconds without traffic (0 while the
        gateway holds a request) and the finding, if the connection was reported."""
        idle_since = client.idle_since()
        finding = self.flagged.get(client.conn_id)
        zombie = None
        if finding is not None:
            zombie = {"verdict": finding.verdict.value, "threshold": round(finding.threshold, 3),
                      "reported": round(now - finding.at, 3),
                      "closes_in": (round(max(0.0, finding.at + self.section.grace - now), 3)
                                    if self.section.reclaim else None)}
        return {"idle": round(now - idle_since, 3) if idle_since is not None else 0.0,
                "zombie": zombie}

    def stats(self) -> dict[str, Any]:
        return {"enabled": self.section.enabled, "reclaim": self.section.reclaim,
                "found": {f"{owner}:{verdict}": n for (owner, verdict), n in self.found.items()},
                "reclaimed": dict(self.reclaimed), "flagged": len(self.flagged),
                "thresholds": self.segment_thresholds()}

    def segment_thresholds(self) -> dict[str, float]:
        """The zombie threshold of every segment that has learned gaps, in seconds."""
        thresholds = self.thresholds
        return {segment: thresholds.threshold(segment) for segment in thresholds.segments}

    def collect(self) -> list[Metric]:
        """The watch's Prometheus families, read at scrape time (admin `/metrics`)."""
        found = CounterMetricFamily("connwise_zombies", "Client connections found to be "
                                    "zombies (or half-open), by listener.",
                                    labels=["owner", "verdict"])
        for (owner, verdict), n in sorted(self.found.items()):
            found.add_metric([owner, verdict], n)
        reclaimed = CounterMetricFamily("connwise_zombies_reclaimed", "Zombie client "
                                        "connections closed after their grace period.",
                                        labels=["owner"])
        for owner, n in sorted(self.reclaimed.items()):
            reclaimed.add_metric([owner], n)
        open_now = GaugeMetricFamily("connwise_zombie_connections", "Client connections "
                                     "reported as zombies and still open.", labels=["owner"])
        for owner, n in sorted(Counter(f.owner for f in self.flagged.values()).items()):
            open_now.add_metric([owner], n)
        thresholds = GaugeMetricFamily("connwise_zombie_threshold_seconds", "Learned zombie "
                                       "threshold of each segment with gaps.",
                                       labels=["segment"])
        for segment, seconds in self.segment_thresholds().items():
            thresholds.add_metric([segment], seconds)
        return [found, reclaimed, open_now, thresholds]

