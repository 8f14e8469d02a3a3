"""Telemetry of a real pool over loopback TCP: records into a real SQLite store that the
assessment then reads, Prometheus metrics of the live pool, and the overflow test: a stuck store
never blocks the pool."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import connwise
from connwise.analysis.assessment import assess
from connwise.analysis.frame import Frame
from connwise.pool.drivers.tcp import TcpConnection, TcpDriver
from connwise.telemetry.metrics import TelemetryMetrics
from connwise.telemetry.record import COLUMN, Row
from connwise.telemetry.recorder import Recorder
from connwise.telemetry.stores import StoreSpec
from connwise.telemetry.writer import RecordWriter
from tests.integration.tcp_backend import TcpBackend


@pytest.fixture
async def backend() -> AsyncIterator[TcpBackend]:
    server = await TcpBackend().start()
    yield server
    await server.stop()


def make_pool(backend: TcpBackend, **kwargs: object) -> connwise.Pool[TcpConnection]:
    options: dict[str, object] = {"min_size": 0, "max_size": 3, "name": "tel"}
    options.update(kwargs)
    return connwise.Pool(TcpDriver("127.0.0.1", backend.port, greeting=b"HELLO"),
                         **options)  # type: ignore[arg-type]


async def test_pool_records_land_in_sqlite_and_the_report_reads_them(
        backend: TcpBackend, tmp_path: Path) -> None:
    spec = StoreSpec.parse(str(tmp_path / "telemetry.db"))
    writer = spec.writer(flush_interval=0.05)
    before = time.time()
    async with make_pool(backend, min_size=1) as pool:
        recorder = Recorder.for_clock(pool.clock, writer.submit, node="node-a")
        recorder.backends[pool.name] = "echo"
        pool.subscribe(recorder.on_pool_event)
        await pool.open(wait=True)

        async def use(cls: str) -> None:
            async with pool.acquire(cls) as conn:
                await conn.send(b"ping\n")
                assert await conn.readline() == b"ping\n"

        for round_ in range(5):
            await asyncio.gather(*(use(c) for c in ("critical", "interactive", "bulk")))
            await asyncio.sleep(0.01 * round_)
        acquired = pool.stats()["counters"]["acquired"]
    assert writer.flush(10.0)
    writer.close()
    rows: list[Row] = [r for chunk in spec.read() for r in chunk]
    # The pool opened at least one connection before the recorder subscribed: the ones seen
    # from their connect are recorded whole.
    assert 1 <= len(rows) <= 3
    assert sum(r[COLUMN["requests"]] for r in rows) >= acquired - 5
    for row in rows:
        assert row[COLUMN["kind"]] == "pool" and row[COLUMN["source"]] == "tel"
        assert row[COLUMN["node"]] == "node-a" and row[COLUMN["backend"]] == "echo"
        assert before - 1 <= row[COLUMN["started_at"]] <= row[COLUMN["ended_at"]] <= \
            time.time() + 1
        assert row[COLUMN["close_reason"]] == "pool draining"
        assert row[COLUMN["class_name"]] in ("critical", "interactive", "bulk")
    assert any(r[COLUMN["connecting_s"]] > 0 for r in rows)
    result = assess(Frame.load(spec), store=str(spec))
    assert result.kpis.records == len(rows)
    assert result.kpis.establish_samples >= 1 and result.kpis.establish_p99 < 1.0
    assert result.kpis.reuse_ratio is not None and result.kpis.reuse_ratio > 0.5
    assert result.kpis.peak_concurrency >= 1


async def test_metrics_of_a_live_pool(backend: TcpBackend) -> None:
    registry = CollectorRegistry()
    metrics = TelemetryMetrics(registry)
    async with make_pool(backend, min_size=2) as pool:
        metrics.watch_pool(pool, backend="echo")
        await pool.open(wait=True)
        async with pool.acquire("critical"):
            assert registry.get_sample_value("connwise_connections", {
                "owner": "tel", "kind": "pool", "state": "in_use", "class": "critical",
                "backend": "echo"}) == 1
        assert registry.get_sample_value("connwise_pool_operations_total",
                                         {"owner": "tel", "op": "acquired"}) == 1
        assert registry.get_sample_value("connwise_wait_seconds_count",
                                         {"owner": "tel", "class": "critical"}) == 1


class StuckStore:
    """A store whose writes hang until `gate` opens: a dead disk or database."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.rows = 0

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        self.gate.wait()
        self.rows += len(rows)

    def retain(self, **kwargs: object) -> int:
        return 0

    def close(self) -> None:
        pass


async def test_a_full_telemetry_queue_does_not_block_the_pool(backend: TcpBackend) -> None:
    """The store hangs for the whole workload. Every connection still gets its record
    submitted; the queue takes `capacity`, the rest are dropped and counted, and the workload
    runs to its end: if telemetry blocked the event loop, the pool could not finish (and the
    gate that frees the store is only opened after it)."""
    gate = threading.Event()
    store = StuckStore(gate)
    writer = RecordWriter(lambda: store, capacity=20, batch_size=5, flush_interval=0.01,
                          name="stuck").start()
    registry = CollectorRegistry()
    TelemetryMetrics(registry).watch_writer(writer)
    cycles = 150
    async with make_pool(backend, max_size=1) as pool:
        recorder = Recorder.for_clock(pool.clock, writer.submit)
        pool.subscribe(recorder.on_pool_event)
        started = time.perf_counter()
        for _ in range(cycles):
            conn = await pool.getconn("bulk", timeout=5)
            conn.writer.transport.abort()  # broken: the pool closes it, one record each
            await pool.putconn(conn)
        elapsed = time.perf_counter() - started
    assert elapsed < 30
    produced = writer.submitted + writer.dropped
    assert produced >= cycles
    assert writer.dropped >= cycles - writer.capacity - writer.batch_size
    assert registry.get_sample_value("connwise_telemetry_records_total",
                                     {"sink": "stuck", "outcome": "dropped"}) == writer.dropped
    gate.set()
    writer.close()
    assert store.rows == writer.written == writer.submitted
    assert writer.written + writer.dropped == produced
