"""The process writer against a real child process and a real SQLite store: shutdown commits
everything, a stuck store drops without blocking the submitter, a killed child is reported (its
uncommitted records counted as failed) and replaced, and no child outlives the writer."""

from __future__ import annotations

import math
import os
import resource
import signal
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from connwise.errors import StoreError
from connwise.telemetry.record import ConnRecord, Row
from connwise.telemetry.store_sqlite import SqliteStore
from connwise.telemetry.stores import StoreSpec
from connwise.telemetry.writer import Retention
from connwise.telemetry.writer_process import ProcessWriter


class GatedStore(SqliteStore):
    """A real store whose writes wait while the file `gate` exists (the child has no other
    channel to the test than the file system)."""

    def __init__(self, path: str, gate: str) -> None:
        super().__init__(path)
        self.gate = Path(gate)

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        Path(f"{self.gate}.entered").touch()
        while self.gate.exists():
            time.sleep(0.01)
        super().write(rows, columns)


class GatedSpec:
    """A picklable `open_sink` for `GatedStore` (the child unpickles and calls it)."""

    def __init__(self, path: Path, gate: Path) -> None:
        self.path, self.gate = str(path), str(gate)

    def __call__(self) -> GatedStore:
        return GatedStore(self.path, self.gate)


def record(i: int) -> ConnRecord:
    rec = ConnRecord(str(i), "client", "web", 1_700_000_000.0 + i)
    rec.finish(1_700_000_001.0 + i, "client closed")
    return rec


def stored(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT conn_id FROM connections")]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def test_close_commits_every_record_and_reaps_the_child(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    writer = StoreSpec.parse(str(db)).writer(batch_size=100, flush_interval=60.0)
    assert isinstance(writer, ProcessWriter)
    pid = writer.pid
    assert pid is not None and pid != os.getpid()
    for i in range(1_234):  # 12 batches shipped by the submitter, 34 left for close
        assert writer.submit(record(i))
    writer.close()
    assert writer.written == 1_234 and writer.failed == 0 and writer.dropped == 0
    assert sorted(stored(db), key=int) == [str(i) for i in range(1_234)]
    assert gone(pid) and not writer._thread.is_alive()
    assert not writer.submit(record(0)) and writer.dropped == 1  # closed: dropped and counted


def test_flush_waits_until_the_store_has_the_records(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with ProcessWriter(StoreSpec.parse(str(db)).open_sink, batch_size=500,
                       flush_interval=60.0) as writer:
        for i in range(7):
            writer.submit(record(i))
        assert writer.flush(20.0)
        assert writer.written == 7 and writer.depth == 0
        assert len(stored(db)) == 7


def test_a_stuck_store_drops_and_counts_without_blocking_the_submitter(tmp_path: Path) -> None:
    db, gate = tmp_path / "t.db", tmp_path / "gate"
    gate.touch()
    writer = ProcessWriter(GatedSpec(db, gate), capacity=200, batch_size=50,
                           flush_interval=60.0).start()
    for i in range(50):
        writer.submit(record(i))  # the 50th ships a batch, which the child holds at the gate
    wait_for(Path(f"{gate}.entered"))
    started = time.perf_counter()
    accepted = sum(writer.submit(record(i)) for i in range(50, 20_050))
    elapsed = time.perf_counter() - started
    assert accepted == 150 and writer.dropped == 19_850
    assert writer.depth == 200
    assert elapsed < 2.0, f"20,000 submits took {elapsed:.2f} s: the submitter waited"
    gate.unlink()
    writer.close()
    assert writer.written == 200 and writer.failed == 0
    assert len(stored(db)) == 200


def test_a_killed_child_is_reported_and_replaced(tmp_path: Path) -> None:
    db, gate = tmp_path / "t.db", tmp_path / "gate"
    gate.touch()
    writer = ProcessWriter(GatedSpec(db, gate), capacity=1_000, batch_size=10,
                           flush_interval=0.05).start()
    first = writer.pid
    assert first is not None
    for i in range(10):
        writer.submit(record(i))
    wait_for(Path(f"{gate}.entered"))
    os.kill(first, signal.SIGKILL)  # dies holding a batch of 10 it never committed
    gate.unlink()
    deadline = time.monotonic() + 20.0
    while writer.restarts == 0:
        assert time.monotonic() < deadline, "the writer did not notice the dead child"
        time.sleep(0.01)
    assert writer.failed == 10
    assert writer.last_error is not None and f"pid {first}" in writer.last_error
    assert "exited with code -9" in writer.last_error
    for i in range(10, 25):
        writer.submit(record(i))
    assert writer.flush(20.0)
    writer.close()
    assert writer.written == 15 and writer.restarts == 1
    assert sorted(stored(db), key=int) == [str(i) for i in range(10, 25)]
    assert writer.pid is None and gone(first)


def test_a_store_that_cannot_open_fails_at_start(tmp_path: Path) -> None:
    spec = StoreSpec.parse(str(tmp_path / "missing" / "t.db"))
    with pytest.raises(StoreError, match=r"directory .* does not exist"):
        spec.writer()


class Reason(str):
    """A str subclass, as an enum's value may be: marshal cannot write it, pickle can."""


def test_a_batch_marshal_cannot_write_goes_as_pickle_and_is_stored(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    writer = StoreSpec.parse(str(db)).writer(batch_size=10, flush_interval=60.0)
    for i in range(10):  # one marshal batch
        writer.submit(record(i))
    odd = record(10)
    odd.close_reason = Reason("client closed")
    writer.submit(odd)
    for i in range(11, 20):  # the batch with the str subclass in it
        writer.submit(record(i))
    assert writer.flush(30.0)
    writer.close()
    assert writer.failed == 0 and writer.written == 20
    assert sorted(stored(db), key=int) == [str(i) for i in range(20)]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT close_reason FROM connections WHERE conn_id = '10'"
                            ).fetchone() == ("client closed",)


class NullSink:
    """A store that takes every batch and keeps nothing: the writer's counters, which count
    the child's answers, are what a test reads."""

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        pass

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               now: float | None = None, limit: int | None = None) -> int:
        return 0

    def close(self) -> None:
        pass


def test_records_submitted_while_the_housekeeper_ships_are_not_lost() -> None:
    """The housekeeping thread took a short queue whole (`list(queue)`, then `queue.clear()`):
    a record the data plane appended between the two was cleared unshipped, counted neither
    written nor failed, and `flush` waited for it until its timeout."""
    rec = record(0)
    # Batches the submitter never fills: every record is shipped by the housekeeper.
    writer = ProcessWriter(NullSink, capacity=10_000_000, batch_size=10_000_000,
                           flush_interval=0.0005).start()
    try:
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                for _ in range(100):
                    writer.submit(rec)
        finally:
            sys.setswitchinterval(interval)
        assert writer.flush(10.0), writer
        assert writer.written == writer.submitted and writer.failed == 0
    finally:
        writer.close(5.0)


def test_a_child_that_cannot_be_started_is_retried(tmp_path: Path) -> None:
    """Starting a new child can fail with an OSError (no file descriptor left for its pipes,
    EMFILE, on a gateway at its limits): it killed the housekeeping thread, so no child was
    ever started again, nothing was shipped, and every later record was dropped."""
    db = tmp_path / "t.db"
    writer = ProcessWriter(StoreSpec.parse(str(db)).open_sink, batch_size=1_000,
                           flush_interval=0.05).start()
    try:
        first = writer.pid
        assert first is not None
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
        try:
            os.kill(first, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while writer.last_error is None or "open files" not in writer.last_error:
                assert time.monotonic() < deadline, writer.last_error
                time.sleep(0.01)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for i in range(5):
            writer.submit(record(i))
        deadline = time.monotonic() + 10.0
        while writer.written < 5:  # shipped by the housekeeping thread, to a new child
            assert time.monotonic() < deadline, writer
            time.sleep(0.01)
        assert writer.restarts == 1 and writer.pid not in (None, first)
    finally:
        writer.close(10.0)
    assert sorted(stored(db), key=int) == [str(i) for i in range(5)]


def test_close_within_its_timeout_counts_what_a_stuck_child_did_not_commit(
        tmp_path: Path) -> None:
    """`close(timeout)` (the gateway's drain gives 30 s) returned at its timeout while the
    writer waited on for a stuck child (its own `timeout`, 60 s): the process then exited with
    the records neither written nor counted, the child still running."""
    db, gate = tmp_path / "t.db", tmp_path / "gate"
    gate.touch()
    writer = ProcessWriter(GatedSpec(db, gate), batch_size=10, flush_interval=60.0).start()
    pid = writer.pid
    assert pid is not None
    try:
        for i in range(13):  # a batch of 10 the child holds at the gate, 3 queued
            writer.submit(record(i))
        wait_for(Path(f"{gate}.entered"))
        began = time.monotonic()
        writer.close(1.0)
        assert time.monotonic() - began < 3.0
        assert (writer.written, writer.failed, writer.depth) == (0, 13, 0)
        assert writer.last_error is not None and "13 records" in writer.last_error
        assert gone(pid) and not writer._thread.is_alive()
    finally:
        gate.unlink()
        writer.close()
    assert stored(db) == []


def test_a_record_the_store_refuses_costs_only_itself(tmp_path: Path) -> None:
    """The child wrote each batch in one transaction, and a record SQLite refused (an integer
    past 64 bits, a NaN where a NOT NULL real goes) lost every record of its batch."""
    db = tmp_path / "t.db"
    writer = StoreSpec.parse(str(db)).writer(batch_size=50, flush_interval=60.0)
    bad = {5, 17, 18, 49, 60}
    try:
        for i in range(100):
            rec = record(i)
            if i in bad:
                rec.bytes_out = 2**64
            if i == 60:
                rec.active_s = math.nan
            writer.submit(rec)
        assert writer.flush(30.0)
        assert (writer.written, writer.refused, writer.failed) == (95, 5, 0)
        assert writer.last_error is not None and "conn_id '60'" in writer.last_error
    finally:
        writer.close()
    assert sorted(stored(db), key=int) == [str(i) for i in range(100) if i not in bad]


class SteppedStore(SqliteStore):
    """A real store that notes its writes and retention steps in the file `log`, and holds its
    second step while the file `gate` exists."""

    def __init__(self, path: str, log: str, gate: str) -> None:
        super().__init__(path)
        self.log, self.gate = Path(log), Path(gate)
        self.steps = 0

    def note(self, line: str) -> None:
        with self.log.open("a") as f:
            f.write(line + "\n")

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        super().write(rows, columns)
        self.note(f"write {len(rows)}")

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               now: float | None = None, limit: int | None = None) -> int:
        deleted = super().retain(max_age=max_age, max_bytes=max_bytes, now=now, limit=limit)
        self.note(f"retain {limit} {deleted}")
        self.steps += 1
        if self.steps == 2:
            Path(f"{self.gate}.entered").touch()
            while self.gate.exists():
                time.sleep(0.01)
        return deleted


class SteppedSpec:
    def __init__(self, path: Path, log: Path, gate: Path) -> None:
        self.path, self.log, self.gate = str(path), str(log), str(gate)

    def __call__(self) -> SteppedStore:
        return SteppedStore(self.path, self.log, self.gate)


def test_a_retention_pass_over_a_backlog_goes_in_steps_with_writes_between(
        tmp_path: Path) -> None:
    """The first pass over a long backlog was one DELETE in one request: the child answered
    nothing until it was done, batches waited behind it, and past 60 s the watchdog killed the
    child, the pass lost and started over at the next interval."""
    db, log, gate = tmp_path / "t.db", tmp_path / "log", tmp_path / "gate"
    backlog = SqliteStore(db)
    backlog.write([record(i).row() for i in range(-30_000, 0)])  # started in 2023: too old
    backlog.close()
    gate.touch()
    writer = ProcessWriter(SteppedSpec(db, log, gate), batch_size=10, flush_interval=0.05,
                           retention=Retention(max_age=3600.0, interval=0.05,
                                               chunk=1000)).start()
    try:
        wait_for(Path(f"{gate}.entered"))  # the child holds the pass's second step
        for i in range(10):  # a batch, shipped at once, behind the step in the pipe
            rec = ConnRecord(f"new{i}", "client", "web", time.time())
            rec.finish(time.time(), "client closed")
            writer.submit(rec)
        gate.unlink()
        deadline = time.monotonic() + 30.0
        while "retain 1000 0" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, writer
            time.sleep(0.01)
        assert writer.flush(20.0)
    finally:
        writer.close()
    lines = log.read_text().splitlines()
    first_pass = lines[:lines.index("retain 1000 0") + 1]
    steps = [line for line in first_pass if line.startswith("retain")]
    assert steps == ["retain 1000 1000"] * 30 + ["retain 1000 0"]
    at = [n for n, line in enumerate(first_pass) if line.startswith("retain")]
    assert first_pass[at[1] + 1:at[2]] == ["write 10"]  # between the second and third steps
    assert writer.written == 10 and writer.restarts == 0
    assert sorted(stored(db)) == [f"new{i}" for i in range(10)]
