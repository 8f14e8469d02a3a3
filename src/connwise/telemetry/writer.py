"""The background writer: a bounded queue on the data plane's side, batched writes on the other.

`submit(record)` is what the data plane calls. It appends to a bounded buffer and returns: it
takes no lock the writer thread holds while writing, never waits, and when the buffer holds
`capacity` records it drops the new one and counts it in `dropped` (exported as
`connwise_telemetry_dropped_total`). A slow disk or a dead database therefore costs telemetry,
never latency (psycopg_pool and uvicorn make the same choice for their logs and stats).

A daemon thread wakes when a batch is full or `flush_interval` has passed, takes up to
`batch_size` records at a time, turns them into rows and writes each batch in one transaction
(one `executemany` for SQLite, one COPY for PostgreSQL). A batch the store refuses for a
record's values (`RecordRefused`) is written again in halves, down to the records it refuses
(`write_isolating`): those are logged and counted in `refused`, the others are stored. A batch
that fails for the store itself (a lost connection, a locked or full disk) is not split, which
could not help: it is logged and counted in `failed`; the thread goes on. The store is opened
inside the thread, so SQLite's one-connection-per-thread rule and asyncpg's one-loop-per-
connection rule both hold. With a `Retention`, the same thread prunes the store every
`retention.interval` seconds, in steps of at most `retention.chunk` records (one transaction
each) with the queued records written between steps: the first pass over a long backlog holds
neither the store nor the records waiting for longer than one step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from connwise.errors import ConfigError, RecordRefused
from connwise.telemetry.record import FIELD_NAMES, ConnRecord, Row

log = logging.getLogger("connwise.telemetry")

#: The smallest `max_bytes` retention takes: an empty SQLite store is ~40 KiB, so below this a
#: size limit can never be met and every pass would delete every record.
MIN_STORE_BYTES = 65536
#: Refused records of one batch logged one by one; past them, one line counts the rest.
LOGGED_REFUSALS = 10
#: Records a retention step deletes at most: one transaction of some tens of milliseconds, so
#: that a pass over millions of records never holds the store's write lock (SQLite), the records
#: queued meanwhile, or the process writer's 60 s watchdog for long.
RETAIN_CHUNK = 10_000


class BatchSink(Protocol):
    """Where batches of rows go: a store, as seen from the writer thread."""

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None: ...

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               now: float | None = None, limit: int | None = None) -> int: ...

    def close(self) -> None: ...


def write_isolating(sink: BatchSink, rows: Sequence[Row], columns: Sequence[str] | None = None
                    ) -> tuple[int, list[str], str | None]:
    """Write `rows` to `sink`, all but the records it refuses.

    A batch the store refuses for a record's values (`RecordRefused`: it writes nothing) is
    written again in halves, and those in halves, down to the single records it refuses, in
    the order of `rows`: one refused record costs about 2 log2(len(rows)) more transactions. Any
    other error ends the work without a split (a lost connection or a full disk refuses every
    half alike; the caller's retry takes over).

    Returns the records written, a description of each refused one with the store's reason
    (`refusal`), and the error that stopped the rest of the batch (None when none did)."""
    written = 0
    refused: list[str] = []
    parts = [rows]  # a stack: the next part to write is the last
    while parts:
        part = parts.pop()
        try:
            sink.write(part, columns)
        except RecordRefused as exc:
            if len(part) == 1:
                refused.append(refusal(part[0], columns, exc.reason))
            else:
                half = len(part) // 2
                parts += (part[half:], part[:half])
        except Exception as exc:
            return written, refused, f"{type(exc).__name__}: {exc}"
        else:
            written += len(part)
    return written, refused, None


def refusal(row: Row, columns: Sequence[str] | None, reason: str) -> str:
    """`record conn_id '7' (kind pool, source main, started_at 1700000000.0): <reason>`."""
    values = dict(zip(FIELD_NAMES if columns is None else columns, row, strict=False))
    return (f"record conn_id {values.get('conn_id')!r} (kind {values.get('kind')}, source "
            f"{values.get('source')}, started_at {values.get('started_at')}): {reason}")


@dataclass(frozen=True, slots=True)
class Retention:
    """Keep records younger than `max_age` seconds and the store under `max_bytes`."""

    max_age: float | None = 30 * 86400.0
    max_bytes: int | None = None
    #: Pruning is a scan of the oldest rows: once a minute keeps it out of the way.
    interval: float = 60.0
    #: Records deleted per step of a pass (each step is its own transaction).
    chunk: int = RETAIN_CHUNK

    def validate(self, prefix: str = "telemetry.retention") -> Retention:
        if self.max_age is not None and self.max_age <= 0:
            raise ConfigError(f"{prefix}.max_age", self.max_age, "the age must be positive",
                              "use seconds > 0, or none to keep records of any age")
        if self.max_bytes is not None and self.max_bytes < MIN_STORE_BYTES:
            raise ConfigError(f"{prefix}.max_bytes", self.max_bytes, "a store smaller than "
                              "64 KiB cannot hold its own schema", "use at least 65536 bytes")
        if self.interval <= 0:
            raise ConfigError(f"{prefix}.interval", self.interval, "the interval must be "
                              "positive", "use seconds > 0, e.g. 60")
        if self.chunk < 1:
            raise ConfigError(f"{prefix}.chunk", self.chunk, "a step must delete at least one "
                              "record", f"use e.g. {RETAIN_CHUNK}")
        return self


class RecordWriter:
    """Bounded queue plus background writer thread; see the module docstring."""

    def __init__(self, open_sink: Callable[[], BatchSink], *, capacity: int = 10_000,
                 batch_size: int = 500, flush_interval: float = 1.0,
                 retention: Retention | None = None, name: str = "store") -> None:
        if capacity < 1:
            raise ConfigError("telemetry.queue_capacity", capacity, "the queue must hold at "
                              "least one record", "use e.g. 10000")
        if not 1 <= batch_size <= capacity:
            raise ConfigError("telemetry.batch_size", batch_size, f"a batch must hold 1 to "
                              f"queue_capacity ({capacity}) records", "use e.g. 500")
        if flush_interval <= 0:
            raise ConfigError("telemetry.flush_interval", flush_interval, "the interval must "
                              "be positive", "use seconds > 0, e.g. 1")
        self.name = name
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retention = retention.validate() if retention is not None else None
        #: Records accepted, dropped because the queue was full, written, refused by the store
        #: for their values, and lost to a failed write. Each is changed by one thread only:
        #: submitted/dropped by the data plane, the others by the writer thread.
        self.submitted = 0
        self.dropped = 0
        self.written = 0
        self.refused = 0
        self.failed = 0
        self.batches = 0
        self.last_error: str | None = None
        self._open_sink = open_sink
        self._buffer: deque[ConnRecord] = deque()
        self._wake = threading.Event()
        self._flushes: list[threading.Event] = []
        self._closing = False
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"connwise-telemetry-{name}",
                                        daemon=True)

    # -- data plane side -----------------------------------------------------------------------

    def submit(self, record: ConnRecord) -> bool:
        """Queue `record` for writing; False if the queue was full and it was dropped."""
        buffer = self._buffer
        if len(buffer) >= self.capacity or self._closing:
            self.dropped += 1
            return False
        buffer.append(record)
        self.submitted += 1
        if len(buffer) >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    __call__ = submit

    @property
    def depth(self) -> int:
        """Records waiting in the queue."""
        return len(self._buffer)

    # -- life ----------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> RecordWriter:
        """Start the thread and wait until the store is open; raises what opening raised."""
        self._thread.start()
        self._opened.wait(timeout)
        if self._open_error is not None:
            raise self._open_error
        return self

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every record submitted so far is written (or failed). Not for the data
        plane: for shutdown and tests. False if `timeout` passed first."""
        if not self._thread.is_alive():
            return not self._buffer
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close the store and stop the thread."""
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> RecordWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<RecordWriter {self.name} [queued {len(self._buffer)}/{self.capacity}, "
                f"written {self.written}, dropped {self.dropped}, refused {self.refused}, "
                f"failed {self.failed}]>")

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            sink = self._open_sink()
        except BaseException as exc:
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        retention = self.retention
        next_prune = time.monotonic() + (retention.interval if retention else 0.0)
        try:
            while True:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
                flushes, self._flushes = self._flushes, []
                self._drain(sink)
                for done in flushes:
                    done.set()
                if (retention is not None and not self._closing
                        and time.monotonic() >= next_prune):
                    next_prune = time.monotonic() + retention.interval
                    self._prune(sink, retention)
                if self._closing and not self._buffer:
                    break
        finally:
            try:
                sink.close()
            except Exception:
                log.exception("telemetry writer %s: closing the store failed", self.name)
            for done in self._flushes:
                done.set()

    def _drain(self, sink: BatchSink) -> None:
        buffer = self._buffer
        popleft = buffer.popleft
        while buffer:
            count = min(len(buffer), self.batch_size)
            rows = [popleft().row() for _ in range(count)]
            self._count_batch(count, *write_isolating(sink, rows))

    def _count_batch(self, records: int, written: int, refused: Sequence[str],
                     error: str | None) -> None:
        """Count and log what became of a batch of `records` (`write_isolating`'s result)."""
        self.written += written
        self.refused += len(refused)
        for what in refused[:LOGGED_REFUSALS]:
            log.warning("telemetry writer %s: the store refused %s", self.name, what)
        if len(refused) > LOGGED_REFUSALS:
            log.warning("telemetry writer %s: the store refused %d more records of the batch",
                        self.name, len(refused) - LOGGED_REFUSALS)
        if refused:
            self.last_error = f"the store refused {refused[-1]}"
        if error is None:
            self.batches += 1
            return
        lost = records - written - len(refused)
        self.failed += lost
        self.last_error = error
        log.warning("telemetry writer %s: a batch of %d records was lost: %s",
                    self.name, lost, error)

    def _prune(self, sink: BatchSink, retention: Retention) -> None:
        """One retention pass, a step of at most `retention.chunk` records at a time, until a
        step finds less to delete; the queue is written between steps. A close stops it: the
        next writer goes on where it ended."""
        now = time.time()
        deleted = 0
        while True:
            try:
                step = sink.retain(max_age=retention.max_age, max_bytes=retention.max_bytes,
                                   now=now, limit=retention.chunk)
            except Exception:
                log.exception("telemetry writer %s: retention pass failed; continuing",
                              self.name)
                break
            deleted += step
            if step < retention.chunk or self._closing:
                break
            self._drain(sink)
        if deleted:
            log.info("telemetry writer %s: retention removed %d records", self.name, deleted)
