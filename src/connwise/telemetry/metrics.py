"""Prometheus metrics of connections, waits, degradations, sheds, zombies and telemetry itself.

Two kinds of sources, one registry (always passed in: connwise never touches the global one):

* *Read at scrape time* from objects that already count: a pool's gauges, wait histogram and
  counters (`watch_pool`), a scheduler's admission waits by class (`watch_scheduler`), a record
  writer's queue and drop counters (`watch_writer`), and the live connections of a shell that
  can list them (`watch_connections`, the gateway's clients). The data plane pays nothing for
  these and they cannot drift from the owners' own numbers.
* *Pushed by the data plane* where no such object exists: connection state changes of the
  gateway (`connection_state`), admission waits and queue times (`observe_wait`,
  `observe_queue`, kept in the core's Prometheus-shaped `WaitHistogram`, a list increment per
  observation), degradations and sheds, and zombie findings.

Metric names (prefix `connwise_` by default):

    connwise_connections{owner,kind,state,class,backend}     gauge
    connwise_wait_seconds{owner,class}                       histogram
    connwise_queue_seconds{owner,class}                      histogram
    connwise_pool_operations_total{owner,op}                 counter
    connwise_degradations_total{class,level}                 counter
    connwise_sheds_total{class,reason}                       counter
    connwise_zombies_total{owner,verdict}                    counter
    connwise_zombies_reclaimed_total{owner}                  counter
    connwise_telemetry_records_total{sink,outcome}           counter (written, dropped, refused,
                                                                      failed)
    connwise_telemetry_queue_depth{sink}                     gauge
"""

from __future__ import annotations

import math
import weakref
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from connwise.core.lifecycle import State
from connwise.core.scheduler import WAIT_BUCKETS, Scheduler, WaitHistogram
from connwise.core.zombies import ZombieFinding
from connwise.telemetry.writer import RecordWriter

#: A connection's labels in `connections`: owner, kind, state, class, backend.
ConnectionLabels = tuple[str, str, str, str, str]

_BOUNDS = tuple("+Inf" if math.isinf(b) else repr(b) for b in WAIT_BUCKETS)


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts to Prometheus' cumulative (le, count) pairs."""
    total = 0
    pairs = []
    for bound, n in zip(_BOUNDS, counts, strict=True):
        total += n
        pairs.append((bound, float(total)))
    return pairs


class TelemetryMetrics:
    """All connwise metrics in `registry`; see the module docstring for the names."""

    def __init__(self, registry: CollectorRegistry, *, namespace: str = "connwise") -> None:
        self.registry = registry
        self.namespace = namespace
        self.degradations = Counter("degradations", "Degradation steps applied, by class and "
                                    "level.", ["class", "level"], namespace=namespace,
                                    registry=registry)
        self.sheds = Counter("sheds", "Requests or connections refused to protect the service, "
                             "by class and reason.", ["class", "reason"], namespace=namespace,
                             registry=registry)
        self.zombies = Counter("zombies", "Connections found to be zombies, half-open or "
                               "leaked.", ["owner", "verdict"], namespace=namespace,
                               registry=registry)
        self.reclaimed = Counter("zombies_reclaimed", "Zombie connections closed after their "
                                 "grace period.", ["owner"], namespace=namespace,
                                 registry=registry)
        #: Gateway-fed gauges and histograms, keyed by their label values.
        self._connections: dict[tuple[str, str, str, str, str], int] = {}
        self._waits: dict[tuple[str, str], WaitHistogram] = {}
        self._queues: dict[tuple[str, str], WaitHistogram] = {}
        self._pools: dict[str, tuple[weakref.ReferenceType[Any], str]] = {}
        self._writers: list[RecordWriter] = []
        self._schedulers: dict[str, weakref.ReferenceType[Scheduler]] = {}
        self._connection_sources: list[Callable[[], Iterable[ConnectionLabels]]] = []
        # The registry holds this object: metrics live as long as the registry does, even if
        # the caller keeps no reference of its own.
        registry.register(self)

    # -- sources read at scrape time -----------------------------------------------------------

    def watch_pool(self, pool: Any, *, backend: str | None = None) -> None:
        """Export `pool`'s connections by state and class, waits and counters on every scrape.
        `backend` labels its connections (default: the pool's name). Held weakly. The pool's
        own zombie watch, if it has one and counts nowhere yet, counts here from now on."""
        self._pools[pool.name] = (weakref.ref(pool), backend or pool.name)
        watch = getattr(pool, "zombies", None)
        if watch is not None and watch.metrics is None:
            watch.metrics = self

    def unwatch_pool(self, pool: Any) -> None:
        """Stop exporting `pool` (retired: its backend left the configuration), unless another
        pool of its name replaced it already. Explicit: a pool in a reference cycle would
        otherwise go on being scraped until the garbage collector frees it."""
        name = pool.name
        watched = self._pools.get(name)
        if watched is not None and watched[0]() is pool:
            del self._pools[name]

    def watch_scheduler(self, owner: str, scheduler: Scheduler) -> None:
        """Export `scheduler`'s admission waits by class as `queue_seconds{owner,class}`.
        Held weakly; watching another scheduler under the same `owner` replaces it (a
        reloaded gateway group)."""
        self._schedulers[owner] = weakref.ref(scheduler)

    def watch_connections(self, source: Callable[[], Iterable[ConnectionLabels]]) -> None:
        """Count the connections `source()` lists, one (owner, kind, state, class, backend)
        each, into `connections` at every scrape."""
        self._connection_sources.append(source)

    def watch_writer(self, writer: RecordWriter) -> None:
        """Export `writer`'s written, dropped, refused and failed records and its queue
        depth."""
        self._writers.append(writer)

    # -- pushed by the data plane --------------------------------------------------------------

    def connection_state(self, owner: str, kind: str, class_name: str, backend: str,
                         old: str | None, new: str | None) -> None:
        """A connection moved from state `old` to `new` (None: it did not exist / is gone)."""
        counts = self._connections
        if old is not None:
            key = (owner, kind, old, class_name, backend)
            counts[key] = counts.get(key, 0) - 1
        if new is not None:
            key = (owner, kind, new, class_name, backend)
            counts[key] = counts.get(key, 0) + 1

    def observe_wait(self, owner: str, class_name: str, seconds: float) -> None:
        """Time a request of `class_name` waited for a connection."""
        histogram = self._waits.get((owner, class_name))
        if histogram is None:
            histogram = self._waits[owner, class_name] = WaitHistogram()
        histogram.observe(seconds)

    def observe_queue(self, owner: str, class_name: str, seconds: float) -> None:
        """Time a request of `class_name` spent in the admission queue."""
        histogram = self._queues.get((owner, class_name))
        if histogram is None:
            histogram = self._queues[owner, class_name] = WaitHistogram()
        histogram.observe(seconds)

    def degraded(self, class_name: str, level: int | str) -> None:
        self.degradations.labels(class_name, str(level)).inc()

    def shed(self, class_name: str, reason: str) -> None:
        self.sheds.labels(class_name, reason).inc()

    def zombie(self, finding: ZombieFinding) -> None:
        self.zombies.labels(finding.owner, finding.verdict.value).inc()

    def zombie_reclaimed(self, owner: str) -> None:
        self.reclaimed.labels(owner).inc()

    # -- scrape --------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        ns = self.namespace
        connections = GaugeMetricFamily(f"{ns}_connections", "Open connections by owner, kind, "
                                        "state, class and backend.",
                                        labels=["owner", "kind", "state", "class", "backend"])
        waits = HistogramMetricFamily(f"{ns}_wait_seconds", "Time waited for a connection, "
                                      "by owner and class.", labels=["owner", "class"])
        queues = HistogramMetricFamily(f"{ns}_queue_seconds", "Time spent in the admission "
                                       "queue, by owner and class.", labels=["owner", "class"])
        operations = CounterMetricFamily(f"{ns}_pool_operations", "Pool operations by kind "
                                         "(acquired, created, closed, leaked, ...).",
                                         labels=["owner", "op"])
        for (owner, kind, state, class_name, backend), n in self._connections.items():
            connections.add_metric([owner, kind, state, class_name, backend], n)
        listed: Tally[ConnectionLabels] = Tally()
        for source in self._connection_sources:
            listed.update(source())
        for labels, n in listed.items():
            connections.add_metric(list(labels), n)
        for name, (ref, backend) in list(self._pools.items()):
            pool = ref()
            if pool is None:
                del self._pools[name]
                continue
            stats = pool.stats()
            in_use_by_class: dict[str, int] = stats["in_use_by_class"]
            for state, n in stats["connections"].items():
                if state == State.IN_USE.value:
                    for class_name, held in in_use_by_class.items():
                        connections.add_metric([name, "pool", state, class_name, backend], held)
                else:
                    connections.add_metric([name, "pool", state, "", backend], n)
            for class_name, snap in stats["wait_seconds"].items():
                counts = [int(c) for c in snap["buckets"].values()]
                waits.add_metric([name, class_name], _buckets(counts), snap["sum"])
            for op, n in stats["counters"].items():
                operations.add_metric([name, op], n)
        for (owner, class_name), histogram in self._waits.items():
            waits.add_metric([owner, class_name], _buckets(histogram.counts), histogram.sum)
        for (owner, class_name), histogram in self._queues.items():
            queues.add_metric([owner, class_name], _buckets(histogram.counts), histogram.sum)
        for owner, scheduler_ref in list(self._schedulers.items()):
            scheduler = scheduler_ref()
            if scheduler is None:
                del self._schedulers[owner]
                continue
            for class_name, histogram in scheduler.queue_waits().items():
                queues.add_metric([owner, class_name], _buckets(histogram.counts),
                                  histogram.sum)
        records = CounterMetricFamily(f"{ns}_telemetry_records", "Connection records by sink "
                                      "and outcome: written, dropped (queue full), refused "
                                      "(a value the store refuses) or failed (store error).",
                                      labels=["sink", "outcome"])
        depth = GaugeMetricFamily(f"{ns}_telemetry_queue_depth", "Records waiting to be "
                                  "written.", labels=["sink"])
        for writer in self._writers:
            records.add_metric([writer.name, "written"], writer.written)
            records.add_metric([writer.name, "dropped"], writer.dropped)
            records.add_metric([writer.name, "refused"], writer.refused)
            records.add_metric([writer.name, "failed"], writer.failed)
            depth.add_metric([writer.name], writer.depth)
        yield from (connections, waits, queues, operations, records, depth)

    def describe(self) -> list[Metric]:
        """Nothing to check at registration: the scraped families depend on what is watched."""
        return []
