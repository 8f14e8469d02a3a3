"""The gateway's Prometheus metrics over its admin API, scraped while real clients are idle,
served and queued: connections by state, class and backend, the upstream pools, admission
waits by class, and the telemetry writer's written and dropped records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from connwise.gateway.admin import AdminServer
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


async def test_metrics_show_connections_by_state_waits_and_telemetry(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], tmp_path: Path) -> None:
    backend = origins[0].address
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [backend], "health": {"kind": "none"},
                        "max_in_flight": 1}},
        telemetry={"store": str(tmp_path / "gw.db"), "flush_interval": 0.05})
    admin = AdminServer(gateway, "127.0.0.1:0", None)
    await admin.start()
    host, port = gateway.listeners["web"].address
    web = f"http://{host}:{port}"
    scrape_url = "http://{}:{}/metrics".format(*admin.address)
    try:
        async with httpx.AsyncClient(base_url=web) as idle, \
                httpx.AsyncClient(base_url=web) as served, \
                httpx.AsyncClient(base_url=web) as queued, httpx.AsyncClient() as scraper:
            assert (await idle.get("/fast")).status_code == 200  # then stays open, idle
            slow = asyncio.create_task(served.get("/slow?ms=600"))
            await asyncio.sleep(0.15)
            waiting = asyncio.create_task(queued.get("/fast"))  # the only slot is taken
            await asyncio.sleep(0.15)
            text = (await scraper.get(scrape_url)).text
            connections = _samples(text, "connwise_connections")
            for state, backend_label in (("idle", ""), ("active", backend), ("queued", "")):
                key = _labels(owner="web", kind="http", state=state, backend=backend_label,
                              **{"class": "interactive"})
                assert connections.get(key) == 1.0, (state, connections)
            # The upstream pool: one connection carries the slow request.
            assert connections[_labels(owner=f"app/{backend}", kind="pool", state="in_use",
                                       backend=backend, **{"class": "any"})] == 1.0
            assert (await slow).status_code == 200 and (await waiting).status_code == 200
            await asyncio.sleep(0.2)  # the writer's flush
            text = (await scraper.get(scrape_url)).text
        queue = _samples(text, "connwise_queue_seconds_count")
        assert queue[_labels(owner="app", **{"class": "interactive"})] == 3.0
        buckets = _samples(text, "connwise_queue_seconds_bucket")
        at_once = buckets[_labels(owner="app", le="0.0001", **{"class": "interactive"})]
        assert at_once == 2.0  # the third waited ~0.45 s for the slot
        assert buckets[_labels(owner="app", le="0.25", **{"class": "interactive"})] == 2.0
        assert buckets[_labels(owner="app", le="1.0", **{"class": "interactive"})] == 3.0
        records = _samples(text, "connwise_telemetry_records_total")
        assert records[_labels(sink="sqlite", outcome="dropped")] == 0.0
        waits = _samples(text, "connwise_wait_seconds_count")
        assert waits[_labels(owner=f"app/{backend}", **{"class": "any"})] >= 3.0
    finally:
        await admin.close()
