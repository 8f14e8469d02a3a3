"""The bounded queue and background writer: batches, flushes, drops when full, never blocks."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from connwise.errors import ConfigError, StoreError
from connwise.telemetry.record import ConnRecord, Row
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

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait()
        if self.fail:
            raise OSError("disk full")
        self.batches.append(list(rows))

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               now: float | None = None) -> int:
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
    assert writer.failed == 7 and writer.written == 0
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
    ({"max_age": 0.0}, "telemetry.retention.max_age"),
    ({"max_bytes": 100}, "telemetry.retention.max_bytes"),
    ({"interval": 0.0}, "telemetry.retention.interval"),
])
def test_bad_retention_names_its_key(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Retention(**kwargs).validate()  # type: ignore[arg-type]
    assert info.value.key == key
