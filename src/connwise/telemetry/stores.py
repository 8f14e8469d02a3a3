"""Naming a store, opening it for the writer thread, and reading it back, whichever it is.

A store is named by one string, as in the config and on the command line: a file path for
SQLite (`telemetry.db`), or a PostgreSQL DSN (`postgresql://user@host/db`), optionally with
`?schema=name` for the PostgreSQL schema that holds the tables (`connwise` by default; the
parameter is taken out before the DSN reaches asyncpg).

Readers are synchronous iterators of row chunks for both kinds (a PostgreSQL read runs on a
private event loop), so export and the assessment have one code path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from connwise.telemetry.record import FIELD_NAMES, Row
from connwise.telemetry.schema import TABLE
from connwise.telemetry.store_postgres import (
    PostgresSink,
    PostgresStore,
    check_schema_name,
    redact_dsn,
)
from connwise.telemetry.store_sqlite import SqliteStore
from connwise.telemetry.writer import RETAIN_CHUNK, BatchSink, RecordWriter, Retention
from connwise.telemetry.writer_process import ProcessWriter

DEFAULT_STORE = "connwise-telemetry.db"


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Which store: `kind` sqlite with `path`, or postgres with `dsn` and `schema`."""

    kind: Literal["sqlite", "postgres"]
    path: str = ""
    dsn: str = ""
    schema: str = "connwise"

    @classmethod
    def parse(cls, spec: str) -> StoreSpec:
        if spec.startswith(("postgres://", "postgresql://")):
            parts = urlsplit(spec)
            query = parse_qsl(parts.query, keep_blank_values=True)
            schema = "connwise"
            kept = []
            for key, value in query:
                if key == "schema":
                    schema = check_schema_name(value)
                else:
                    kept.append((key, value))
            dsn = urlunsplit(parts._replace(query=urlencode(kept)))
            return cls("postgres", dsn=dsn, schema=schema)
        return cls("sqlite", path=spec)

    def __str__(self) -> str:
        if self.kind == "sqlite":
            return self.path
        return f"{redact_dsn(self.dsn)} (schema {self.schema})"

    def open_sink(self) -> BatchSink:
        """Open the store for writing from the current thread (creating it if needed)."""
        if self.kind == "sqlite":
            return SqliteStore(self.path)
        return PostgresSink(self.dsn, schema=self.schema)

    def writer(self, *, capacity: int = 10_000, batch_size: int = 500,
               flush_interval: float = 1.0, retention: Retention | None = None,
               process: bool = True) -> RecordWriter:
        """A started writer into this store. With `process` (the default) the store is written
        by a child process (`ProcessWriter`), so its per-row work takes no GIL from the
        caller's event loop; without it, by a thread of this process (`RecordWriter`)."""
        kind = ProcessWriter if process else RecordWriter
        return kind(self.open_sink, capacity=capacity, batch_size=batch_size,
                    flush_interval=flush_interval, retention=retention, name=self.kind).start()

    def read(self, *, since: float | None = None, until: float | None = None,
             columns: Sequence[str] = FIELD_NAMES, chunk: int = 20_000) -> Iterator[list[Row]]:
        """Rows whose start lies in [since, until), oldest first, in chunks."""
        if self.kind == "sqlite":
            store = SqliteStore(self.path, create=False)
            try:
                yield from store.read(since=since, until=until, columns=columns, chunk=chunk)
            finally:
                store.close()
            return
        loop = asyncio.new_event_loop()
        try:
            pg = loop.run_until_complete(PostgresStore.open(self.dsn, schema=self.schema))
            chunks = pg.read(since=since, until=until, columns=columns, chunk=chunk)
            try:
                while True:
                    try:
                        batch = loop.run_until_complete(anext(chunks))
                    except StopAsyncIteration:
                        break
                    yield batch
            finally:
                loop.run_until_complete(chunks.aclose())
                loop.run_until_complete(pg.close())
        finally:
            loop.close()

    @property
    def table(self) -> str:
        """The records' table as a query names it (schema-qualified on PostgreSQL)."""
        return TABLE if self.kind == "sqlite" else f"{self.schema}.{TABLE}"

    def fetch(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Row]]:
        """The rows of each read-only query, over one connection; the SQL is in this store's
        dialect (`kind`: `?` placeholders for SQLite, `$1` for PostgreSQL)."""
        if self.kind == "sqlite":
            store = SqliteStore(self.path, create=False)
            try:
                return [store.fetch(sql, params) for sql, params in queries]
            finally:
                store.close()

        async def run() -> list[list[Row]]:
            pg = await PostgresStore.open(self.dsn, schema=self.schema)
            try:
                return [await pg.fetch(sql, params) for sql, params in queries]
            finally:
                await pg.close()

        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(run())
        finally:
            loop.close()

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               chunk: int = RETAIN_CHUNK) -> int:
        """One retention pass now, in steps of at most `chunk` records (a transaction each, so
        that a gateway writing to the same store waits for one step at most, never for the
        whole pass); returns the records deleted."""
        sink = self.open_sink()
        now = time.time()
        deleted = 0
        try:
            while True:
                step = sink.retain(max_age=max_age, max_bytes=max_bytes, now=now, limit=chunk)
                deleted += step
                if step < chunk:
                    return deleted
        finally:
            sink.close()
