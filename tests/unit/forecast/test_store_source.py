"""Demand series from a real SQLite telemetry store: every metric against a brute-force count,
segments by column and by gateway group, windows, kinds, hold times and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.unit.forecast.store_data import BACKENDS, COLUMNS, T0, expected, records

from connwise.config import load_gateway_config
from connwise.errors import ConfigError, StoreError
from connwise.forecast.store import StoreSource, backend_groups, parse_dimensions
from connwise.telemetry.store_sqlite import SqliteStore


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("store") / "t.db"
    sqlite = SqliteStore(path)
    sqlite.write(records(), COLUMNS)
    sqlite.close()
    return str(path)


@pytest.mark.parametrize("metric", ["connections", "requests", "concurrency"])
@pytest.mark.parametrize("step", [60, 900])
def test_every_metric_matches_the_brute_force_count(store: str, metric: str, step: int) -> None:
    rows = records()
    source = StoreSource(store, metric=metric, step=step, segment_by="source,class_name",  # type: ignore[arg-type]
                         since=T0, until=T0 + 3 * 3600)
    assert source.window == (T0, T0 + 3 * 3600)
    n = 3 * 3600 // step
    assert source.segments() == ["web/bulk", "web/interactive", "ws/bulk", "ws/interactive"]
    for segment in source.segments():
        src, cls = segment.split("/")
        series = source.series(segment)
        assert (series.start, series.step, len(series)) == (T0, step, n)
        want = expected(rows, metric, T0, step, n,
                        lambda r: bool(r[2] == src and r[4] == cls))  # noqa: B023
        np.testing.assert_allclose(series.values, want, rtol=1e-9, atol=1e-6)
    assert source.kind == ("concurrency" if metric == "concurrency" else "arrivals")


def test_group_dimension_kinds_and_empty_values(store: str) -> None:
    rows = records()
    source = StoreSource(store, metric="connections", step=300, segment_by=["group", "region"],
                         since=T0, until=T0 + 3600, kinds=["client"], groups=BACKENDS)
    assert source.segments() == ["api/-", "api/eu", "api/us", "db/-", "db/eu", "db/us"]
    want = expected(rows, "connections", T0, 300, 12,
                    lambda r: r[1] == "client" and BACKENDS[r[3]] == "db" and r[5] == "")
    np.testing.assert_array_equal(source.series("db/-").values, want)
    only_api = StoreSource(store, segment_by="group", groups={"10.0.0.1:80": "api"},
                           since=T0, until=T0 + 3600)
    assert only_api.segments() == ["api"]  # records of unmapped backends are left out
    config = load_gateway_config({
        "listeners": [{"name": "w", "kind": "http", "bind": "127.0.0.1:0"}],
        "groups": {"a": {"backends": ["10.0.0.1:80", "10.0.0.2:80"]},
                   "b": {"backends": ["10.0.0.2:80", "10.0.0.3:5432"]}}})
    assert backend_groups(config) == {"10.0.0.1:80": "a", "10.0.0.2:80": "a",
                                      "10.0.0.3:5432": "b"}


def test_default_window_covers_the_records_on_the_grid(store: str) -> None:
    source = StoreSource(store, metric="connections", step=3600, segment_by="kind")
    rows = records()
    first = min(r[6] for r in rows)
    last = max(r[6] for r in rows)
    since, until = source.window
    assert since == (first // 3600) * 3600 and since <= first
    assert until > last and until - 3600 <= last
    total = sum(source.series(s).values.sum() for s in source.segments())
    assert total == len(rows)


def test_hold_times(store: str) -> None:
    rows = [r for r in records() if T0 <= r[6] < T0 + 3600]
    lifetime = sum(max(r[7], r[6] + 1e-3) - r[6] for r in rows) / len(rows)
    per_request = sum(r[9] for r in rows) / sum(r[8] for r in rows)
    conns = StoreSource(store, segment_by="kind", since=T0, until=T0 + 3600)
    assert conns.hold_time() == pytest.approx(lifetime)
    reqs = StoreSource(store, metric="requests", segment_by="kind", since=T0, until=T0 + 3600)
    assert reqs.hold_time() == pytest.approx(per_request)
    pool_rows = [r for r in rows if r[1] == "pool"]
    assert reqs.hold_time("pool") == pytest.approx(sum(r[9] for r in pool_rows)
                                                   / sum(r[8] for r in pool_rows))
    with pytest.raises(ConfigError, match="no records of that segment"):
        reqs.hold_time("nope")


def test_errors_name_the_input(tmp_path: Path, store: str) -> None:
    with pytest.raises(ConfigError, match="metric = 'bytes'"):
        StoreSource(store, metric="bytes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="resolution = 30"):
        StoreSource(store, step=30)
    with pytest.raises(ConfigError, match="unknown segment dimension"):
        parse_dimensions("colour")
    with pytest.raises(ConfigError, match="needs the gateway's backend groups"):
        StoreSource(store, segment_by="group")
    with pytest.raises(ConfigError, match="no connection records of kind upstream"):
        StoreSource(store, kinds=["upstream"]).segments()
    with pytest.raises(ConfigError, match="in the window 2030-01-01"):
        StoreSource(store, since=1_893_456_000, until=1_893_456_000 + 3600).segments()
    with pytest.raises(ConfigError, match="no records of that segment in the window"):
        StoreSource(store, segment_by="kind").series("upstream")
    with pytest.raises(StoreError, match="does not exist"):
        StoreSource(str(tmp_path / "missing.db")).segments()
    empty = tmp_path / "empty.db"
    SqliteStore(empty).close()
    with pytest.raises(ConfigError, match="has no connection records in it"):
        StoreSource(str(empty)).segments()
