"""`/metrics` across workers, in one process: worker 0's admin API reads worker 1's metrics
from its Unix socket and merges them with its own, each sample labelled with its worker; a
worker that does not answer is `connwise_worker_up 0`, and the scrape still answers."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from connwise.gateway.admin import AdminServer, metrics_registry
from connwise.gateway.runtime import Gateway
from connwise.gateway.worker_metrics import MetricsSocket, WorkerSet
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin


async def _gateway(make_gateway: GatewayFactory, origin: HttpOrigin) -> Gateway:
    return await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [origin.address], "health": {"kind": "none"}}})


async def _requests(gateway: Gateway, n: int) -> None:
    host, port = gateway.listeners["web"].address
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
        for _ in range(n):
            assert (await client.get("/fast")).status_code == 200


async def test_worker_0_scrapes_every_worker_and_says_which_answered(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], tmp_path: Path) -> None:
    first = await _gateway(make_gateway, origins[0])
    second = await _gateway(make_gateway, origins[0])
    # Three workers; worker 2 is not there (being replaced): its socket does not exist.
    socket = MetricsSocket(metrics_registry(second), WorkerSet(1, 3, tmp_path))
    await socket.start()
    admin = AdminServer(first, "127.0.0.1:0", "t", workers=WorkerSet(0, 3, tmp_path))
    await admin.start()
    url = "http://{}:{}/metrics".format(*admin.address)
    try:
        await _requests(first, 2)
        await _requests(second, 3)
        async with httpx.AsyncClient() as scraper:
            refused = await scraper.get(url)
            answer = await scraper.get(url, headers={"Authorization": "Bearer t"})
    finally:
        await admin.close()
        await socket.close()
    assert refused.status_code == 401
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(answer.text))
    assert max(Counter(f.name for f in families).values()) == 1  # each family once
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in families for s in f.samples}
    assert values["connwise_worker_up", (("worker", "0"),)] == 1.0
    assert values["connwise_worker_up", (("worker", "1"),)] == 1.0
    assert values["connwise_worker_up", (("worker", "2"),)] == 0.0
    for worker, n in (("0", 2.0), ("1", 3.0)):
        labels = (("class", "interactive"), ("owner", "app"), ("worker", worker))
        assert values["connwise_queue_seconds_count", labels] == n
        assert values["connwise_gateway_events_total",
                      (("event", "accepted"), ("worker", worker))] == 1.0
    assert not any(dict(labels).get("worker") == "2" for name, labels in values
                   if name != "connwise_worker_up")
    assert not (tmp_path / "worker-1.sock").exists()  # removed at close


async def test_a_worker_whose_text_is_cut_short_counts_as_down(
        make_gateway: GatewayFactory, origins: list[HttpOrigin], tmp_path: Path) -> None:
    """A worker killed while it writes leaves a text cut mid-line: not merged (a line cut short
    could be a wrong value), and `connwise_worker_up` says so."""
    async def cut_short(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'# HELP connwise_client_connections Open client connections\n'
                     b'# TYPE connwise_client_connections gauge\n'
                     b'connwise_client_connections{worker="1"} 12')  # ...3, killed
        writer.close()

    peer = await asyncio.start_unix_server(cut_short, WorkerSet(1, 2, tmp_path).socket(1))
    admin = AdminServer(await _gateway(make_gateway, origins[0]), "127.0.0.1:0", None,
                        workers=WorkerSet(0, 2, tmp_path))
    await admin.start()
    try:
        async with httpx.AsyncClient() as scraper:
            answer = await scraper.get("http://{}:{}/metrics".format(*admin.address))
    finally:
        await admin.close()
        peer.close()
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(answer.text) for s in f.samples}
    assert values["connwise_worker_up", (("worker", "1"),)] == 0.0
    assert values["connwise_client_connections", (("worker", "0"),)] == 0.0
    assert ("connwise_client_connections", (("worker", "1"),)) not in values
