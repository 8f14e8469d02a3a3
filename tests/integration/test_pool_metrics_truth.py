"""A real Pool's Prometheus metrics against known use: acquires by class equal the waits'
counts, a timed-out acquire counts once, and the in-use gauge of each class returns to zero."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from connwise.errors import ConnwiseError
from connwise.telemetry.metrics import TelemetryMetrics
from tests.integration.tcp_backend import TcpBackend
from tests.integration.test_telemetry_pool import backend, make_pool

__all__ = ["backend"]  # the fixture


async def test_pool_metrics_equal_what_happened(backend: TcpBackend) -> None:
    registry = CollectorRegistry()
    metrics = TelemetryMetrics(registry)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"owner": "tel", **labels})

    async with make_pool(backend, max_size=1) as pool:
        metrics.watch_pool(pool, backend="echo")
        await pool.open(wait=True)
        for _ in range(3):
            async with pool.acquire("bulk"):
                pass
        async with pool.acquire("critical"):
            assert value("connwise_connections", kind="pool", state="in_use",
                         backend="echo", **{"class": "critical"}) == 1
            with pytest.raises((ConnwiseError, TimeoutError)):
                async with asyncio.timeout(5):
                    async with pool.acquire("bulk", timeout=0.05):
                        pass
        # Every wait is observed, the one that timed out too; only the others acquired.
        assert value("connwise_wait_seconds_count", **{"class": "bulk"}) == 4
        assert value("connwise_wait_seconds_count", **{"class": "critical"}) == 1
        assert value("connwise_pool_operations_total", op="acquired") == 4
        assert value("connwise_pool_operations_total", op="timed_out") == 1
        for cls in ("bulk", "critical"):
            in_use = value("connwise_connections", kind="pool", state="in_use",
                           backend="echo", **{"class": cls})
            assert in_use in (0, None), (cls, in_use)
