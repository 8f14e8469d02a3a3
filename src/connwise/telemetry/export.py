"""`connwise telemetry export`: a store's records to parquet or CSV, streamed chunk by chunk.

Memory stays at one chunk whatever the store's size: parquet gets one row group per chunk,
CSV one `writerows` per chunk. Column types come from `FIELDS` (text -> string, int -> int64,
real -> float64), so a parquet file reads back with the same types in pandas, DuckDB or Spark.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from connwise.errors import ConfigError
from connwise.telemetry.record import FIELDS, Row

Format = Literal["parquet", "csv"]
FORMATS: tuple[Format, ...] = ("parquet", "csv")

_ARROW = {"text": pa.string(), "int": pa.int64(), "real": pa.float64()}
SCHEMA = pa.schema([pa.field(f.name, _ARROW[f.type]) for f in FIELDS])


def export(chunks: Iterable[list[Row]], path: str | Path, fmt: str) -> int:
    """Write every row of `chunks` (full records, in `FIELDS` order) to `path`; returns the
    number of rows written."""
    if fmt not in FORMATS:
        raise ConfigError("--format", fmt, "unknown export format", "use parquet or csv")
    path = Path(path)
    if not path.parent.exists():
        raise ConfigError("--output", str(path), f"the directory {str(path.parent)!r} does "
                          "not exist", "create it or write somewhere else")
    rows = 0
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(SCHEMA.names)
            for chunk in chunks:
                writer.writerows(chunk)
                rows += len(chunk)
        return rows
    with pq.ParquetWriter(path, SCHEMA, compression="zstd") as parquet:
        for chunk in chunks:
            if not chunk:
                continue
            columns = list(zip(*chunk, strict=True))
            arrays = [pa.array(col, type=field.type) for col, field in zip(columns, SCHEMA,
                                                                            strict=True)]
            parquet.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA))
            rows += len(chunk)
        if rows == 0:
            parquet.write_table(SCHEMA.empty_table())
    return rows
