"""The default store: one SQLite file in WAL mode.

WAL lets the report and `telemetry export` read while the writer thread writes, and with
`synchronous=NORMAL` a commit costs no fsync (a power cut may lose the last batches, never
corrupt the file: SQLite's documented WAL guarantee, the trade Firefox and Android make too).
`auto_vacuum=INCREMENTAL` lets retention give space back to the file system without a full
`VACUUM` that would lock the store.

One `SqliteStore` is used by one thread at a time (the writer's, or the CLI's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from connwise.errors import RecordRefused, StoreError
from connwise.telemetry.record import FIELD_NAMES, Row
from connwise.telemetry.schema import (
    LATEST,
    TABLE,
    VERSION_TABLE,
    drop_started_index,
    migrations,
    started_index,
)

log = logging.getLogger("connwise.telemetry")

#: How long a write waits for another connection's write lock (a gateway's writer, an ingest).
BUSY_TIMEOUT_S = 5
#: What `executemany` raises for a row's values rather than for the store: a constraint
#: (IntegrityError), a value of no SQL type or a row of the wrong length (ProgrammingError), a
#: string or blob past SQLite's limit (DataError), an int past 64 bits (OverflowError), a str
#: UTF-8 cannot encode (UnicodeEncodeError, a ValueError). OperationalError (locked, disk full,
#: I/O) is the store's.
_REFUSED = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError, OverflowError,
            ValueError)


class SqliteStore:
    """A telemetry store in the SQLite file at `path`, migrated to the latest schema on open."""

    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StoreError(f"telemetry store {str(self.path)!r} does not exist; check the "
                             "path, or ingest logs or run connwise with telemetry to create it.")
        if not self.path.parent.exists():
            raise StoreError(f"cannot create telemetry store {str(self.path)!r}: the directory "
                             f"{str(self.path.parent)!r} does not exist; create it first.")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            if not self._table_exists(TABLE) and not self._table_exists(VERSION_TABLE):
                self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self.version = self._migrate()
            # A bulk load that died before rebuilding the index left it out: put it back.
            self._db.execute(started_index())
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open telemetry store {str(self.path)!r}: {exc}; is it an "
                             "SQLite file written by connwise?") from exc

    # -- schema --------------------------------------------------------------------------------

    def _table_exists(self, name: str) -> bool:
        row = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (name,)).fetchone()
        return row is not None

    def _read_version(self) -> int:
        if not self._table_exists(VERSION_TABLE):
            return 0
        row = self._db.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> int:
        db = self._db
        version = self._read_version()
        if version > LATEST:
            raise StoreError(f"telemetry store {str(self.path)!r} has schema version {version}, "
                             f"newer than this connwise knows ({LATEST}); upgrade connwise or "
                             "use another store.")
        steps = migrations("sqlite")
        for target in range(version + 1, LATEST + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                if self._read_version() >= target:  # another process migrated meanwhile
                    db.execute("ROLLBACK")
                    continue
                for statement in steps[target]:
                    db.execute(statement)
                db.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER)")
                db.execute(f"DELETE FROM {VERSION_TABLE}")
                db.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?)", (target,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            if version:
                log.info("telemetry store %s migrated to schema version %d", self.path, target)
        return LATEST

    # -- writing -------------------------------------------------------------------------------

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        """Insert `rows` (values in `columns` order, all fields by default) in one transaction.

        All or nothing: `RecordRefused` when a row has a value SQLite refuses (None or NaN where
        a NOT NULL column goes, an integer past 64 bits, a value of no SQL type, a string with
        a lone surrogate), StoreError when the store cannot be written (locked, disk full)."""
        if not rows:
            return
        names = FIELD_NAMES if columns is None else tuple(columns)
        sql = (f"INSERT INTO {TABLE} ({', '.join(names)}) "
               f"VALUES ({', '.join('?' * len(names))})")
        db = self._db
        with self._failing("writing to"):
            db.execute("BEGIN")
            try:
                db.executemany(sql, rows)
            except _REFUSED as exc:
                db.execute("ROLLBACK")
                raise RecordRefused(repr(str(self.path)), str(exc)) from exc
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def _failing(self, action: str) -> Iterator[None]:
        """sqlite3's errors as a StoreError naming the store. A lock held past the busy
        timeout says who holds such locks, since running again later is the fix."""
        try:
            yield
        except sqlite3.Error as exc:
            text = str(exc)
            hint = (f"another process held it longer than {BUSY_TIMEOUT_S} s (a gateway's "
                    "writer, an ingest, a retention pass); run again when it is done"
                    if "locked" in text or "busy" in text else
                    "is the disk full or the file damaged?")
            raise StoreError(f"{action} telemetry store {str(self.path)!r} failed: {text}; "
                             f"{hint}") from exc

    def table_sql(self) -> str:
        """The CREATE TABLE statement of the records' table as this store has it (column order
        included): a table made from it takes `append_image`'s fast path."""
        row = self._db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (TABLE,)).fetchone()
        return str(row[0])

    def append_image(self, image: bytes) -> int:
        """Append the records of `image`, a serialized SQLite database (`Connection.serialize`)
        whose records' table was made from `table_sql()`, in one transaction; returns their
        count. The copy is SQLite's own `INSERT ... SELECT *` between identical tables, which
        moves records without decoding them (its "transfer optimization") when the index is
        off: the parallel ingest's workers pay the per-row cost, this process does not."""
        db = self._db
        with self._failing("appending to"):
            db.execute("ATTACH ':memory:' AS image")
            try:
                db.deserialize(image, name="image")
                db.execute("BEGIN")
                try:
                    count = db.execute(f"INSERT INTO main.{TABLE} SELECT * FROM image.{TABLE}"
                                       ).rowcount
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                db.execute("DETACH image")
        return int(count)

    @classmethod
    @contextmanager
    def build(cls, path: str | os.PathLike[str]) -> Iterator[SqliteStore]:
        """A new store at `path`, which must not exist, filled by the `with` block and put in
        place only once it is complete. The store is written in a private file next to `path`
        without a journal or fsyncs (a bulk load's fastest mode), gets its index, WAL mode and
        one fsync at the end, and is then linked to `path`; if the block raises, the file is
        deleted. A crash midway leaves only `NAME.*.partial`, which no reader takes for a
        store and which can be deleted."""
        target = Path(path)
        if target.exists():
            raise StoreError(f"telemetry store {str(target)!r} already exists; "
                             "SqliteStore.build makes new stores only.")
        if not target.parent.is_dir():
            raise StoreError(f"cannot create telemetry store {str(target)!r}: the directory "
                             f"{str(target.parent)!r} does not exist; create it first.")
        fd, name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".partial",
                                    dir=target.parent)
        os.close(fd)
        partial = Path(name)
        try:
            store = cls(partial)
            try:
                db = store._db
                db.execute("PRAGMA journal_mode = OFF")
                db.execute("PRAGMA synchronous = OFF")
                db.execute("PRAGMA cache_size = -131072")  # 128 MiB
                db.execute(drop_started_index())
                yield store
                db.execute(started_index())
                db.execute("PRAGMA journal_mode = WAL")
            finally:
                store.close()
            with partial.open("rb+") as done:
                os.fsync(done.fileno())
            try:
                os.link(partial, target)  # unlike a rename, never replaces a file
            except FileExistsError:
                raise StoreError(f"telemetry store {str(target)!r} was created by someone else "
                                 "during the ingest; ingest again into another path.") from None
            _fsync_dir(target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()

    @contextmanager
    def bulk(self) -> Iterator[SqliteStore]:
        """Loading many rows at once (`connwise ingest`): into an empty store, the index on
        `started_at` is built once at the end, a sort, rather than kept up to date row by row
        (~10% of an insert), and the page cache is larger. Durability is unchanged."""
        db = self._db
        with self._failing("preparing the bulk load of"):
            rebuild = self.count() == 0
            db.execute("PRAGMA cache_size = -131072")  # 128 MiB
            if rebuild:
                db.execute(drop_started_index())
        try:
            yield self
        finally:
            with self._failing("indexing"):
                if rebuild:
                    db.execute(started_index())
                db.execute("PRAGMA cache_size = -2000")  # SQLite's default, 2 MiB

    # -- reading -------------------------------------------------------------------------------

    def read(self, *, since: float | None = None, until: float | None = None,
             columns: Sequence[str] = FIELD_NAMES, chunk: int = 20_000) -> Iterator[list[Row]]:
        """Rows whose start lies in [since, until), oldest first, in chunks of `chunk`."""
        where, params = _window(since, until)
        cursor = self._db.execute(
            f"SELECT {', '.join(columns)} FROM {TABLE}{where} ORDER BY started_at", params)
        while batch := cursor.fetchmany(chunk):
            yield batch

    def count(self, *, since: float | None = None, until: float | None = None) -> int:
        where, params = _window(since, until)
        return int(self._db.execute(f"SELECT count(*) FROM {TABLE}{where}", params)
                   .fetchone()[0])

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """All rows of one read-only query: for readers that aggregate in SQL rather than
        read every record (`connwise.forecast.store`). The table is `schema.TABLE`."""
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"query on telemetry store {str(self.path)!r} failed: {exc}") \
                from exc

    # -- retention -----------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes the store takes on disk: the file and its write-ahead log."""
        size = 0
        for suffix in ("", "-wal"):
            path = Path(f"{self.path}{suffix}")
            if path.exists():
                size += path.stat().st_size
        return size

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               now: float | None = None, limit: int | None = None) -> int:
        """Delete records that started before `now - max_age`, then the oldest ones until the
        store fits in `max_bytes`; give the space back. Returns the records deleted.

        With `limit`, at most that many, oldest first, in a transaction of their own: a caller
        that must not hold the store's write lock for long (the writer, with records waiting;
        another process's writer, which waits `BUSY_TIMEOUT_S` at most) calls again while a
        call returns `limit`."""
        with self._failing("retention on"):
            return self._retain(max_age, max_bytes, now, limit)

    def _retain(self, max_age: float | None, max_bytes: int | None, now: float | None,
                limit: int | None) -> int:
        db = self._db
        budget = -1 if limit is None else limit  # SQLite's LIMIT -1: no limit
        deleted = 0
        if max_age is not None:
            cutoff = (time.time() if now is None else now) - max_age
            deleted += db.execute(
                f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} "
                "WHERE started_at < ? ORDER BY started_at LIMIT ?)", (cutoff, budget)).rowcount
            self._compact()
        if max_bytes is not None:
            for _ in range(8):  # each pass aims below the limit; a few converge on it
                size = self.size_bytes()
                total = self.count()
                if size <= max_bytes or total == 0 or deleted == limit:
                    break
                # Aim 10% under the limit so that the next batches do not trip it at once.
                keep = int(total * (0.9 * max_bytes / size))
                excess = max(1, total - keep)
                if limit is not None:
                    excess = min(excess, limit - deleted)
                deleted += db.execute(
                    f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} "
                    "ORDER BY started_at LIMIT ?)", (excess,)).rowcount
                self._compact()
        return deleted

    def _compact(self) -> None:
        # executescript steps the pragma to its end; execute() would free a single page.
        self._db.executescript("PRAGMA incremental_vacuum;")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"<SqliteStore {str(self.path)!r} v{self.version}>"


def _fsync_dir(directory: Path) -> None:
    """Make a new directory entry durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _window(since: float | None, until: float | None) -> tuple[str, tuple[float, ...]]:
    clauses: list[str] = []
    params: list[float] = []
    if since is not None:
        clauses.append("started_at >= ?")
        params.append(since)
    if until is not None:
        clauses.append("started_at < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)
