"""The admin `/metrics` against traffic whose every event is known: counters and histogram
counts equal the requests, a shed request counts once, the client and upstream sides are kept
apart, the gauges come back to zero once the connections close, and a scrape answers during a
drain."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from connwise.config import load_gateway_config
from connwise.gateway.admin import AdminServer
from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(admin: AdminServer) -> Samples:
    async with httpx.AsyncClient() as scraper:
        answer = await scraper.get("http://{}:{}/metrics".format(*admin.address))
    assert answer.status_code == 200, answer.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def of(samples: Samples, name: str, **match: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items()
            if n == name and all(dict(labels).get(k) == m for k, m in match.items())}


async def test_counts_equal_the_traffic_and_gauges_return_to_zero(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    backend = origins[0].address
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [backend], "health": {"kind": "none"},
                        "max_in_flight": 1, "max_waiters": 1}})
    admin = AdminServer(gateway, "127.0.0.1:0", None)
    await admin.start()
    host, port = gateway.listeners["web"].address
    web = f"http://{host}:{port}"
    fast = 5
    try:
        async with httpx.AsyncClient(base_url=web) as a, httpx.AsyncClient(base_url=web) as b, \
                httpx.AsyncClient(base_url=web) as c:
            for _ in range(fast):
                assert (await a.get("/fast")).status_code == 200
            slow = asyncio.create_task(a.get("/slow?ms=500"))
            await asyncio.sleep(0.1)
            queued = asyncio.create_task(b.get("/fast"))  # waits for the only slot
            await asyncio.sleep(0.1)
            assert (await c.get("/fast")).status_code == 503  # the queue of 1 is full: shed
            during = await scrape(admin)
            assert (await slow).status_code == 200 and (await queued).status_code == 200
        await asyncio.sleep(0.1)  # the gateway sees the clients' FINs
        after = await scrape(admin)
    finally:
        await admin.close()
    interactive = {"class": "interactive"}
    # While the slow request is served and another waits: one of each, client side, and the
    # shed client's connection, kept alive after its 503.
    clients = of(during, "connwise_connections", owner="web")
    assert clients == {
        (("backend", ""), ("class", "interactive"), ("kind", "http"), ("owner", "web"),
         ("state", "idle")): 1.0,
        (("backend", backend), ("class", "interactive"), ("kind", "http"), ("owner", "web"),
         ("state", "active")): 1.0,
        (("backend", ""), ("class", "interactive"), ("kind", "http"), ("owner", "web"),
         ("state", "queued")): 1.0}, clients
    pool = f"app/{backend}"
    assert of(during, "connwise_connections", owner=pool, state="in_use") == {
        (("backend", backend), ("class", "any"), ("kind", "pool"), ("owner", pool),
         ("state", "in_use")): 1.0}
    # Admitted: the fast ones, the slow one and the one that queued; the shed one never was.
    admitted = fast + 2
    assert of(after, "connwise_queue_seconds_count", owner="app", **interactive) == {
        (("class", "interactive"), ("owner", "app")): admitted}
    waited = of(after, "connwise_queue_seconds_bucket", owner="app", le="0.1", **interactive)
    assert list(waited.values()) == [admitted - 1]  # all but the queued one at once
    steps = of(after, "connwise_degradation_steps_total", **interactive)
    assert steps[(("class", "interactive"), ("step", "shed"))] == 1.0, steps
    assert steps[(("class", "interactive"), ("step", "queued"))] == 1.0, steps
    events = of(after, "connwise_gateway_events_total")
    assert events[(("event", "accepted"),)] == 3.0
    # Upstream side: a pool acquire per request that reached the backend, no more.
    assert of(after, "connwise_wait_seconds_count", owner=pool) == {
        (("class", "any"), ("owner", pool)): admitted}
    assert of(after, "connwise_pool_operations_total", owner=pool, op="acquired") == {
        (("op", "acquired"), ("owner", pool)): admitted}
    # Everything closed: no client connection left, and the pool holds none in use.
    assert after["connwise_client_connections", ()] == 0.0
    assert of(after, "connwise_connections", owner="web") == {}
    assert list(of(after, "connwise_connections", owner=pool, state="in_use").values()) == [0.0]
    assert all(v == 0.0 for v in of(after, "connwise_group_in_flight").values())
    assert all(v == 0.0 for v in of(after, "connwise_group_waiting").values())
    assert all(v == 0.0 for v in of(after, "connwise_backend_outstanding").values())


async def test_a_scrape_answers_during_a_drain(make_gateway: GatewayFactory,
                                               origins: list[HttpOrigin]) -> None:
    backend = origins[0].address
    gateway = await make_gateway(
        listeners=[{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        routes=[{"listener": "web", "group": "app", "path_prefix": "/"}],
        groups={"app": {"backends": [backend], "health": {"kind": "none"}}})
    admin = AdminServer(gateway, "127.0.0.1:0", None)
    await admin.start()
    host, port = gateway.listeners["web"].address
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            slow = asyncio.create_task(client.get("/slow?ms=400"))
            await asyncio.sleep(0.1)
            drain = asyncio.create_task(gateway.drain(5.0))
            await asyncio.sleep(0.1)
            during = await scrape(admin)
            assert (await slow).status_code == 200
        assert await drain == {"finished": 1, "forced": 0}
        after = await scrape(admin)
    finally:
        await admin.close()
    states = {dict(labels)["state"]: v
              for labels, v in of(during, "connwise_connections", owner="web").items()}
    assert states == {"draining": 1.0}, states
    assert after["connwise_client_connections", ()] == 0.0


async def test_a_backend_removed_by_a_reload_leaves_no_series(
        make_gateway: GatewayFactory, origins: list[HttpOrigin]) -> None:
    """Cardinality across reloads: the pool of a backend a reload removed is no longer watched
    once its retired group is done, and the kept backend's series start again (the new group's
    pools and scheduler count from zero: a counter reset to `rate()`)."""
    kept, removed = origins[0].address, origins[1].address

    def config(*backends: str) -> dict[str, object]:
        return {"listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
                "routes": [{"listener": "web", "group": "app", "path_prefix": "/"}],
                "groups": {"app": {"backends": list(backends), "balance": "round_robin",
                                   "health": {"kind": "none"}}}}

    gateway = await make_gateway(**config(kept, removed))
    admin = AdminServer(gateway, "127.0.0.1:0", None)
    await admin.start()
    host, port = gateway.listeners["web"].address
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            for _ in range(4):
                assert (await client.get("/fast")).status_code == 200
        before = await scrape(admin)
        await gateway.reload(load_gateway_config(config(kept)))
        for _ in range(100):
            if not gateway.retired:
                break
            await asyncio.sleep(0.02)
        after = await scrape(admin)
    finally:
        await admin.close()
    for owner in (f"app/{kept}", f"app/{removed}"):
        assert of(before, "connwise_pool_operations_total", owner=owner, op="acquired") == {
            (("op", "acquired"), ("owner", owner)): 2.0}
    assert not any(removed in str(key) for key in after)
    assert of(after, "connwise_pool_operations_total", owner=f"app/{kept}", op="acquired") == {
        (("op", "acquired"), ("owner", f"app/{kept}")): 0.0}
    assert list(of(after, "connwise_queue_seconds_count", owner="app",
                   **{"class": "interactive"}).values()) == [0.0]
