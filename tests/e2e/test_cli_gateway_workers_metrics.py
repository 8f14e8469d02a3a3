"""`/metrics` of `connwise gateway --workers 2`: one scrape of the admin API (worker 0) covers
every worker's traffic, each series labelled with its `worker`, and a replaced worker's series
come back from its replacement."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_cli_gateway import config_text
from tests.e2e.test_cli_gateway_workers import (
    children_of,
    free_port,
    gateway,
    origin,
    ready_line,
    ready_lines,
)
from tests.integration.http_origin import HttpOrigin

AUTH = {"Authorization": "Bearer t0k3n"}
__all__ = ["origin"]  # the fixture


async def scrape(admin: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by name; asserts each family came once (Prometheus refuses a repeated one)."""
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{admin}/metrics", headers=AUTH)
    assert answer.status_code == 200, answer.text
    families = list(text_string_to_metric_families(answer.text))
    names = Counter(family.name for family in families)
    assert all(n == 1 for n in names.values()), names
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families:
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def by_worker(samples: list[tuple[dict[str, str], float]], **match: str) -> dict[str, float]:
    """The values of the samples whose labels include `match`, summed per worker."""
    sums: dict[str, float] = {}
    for labels, value in samples:
        if all(labels.get(k) == v for k, v in match.items()):
            sums[labels["worker"]] = sums.get(labels["worker"], 0.0) + value
    return sums


async def test_one_scrape_covers_every_worker_labelled_by_worker(
        tmp_path: Path, origin: HttpOrigin) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "gw.toml"
    path.write_text(config_text(origin, bind=f"127.0.0.1:{port}") +
                    f'[admin]\nbind = "127.0.0.1:{admin}"\ntoken = "t0k3n"\n')
    requests = 40
    async with gateway("-c", str(path), "--workers", "2") as proc:
        await ready_lines(proc, 2)
        # A connection per request: the kernel spreads them over the workers' sockets.
        for _ in range(requests):
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{port}/fast")
                assert answer.status_code == 200
        samples = await scrape(admin)
        assert by_worker(samples["connwise_worker_up"]) == {"0": 1.0, "1": 1.0}
        accepted = by_worker(samples["connwise_gateway_events_total"], event="accepted")
        assert sum(accepted.values()) == requests and set(accepted) == {"0", "1"}, accepted
        assert all(n > 0 for n in accepted.values()), accepted
        queued = by_worker(samples["connwise_queue_seconds_count"], owner="app",
                           **{"class": "interactive"})
        assert queued == accepted
        # Every series says whose it is.
        assert all("worker" in labels for series in samples.values() for labels, _ in series)
        # A worker killed and replaced: its replacement's series, counted from zero.
        os.kill(children_of(proc.pid)[1], signal.SIGKILL)
        await ready_line(proc)
        await asyncio.sleep(0.2)
        samples = await scrape(admin)
        assert by_worker(samples["connwise_worker_up"]) == {"0": 1.0, "1": 1.0}
        accepted_now = by_worker(samples["connwise_gateway_events_total"], event="accepted")
        assert accepted_now == {"0": accepted["0"]}, accepted_now  # worker 1 took none yet
        os.kill(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
