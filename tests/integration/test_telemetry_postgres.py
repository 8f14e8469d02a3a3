"""The PostgreSQL store against the real server: COPY round trips, the same schema and its
migration, several writers (a fleet) into one schema, retention, reads and export through the
store spec. Each test works in a schema of its own and drops it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from connwise.errors import RecordRefused, StoreError
from connwise.telemetry.export import export
from connwise.telemetry.record import COLUMN, FIELD_NAMES, ConnRecord, Row
from connwise.telemetry.schema import LATEST, fields_at, migrations
from connwise.telemetry.store_postgres import PostgresSink, PostgresStore
from connwise.telemetry.stores import StoreSpec
from tests.integration.conftest import drop_schema

pytestmark = pytest.mark.services


def record(i: int, node: str = "n1", start: float = 1_700_000_000.0) -> Row:
    rec = ConnRecord(f"c{i}", "upstream", "web", start + i, backend="api/1", node=node,
                     class_name="bulk", cqi_score=0.5, rtt_ms=0.75, retransmits=0,
                     region="eu", device="desktop")
    rec.phase("active", start + i + 0.01)
    rec.use(start + i + 0.01)
    rec.bytes_out = 10 * i
    rec.unuse(start + i + 0.5)
    rec.phase("idle", start + i + 0.5)
    rec.finish(start + i + 2.0, "upstream closed")
    return rec.row()


@pytest.fixture
def schema() -> str:
    return f"cw_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def dropped_after(postgres_dsn: str, schema: str) -> AsyncIterator[str]:
    yield schema
    await drop_schema(postgres_dsn, schema)


@pytest.fixture
def dropped_after_sync(postgres_dsn: str, schema: str) -> Iterator[str]:
    yield schema
    asyncio.run(drop_schema(postgres_dsn, schema))


async def test_copy_round_trip_of_every_field(postgres_dsn: str, dropped_after: str) -> None:
    store = await PostgresStore.open(postgres_dsn, schema=dropped_after)
    try:
        rows = [record(i) for i in range(50)]
        await store.write(rows)
        await store.write([("p1", "pool", 5.0, 6.0)],
                          columns=("conn_id", "kind", "started_at", "ended_at"))
        back = [r async for chunk in store.read(chunk=7) for r in chunk]
        assert back[1:] == rows and back[0][COLUMN["conn_id"]] == "p1"
        assert back[0][COLUMN["final_state"]] == "closed"
        assert back[0][COLUMN["rtt_ms"]] is None
        assert await store.count(since=1_700_000_010.0) == 40
        assert store.version == LATEST and "cw_test_" in repr(store)
    finally:
        await store.close()


async def test_migration_from_schema_version_1(postgres_dsn: str, dropped_after: str) -> None:
    schema = dropped_after
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        for statement in migrations("postgres", f"{schema}.connections")[1]:
            await conn.execute(statement)
        await conn.execute(f"CREATE TABLE {schema}.schema_version (version INTEGER NOT NULL)")
        await conn.execute(f"INSERT INTO {schema}.schema_version VALUES (1)")
        v1 = [f.name for f in fields_at(1)]
        await conn.execute(f"INSERT INTO {schema}.connections (conn_id, kind, started_at, "
                           "ended_at, requests) VALUES ('old', 'pool', 1.0, 2.0, 4)")
        assert "max_gap_s" not in v1
    finally:
        await conn.close()
    store = await PostgresStore.open(postgres_dsn, schema=schema)
    try:
        [old] = [r async for chunk in store.read() for r in chunk]
        assert old[COLUMN["requests"]] == 4 and old[COLUMN["max_gap_s"]] == 0.0
        assert old[COLUMN["flag"]] == "" and old[COLUMN["cqi_score"]] is None
        await store.write([record(1)])
        assert await store.count() == 2
    finally:
        await store.close()
    again = await PostgresStore.open(postgres_dsn, schema=schema)  # idempotent
    await again.close()


async def test_a_schema_newer_than_the_code_is_refused(postgres_dsn: str,
                                                       dropped_after: str) -> None:
    store = await PostgresStore.open(postgres_dsn, schema=dropped_after)
    await store._conn.execute(f"UPDATE {dropped_after}.schema_version SET version = 42")
    await store.close()
    with pytest.raises(StoreError, match="schema version 42, newer than this connwise"):
        await PostgresStore.open(postgres_dsn, schema=dropped_after)


async def test_a_fleet_of_writers_into_one_schema(postgres_dsn: str,
                                                  dropped_after: str) -> None:
    """Nodes starting together migrate once (advisory lock) and write side by side."""
    stores = await asyncio.gather(*(PostgresStore.open(postgres_dsn, schema=dropped_after)
                                    for _ in range(4)))
    try:
        await asyncio.gather(*(store.write([record(i, node=f"node{n}") for i in range(100)])
                               for n, store in enumerate(stores)))
        assert await stores[0].count() == 400
        nodes = await stores[0]._conn.fetch(
            f"SELECT node, count(*) FROM {dropped_after}.connections GROUP BY node")
        assert {r["node"]: r["count"] for r in nodes} == {f"node{n}": 100 for n in range(4)}
    finally:
        for store in stores:
            await store.close()


async def test_retention_by_age_and_size(postgres_dsn: str, dropped_after: str) -> None:
    store = await PostgresStore.open(postgres_dsn, schema=dropped_after)
    try:
        await store.write([record(i, start=1000.0 * i) for i in range(10)])
        assert await store.retain(max_age=4500.0, now=10_000.0) == 6
        await store.write([record(i) for i in range(2000)])
        size = await store.size_bytes()
        deleted = await store.retain(max_bytes=size // 2)
        assert 1000 <= deleted <= 1500
        newest = await store._conn.fetchval(
            f"SELECT max(started_at) FROM {dropped_after}.connections")
        assert newest == 1_700_000_000.0 + 1999
    finally:
        await store.close()


async def test_retention_deletes_at_most_limit_records_a_step_oldest_first(
        postgres_dsn: str, dropped_after: str) -> None:
    store = await PostgresStore.open(postgres_dsn, schema=dropped_after)
    try:
        await store.write([record(i, start=1000.0 * i) for i in range(30)])
        assert await store.retain(max_age=4500.0, now=30_000.0, limit=10) == 10
        oldest = await store._conn.fetchval(
            f"SELECT min(started_at) FROM {dropped_after}.connections")
        assert oldest == 10_000.0 + 10  # records 0..9 went first
        assert await store.retain(max_age=4500.0, now=30_000.0, limit=10) == 10
        assert await store.retain(max_age=4500.0, now=30_000.0, limit=10) == 6
        assert await store.retain(max_age=4500.0, now=30_000.0, limit=10) == 0
        await store.write([record(i) for i in range(2000)])
        size = await store.size_bytes()
        assert await store.retain(max_bytes=size // 2, limit=100) == 100
    finally:
        await store.close()


def test_writer_thread_and_spec_reads_and_export(postgres_dsn: str, dropped_after_sync: str,
                                                 tmp_path: Path) -> None:
    spec = StoreSpec.parse(f"{postgres_dsn}?schema={dropped_after_sync}")
    assert spec.kind == "postgres" and spec.schema == dropped_after_sync
    assert "schema=" not in spec.dsn
    writer = spec.writer(batch_size=100, flush_interval=0.05)
    rec = ConnRecord("w1", "pool", "main", 1.0)
    rec.finish(2.0, "closed")
    for _ in range(250):
        writer.submit(rec)
    assert writer.flush(30.0)
    writer.close()
    assert (writer.written, writer.failed, writer.dropped) == (250, 0, 0)
    assert writer.batches >= 3  # COPY per batch of at most 100
    rows = [r for chunk in spec.read(chunk=100) for r in chunk]
    assert len(rows) == 250
    assert export(spec.read(), tmp_path / "pg.parquet", "parquet") == 250
    assert pq.read_table(tmp_path / "pg.parquet").column_names == list(FIELD_NAMES)
    assert spec.retain(max_age=1.0) == 250


def test_the_sink_reconnects_after_the_connection_dies(postgres_dsn: str,
                                                       dropped_after_sync: str) -> None:
    sink = PostgresSink(postgres_dsn, schema=dropped_after_sync)
    try:
        sink.write([record(1)])
        assert sink._store is not None
        sink._run(sink._store._conn.close())  # the connection went away under the writer
        sink.write([record(2)])  # on a new connection: known closed, it is not tried
        sink.write([record(3)])
        assert sink._run(sink._connected().count()) == 3
        assert sink.retain(max_age=None) == 0
    finally:
        sink.close()


def test_a_connection_lost_under_retention_costs_no_batch(postgres_dsn: str,
                                                          dropped_after_sync: str) -> None:
    """A retention pass on a dead connection kept it, so the next batch failed on it too."""
    sink = PostgresSink(postgres_dsn, schema=dropped_after_sync)
    try:
        assert sink._store is not None
        sink._run(sink._store._conn.close())
        assert sink.retain(max_age=1.0) == 0  # on a new connection
        sink.write([record(1)])
    finally:
        sink.close()


def test_a_server_gone_mid_copy_fails_the_batch_in_time_and_the_next_reconnects(
        postgres_dsn: str, dropped_after_sync: str) -> None:
    """asyncpg can wait forever in a COPY whose backend was terminated (its own `timeout` does
    not end the wait): `connwise ingest` into PostgreSQL, or a thread writer, hung for good."""
    sink = PostgresSink(postgres_dsn, schema=dropped_after_sync, timeout=2.0)
    try:
        sink.write([record(0)])
        assert sink._store is not None
        pid = sink._run(sink._store._conn.fetchval("SELECT pg_backend_pid()"))

        def terminate() -> None:
            time.sleep(0.1)  # into the COPY of the big batch below

            async def run() -> None:
                conn = await asyncpg.connect(postgres_dsn)
                await conn.execute("SELECT pg_terminate_backend($1)", pid)
                await conn.close()

            asyncio.run(run())

        killer = threading.Thread(target=terminate)
        killer.start()
        began = time.monotonic()
        with pytest.raises(StoreError, match="writing to the telemetry database"):
            sink.write([record(1)] * 200_000)
        killer.join()
        assert time.monotonic() - began < 10
        sink.write([record(2)])  # on a new connection
        assert sink._run(sink._connected().count()) == 2
    finally:
        sink.close()


async def test_unreachable_server_is_named() -> None:
    with pytest.raises(StoreError, match=r"cannot connect to the telemetry database "
                                         r"postgresql://u:\*\*\*@127.0.0.1:1/db"):
        await PostgresStore.open("postgresql://u:secret@127.0.0.1:1/db", timeout=2.0)


def test_a_batch_after_the_server_ended_an_idle_connection_is_written(
        postgres_dsn: str, dropped_after_sync: str) -> None:
    """A server restart (or `pg_terminate_backend`, an idle timeout) ends the writer's connection
    while it waits for the next batch: that batch failed on the dead connection, a batch lost
    that was never sent. Through the process writer, as the gateway writes."""
    app = f"cw_wr_{uuid.uuid4().hex[:8]}"
    spec = StoreSpec.parse(f"{postgres_dsn}?schema={dropped_after_sync}&application_name={app}")
    writer = spec.writer(batch_size=100, flush_interval=60.0)
    rec = ConnRecord("w1", "pool", "main", 1.0)
    rec.finish(2.0, "closed")
    try:
        for _ in range(5):
            writer.submit(rec)
        assert writer.flush(30.0)

        async def terminate() -> int:
            conn = await asyncpg.connect(postgres_dsn)
            try:
                return int(await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1", app))
            finally:
                await conn.close()

        assert asyncio.run(terminate()) == 1
        time.sleep(0.2)  # the server's goodbye reaches the writer's socket
        for _ in range(5):
            writer.submit(rec)
        assert writer.flush(30.0)
        assert (writer.written, writer.failed) == (10, 0), writer.last_error
    finally:
        writer.close()
    assert sum(len(chunk) for chunk in spec.read()) == 10


def test_a_record_the_database_refuses_costs_only_itself(postgres_dsn: str,
                                                         dropped_after_sync: str) -> None:
    """A record PostgreSQL refuses (a NUL in a text, refused by the server; an integer past 64
    bits or a lone surrogate, refused by asyncpg as it encodes the COPY) lost every record of
    its batch. Through the process writer, as the gateway writes."""
    spec = StoreSpec.parse(f"{postgres_dsn}?schema={dropped_after_sync}")
    writer = spec.writer(batch_size=40, flush_interval=60.0)
    bad = {3: "nul", 4: "huge", 39: "surrogate", 55: "nul"}
    try:
        for i in range(80):
            rec = ConnRecord(f"c{i}", "pool", "main", 1_700_000_000.0 + i)
            rec.finish(1_700_000_001.0 + i, "closed")
            if bad.get(i) == "nul":
                rec.backend = "api\x00/1"
            elif bad.get(i) == "huge":
                rec.bytes_in = 2**63
            elif bad.get(i) == "surrogate":
                rec.region = "eu\udcff"
            writer.submit(rec)
        assert writer.flush(30.0)
        assert (writer.written, writer.refused, writer.failed) == (76, 4, 0), writer.last_error
        assert writer.batches == 2
    finally:
        writer.close()
    ids = sorted(int(r[0][1:]) for chunk in spec.read(columns=("conn_id",)) for r in chunk)
    assert ids == [i for i in range(80) if i not in bad]


def test_the_sink_tells_a_refused_record_from_a_lost_connection(postgres_dsn: str,
                                                                dropped_after_sync: str) -> None:
    sink = PostgresSink(postgres_dsn, schema=dropped_after_sync)
    try:
        bad = list(record(1))
        bad[COLUMN["conn_id"]] = "c\x001"
        with pytest.raises(RecordRefused, match="0x00"):
            sink.write([record(0), tuple(bad)])
        sink.write([record(2)])  # the same connection goes on
        assert sink._run(sink._connected().count()) == 1  # the COPY was all or nothing
        store = sink._store
        assert store is not None
        sink._run(store._conn.close())
        with pytest.raises(asyncpg.InterfaceError):  # not a RecordRefused: the sink reconnects
            sink._run(store.write([record(3)]))
    finally:
        sink.close()
