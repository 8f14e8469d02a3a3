"""Demand series from the real PostgreSQL store: the same SQL aggregation as on SQLite, checked
against the same brute-force count, in a schema of its own that is dropped afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from connwise.errors import ConfigError
from connwise.forecast.store import StoreSource
from connwise.telemetry.store_postgres import PostgresStore
from tests.integration.conftest import drop_schema
from tests.unit.forecast.store_data import BACKENDS, COLUMNS, T0, expected, records

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def store(postgres_dsn: str) -> Iterator[str]:
    schema = f"cw_fc_{uuid.uuid4().hex[:12]}"

    async def fill() -> None:
        pg = await PostgresStore.open(postgres_dsn, schema=schema)
        try:
            await pg.write(records(), COLUMNS)
        finally:
            await pg.close()

    asyncio.run(fill())
    yield f"{postgres_dsn}?schema={schema}"
    asyncio.run(drop_schema(postgres_dsn, schema))


@pytest.mark.parametrize("metric", ["connections", "requests", "concurrency"])
def test_every_metric_matches_the_brute_force_count(store: str, metric: str) -> None:
    rows = records()
    source = StoreSource(store, metric=metric, step=300,  # type: ignore[arg-type]
                         segment_by="group", groups=BACKENDS, since=T0, until=T0 + 3 * 3600)
    assert source.spec.kind == "postgres"
    assert source.segments() == ["api", "db"]
    for group in ("api", "db"):
        want = expected(rows, metric, T0, 300, 36,
                        lambda r: bool(BACKENDS[r[3]] == group))  # noqa: B023
        np.testing.assert_allclose(source.series(group).values, want, rtol=1e-9, atol=1e-6)


def test_default_window_kinds_and_hold_time(store: str) -> None:
    rows = records()
    source = StoreSource(store, metric="requests", step=3600, segment_by="kind,region",
                         kinds=["pool"])
    first = min(r[6] for r in rows if r[1] == "pool")
    assert source.window[0] == (first // 3600) * 3600
    assert source.segments() == ["pool/-", "pool/eu", "pool/us"]
    since, until = source.window
    kept = [r for r in rows if r[1] == "pool" and since <= r[6] < until]
    assert source.hold_time() == pytest.approx(sum(r[9] for r in kept)
                                               / sum(r[8] for r in kept))
    with pytest.raises(ConfigError, match="no connection records of kind upstream"):
        StoreSource(store, kinds=["upstream"]).segments()
