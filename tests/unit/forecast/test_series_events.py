"""CSV history and the events calendar: what is read, and how bad input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connwise.errors import ConfigError
from connwise.forecast.events import Event, EventCalendar
from connwise.forecast.series import CsvSource, DemandSource, from_values

ROOT = Path(__file__).resolve().parents[3]


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "history.csv"
    path.write_text(text)
    return path


def test_segments_grid_and_gap_filling(tmp_path: Path) -> None:
    path = _csv(tmp_path, "timestamp,segment,value\n"
                "2024-01-01T00:00:00Z,api,10\n2024-01-01T00:01:00Z,api,12\n"
                "2024-01-01T00:03:00Z,api,16\n2024-01-01T00:04:00Z,api,18\n"
                "2024-01-01T00:00:00Z,db,1\n2024-01-01T00:01:00Z,db,2\n"
                "2024-01-01T00:02:00Z,db,3\n")
    source: DemandSource = CsvSource(path)
    assert source.segments() == ["api", "db"]
    api = source.series("api")
    assert api.step == 60 and api.daily == 1440
    assert api.values.tolist() == [10, 12, 14, 16, 18]  # the missing minute interpolated
    assert api.filled == 1
    assert api.start == 1704067200.0 and api.end == api.start + 5 * 60
    with pytest.raises(ConfigError, match="no such segment"):
        source.series("cache")


def test_unix_seconds_and_no_segment_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "ts,n\n0,1\n3600,2\n7200,3\n")
    series = CsvSource(path, time_column="ts", value_column="n").series("default")
    assert series.step == 3600 and series.values.tolist() == [1, 2, 3]


@pytest.mark.parametrize(("text", "message"), [
    ("timestamp,value\n2024-01-01T00:00:00Z,ten\n", r"history.csv:2.*'value' is not a number"),
    ("time,value\n2024-01-01T00:00:00Z,1\n", "has no column 'timestamp'"),
    ("timestamp,value\nyesterday,1\n", "not a timestamp"),
    ("timestamp,value\n0,1\n1704067200000,2\n", r"history.csv:3.*not a timestamp.*milli"),
    ("timestamp,value\n1e20,1\n", r"history.csv:2.*not a timestamp"),
    ("timestamp,value\ninf,1\n", r"history.csv:2.*not a timestamp"),
    ("timestamp,value\n2024-01-01T00:00:00Z,-1\n", "demand cannot be negative"),
    ("timestamp,value\n", "has no rows"),
    ("timestamp,value\n0,1\n0,2\n60,3\n", "has this timestamp twice"),
    ("timestamp,value\n0,1\n1,2\n2,3\n", r"resolution outside 60..3600"),
    ("timestamp,value\n0,1\n60,2\n150,3\n180,4\n", "not on a regular 60-second grid"),
    ("timestamp,value\n0,1\n60,2\n120,3\n600,4\n660,5\n", "misses more than 20%"),
])
def test_bad_csv_is_refused_with_a_sentence(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CsvSource(_csv(tmp_path, text)).series("default")


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the file does not exist"):
        CsvSource(tmp_path / "nope.csv").segments()
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(ConfigError, match="history"):
        CsvSource(binary).segments()


def test_series_validation() -> None:
    with pytest.raises(ConfigError, match=r"1..1 hour|60..3600"):
        from_values([1.0, 2.0], step=30)
    with pytest.raises(ConfigError, match="finite"):
        from_values([1.0, float("nan")])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("events.toml", b"event = [1, 2]\n", r"event\[0\] = 1: an event is a table"),
    ("events.csv", b"type,start,end\nlaunch,\xff,2\n", r"events.csv.*not UTF-8 text"),
    ("events.toml", b"[[event]]\ntype = 'sale'\nstart = '-inf'\nend = 5\n",
     r"event\[0\].start = '-inf': this is not a time"),
    ("events.csv", b"type,start,end,size\nsale,0,10,inf\n",
     r"events.csv:2.size = 'inf': the expected size must be a positive"),
    ("events.toml", b"[[event]]\ntype = 'sale'\nstart = 0\nend = 5\nsize = true\n",
     r"event\[0\].size = True: the expected size is not a number"),
])
def test_malformed_calendars_are_refused_with_a_sentence(tmp_path: Path, name: str,
                                                          content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        EventCalendar.load(path)


def test_example_calendar_loads_and_features_have_age() -> None:
    calendar = EventCalendar.load(ROOT / "examples" / "events.toml")
    assert calendar.types == ["campaign", "launch", "sale"]
    launch = calendar.events[0]
    assert launch.type == "launch" and launch.size == 4.0 and launch.name == "mobile app 3.0"
    times = launch.start + 3600 * np.arange(-1, 4)
    features = calendar.features(times, 3600, ["launch"])
    assert features["ev_launch"].tolist() == [0, 1, 1, 0, 0]
    assert features["ev_launch_age"].tolist() == [-1, 0, 1, -1, -1]
    assert features["ev_launch_size"].tolist() == [0, 4, 4, 0, 0]


def test_csv_calendar_and_bad_events(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("type,start,end,size\nsale,2024-01-01T00:00:00,2024-01-02T00:00:00,\n")
    calendar = EventCalendar.load(path)
    assert calendar.events == [Event("sale", 1704067200.0, 1704153600.0, None, "")]
    path.write_text("type,start,end\nsale,2024-01-02T00:00:00Z,2024-01-01T00:00:00Z\n")
    with pytest.raises(ConfigError, match=r"events.csv:2.end.*ends before it starts"):
        EventCalendar.load(path)
    path.write_text("type,start,end\nBig Sale!,0,10\n")
    with pytest.raises(ConfigError, match="lowercase identifier"):
        EventCalendar.load(path)
    toml = tmp_path / "events.toml"
    toml.write_text("[[event]]\ntype = 'launch'\nstart = 'soon'\nend = 5\n")
    with pytest.raises(ConfigError, match="this is not a time"):
        EventCalendar.load(toml)
    toml.write_text("[[event]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        EventCalendar.load(toml)
    other = tmp_path / "events.json"
    other.write_text("{}")
    with pytest.raises(ConfigError, match="unknown calendar format"):
        EventCalendar.load(other)
