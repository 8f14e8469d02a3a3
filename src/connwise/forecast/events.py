"""The events calendar: launches, sales, campaigns — demand the history alone cannot foresee.

An event has a type, a start, an end and optionally an expected size (a multiplier of normal
demand, as a planner would guess it). Types matter more than names: the LightGBM model gets one
group of features per type, so that it learns a *launch* as a sharp, short spike and a *sale*
as a sustained lift, instead of averaging the two into something that fits neither.

TOML (``[[event]]`` tables)::

    [[event]]
    type = "launch"
    name = "v2 launch"
    start = 2024-05-06T09:00:00Z
    end = 2024-05-06T11:00:00Z
    size = 3.0

CSV: columns ``type,start,end`` and optional ``name,size``. Times are ISO 8601 (UTC when no
offset is given) or Unix seconds.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from connwise.errors import ConfigError

#: Event types are identifiers, because each becomes a feature name.
TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True, slots=True)
class Event:
    """One calendar entry; times in Unix seconds, `end` exclusive."""

    type: str
    start: float
    end: float
    size: float | None = None
    name: str = ""


def _time(value: Any, key: str) -> float:
    if isinstance(value, dt.datetime):
        when = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return when.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if math.isfinite(number):  # "inf" or "nan" is no time
                return number
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    raise ConfigError(key, value, "this is not a time", "use ISO 8601 such as "
                      "2024-05-06T09:00:00Z, or Unix seconds")


def make_event(data: Mapping[str, Any], key: str) -> Event:
    """An `Event` from a mapping (a TOML table or a CSV row), validated; `key` names it in
    errors."""
    kind = str(data.get("type", "")).strip().lower()
    if not TYPE_PATTERN.match(kind):
        raise ConfigError(f"{key}.type", data.get("type"), "an event type must be a short "
                          "lowercase identifier", "use e.g. launch, sale or campaign")
    for field in ("start", "end"):
        if data.get(field) in (None, ""):
            raise ConfigError(f"{key}.{field}", None, f"the event has no {field}",
                              f"give its {field} time")
    start = _time(data["start"], f"{key}.start")
    end = _time(data["end"], f"{key}.end")
    if not end > start:
        raise ConfigError(f"{key}.end", data["end"], "the event ends before it starts",
                          "give an end after the start")
    size_raw = data.get("size")
    size: float | None = None
    if size_raw not in (None, ""):
        try:
            if isinstance(size_raw, bool):  # float(True) is 1.0, but true is no size
                raise TypeError(size_raw)
            size = float(size_raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.size", size_raw, "the expected size is not a number",
                              "give a multiplier of normal demand, e.g. 2.5") from None
        if not 0 < size < math.inf:
            raise ConfigError(f"{key}.size", size_raw, "the expected size must be a positive, "
                              "finite number", "give a multiplier of normal demand, e.g. 2.5")
    return Event(kind, start, end, size, str(data.get("name", "") or ""))


class EventCalendar:
    """Events sorted by start, with the per-type features the LightGBM model reads."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.events = sorted(events, key=lambda e: (e.start, e.type))

    def __len__(self) -> int:
        return len(self.events)

    @property
    def types(self) -> list[str]:
        return sorted({e.type for e in self.events})

    @classmethod
    def load(cls, path: str | Path) -> EventCalendar:
        """Read a `.toml` or `.csv` calendar; raises `ConfigError` on a missing or bad file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError("events", str(path), "the file does not exist",
                              "pass a .toml or .csv events calendar")
        if path.suffix.lower() == ".toml":
            try:
                data = tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError("events", str(path), f"the file is not valid TOML ({exc})",
                                  "fix the syntax; see examples/events.toml") from exc
            tables = data.get("event", [])
            if not isinstance(tables, list):
                raise ConfigError(f"{path}: event", tables, "events must be an array of tables",
                                  "write each event as [[event]]")
            for i, table in enumerate(tables):
                if not isinstance(table, dict):
                    raise ConfigError(f"{path}: event[{i}]", table, "an event is a table",
                                      "write each event as [[event]] with type, start, end")
            return cls(make_event(t, f"{path}: event[{i}]") for i, t in enumerate(tables))
        if path.suffix.lower() == ".csv":
            try:
                with path.open(newline="") as handle:
                    rows = list(csv.DictReader(handle))
            except UnicodeDecodeError as exc:
                raise ConfigError("events", str(path), f"the file is not UTF-8 text ({exc})",
                                  "save the calendar as UTF-8 CSV") from exc
            return cls(make_event(r, f"{path}:{i + 2}") for i, r in enumerate(rows))
        raise ConfigError("events", str(path), "unknown calendar format",
                          "use a .toml or .csv file")

    def features(self, times: Sequence[float] | np.ndarray, step: float,
                 types: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Per event type, three columns over the periods starting at `times`:

        - ``ev_<type>``: 1 while an event of the type is on (the period overlaps it), else 0;
        - ``ev_<type>_age``: hours since that event started, -1 outside events — the feature
          that tells a spike's first hour from a sale's third day;
        - ``ev_<type>_size``: the expected size, 1 when none is given, 0 outside events.

        `types` fixes the columns (a model fitted on some types predicts with the same ones).
        """
        t = np.asarray(times, dtype=float)
        out: dict[str, np.ndarray] = {}
        for kind in (self.types if types is None else types):
            on = np.zeros(len(t))
            age = np.full(len(t), -1.0)
            size = np.zeros(len(t))
            for event in self.events:
                if event.type != kind:
                    continue
                mask = (t + step > event.start) & (t < event.end)
                on[mask] = 1.0
                age[mask] = np.maximum(0.0, t[mask] - event.start) / 3600.0
                size[mask] = event.size if event.size is not None else 1.0
            out[f"ev_{kind}"] = on
            out[f"ev_{kind}_age"] = age
            out[f"ev_{kind}_size"] = size
        return out

    def to_list(self) -> list[dict[str, Any]]:
        return [{"type": e.type, "start": e.start, "end": e.end, "size": e.size, "name": e.name}
                for e in self.events]
