"""The SQLite store: round trips, WAL, the versioned schema and its migration, retention, and
export to parquet and CSV."""

from __future__ import annotations

import csv
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from connwise.errors import ConfigError, StoreError
from connwise.telemetry.export import export
from connwise.telemetry.record import COLUMN, FIELD_NAMES, FIELDS, ConnRecord, Row
from connwise.telemetry.schema import LATEST, fields_at, migrations
from connwise.telemetry.store_sqlite import SqliteStore
from connwise.telemetry.stores import StoreSpec


def full_record(i: int, start: float = 1_700_000_000.0) -> Row:
    rec = ConnRecord(f"c{i}", "client", "web", start + i, backend="api/srv1",
                     class_name="critical", cqi_business=0.9, cqi_technical=0.5, cqi_user=0.4,
                     cqi_resource=0.2, cqi_score=0.71, client_addr="192.0.2.7",
                     region="eu-west", device="mobile", rtt_ms=1.25, retransmits=2,
                     status=200, conn_seq=1, first_byte_s=0.01, upstream_connect_s=0.002)
    rec.phase("active", start + i + 0.1)
    rec.use(start + i + 0.1)
    rec.bytes_in, rec.bytes_out, rec.msgs_in, rec.msgs_out = 100, 2000, 1, 1
    rec.unuse(start + i + 0.3)
    rec.phase("idle", start + i + 0.3)
    rec.finish(start + i + 5.0, "client closed")
    return rec.row()


def test_round_trip_of_every_field(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    rows = [full_record(i) for i in range(3)]
    store.write(rows)
    back = [r for chunk in store.read() for r in chunk]
    assert back == rows
    assert store.count() == 3 and store.version == LATEST
    journal = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"
    store.close()
    assert repr(store).startswith("<SqliteStore")


def test_partial_columns_take_their_defaults_and_reads_filter_by_window(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    store.write([("a", 10.0, 11.0), ("b", 20.0, 21.0), ("c", 30.0, 31.0)],
                columns=("conn_id", "started_at", "ended_at"))
    rows = [r for chunk in store.read(since=15.0, until=30.0) for r in chunk]
    assert [r[COLUMN["conn_id"]] for r in rows] == ["b"]
    [row] = rows
    assert row[COLUMN["final_state"]] == "closed" and row[COLUMN["requests"]] == 0
    assert row[COLUMN["rtt_ms"]] is None
    assert [r for c in store.read(columns=("conn_id",), chunk=2) for r in c] == [
        ("a",), ("b",), ("c",)]
    assert store.count(since=20.0) == 2


def test_migration_from_schema_version_1(tmp_path: Path) -> None:
    """A store written by the first layout is brought up to date in place, its rows kept."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in migrations("sqlite")[1]:
        db.execute(statement)
    db.execute("CREATE TABLE schema_version (version INTEGER)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    v1 = [f.name for f in fields_at(1)]
    assert "max_gap_s" not in v1 and "cqi_score" not in v1
    db.execute(f"INSERT INTO connections ({', '.join(v1)}) VALUES "
               f"({', '.join('?' * len(v1))})",
               [{"conn_id": "old", "kind": "pool", "started_at": 5.0, "ended_at": 9.0,
                 "requests": 3}.get(name, f.default) for name, f in
                zip(v1, fields_at(1), strict=True)])
    db.commit()
    db.close()

    store = SqliteStore(path)
    assert store.version == LATEST == 2
    [old] = [r for chunk in store.read() for r in chunk]
    assert old[COLUMN["conn_id"]] == "old" and old[COLUMN["requests"]] == 3
    assert old[COLUMN["max_gap_s"]] == 0.0 and old[COLUMN["flag"]] == ""
    assert old[COLUMN["cqi_score"]] is None
    store.write([full_record(1)])
    assert store.count() == 2
    indexes = {r[0] for r in store._db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert indexes == {"connections_started_idx"}
    store.close()
    assert SqliteStore(path).version == LATEST  # idempotent


def test_a_store_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"schema version 99, newer than this connwise knows"):
        SqliteStore(path)


def test_missing_store_and_missing_directory_are_named(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist; check the path"):
        SqliteStore(tmp_path / "nope.db", create=False)
    with pytest.raises(StoreError, match=r"the directory .* does not exist"):
        SqliteStore(tmp_path / "no" / "dir.db")
    (tmp_path / "junk.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="is it an SQLite file written by connwise"):
        SqliteStore(tmp_path / "junk.db")


def _indexes(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                         "AND tbl_name = 'connections'")]


def test_bulk_load_builds_the_index_at_the_end_and_a_lost_index_comes_back(
        tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = SqliteStore(path)
    with store.bulk():
        assert _indexes(path) == []  # an empty store loads without it
        store.write([full_record(i) for i in range(5)])
    assert _indexes(path) == ["connections_started_idx"]
    with store.bulk():  # a store with rows keeps its index: rebuilding it would cost more
        assert _indexes(path) == ["connections_started_idx"]
        store.write([full_record(i) for i in range(5, 8)])
    assert store.count() == 8
    store.close()
    with sqlite3.connect(path) as db:  # as if a bulk load had died before its end
        db.execute("DROP INDEX connections_started_idx")
    SqliteStore(path, create=False).close()
    assert _indexes(path) == ["connections_started_idx"]


def test_retention_by_age(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    store.write([full_record(i, start=1000.0 * i) for i in range(10)])
    deleted = store.retain(max_age=4500.0, now=10_000.0)
    assert deleted == 6
    starts = [r[COLUMN["started_at"]] for chunk in store.read() for r in chunk]
    assert min(starts) >= 5500.0


def test_retention_deletes_at_most_limit_records_a_step_oldest_first(tmp_path: Path) -> None:
    """A pass deleted a whole backlog in one statement, holding the store's write lock (and the
    writer, whose watchdog kills a child silent for 60 s) for as long as that took."""
    store = SqliteStore(tmp_path / "t.db")
    store.write([full_record(i, start=1000.0 * i) for i in range(30)])
    steps = []
    while (step := store.retain(max_age=4500.0, now=30_000.0, limit=10)) == 10:
        steps.append(step)
        starts = [r[COLUMN["started_at"]] for chunk in store.read() for r in chunk]
        assert min(starts) == 1001.0 * 10 * len(steps)  # the oldest went first
    assert [*steps, step] == [10, 10, 6]
    assert store.count() == 4
    assert store.retain(max_age=4500.0, now=30_000.0, limit=10) == 0
    for batch in range(10):
        store.write([full_record(batch * 500 + i) for i in range(500)])
    store._compact()
    limit = store.size_bytes() // 3
    assert store.retain(max_bytes=limit, limit=1000) == 1000  # the rest is for later steps
    while store.retain(max_bytes=limit, limit=1000) == 1000:
        pass
    assert store.size_bytes() <= limit
    store.close()


def test_retention_by_size_keeps_the_newest_under_the_limit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "t.db")
    for batch in range(20):
        store.write([full_record(batch * 500 + i) for i in range(500)])
    store._compact()
    before = store.size_bytes()
    limit = before // 3
    deleted = store.retain(max_bytes=limit)
    assert deleted > 0
    assert store.size_bytes() <= limit
    starts = [r[COLUMN["started_at"]] for chunk in store.read() for r in chunk]
    assert max(starts) == 1_700_000_000.0 + 9_999  # the newest survived
    assert len(starts) == 10_000 - deleted


def test_export_parquet_and_csv_round_trip(tmp_path: Path) -> None:
    spec = StoreSpec.parse(str(tmp_path / "t.db"))
    sink = spec.open_sink()
    rows = [full_record(i) for i in range(5)]
    sink.write(rows)
    sink.close()
    assert export(spec.read(chunk=2), tmp_path / "out.parquet", "parquet") == 5
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == list(FIELD_NAMES)
    assert table.num_rows == 5
    assert table.column("requests").type == "int64"
    assert table.column("started_at").type == "double"
    assert table.column("region").to_pylist() == ["eu-west"] * 5
    assert table.to_pylist()[0] == dict(zip(FIELD_NAMES, rows[0], strict=True))
    assert export(spec.read(), tmp_path / "out.csv", "csv") == 5
    with (tmp_path / "out.csv").open() as f:
        lines = list(csv.reader(f))
    assert lines[0] == list(FIELD_NAMES) and len(lines) == 6
    assert lines[1][FIELD_NAMES.index("conn_id")] == "c0"


def test_export_of_an_empty_window_writes_a_valid_empty_file(tmp_path: Path) -> None:
    spec = StoreSpec.parse(str(tmp_path / "t.db"))
    spec.open_sink().close()
    assert export(spec.read(since=1e12), tmp_path / "e.parquet", "parquet") == 0
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0
    assert len(pq.read_schema(tmp_path / "e.parquet")) == len(FIELDS)
    with pytest.raises(ConfigError, match="unknown export format"):
        export(iter([]), tmp_path / "x.json", "json")
    with pytest.raises(ConfigError, match="does not exist"):
        export(iter([]), tmp_path / "no" / "x.csv", "csv")


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_failed_export_leaves_no_file_and_the_old_one_intact(tmp_path: Path, fmt: str) -> None:
    """The output used to be opened first: a store that could not be read (missing, not SQLite,
    a newer schema) or broke midway left an empty or half-written file, or truncated the one
    already there."""
    missing = StoreSpec.parse(str(tmp_path / "missing.db"))
    with pytest.raises(StoreError, match="does not exist"):
        export(missing.read(), tmp_path / f"new.{fmt}", fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    def breaks() -> Iterator[list[Row]]:
        yield [full_record(0)]
        raise StoreError("the store went away")

    old = tmp_path / f"old.{fmt}"
    old.write_text("yesterday's export")
    with pytest.raises(StoreError, match="went away"):
        export(breaks(), old, fmt)
    assert old.read_text() == "yesterday's export"
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]


@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_export_to_a_path_that_cannot_be_a_file_is_a_config_error(tmp_path: Path,
                                                                   where: str) -> None:
    (tmp_path / "plain").write_text("")
    output = tmp_path if where == "directory" else tmp_path / "plain" / "x.csv"
    with pytest.raises(ConfigError, match=r"--output = .*cannot write"):
        export(iter([[full_record(0)]]), output, "csv")


def test_a_store_locked_by_another_writer_is_a_store_error_naming_it(tmp_path: Path) -> None:
    """sqlite3's OperationalError escaped: `connwise ingest` into a store another process held
    (a gateway's writer, a second ingest) ended in a traceback."""
    path = tmp_path / "t.db"
    store = SqliteStore(path)
    store._db.execute("PRAGMA busy_timeout = 0")  # the real 5 s wait, without the wait
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        for action in (lambda: store.write([full_record(0)]),
                       lambda: store.retain(max_age=1.0)):
            with pytest.raises(StoreError, match=r"'.*t\.db'.*locked.*another process"):
                action()
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.write([full_record(0)])  # usable again once the lock is gone
    assert store.count() == 1
    store.close()
