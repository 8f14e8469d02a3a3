"""`connwise telemetry export`: a store's records to parquet or CSV, streamed chunk by chunk.

Memory stays at one chunk whatever the store's size: parquet gets one row group per chunk,
CSV one `writerows` per chunk. Column types come from `FIELDS` (text -> string, int -> int64,
real -> float64), so a parquet file reads back with the same types in pandas, DuckDB or Spark.

The file is written under a temporary name next to the output and renamed over it only once
complete (`replace_on_success`): an export that fails (a store that cannot be read, a full disk)
leaves neither a half-written file nor a truncated previous export.
"""

from __future__ import annotations

import contextlib
import csv
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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
    with replace_on_success(Path(path), "--output") as temporary:
        if fmt == "csv":
            return _write_csv(chunks, temporary)
        return _write_parquet(chunks, temporary)


@contextmanager
def replace_on_success(path: Path, key: str) -> Iterator[Path]:
    """A temporary path next to `path` for the block to write, renamed to `path` when the block
    ends without an error and deleted otherwise. An OSError (a directory in the way, no
    permission, a full disk) becomes a ConfigError naming `key` and `path`."""
    if not path.parent.exists():
        raise ConfigError(key, str(path), f"the directory {str(path.parent)!r} does not exist",
                          "create it or write somewhere else")
    if path.is_dir():
        raise ConfigError(key, str(path), "cannot write it: it is a directory",
                          "give a file name")
    # Not mkstemp: the file gets the permissions of any file the user creates, not 0600.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(key, str(path), f"cannot write it: {exc.strerror or exc}",
                          "choose a writable file, or free some space") from exc
    finally:
        with contextlib.suppress(OSError):  # never created, or its directory is a file
            temporary.unlink()


def _write_csv(chunks: Iterable[list[Row]], path: Path) -> int:
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(SCHEMA.names)
        for chunk in chunks:
            writer.writerows(chunk)
            rows += len(chunk)
    return rows


def _write_parquet(chunks: Iterable[list[Row]], path: Path) -> int:
    rows = 0
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
