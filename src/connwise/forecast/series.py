"""Demand series: what every model, backtest and plan is computed from.

A `DemandSeries` is one segment's demand (a backend group, a class, a region) on a regular time
grid of 1 minute to 1 hour. Where it comes from is a `DemandSource`: `CsvSource`, or the
telemetry store's `connwise.forecast.store.StoreSource`; anything with `segments()` and
`series(segment)` plugs in, and nothing downstream knows the difference.

The CSV is long-format, one row per period (and segment)::

    timestamp,segment,value
    2024-05-01T00:00:00Z,api,118
    2024-05-01T00:01:00Z,api,121

`segment` is optional (a file without it is one segment, ``default``); the column names are
configurable. Timestamps are ISO 8601 or Unix seconds, read as UTC. Gaps on the grid are filled
by linear interpolation and counted — more than `max_missing` of the grid missing is refused,
because a model fitted mostly on invented data would forecast invented demand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from connwise.errors import ConfigError

#: The resolutions the issue asks for: one minute to one hour.
MIN_STEP = 60
MAX_STEP = 3600
DEFAULT_SEGMENT = "default"


@dataclass(frozen=True)
class DemandSeries:
    """Demand of one segment on a regular grid.

    `values[i]` is the demand of the period starting at `start + i * step` (Unix seconds, UTC);
    `filled` counts the periods interpolated over gaps in the source.
    """

    segment: str
    start: float
    step: int
    values: np.ndarray
    filled: int = 0

    def __post_init__(self) -> None:
        if self.values.ndim != 1:
            raise ConfigError(f"series[{self.segment!r}].values", self.values.shape,
                              "a demand series is one-dimensional", "pass one value per period")
        if not MIN_STEP <= self.step <= MAX_STEP:
            raise ConfigError(f"series[{self.segment!r}].step", self.step,
                              f"the resolution must lie in {MIN_STEP}..{MAX_STEP} seconds",
                              "resample the data to 1 minute .. 1 hour")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def end(self) -> float:
        """The end of the last period (the start of the first one a forecast covers)."""
        return self.start + len(self.values) * self.step

    @property
    def daily(self) -> int:
        """Periods per day: the daily season length."""
        return max(1, round(86400 / self.step))

    @property
    def weekly(self) -> int:
        return 7 * self.daily

    @property
    def freq(self) -> str:
        """The pandas frequency string of the grid."""
        return f"{self.step}s"

    def times(self) -> np.ndarray:
        """Start of each period, Unix seconds."""
        return self.start + self.step * np.arange(len(self.values), dtype=float)

    def index(self) -> pd.DatetimeIndex:
        return pd.to_datetime(self.times(), unit="s")

    def head(self, n: int) -> DemandSeries:
        """The first `n` periods (the training part of a backtest window)."""
        return DemandSeries(self.segment, self.start, self.step, self.values[:n], self.filled)

    def tail(self, n: int) -> DemandSeries:
        """The last `n` periods (a model's data window)."""
        n = min(n, len(self.values))
        return DemandSeries(self.segment, self.start + (len(self.values) - n) * self.step,
                            self.step, self.values[len(self.values) - n:], self.filled)

    def to_frame(self) -> pd.DataFrame:
        """statsforecast's long format: unique_id, ds, y."""
        return pd.DataFrame({"unique_id": self.segment, "ds": self.index(), "y": self.values})


class DemandSource(Protocol):
    """Where demand history comes from: a CSV, or the telemetry store."""

    def segments(self) -> list[str]: ...

    def series(self, segment: str) -> DemandSeries: ...


def _parse_times(raw: pd.Series, path: str, column: str) -> pd.Series:
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().all():
        # Beyond pandas' range (years 1677..2262: milliseconds, say, or inf) the conversion
        # raises instead of coercing; such a number is reported below like any bad timestamp.
        limit = pd.Timestamp.max.timestamp()
        parsed = pd.to_datetime(numeric.where(numeric.abs() < limit), unit="s", utc=True,
                                errors="coerce")
    else:
        parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"{path}:{row + 2}", str(raw.iloc[row]),
                          f"column {column!r} holds something that is not a timestamp",
                          "use ISO 8601 (2024-05-01T00:00:00Z) or Unix seconds (not "
                          "milliseconds)")
    return parsed.dt.tz_convert(None)


class CsvSource:
    """Demand history from a long-format CSV; see the module docstring.

    Raises `ConfigError` (a full sentence naming the file, the row or the column, and the fix)
    when the file is missing, a column is absent, a value is not a number or negative, a
    timestamp repeats, the grid is irregular or outside 1 min .. 1 h, or too much is missing.
    """

    def __init__(self, path: str | Path, *, time_column: str = "timestamp",
                 value_column: str = "value", segment_column: str = "segment",
                 max_missing: float = 0.2) -> None:
        self.path = Path(path)
        self.time_column = time_column
        self.value_column = value_column
        self.segment_column = segment_column
        self.max_missing = max_missing
        self._frames: dict[str, pd.DataFrame] | None = None

    def _load(self) -> dict[str, pd.DataFrame]:
        if self._frames is not None:
            return self._frames
        where = str(self.path)
        if not self.path.is_file():
            raise ConfigError("history", where, "the file does not exist",
                              "pass the path of a CSV with timestamp and value columns")
        try:
            frame = pd.read_csv(self.path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ConfigError("history", where, f"the file is not a readable CSV "
                              f"({str(exc).strip() or type(exc).__name__})",
                              "write one header row and one row per period") from exc
        for column in (self.time_column, self.value_column):
            if column not in frame.columns:
                raise ConfigError("history", where, f"it has no column {column!r} (columns: "
                                  f"{', '.join(map(str, frame.columns)) or 'none'})",
                                  "name the columns timestamp and value, or pass the names")
        if frame.empty:
            raise ConfigError("history", where, "the file has no rows", "add demand history")
        values = pd.to_numeric(frame[self.value_column].str.strip(), errors="coerce")
        bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ConfigError(f"{where}:{row + 2}", frame[self.value_column].iloc[row],
                              f"column {self.value_column!r} is not a number",
                              "write a number of connections or requests per period")
        if (values < 0).any():
            row = int(np.flatnonzero((values < 0).to_numpy())[0])
            raise ConfigError(f"{where}:{row + 2}", float(values.iloc[row]),
                              "demand cannot be negative", "fix or drop the row")
        times = _parse_times(frame[self.time_column].str.strip(), where, self.time_column)
        segments = (frame[self.segment_column].str.strip() if self.segment_column
                    in frame.columns else pd.Series(DEFAULT_SEGMENT, index=frame.index))
        data = pd.DataFrame({"ts": times, "segment": segments, "y": values.astype(float)})
        self._frames = {str(s): g.drop(columns="segment") for s, g in data.groupby("segment")}
        return self._frames

    def segments(self) -> list[str]:
        return sorted(self._load())

    def series(self, segment: str) -> DemandSeries:
        frames = self._load()
        if segment not in frames:
            raise ConfigError("segment", segment, f"{self.path} has no such segment (it has "
                              f"{', '.join(sorted(frames))})", "name one of those")
        return regularize(frames[segment], segment, str(self.path), self.max_missing)


def regularize(frame: pd.DataFrame, segment: str, where: str,
               max_missing: float = 0.2) -> DemandSeries:
    """Put `frame` (columns ts, y) on its regular grid, filling and counting small gaps."""
    frame = frame.sort_values("ts")
    duplicated = frame["ts"].duplicated()
    if duplicated.any():
        raise ConfigError(f"{where}", str(frame["ts"][duplicated].iloc[0]),
                          f"segment {segment!r} has this timestamp twice",
                          "keep one row per period and segment")
    if len(frame) < 3:
        raise ConfigError(where, len(frame), f"segment {segment!r} has fewer than 3 periods",
                          "give at least a few days of history")
    seconds = frame["ts"].astype("int64").to_numpy() // 10**9
    step = int(np.median(np.diff(seconds)))
    if not MIN_STEP <= step <= MAX_STEP:
        raise ConfigError(where, f"{step} s", f"segment {segment!r} has a resolution outside "
                          f"{MIN_STEP}..{MAX_STEP} seconds", "resample to 1 minute .. 1 hour")
    offsets = seconds - seconds[0]
    if np.any(offsets % step):
        row = int(np.flatnonzero(offsets % step)[0])
        raise ConfigError(where, str(frame["ts"].iloc[row]), f"segment {segment!r} is not on a "
                          f"regular {step}-second grid", "resample to a regular grid")
    n = int(offsets[-1] // step) + 1
    grid = np.full(n, np.nan)
    grid[offsets // step] = frame["y"].to_numpy(dtype=float)
    missing = int(np.isnan(grid).sum())
    if missing > max_missing * n:
        raise ConfigError(where, f"{missing} of {n} periods", f"segment {segment!r} misses "
                          f"more than {max_missing:.0%} of its grid", "fill the gaps at the source")
    if missing:
        known = ~np.isnan(grid)
        grid = np.interp(np.arange(n), np.flatnonzero(known), grid[known])
    return DemandSeries(segment, float(seconds[0]), step, grid, missing)


def from_values(values: Sequence[float] | np.ndarray, *, step: int = 3600, start: float = 0.0,
                segment: str = DEFAULT_SEGMENT) -> DemandSeries:
    """A series from plain numbers (tests, benchmarks, the telemetry store's adapters)."""
    array = np.asarray(values, dtype=float)
    if array.size and (not np.all(np.isfinite(array))):
        raise ConfigError("values", "non-finite", "a demand series must be finite numbers",
                          "drop or fill NaN and infinite values")
    return DemandSeries(segment, start, step, array)


def season_lengths(series: DemandSeries, *, max_season: float = math.inf) -> list[int]:
    """The daily and weekly season lengths the series is long enough to show (two full
    cycles each), longest last, at most `max_season` periods."""
    out = [m for m in (series.daily, series.weekly)
           if m > 1 and len(series) >= 2 * m and m <= max_season]
    return out
