"""The versioned schema of the stores, derived from `FIELDS`, the same for SQLite and PostgreSQL.

A store records its version in `schema_version`. Opening a store runs the steps above its version
in order, each in its own transaction, so an old store is brought up to date in place and a
crash between steps leaves a consistent, older version behind. A store newer than this code is
refused rather than written with missing columns.

History:

1. The first layout: identity, timings, traffic, errors, TCP_INFO, close reason and segments.
2. CQI axes and class changes, `conn_seq` (request order on a connection, for reuse), the zombie
   and leak inputs (`max_gap_s`, `tail_idle_s`, `max_held_s`, `flag`); the index moves from
   `ended_at` to `started_at`, which reads and retention both select on.
"""

from __future__ import annotations

from typing import Literal

from connwise.telemetry.record import FIELDS, Field

Dialect = Literal["sqlite", "postgres"]

LATEST = max(f.since for f in FIELDS)
TABLE = "connections"
VERSION_TABLE = "schema_version"

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {"text": "TEXT", "int": "INTEGER", "real": "REAL"},
    "postgres": {"text": "TEXT", "int": "BIGINT", "real": "DOUBLE PRECISION"},
}


def _literal(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def column_sql(field: Field, dialect: Dialect) -> str:
    sql = f"{field.name} {_TYPES[dialect][field.type]}"
    if field.default is not None:
        sql += f" NOT NULL DEFAULT {_literal(field.default)}"
    return sql


def fields_at(version: int) -> tuple[Field, ...]:
    """The columns a store of schema `version` has."""
    return tuple(f for f in FIELDS if f.since <= version)


def migrations(dialect: Dialect, table: str = TABLE) -> dict[int, list[str]]:
    """Statements that bring a store from version n-1 to n, for each n in 1..LATEST."""
    steps: dict[int, list[str]] = {}
    first = ", ".join(column_sql(f, dialect) for f in fields_at(1))
    steps[1] = [
        f"CREATE TABLE {table} ({first})",
        f"CREATE INDEX {_index(table, 'ended')} ON {table} (ended_at)",
    ]
    for version in range(2, LATEST + 1):
        steps[version] = [f"ALTER TABLE {table} ADD COLUMN {column_sql(f, dialect)}"
                          for f in FIELDS if f.since == version]
    # Reads select a window of start times and retention deletes the oldest starts: one index
    # on started_at serves both (the v1 index on ended_at cost every insert for nothing more).
    steps[2] += [
        f"DROP INDEX {_index(table, 'ended', qualified=True)}",
        f"CREATE INDEX {_index(table, 'started')} ON {table} (started_at)",
    ]
    return steps


def started_index(table: str = TABLE) -> str:
    """The statement that (re)creates the index on `started_at` if it is missing."""
    return f"CREATE INDEX IF NOT EXISTS {_index(table, 'started')} ON {table} (started_at)"


def drop_started_index(table: str = TABLE) -> str:
    return f"DROP INDEX IF EXISTS {_index(table, 'started', qualified=True)}"


def _index(table: str, name: str, *, qualified: bool = False) -> str:
    """An index name: created in the table's schema, so unqualified in CREATE INDEX, and
    qualified with the schema in DROP INDEX."""
    schema, _, bare = table.rpartition(".")
    index = f"{bare}_{name}_idx"
    return f"{schema}.{index}" if qualified and schema else index
