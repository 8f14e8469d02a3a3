"""The bounded queue and background writer: batches, flushes, drops when full, never blocks."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from connwise.errors import ConfigError, RecordRefused, StoreError
from connwise.telemetry.record import COLUMN, ConnRecord, Row
from connwise.telemetry.store_sqlite import SqliteStore
from connwise.telemetry.writer import RecordWriter, Retention


class ListSink:
    """A store that keeps batches in memory and can be told to block or fail."""

    def __init__(self, *, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[Row]] = []
        self.gate = gate
        self.entered = threading.Event()
        self.fail = fail
        self.closed = False
        self.retained: list[tuple[float | None, int | None]] = []
        self.attempts = 0

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        self.attempts += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.fail:
            raise OSError("disk full")
        self.batches.append(list(rows))

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               now: float | None = None, limit: int | None = None) -> int:
        self.retained.append((max_age, max_bytes))
        return 0

    def close(self) -> None:
        self.closed = True


def record(i: int) -> ConnRecord:
    rec = ConnRecord(str(i), "pool", "main", float(i))
    rec.finish(float(i) + 1.0, "closed")
    return rec


def test_records_are_written_in_batches_and_flushed() -> None:
    sink = ListSink()
    with RecordWriter(lambda: sink, capacity=100, batch_size=10, flush_interval=60.0) as writer:
        for i in range(25):
            assert writer.submit(record(i))
        assert writer.flush(10.0)
        assert writer.written == 25 and writer.depth == 0
        assert sum(len(b) for b in sink.batches) == 25
        assert all(len(b) <= 10 for b in sink.batches) and len(sink.batches) >= 3
        assert sink.batches[0][0][0] == "0"
    assert sink.closed
    assert "written 25" in repr(writer)


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    """The data plane side never waits: with the store stuck inside a write, submit returns at
    once (if it blocked, this test would hang on `gate` and time out)."""
    gate = threading.Event()
    sink = ListSink(gate=gate)
    writer = RecordWriter(lambda: sink, capacity=50, batch_size=10, flush_interval=60.0).start()
    for i in range(10):
        writer.submit(record(i))
    assert sink.entered.wait(10.0)  # the writer holds a batch of 10 inside the stuck store
    accepted = sum(writer.submit(record(i)) for i in range(10, 10_010))
    assert accepted == 50 and writer.dropped == 9_950
    assert writer.depth == 50
    gate.set()
    writer.close()
    assert writer.written == 60 and writer.failed == 0
    assert writer.submitted == writer.written + writer.failed
    assert not writer.submit(record(0)) and writer.dropped == 9_951  # closed: dropped too


def test_a_failed_batch_is_counted_and_the_writer_goes_on() -> None:
    sink = ListSink(fail=True)
    writer = RecordWriter(lambda: sink, capacity=10, batch_size=5, flush_interval=60.0).start()
    for i in range(7):
        writer.submit(record(i))
    assert writer.flush(10.0)
    assert writer.failed == 7 and writer.written == 0 and writer.refused == 0
    assert sink.attempts == 2  # a batch of 5 and one of 2, each tried once: never split
    assert writer.last_error == "OSError: disk full"
    sink.fail = False
    writer.submit(record(8))
    writer.close()
    assert writer.written == 1


def test_opening_the_store_fails_loudly_at_start() -> None:
    def broken() -> ListSink:
        raise StoreError("cannot open telemetry store 'x'")

    with pytest.raises(StoreError, match="cannot open"):
        RecordWriter(broken).start()


def test_retention_runs_in_the_writer_thread() -> None:
    sink = ListSink()
    writer = RecordWriter(lambda: sink, flush_interval=60.0,
                          retention=Retention(max_age=3600.0, max_bytes=None,
                                              interval=1e-9)).start()
    writer.submit(record(1))
    assert writer.flush(10.0)
    writer.close()
    assert sink.retained and sink.retained[0] == (3600.0, None)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"capacity": 0}, "telemetry.queue_capacity"),
    ({"capacity": 10, "batch_size": 11}, "telemetry.batch_size"),
    ({"flush_interval": 0.0}, "telemetry.flush_interval"),
])
def test_bad_settings_name_their_key(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RecordWriter(ListSink, **kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"chunk": 0}, "telemetry.retention.chunk"),
    ({"max_age": 0.0}, "telemetry.retention.max_age"),
    ({"max_bytes": 100}, "telemetry.retention.max_bytes"),
    ({"interval": 0.0}, "telemetry.retention.interval"),
])
def test_bad_retention_names_its_key(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Retention(**kwargs).validate()  # type: ignore[arg-type]
    assert info.value.key == key


def test_a_record_the_store_refuses_costs_only_itself(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """One record with a value SQLite refuses (a NaN where a NOT NULL real goes, an integer
    past 64 bits) failed its whole batch: the other records of the batch were lost with it."""
    nan, huge = record(3), record(7)
    nan.active_s = math.nan  # SQLite stores NaN as NULL
    huge.bytes_out = 2**70
    path = tmp_path / "t.db"
    with caplog.at_level(logging.WARNING, "connwise.telemetry"), \
            RecordWriter(lambda: SqliteStore(path), capacity=100, batch_size=10,
                         flush_interval=60.0) as writer:
        for i in range(10):
            writer.submit(nan if i == 3 else huge if i == 7 else record(i))
        assert writer.flush(10.0)
    assert (writer.written, writer.refused, writer.failed) == (8, 2, 0)
    assert "refused 2" in repr(writer)
    with sqlite3.connect(path) as db:
        stored = sorted(int(r[0]) for r in db.execute("SELECT conn_id FROM connections"))
    assert stored == [0, 1, 2, 4, 5, 6, 8, 9]
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2
    assert "conn_id '3'" in refusals[0] and "NOT NULL constraint failed" in refusals[0]
    assert "conn_id '7'" in refusals[1] and "too large" in refusals[1]
    assert writer.last_error is not None and "conn_id '7'" in writer.last_error


def test_the_sqlite_store_tells_a_refused_record_from_a_store_that_cannot_write(
        tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    try:
        bad = list(record(1).row())
        bad[COLUMN["conn_id"]] = "\udcff"  # a lone surrogate: no UTF-8 for it
        with pytest.raises(RecordRefused, match="surrogates not allowed"):
            store.write([record(0).row(), tuple(bad)])
        assert store.count() == 0  # the batch is all or nothing
        store.close()
        with pytest.raises(StoreError) as info:
            store.write([record(0).row()])
        assert not isinstance(info.value, RecordRefused)
    finally:
        store.close()


class SteppedStore(SqliteStore):
    """A real store that notes its writes and retention steps in `events`, and calls `during`
    after its second step (where the test submits records, as the data plane would)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.events: list[tuple[str, int]] = []
        self.during: Callable[[], object] = lambda: None

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        super().write(rows, columns)
        self.events.append(("write", len(rows)))

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               now: float | None = None, limit: int | None = None) -> int:
        assert limit == 1000
        deleted = super().retain(max_age=max_age, max_bytes=max_bytes, now=now, limit=limit)
        self.events.append(("retain", deleted))
        if sum(kind == "retain" for kind, _ in self.events) == 2:
            self.during()
        return deleted


def test_a_retention_pass_over_a_backlog_goes_in_steps_with_writes_between(
        tmp_path: Path) -> None:
    """The first pass over a long backlog was one DELETE: the writer wrote nothing until it was
    done (and the process writer's watchdog killed a child silent for 60 s)."""
    store = SteppedStore(tmp_path / "t.db")
    store.write([record(i).row() for i in range(25_000)])  # started in 1970: all too old
    store.events.clear()
    writer = RecordWriter(lambda: store, capacity=100, batch_size=10, flush_interval=60.0,
                          retention=Retention(max_age=3600.0, interval=1e-9, chunk=1000))

    def submit_new() -> None:
        for i in range(10):
            rec = ConnRecord(f"new{i}", "pool", "main", time.time())
            rec.finish(time.time(), "closed")
            writer.submit(rec)

    store.during = submit_new
    writer.start()
    try:
        assert writer.flush(10.0)  # the first pass follows the flush, in the writer thread
        deadline = time.monotonic() + 30.0
        while ("retain", 0) not in store.events:
            assert time.monotonic() < deadline, store.events[-3:]
            time.sleep(0.01)
    finally:
        writer.close()
    steps = [n for kind, n in store.events if kind == "retain"]
    assert steps[:steps.index(0) + 1] == [1000] * 25 + [0]  # later passes find nothing
    retains = [i for i, (kind, _) in enumerate(store.events) if kind == "retain"]
    assert store.events[retains[1] + 1:retains[2]] == [("write", 10)]  # between steps 2 and 3
    assert writer.written == 10
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("SELECT count(*) FROM connections").fetchone() == (10,)
