"""Prometheus metrics: names, labels and values, read from an explicit registry."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from connwise.core.classes import ClassTable
from connwise.core.pooling import Connect, PoolLimits, PoolPolicy
from connwise.core.zombies import Verdict, ZombieFinding
from connwise.telemetry.metrics import TelemetryMetrics
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.writer import RecordWriter


class PolicyPool:
    """What `watch_pool` reads of a pool (its name and `stats()`), over the real core policy."""

    def __init__(self, policy: PoolPolicy) -> None:
        self.policy = policy
        self.name = policy.name
        self.now = 0.0

    def stats(self) -> dict[str, Any]:
        return self.policy.stats(self.now)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_pool_gauges_waits_and_counters_come_from_the_pool() -> None:
    registry = CollectorRegistry()
    metrics = TelemetryMetrics(registry)
    policy = PoolPolicy(name="main", limits=PoolLimits(min_size=2, max_size=4),
                        classes=ClassTable())
    for action in policy.pump(0.0):
        assert isinstance(action, Connect)
        policy.connected(action.conn_id, 0.1, 0.1)
    policy.acquire_now("critical", 1.0)
    pool = PolicyPool(policy)
    metrics.watch_pool(pool, backend="db1")
    assert value(registry, "connwise_connections", owner="main", kind="pool", state="in_use",
                 **{"class": "critical"}, backend="db1") == 1
    assert value(registry, "connwise_connections", owner="main", kind="pool", state="idle",
                 **{"class": ""}, backend="db1") == 1
    assert value(registry, "connwise_wait_seconds_count", owner="main",
                 **{"class": "critical"}) == 1
    assert value(registry, "connwise_wait_seconds_bucket", owner="main",
                 **{"class": "critical"}, le="+Inf") == 1
    assert value(registry, "connwise_pool_operations_total", owner="main", op="acquired") == 1
    del pool  # held weakly: a forgotten pool leaves the registry
    assert value(registry, "connwise_pool_operations_total", owner="main",
                 op="acquired") is None


def test_data_plane_fed_metrics() -> None:
    registry = CollectorRegistry()
    metrics = TelemetryMetrics(registry)
    metrics.connection_state("web", "client", "interactive", "api", None, "active")
    metrics.connection_state("web", "client", "interactive", "api", None, "active")
    metrics.connection_state("web", "client", "interactive", "api", "active", "idle")
    labels = {"owner": "web", "kind": "client", "class": "interactive", "backend": "api"}
    assert value(registry, "connwise_connections", state="active", **labels) == 1
    assert value(registry, "connwise_connections", state="idle", **labels) == 1
    metrics.observe_wait("web", "bulk", 0.003)
    metrics.observe_wait("web", "bulk", 7.0)
    metrics.observe_queue("web", "bulk", 0.2)
    assert value(registry, "connwise_wait_seconds_count", owner="web", **{"class": "bulk"}) == 2
    assert value(registry, "connwise_wait_seconds_bucket", owner="web", **{"class": "bulk"},
                 le="0.005") == 1
    assert value(registry, "connwise_wait_seconds_sum", owner="web",
                 **{"class": "bulk"}) == 7.003
    assert value(registry, "connwise_queue_seconds_count", owner="web", **{"class": "bulk"}) == 1
    metrics.degraded("bulk", 2)
    metrics.shed("bulk", "overload")
    metrics.zombie(ZombieFinding(1, "web", "eu", Verdict.ZOMBIE, 90.0, 30.0, 5.0))
    metrics.zombie_reclaimed("web")
    assert value(registry, "connwise_degradations_total", level="2", **{"class": "bulk"}) == 1
    assert value(registry, "connwise_sheds_total", reason="overload", **{"class": "bulk"}) == 1
    assert value(registry, "connwise_zombies_total", owner="web", verdict="zombie") == 1
    assert value(registry, "connwise_zombies_reclaimed_total", owner="web") == 1
    text = generate_latest(registry).decode()
    assert "# TYPE connwise_wait_seconds histogram" in text


def test_dropped_telemetry_is_a_metric() -> None:
    registry = CollectorRegistry()
    metrics = TelemetryMetrics(registry, namespace="cw")
    gate = threading.Event()

    class Stuck:
        def write(self, rows: object, columns: object = None) -> None:
            gate.wait()

        def retain(self, **kwargs: object) -> int:
            return 0

        def close(self) -> None:
            pass

    writer = RecordWriter(Stuck, capacity=3, batch_size=1, flush_interval=60.0,
                          name="sqlite").start()
    metrics.watch_writer(writer)
    rec = ConnRecord("1", "pool", "p", 0.0)
    for _ in range(10):
        writer.submit(rec)
    dropped = value(registry, "cw_telemetry_records_total", sink="sqlite", outcome="dropped")
    assert dropped == writer.dropped and dropped is not None and dropped >= 6
    assert value(registry, "cw_telemetry_queue_depth", sink="sqlite") == writer.depth
    gate.set()
    writer.close()
    assert value(registry, "cw_telemetry_records_total", sink="sqlite",
                 outcome="written") == 10 - writer.dropped
    writer.refused = 2  # records the store refused for their values
    assert value(registry, "cw_telemetry_records_total", sink="sqlite", outcome="refused") == 2


def test_schedulers_and_listed_connections_are_read_at_scrape_time() -> None:
    from connwise.core.scheduler import Scheduler

    registry = CollectorRegistry()
    metrics = TelemetryMetrics(registry)
    scheduler = Scheduler(ClassTable(), capacity=1, max_waiters=10, owner="app")
    metrics.watch_scheduler("app", scheduler)
    assert scheduler.try_admit("bulk")
    waiter = scheduler.submit("critical", 10.0)
    scheduler.release("bulk")
    assert scheduler.grant(10.3) is waiter
    critical = {"class": "critical"}
    assert value(registry, "connwise_queue_seconds_count", owner="app", **critical) == 1
    assert value(registry, "connwise_queue_seconds_bucket", owner="app", le="0.25",
                 **critical) == 0
    assert value(registry, "connwise_queue_seconds_bucket", owner="app", le="0.5",
                 **critical) == 1
    assert value(registry, "connwise_queue_seconds_bucket", owner="app", le="0.0001",
                 **{"class": "bulk"}) == 1
    # A reloaded group's new scheduler replaces the old one under the same owner.
    reloaded = Scheduler(ClassTable(), capacity=1, max_waiters=10)
    metrics.watch_scheduler("app", reloaded)
    assert value(registry, "connwise_queue_seconds_count", owner="app", **critical) == 0
    del reloaded  # held weakly: a scheduler nobody uses any more is not exported
    assert value(registry, "connwise_queue_seconds_count", owner="app", **critical) is None
    listed = [("web", "http", "idle", "bulk", ""), ("web", "http", "idle", "bulk", ""),
              ("web", "tcp", "active", "critical", "db")]
    metrics.watch_connections(lambda: listed)
    assert value(registry, "connwise_connections", owner="web", kind="http", state="idle",
                 backend="", **{"class": "bulk"}) == 2
    listed.pop()
    assert value(registry, "connwise_connections", owner="web", kind="tcp", state="active",
                 backend="db", **critical) is None
