"""Ingest into SQLite on every core: worker processes parse chunks of lines into small SQLite
databases, and this process splices those into the store in file order.

Why this shape: per line, parsing costs ~2.7 us of Python and SQLite's insert through Python's
sqlite3 ~3 us more (binding values, building the record), and the GIL keeps both on one core.
A worker does both for its chunk, into a private `:memory:` database whose table is made from
the store's own CREATE TABLE, and hands the database back as bytes (`Connection.serialize`).
This process only reads the file, cuts it at newlines and appends each image with
`SqliteStore.append_image` (SQLite copies the records without decoding them, ~0.4 us a line).

Chunks are appended in file order and each carries the number of its first line, so the store
gets the records the serial ingest writes, in the same order, and the summary the same counts
and line numbers. At most `2 * workers` chunks are in flight, so memory stays bounded whatever
the input. The workers are forked (where the platform allows) before the progress bar starts
its thread, and ignore SIGINT: Ctrl-C reaches this process, which stops and, for a new store,
leaves nothing behind (`SqliteStore.build`).
"""

from __future__ import annotations

import gzip
import multiprocessing
import os
import signal
import sqlite3
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from connwise.errors import ConfigError, IngestError
from connwise.telemetry.ingest.base import (
    FileSummary,
    IngestSummary,
    LineParser,
    fail_if_nothing_read,
    ingest,
    parse_lines,
)
from connwise.telemetry.schema import TABLE
from connwise.telemetry.store_sqlite import SqliteStore

#: Bytes of log per chunk (~11k nginx lines): a chunk's fixed costs (a database, its image, two
#: pickles) are noise next to its lines, and the last chunk's wait is short.
CHUNK_BYTES = 2 << 20
#: Below this much input, starting worker processes costs more than they save.
PARALLEL_MIN_BYTES = 16 << 20
#: Beyond this many workers, this process's splicing is the bottleneck anyway.
MAX_WORKERS = 8
#: A chunk sent to a worker: its future image and summary, and the file position after it.
_Pending = tuple["Future[tuple[bytes, FileSummary]]", int]


def default_workers() -> int:
    """The CPUs this process may run on, at most `MAX_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def ingest_sqlite(parser: LineParser, paths: Sequence[str | Path], store: str | Path, *,
                  workers: int | None = None, progress: bool = True,
                  console: Console | None = None, chunk_bytes: int = CHUNK_BYTES,
                  parallel_min_bytes: int = PARALLEL_MIN_BYTES) -> IngestSummary:
    """Ingest `paths` into the SQLite store at `store`, as `connwise ingest` does.

    A new store is built aside and put in place complete (`SqliteStore.build`); an existing
    one is appended to in bulk mode. With more than one worker (default: one per CPU) and at
    least `parallel_min_bytes` of input, `workers` processes parse; else this process does.
    """
    count = default_workers() if workers is None else workers
    if count < 1:
        raise ConfigError("--workers", workers, "needs at least one worker",
                          "give 1 to parse in this process, or more to use more cores")
    files = [Path(p) for p in paths]
    size = sum(p.stat().st_size for p in files if p.is_file())
    target = Path(store)
    opened = _appending(target) if target.exists() else SqliteStore.build(target)
    with opened as sink:
        if count > 1 and size >= parallel_min_bytes:
            return _ingest_parallel(parser, files, sink, count, progress, console, chunk_bytes)
        return ingest(parser, files, sink, progress=progress, console=console)


@contextmanager
def _appending(path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(path)
    try:
        with store.bulk():
            yield store
    finally:
        store.close()


def _ingest_parallel(parser: LineParser, files: list[Path], store: SqliteStore, workers: int,
                     progress: bool, console: Console | None, chunk_bytes: int) -> IngestSummary:
    summary = IngestSummary()
    sizes = {p: (p.stat().st_size if p.is_file() else 0) for p in files}
    console = console or Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=console,
                   disable=not (progress and console.is_terminal))
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                 initializer=_start_worker,
                                 initargs=(parser, store.table_sql())) as pool:
            # The first task starts every worker: before the progress bar's thread exists.
            pool.submit(_ready).result()
            with bar:
                for path in files:
                    task = bar.add_task(path.name, total=sizes[path] or None)
                    summary.files.append(_ingest_file(pool, path, store, bar, task,
                                                      2 * workers, chunk_bytes))
                    bar.update(task, completed=sizes[path])
    except BrokenProcessPool:
        raise IngestError("a parse worker process died (killed, or out of memory); run again, "
                          "or with --workers 1 to parse in this process.") from None
    fail_if_nothing_read(summary)
    return summary


def _ingest_file(pool: ProcessPoolExecutor, path: Path, store: SqliteStore, bar: Progress,
                 task: TaskID, in_flight: int, chunk_bytes: int) -> FileSummary:
    """One file through the workers, at most `in_flight` chunks at a time, spliced in order."""
    result = FileSummary(str(path))
    try:
        raw, stream = _open(path)
    except OSError as exc:
        result.error = f"cannot open {str(path)!r}: {exc.strerror or exc}"
        return result
    pending: deque[_Pending] = deque()
    first_line = 1
    failure: Exception | None = None
    with raw, stream:
        try:
            for chunk in _chunks(stream, chunk_bytes):
                if len(pending) >= in_flight:
                    bar.update(task, completed=_splice(pending, store, result))
                pending.append((pool.submit(_parse_chunk, chunk, path.name, first_line),
                                raw.tell()))
                first_line += chunk.count(b"\n")
        except (OSError, EOFError) as exc:
            failure = exc
        while pending:
            bar.update(task, completed=_splice(pending, store, result))
    if failure is not None:
        result.error = f"reading {str(path)!r} stopped at line {result.lines}: {failure}"
    return result


def _splice(pending: deque[_Pending], store: SqliteStore, result: FileSummary) -> int:
    """Wait for the oldest chunk, append it to `store` and count it; returns the file position
    read when it was sent (for the progress bar)."""
    future, position = pending.popleft()
    image, part = future.result()
    store.append_image(image)
    result.absorb(part)
    return position


def _open(path: Path) -> tuple[BinaryIO, BinaryIO]:
    raw = path.open("rb")
    if path.suffix == ".gz":
        return raw, gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    return raw, raw


def _chunks(stream: BinaryIO, size: int) -> Iterator[bytes]:
    """Pieces of about `size` bytes that end with a newline (the last one may not)."""
    rest = b""
    while block := stream.read(size):
        data = rest + block
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # one line longer than `size`: read on
            rest = data
            continue
        rest = data[cut:]
        yield data[:cut]
    if rest:
        yield rest


# -- the worker processes ---------------------------------------------------------------------

_worker: tuple[LineParser, str, str] | None = None


def _start_worker(parser: LineParser, table_sql: str) -> None:
    global _worker  # noqa: PLW0603 - one parser per worker process, set once at its start
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    columns = parser.columns
    insert = (f"INSERT INTO {TABLE} ({', '.join(columns)}) "
              f"VALUES ({', '.join('?' * len(columns))})")
    _worker = (parser, table_sql, insert)


def _ready() -> None:
    """Nothing: submitted once to start the workers."""


def _parse_chunk(data: bytes, source: str, first_line: int) -> tuple[bytes, FileSummary]:
    """The records of the lines in `data` (numbered from `first_line`) as a database image, and
    their summary."""
    assert _worker is not None, "_start_worker runs first in every worker"
    parser, table_sql, insert = _worker
    part = FileSummary(source)
    # Lines without their "\n" (the parsers allow trailing space): splitting the decoded chunk
    # costs a tenth of iterating a TextIOWrapper over it.
    lines = data.decode("utf-8", "replace").split("\n")
    if not lines[-1]:
        lines.pop()  # the chunk ended with a newline, not with a line
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        db.execute(table_sql)
        db.execute("BEGIN")
        rows = parse_lines(parser.start_file(source, first_line), lines, part, first_line)
        part.records = db.executemany(insert, rows).rowcount
        db.execute("COMMIT")
        image = db.serialize()
    finally:
        db.close()
    return image, part
