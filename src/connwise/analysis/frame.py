"""Records as columns: what the assessment computes on.

A `Frame` holds the columns the assessment needs as numpy arrays (text as object arrays,
numbers as float64 with NaN for NULL), read from any store in chunks. A million records take
about 200 MB; assess a window (`--since/--until`) when the store is larger than that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from connwise.errors import ConfigError
from connwise.telemetry.record import FIELD_BY_NAME, Row
from connwise.telemetry.stores import StoreSpec

Floats = npt.NDArray[np.float64]
Objects = npt.NDArray[np.object_]

COLUMNS: tuple[str, ...] = (
    "conn_id", "node", "source", "kind", "backend", "class_name", "started_at", "ended_at",
    "queued_s", "connecting_s", "active_s", "idle_s", "bytes_in", "bytes_out", "requests",
    "conn_seq", "errors", "status", "upstream_connect_s", "max_gap_s", "tail_idle_s",
    "max_held_s", "flag", "close_reason", "final_state", "region", "device",
)
#: Kinds recorded live over a whole connection, whose idle gaps and uses are measured (log
#: records, `request` and `session`, only know what one line says).
CONNECTION_KINDS = frozenset({"pool", "client", "upstream"})
#: The dimensions `--segment` may name.
DIMENSIONS = ("region", "device", "hour", "kind", "source", "backend", "class_name")


@dataclass(slots=True)
class Frame:
    """Columns of records; `n` rows."""

    columns: dict[str, npt.NDArray[Any]]
    n: int

    def text(self, name: str) -> Objects:
        """A text column (object array; NULL is "")."""
        column: Objects = self.columns[name]
        return column

    def num(self, name: str) -> Floats:
        """A number column (float64; NULL is NaN)."""
        column: Floats = self.columns[name]
        return column

    @classmethod
    def from_rows(cls, chunks: Iterable[Sequence[Row]],
                  columns: Sequence[str] = COLUMNS) -> Frame:
        parts: list[list[object]] = [[] for _ in columns]
        for chunk in chunks:
            if not chunk:
                continue
            for values, part in zip(zip(*chunk, strict=True), parts, strict=True):
                part.extend(values)
        data: dict[str, npt.NDArray[Any]] = {}
        for name, part in zip(columns, parts, strict=True):
            if FIELD_BY_NAME[name].type == "text":
                array = np.empty(len(part), dtype=object)
                array[:] = ["" if v is None else v for v in part]
            else:
                array = np.array(part, dtype=np.float64)
            data[name] = array
        return cls(data, len(parts[0]) if parts else 0)

    @classmethod
    def load(cls, spec: StoreSpec, *, since: float | None = None,
             until: float | None = None) -> Frame:
        return cls.from_rows(spec.read(since=since, until=until, columns=COLUMNS), COLUMNS)

    def select(self, mask: npt.NDArray[np.bool_]) -> Frame:
        return Frame({k: v[mask] for k, v in self.columns.items()}, int(mask.sum()))


def zone(name: str) -> ZoneInfo | timezone:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError("--tz", name, "unknown time zone",
                          "use an IANA name such as Europe/Paris, or UTC") from exc


def local_hours(times: Floats, tz: ZoneInfo | timezone) -> Floats:
    """Local time in hours since the epoch (UTC offset applied per UTC hour, so DST holds)."""
    if tz is UTC or len(times) == 0:
        return times / 3600.0
    hours = np.floor(times / 3600.0)
    unique, inverse = np.unique(hours, return_inverse=True)
    offsets = np.array([
        (datetime.fromtimestamp(h * 3600.0, tz).utcoffset() or timedelta()).total_seconds()
        for h in unique])
    shifted: Floats = (times + offsets[inverse]) / 3600.0
    return shifted


def parse_segments(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown or not names:
        raise ConfigError("--segment", value, f"unknown dimension {', '.join(unknown) or '(none)'}",
                          f"use a comma-separated list of {', '.join(DIMENSIONS)}")
    return names
