"""One `/metrics` scrape for every worker of `connwise gateway --workers N`.

The admin API runs in worker 0 only, and each worker is a whole gateway with its own counters,
groups and pools. So each other worker serves its metrics, in the Prometheus text format, on a
Unix socket of its own (`worker-<i>.sock`) in a directory the master makes private (mode 0700)
and removes when it exits. At each scrape of `/metrics`, worker 0 reads every socket at once
(each within `PEER_TIMEOUT`), adds its own metrics, and merges them family by family: the text
format allows one HELP and TYPE line per family, so the workers' texts cannot simply be joined
(`merge_texts`).
Every sample carries a `worker` label (`0`..`N-1`), and `connwise_worker_up{worker}` says whose
metrics came: 1, or 0 for a worker that did not answer (being replaced, stuck). Merging costs
worker 0 a pass over the lines of the other workers' texts.

Why a label and not sums: a replaced worker starts its counters at 0 again; as a series of its
own, that is a counter reset, which `rate()` understands, while a sum would go down. Totals are
one `sum without (worker)` away. Why not prometheus_client's multiprocess mode: most of these
metrics are read at scrape time from their owners' state (custom collectors), which that mode
does not carry across processes, and its gauges need a mode each to say how to combine them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

#: Seconds worker 0 waits for another worker's metrics at a scrape; past it the worker counts
#: as down for this scrape (`connwise_worker_up` 0). Prometheus' default scrape timeout is 10 s.
PEER_TIMEOUT = 2.0


@dataclass(frozen=True)
class WorkerSet:
    """Where worker `index` of `count` finds the others' metrics: `directory`."""

    index: int
    count: int
    directory: Path

    def socket(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"


def with_worker(families: Iterable[Metric], worker: str) -> Iterator[Metric]:
    """`families` with `worker` added to every sample's labels."""
    for family in families:
        labelled = Metric(family.name, family.documentation, family.type, family.unit)
        labelled.samples = [sample._replace(labels={**sample.labels, "worker": worker})
                            for sample in family.samples]
        yield labelled


class _Families(Collector):
    """Ready families, in the shape `generate_latest` renders."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class MetricsSocket:
    """A worker's metrics (worker 1 and up), labelled with its index, on its Unix socket: the
    whole text to each connection, rendered at the time."""

    def __init__(self, registry: CollectorRegistry, workers: WorkerSet) -> None:
        self.registry = registry
        self.worker = str(workers.index)
        self.path = workers.socket(workers.index)
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        # The socket of the worker this one replaces (killed, so it could not remove it).
        self.path.unlink(missing_ok=True)
        self.server = await asyncio.start_unix_server(self._serve, self.path)

    async def _serve(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(generate_latest(_Families(with_worker(self.registry.collect(),
                                                               self.worker))))
            await writer.drain()
        except ConnectionError:
            pass  # worker 0 gave up on this scrape
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.path.unlink(missing_ok=True)


class AllWorkers:
    """Worker 0's `/metrics`: its own registry and every other worker's socket, merged."""

    def __init__(self, registry: CollectorRegistry, workers: WorkerSet) -> None:
        self.registry = registry
        self.workers = workers

    async def scrape(self) -> bytes:
        """The text of every worker's metrics, each sample labelled with its worker."""
        others = range(1, self.workers.count)
        fetched = await asyncio.gather(*(self._fetch(i) for i in others))
        own = generate_latest(_Families(with_worker(self.registry.collect(), "0"))).decode()
        up = GaugeMetricFamily("connwise_worker_up", "Whether the worker's metrics are in this "
                               "scrape: 1, or 0 when it did not answer in time (being "
                               "replaced, stuck).", labels=["worker"])
        up.add_metric(["0"], 1)
        for i, text in zip(others, fetched, strict=True):
            up.add_metric([str(i)], 0 if text is None else 1)
        texts = [own, *(text for text in fetched if text is not None),
                 generate_latest(_Families([up])).decode()]
        return merge_texts(texts).encode()

    async def _fetch(self, index: int) -> str | None:
        """Worker `index`'s metrics text, or None when it does not answer whole in time."""
        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(
                    self.workers.socket(index))
                try:
                    text = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(ConnectionError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return None
        # A worker that died while writing leaves its text cut short: not whole lines.
        return text.decode() if text.endswith(b"\n") else None


def merge_texts(texts: Iterable[str]) -> str:
    """Texts of `generate_latest` as one: each family's HELP and TYPE once, then the samples
    of every text in turn. Done on lines, not parsed: prometheus_client's parser takes ~60 us a
    sample, ~15 ms a worker's text, on the event loop of worker 0."""
    families: dict[str, list[str]] = {}
    block: list[str] = []
    fresh = False
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name = line.split(" ", 3)[2]
                known = families.get(name)
                fresh = known is None
                block = families.setdefault(name, [line])
            elif line.startswith("# TYPE "):
                if fresh:
                    block.append(line)
            elif line:
                block.append(line)
    return "".join(line + "\n" for lines in families.values() for line in lines)
