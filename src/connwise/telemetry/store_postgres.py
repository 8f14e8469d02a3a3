"""The fleet store: several connwise nodes writing to one PostgreSQL database.

Same schema as the SQLite store (both are derived from `FIELDS`), kept in a PostgreSQL schema of
its own (`connwise` by default) so that it never collides with the application's tables. Batches
go in with binary COPY through asyncpg (`copy_records_to_table`), the fastest way into PostgreSQL:
no statement per row, no text encoding of numbers. Migrations take a transaction-scoped advisory
lock, so nodes starting together migrate once.

`PostgresStore` is async, for code already on an event loop (the CLI runs it with
`asyncio.run`). `PostgresSink` wraps it for the writer thread, which runs its own private loop:
the data plane's loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any

import asyncpg

from connwise.errors import ConfigError, RecordRefused, StoreError
from connwise.telemetry.record import FIELD_NAMES, Row
from connwise.telemetry.schema import LATEST, TABLE, VERSION_TABLE, migrations

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: What a COPY raises for a row's values rather than for the connection: the server's data
#: exceptions (SQLSTATE class 22) and constraint violations (23), and what asyncpg's encoder
#: raises for a value it cannot put in the column's binary format.
_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, OverflowError,
            TypeError, ValueError)


def check_schema_name(schema: str) -> str:
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigError("telemetry.postgres_schema", schema, "a schema name must be a plain "
                          "SQL identifier (letters, digits, underscores; not starting with a "
                          "digit; at most 63 characters)", "use e.g. 'connwise'")
    return schema


class PostgresStore:
    """A telemetry store in schema `schema` of the database at `dsn`; open with `open()`."""

    dialect = "postgres"

    def __init__(self, conn: Any, dsn: str, schema: str) -> None:
        self._conn = conn
        self.dsn = dsn
        self.schema = schema
        self.table = f"{schema}.{TABLE}"
        self.version = LATEST

    @classmethod
    async def open(cls, dsn: str, *, schema: str = "connwise",
                   timeout: float = 10.0) -> PostgresStore:
        """Connect and migrate to the latest schema. Raises StoreError naming the server."""
        check_schema_name(schema)
        try:
            conn = await asyncpg.connect(dsn, timeout=timeout)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
                TimeoutError) as exc:
            raise StoreError(f"cannot connect to the telemetry database {redact_dsn(dsn)}: {exc}; "
                             "check that PostgreSQL runs there and the DSN is right.") from exc
        store = cls(conn, dsn, schema)
        try:
            await store._migrate()
        except BaseException:
            await conn.close()
            raise
        return store

    async def _migrate(self) -> None:
        conn, schema = self._conn, self.schema
        steps = migrations("postgres", self.table)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               f"connwise.telemetry.{schema}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {schema}.{VERSION_TABLE} "
                               "(version INTEGER NOT NULL)")
            version = await conn.fetchval(f"SELECT max(version) FROM {schema}.{VERSION_TABLE}")
            version = int(version or 0)
            if version > LATEST:
                raise StoreError(f"telemetry schema {schema!r} at {redact_dsn(self.dsn)} has "
                                 f"schema version {version}, newer than this connwise knows "
                                 f"({LATEST}); upgrade connwise or use another schema.")
            for target in range(version + 1, LATEST + 1):
                for statement in steps[target]:
                    await conn.execute(statement)
                await conn.execute(f"DELETE FROM {schema}.{VERSION_TABLE}")
                await conn.execute(f"INSERT INTO {schema}.{VERSION_TABLE} VALUES ($1)", target)

    async def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        """Append `rows` (values in `columns` order, all fields by default) with one COPY.

        All or nothing: `RecordRefused` when a row has a value the server refuses (a NUL in a
        text, NULL in a NOT NULL column) or asyncpg cannot encode (an integer past 64 bits, a
        value of the wrong type, a lone surrogate); the connection stays usable. What a lost
        connection raises is raised as it is."""
        if not rows:
            return
        try:
            await self._conn.copy_records_to_table(
                TABLE, schema_name=self.schema, records=rows,
                columns=list(FIELD_NAMES if columns is None else columns))
        except _REFUSED as exc:
            raise RecordRefused(f"{redact_dsn(self.dsn)} (schema {self.schema})",
                                str(exc).splitlines()[0]) from exc

    async def read(self, *, since: float | None = None, until: float | None = None,
                   columns: Sequence[str] = FIELD_NAMES,
                   chunk: int = 20_000) -> AsyncGenerator[list[Row], None]:
        """Rows whose start lies in [since, until), oldest first, in chunks of `chunk`."""
        where, params = _window(since, until)
        query = f"SELECT {', '.join(columns)} FROM {self.table}{where} ORDER BY started_at"
        async with self._conn.transaction():
            cursor = await self._conn.cursor(query, *params)
            while batch := await cursor.fetch(chunk):
                yield [tuple(record) for record in batch]

    async def count(self, *, since: float | None = None, until: float | None = None) -> int:
        where, params = _window(since, until)
        return int(await self._conn.fetchval(f"SELECT count(*) FROM {self.table}{where}",
                                             *params))

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """All rows of one read-only query (placeholders `$1`, ...): for readers that
        aggregate in SQL rather than read every record. The table is `self.table`."""
        try:
            return [tuple(record) for record in await self._conn.fetch(sql, *params)]
        except asyncpg.PostgresError as exc:
            raise StoreError(f"query on the telemetry database {redact_dsn(self.dsn)} "
                             f"failed: {exc}") from exc

    async def size_bytes(self) -> int:
        """Bytes of the table with its indexes and TOAST."""
        return int(await self._conn.fetchval("SELECT pg_total_relation_size($1::regclass)",
                                             self.table))

    async def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
                     now: float | None = None, limit: int | None = None) -> int:
        """Delete records that ended before `now - max_age`, then the oldest ones until the
        rows left would fit in `max_bytes` at the table's average row size. PostgreSQL reuses
        the space after autovacuum rather than shrinking the files, so the bound holds for the
        data kept, not for the file size on disk. With `limit`, at most that many, oldest
        first, per call (each statement its own transaction): call again while it returns
        `limit`."""
        conn = self._conn
        deleted = 0
        if max_age is not None:
            cutoff = (time.time() if now is None else now) - max_age
            result = await conn.execute(
                f"DELETE FROM {self.table} WHERE ctid IN (SELECT ctid FROM {self.table} "
                "WHERE started_at < $1 ORDER BY started_at LIMIT $2)", cutoff, limit)
            deleted += int(result.split()[-1])
        if max_bytes is not None and deleted != limit:
            total = await self.count()
            size = await self.size_bytes()
            if total and size > max_bytes:
                excess = total - int(total * (0.9 * max_bytes / size))
                if limit is not None:
                    excess = min(excess, limit - deleted)
                result = await conn.execute(
                    f"DELETE FROM {self.table} WHERE ctid IN (SELECT ctid FROM {self.table} "
                    "ORDER BY started_at LIMIT $1)", excess)
                deleted += int(result.split()[-1])
        return deleted

    async def drop(self) -> None:
        """Drop the whole schema with its records: for tests and for starting over."""
        await self._conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    async def close(self) -> None:
        await self._conn.close()

    def abort(self) -> None:
        """Close the connection at once, without a word to the server (one that is gone)."""
        self._conn.terminate()

    def __repr__(self) -> str:
        return f"<PostgresStore {redact_dsn(self.dsn)} schema {self.schema} v{self.version}>"


class PostgresSink:
    """`PostgresStore` for the writer thread: a private event loop, reconnect after a failure.

    A batch that takes longer than `timeout` seconds fails and its connection is dropped:
    asyncpg can wait forever in a COPY whose server went away (its own `timeout` does not end
    that wait), and a batch of the writer or of an ingest takes milliseconds."""

    def __init__(self, dsn: str, *, schema: str = "connwise", timeout: float = 60.0) -> None:
        self.dsn = dsn
        self.schema = schema
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._store: PostgresStore | None = None
        try:
            self._store = self._run(PostgresStore.open(dsn, schema=schema))
        except BaseException:
            self._loop.close()
            raise

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def _connected(self) -> PostgresStore:
        store = self._store
        if store is not None:
            # The loop runs only inside a call: let it read what came while it was idle. A
            # server that restarted, or ended the connection (`pg_terminate_backend`, an idle
            # timeout), said goodbye then; asyncpg notices it here, so the batch goes on a
            # new connection rather than failing on the dead one, never sent.
            self._run(asyncio.sleep(0))
            if store._conn.is_closed():
                self._store = store = None
        if store is None:
            store = self._store = self._run(PostgresStore.open(self.dsn, schema=self.schema))
        return store

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        store = self._connected()
        with self._dropped_if_lost(store, "writing to"):
            self._run(asyncio.wait_for(store.write(rows, columns), self.timeout))

    def retain(self, *, max_age: float | None = None, max_bytes: int | None = None,
               now: float | None = None, limit: int | None = None) -> int:
        # No timeout: without a `limit`, deleting a long backlog may rightly take minutes.
        store = self._connected()
        with self._dropped_if_lost(store, "retention on"):
            return int(self._run(store.retain(max_age=max_age, max_bytes=max_bytes, now=now,
                                              limit=limit)))

    @contextlib.contextmanager
    def _dropped_if_lost(self, store: PostgresStore, action: str) -> Iterator[None]:
        """A lost or hung connection (TimeoutError is an OSError), or one asyncpg lost track of
        (InternalClientError), is dropped at once, without waiting for the server, and raised
        as a StoreError; the next call reconnects."""
        try:
            yield
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                asyncpg.PostgresConnectionError) as exc:
            self._store = None
            store.abort()
            problem = str(exc) or f"no answer within {self.timeout:g} s"
            raise StoreError(f"{action} the telemetry database {redact_dsn(self.dsn)} failed: "
                             f"{problem}; the next batch reconnects.") from exc

    def _run_quietly(self, coro: Any) -> None:
        with contextlib.suppress(Exception):
            self._run(coro)

    def close(self) -> None:
        if self._store is not None:
            self._run_quietly(self._store.close())
            self._store = None
        self._loop.close()


def _window(since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses: list[str] = []
    params: list[float] = []
    if since is not None:
        params.append(since)
        clauses.append(f"started_at >= ${len(params)}")
    if until is not None:
        params.append(until)
        clauses.append(f"started_at < ${len(params)}")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)
