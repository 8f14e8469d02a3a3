"""The zombie watch on a real pool over loopback TCP: every pool runs one by default (the scan
feed: no cost per acquire, ends with the pool); it reports zombies, closes them after the grace
period with `reclaim=True` (never below the pool's floor), passes leaks and half-open
connections on, and counts all of it in Prometheus. Pool time is a VirtualClock, so an hour of
idleness takes no time; only the closes are real."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

import connwise
from connwise.core.clock import VirtualClock
from connwise.core.zombies import (
    Verdict,
    ZombieEvent,
    ZombieFinding,
    ZombieForgiven,
    ZombieReclaimed,
    ZombieRules,
)
from connwise.errors import ConfigError
from connwise.pool.drivers.tcp import TcpConnection, TcpDriver
from connwise.telemetry.memory import MemorySink
from connwise.telemetry.metrics import TelemetryMetrics
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.recorder import Recorder
from connwise.telemetry.zombie_watch import ZombieSettings, ZombieWatch
from tests.integration.tcp_backend import TcpBackend

RULES = ZombieRules(min_samples=5, k=3.0, floor=1.0)


@pytest.fixture
async def backend() -> AsyncIterator[TcpBackend]:
    server = await TcpBackend().start()
    yield server
    await server.stop()


def make_pool(backend: TcpBackend, clock: VirtualClock,
              **kwargs: object) -> connwise.Pool[TcpConnection]:
    options: dict[str, object] = {"min_size": 1, "max_size": 4, "name": "zw",
                                  "idle_timeout": None, "max_lifetime": None,
                                  "check_interval": 1e6, "clock": clock}
    options.update(kwargs)
    return connwise.Pool(TcpDriver("127.0.0.1", backend.port, greeting=b"HELLO"),
                         **options)  # type: ignore[arg-type]


def found_in(events: list[ZombieEvent]) -> list[ZombieFinding]:
    return [e for e in events if isinstance(e, ZombieFinding)]


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def three_connections_one_hot(pool: connwise.Pool[TcpConnection],
                                    clock: VirtualClock) -> None:
    """Open three connections at once, then use only the one on top of the idle stack, once a
    second for ten seconds: its gaps of 1 s are what healthy looks like."""
    conns = [await pool.getconn("interactive") for _ in range(3)]
    for conn in conns:
        await pool.putconn(conn)
    for _ in range(10):
        clock.advance(1.0)
        async with pool.acquire("interactive"):
            pass


async def test_zombies_are_reported_by_default_and_reclaimed_after_grace(
        backend: TcpBackend) -> None:
    clock = VirtualClock(1000.0)
    registry = CollectorRegistry()
    metrics = TelemetryMetrics(registry)
    records: MemorySink[ConnRecord] = MemorySink()
    async with make_pool(backend, clock) as pool:
        recorder = Recorder(records, wall_offset=0.0)
        pool.subscribe(recorder.on_pool_event)
        watch = ZombieWatch(pool, rules=RULES, reclaim=True, grace=10.0, interval=3600.0,
                            metrics=metrics).start()
        events: list[ZombieEvent] = []
        watch.subscribe(events.append)
        await three_connections_one_hot(pool, clock)
        assert backend.open == 3
        findings = watch.scan()  # the two cold connections idled 10 s, past ~3 s
        assert sorted(f.verdict.value for f in findings) == ["zombie", "zombie"]
        assert events == findings and all(3.0 <= f.threshold <= 3.5 for f in findings)
        cold = {f.key for f in findings}
        assert watch.scan() == []  # reported once
        clock.advance(5.0)
        async with pool.acquire("interactive"):
            pass
        watch.scan()
        assert backend.open == 3  # still within the grace period
        clock.advance(6.0)
        async with pool.acquire("interactive"):
            pass
        watch.scan()
        await until(lambda: backend.open == 1)
        assert watch.reclaimed == 2
        closed = {r.conn_id for r in records.events if r.close_reason == "zombie"}
        assert closed == {str(k) for k in cold}
        assert events[2:] == [ZombieReclaimed(f, 10.0, 1021.0) for f in findings]
        assert registry.get_sample_value("connwise_zombies_total",
                                         {"owner": "zw", "verdict": "zombie"}) == 2
        assert registry.get_sample_value("connwise_zombies_reclaimed_total",
                                         {"owner": "zw"}) == 2
        watch.stop()


async def test_without_reclaim_zombies_are_only_reported(backend: TcpBackend) -> None:
    clock = VirtualClock(0.0)
    async with make_pool(backend, clock) as pool:
        watch = ZombieWatch(pool, rules=RULES, interval=3600.0).start()
        await three_connections_one_hot(pool, clock)
        assert len(watch.scan()) == 2
        clock.advance(1000.0)
        watch.scan()
        await asyncio.sleep(0.05)
        assert backend.open == 3 and watch.reclaimed == 0
        watch.stop()


async def test_reclaim_never_goes_below_the_pool_floor(backend: TcpBackend) -> None:
    clock = VirtualClock(0.0)
    async with make_pool(backend, clock, min_size=3) as pool:
        watch = ZombieWatch(pool, rules=RULES, reclaim=True, grace=0.0,
                            interval=3600.0).start()
        await three_connections_one_hot(pool, clock)
        assert len(watch.scan()) == 2
        clock.advance(100.0)
        watch.scan()
        await asyncio.sleep(0.05)
        assert backend.open == 3 and watch.reclaimed == 0
        watch.stop()


async def test_leaks_and_half_open_connections_become_findings(backend: TcpBackend) -> None:
    clock = VirtualClock(0.0)
    async with make_pool(backend, clock, leak_threshold=2.0, check_interval=2.0) as pool:
        watch = ZombieWatch(pool, rules=RULES, interval=0.01).start()
        events: list[ZombieEvent] = []
        watch.subscribe(events.append)
        conn = await pool.getconn("bulk")
        clock.advance(2.5)  # held past the leak threshold: the pool's maintenance reports it
        await until(lambda: any(f.verdict is Verdict.LEAK for f in found_in(events)))
        await pool.putconn(conn)
        await until(lambda: pool.policy.idle == 1)
        backend.cut()  # the peer goes away without the pool noticing...
        clock.advance(3.0)  # ...until its next check
        await until(lambda: any(f.verdict is Verdict.HALF_OPEN for f in found_in(events)))
        leak = next(f for f in found_in(events) if f.verdict is Verdict.LEAK)
        assert leak.seconds >= 2.0 and leak.threshold == 2.0
        watch.stop()


def test_bad_watch_settings_name_their_key() -> None:
    class Named:
        name = "p"

    with pytest.raises(ConfigError, match=r"zombies\.grace"):
        ZombieWatch(Named(), grace=-1.0)
    with pytest.raises(ConfigError, match=r"zombies\.interval"):
        ZombieWatch(Named(), interval=0.0)


# -- the pool's own watch: on by default, scan feed ----------------------------------------------


async def test_every_pool_watches_itself_by_default_and_stops_with_it(
        backend: TcpBackend) -> None:
    pool = connwise.Pool(TcpDriver("127.0.0.1", backend.port, greeting=b"HELLO"), min_size=1)
    watch = pool.zombies
    assert watch is not None and watch.feed == "scan" and not watch.reclaim
    assert watch.tracker.thresholds.rules.floor == 30.0 and watch.interval == 1.0
    assert not watch.running
    async with pool:
        assert watch.running and watch._timer is not None
        # Low cost: no lifecycle events are generated for it, and it wakes once a second.
        assert pool.policy.listener is None
        delay = watch._timer.when() - asyncio.get_running_loop().time()
        assert 0.9 <= delay <= 1.0
    assert not watch.running and watch._timer is None, "the watch ends with the pool"
    assert connwise.Pool(TcpDriver("127.0.0.1", backend.port), zombies=None).zombies is None


async def test_a_forgotten_pool_is_not_kept_alive_by_its_watch(backend: TcpBackend) -> None:
    pool = connwise.Pool(TcpDriver("127.0.0.1", backend.port), min_size=0,
                         zombies=ZombieSettings(interval=0.01))
    await pool.open()
    ref = weakref.ref(pool)
    del pool
    await asyncio.sleep(0.05)  # the watch ticks with only a weak reference to itself
    gc.collect()
    assert ref() is None


async def test_the_watch_stops_by_itself_once_its_pool_is_closed(backend: TcpBackend) -> None:
    pool = connwise.Pool(TcpDriver("127.0.0.1", backend.port), min_size=0, zombies=None)
    async with pool:
        watch = ZombieWatch(pool, interval=0.01).start()
    await until(lambda: not watch.running)


async def test_scan_feed_learns_from_holds_reports_and_reclaims(backend: TcpBackend) -> None:
    clock = VirtualClock(0.0)
    registry = CollectorRegistry()
    metrics = TelemetryMetrics(registry)
    settings = ZombieSettings(rules=RULES, reclaim=True, grace=10.0, interval=3600.0)
    async with make_pool(backend, clock, zombies=settings) as pool:
        metrics.watch_pool(pool)
        watch = pool.zombies
        assert watch is not None and watch.metrics is metrics
        events: list[ZombieEvent] = []
        watch.subscribe(events.append)
        conns = [await pool.getconn("interactive") for _ in range(3)]
        for conn in conns:
            await pool.putconn(conn)
        for _ in range(10):  # the hot connection, held across a scan once a second
            clock.advance(1.0)
            conn = await pool.getconn("interactive")
            watch.scan()
            await pool.putconn(conn)
        assert watch.tracker.thresholds.samples(pool.name) == 10
        found = found_in(events)
        # The two cold connections, once the threshold was learned and they idled past it.
        assert sorted(f.verdict.value for f in found) == ["zombie", "zombie"]
        assert all(3.0 <= f.threshold <= 3.5 and f.seconds > f.threshold for f in found)
        assert watch.scan() == []  # reported once per idle stretch
        cold = {f.key for f in found}
        reported_at = max(f.at for f in found)
        assert set(watch.flagged()) == cold
        clock.set(reported_at + 9.0)
        watch.scan()
        await asyncio.sleep(0.05)
        assert backend.open == 3  # within the grace period
        clock.set(reported_at + 10.0)
        watch.scan()
        await until(lambda: backend.open == 1)  # down to the floor (min_size 1)
        assert watch.reclaimed == 2 and cold.isdisjoint(watch.flagged())
        assert [e for e in events if isinstance(e, ZombieReclaimed)] == [
            ZombieReclaimed(f, 10.0, reported_at + 10.0) for f in found]
        clock.advance(100.0)  # the hot one idles past the threshold too, but is the floor
        watch.scan()
        await asyncio.sleep(0.05)
        assert backend.open == 1 and watch.reclaimed == 2 and len(watch.flagged()) == 1
        assert registry.get_sample_value("connwise_zombies_total",
                                         {"owner": "zw", "verdict": "zombie"}) == 3
        assert registry.get_sample_value("connwise_zombies_reclaimed_total",
                                         {"owner": "zw"}) == 2


async def test_scan_feed_forgives_a_connection_used_again_and_reports_leaks(
        backend: TcpBackend) -> None:
    clock = VirtualClock(0.0)
    settings = ZombieSettings(rules=RULES, interval=3600.0)
    async with make_pool(backend, clock, zombies=settings, leak_threshold=2.0) as pool:
        watch = pool.zombies
        assert watch is not None
        conn = await pool.getconn("interactive")
        await pool.putconn(conn)
        clock.advance(400.0)  # past the default threshold (no gaps learned yet)
        assert [f.verdict for f in watch.scan()] == [Verdict.ZOMBIE]
        conn = await pool.getconn("bulk")
        clock.advance(3.0)
        await until(lambda: pool.policy.counters["leaked"] == 1)
        leaks = watch.scan()
        assert [f.verdict for f in leaks] == [Verdict.LEAK] and leaks[0].threshold == 2.0
        assert watch.scan() == []
        await pool.putconn(conn)
        assert watch.scan() == [] and watch.flagged() == []  # served: forgiven


def test_bad_pool_watch_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"zombies\.grace"):
        connwise.Pool(TcpDriver("127.0.0.1", 1), zombies=ZombieSettings(grace=-1.0))
    with pytest.raises(ConfigError, match=r"zombies\.feed"):
        connwise.Pool(TcpDriver("127.0.0.1", 1),
                      zombies=ZombieSettings(feed="polling"))  # type: ignore[arg-type]


async def test_scan_feed_reports_the_leak_of_a_connection_retired_while_held(
        backend: TcpBackend) -> None:
    """A held connection past its lifetime is retired (DRAINING) and closes when given back;
    a holder that never gives it back leaks it all the same. The pool counted and logged that
    leak, but the scan feed looked at IN_USE connections only and never reported it."""
    clock = VirtualClock(0.0)
    settings = ZombieSettings(rules=RULES, interval=3600.0)
    async with make_pool(backend, clock, zombies=settings, leak_threshold=2.0,
                         max_lifetime=1.0, lifetime_jitter=0.0) as pool:
        watch = pool.zombies
        assert watch is not None
        conn = await pool.getconn("bulk")
        clock.advance(1.5)
        await until(lambda: pool.stats()["connections"]["draining"] == 1)
        clock.advance(1.0)
        await until(lambda: pool.policy.counters["leaked"] == 1)
        leaks = watch.scan()
        assert [f.verdict for f in leaks] == [Verdict.LEAK] and leaks[0].seconds >= 2.0
        assert watch.scan() == [], "reported once"
        await pool.putconn(conn)
        assert watch.scan() == [] and watch.flagged() == []


async def test_reclaim_never_takes_a_leaked_connection_from_its_holder(
        backend: TcpBackend) -> None:
    """A leak is reported, never reclaimed: the holder may be in a long transaction, and a
    connection closed under it would fail its next use. It goes on working, and is judged again
    (as idle) only once given back."""
    clock = VirtualClock(0.0)
    settings = ZombieSettings(rules=RULES, reclaim=True, grace=1.0, interval=3600.0)
    async with make_pool(backend, clock, zombies=settings, leak_threshold=2.0,
                         min_size=0) as pool:
        watch = pool.zombies
        assert watch is not None
        conn = await pool.getconn("bulk")
        clock.advance(3.0)
        await until(lambda: pool.policy.counters["leaked"] == 1)
        assert [f.verdict for f in watch.scan()] == [Verdict.LEAK]
        for _ in range(5):
            clock.advance(10.0)  # far past the grace period
            watch.scan()
        assert watch.reclaimed == 0 and backend.open == 1
        await conn.send(b"still mine\n")
        assert await asyncio.wait_for(conn.readline(), 5) == b"still mine\n"
        await pool.putconn(conn)
        assert watch.scan() == [] and watch.flagged() == []


async def test_scan_feed_spares_a_zombie_used_during_its_grace(backend: TcpBackend) -> None:
    """Reported, then used again before its grace ran out: not closed when the grace ends, and
    a new idle stretch is a new report with a grace of its own."""
    clock = VirtualClock(0.0)
    settings = ZombieSettings(rules=RULES, reclaim=True, grace=10.0, interval=3600.0)
    async with make_pool(backend, clock, zombies=settings, min_size=0) as pool:
        watch = pool.zombies
        assert watch is not None
        events: list[ZombieEvent] = []
        watch.subscribe(events.append)
        conn = await pool.getconn("interactive")
        await pool.putconn(conn)
        clock.advance(400.0)  # past the default threshold
        [first] = watch.scan()
        assert first.verdict is Verdict.ZOMBIE
        clock.advance(5.0)
        async with pool.acquire("interactive"):  # it wakes up within its grace
            pass
        clock.advance(6.0)
        assert watch.scan() == []
        assert events == [first, ZombieForgiven(first, 411.0)]
        await asyncio.sleep(0.05)
        assert backend.open == 1 and watch.reclaimed == 0
        clock.advance(400.0)
        [second] = watch.scan()
        assert second.verdict is Verdict.ZOMBIE
        clock.advance(10.0)
        watch.scan()
        await until(lambda: backend.open == 0)
        assert watch.reclaimed == 1
        assert events[2:] == [second, ZombieReclaimed(second, 10.0, 821.0)]


async def test_events_feed_forgives_a_zombie_used_again_at_once(backend: TcpBackend) -> None:
    """With the `events` feed the watch sees the acquire itself: the forgiven event comes with
    it, not at the next scan, and the connection is not reclaimed after the grace."""
    clock = VirtualClock(0.0)
    settings = ZombieSettings(rules=RULES, reclaim=True, grace=10.0, interval=3600.0,
                              feed="events")
    async with make_pool(backend, clock, zombies=settings, min_size=0) as pool:
        watch = pool.zombies
        assert watch is not None
        events: list[ZombieEvent] = []

        def broken(event: ZombieEvent) -> None:
            raise RuntimeError("subscriber bug")

        watch.subscribe(broken)  # logged and skipped: the pool and the next subscriber go on
        watch.subscribe(events.append)
        conn = await pool.getconn("interactive")
        await pool.putconn(conn)
        clock.advance(400.0)
        [found] = watch.scan()
        clock.advance(5.0)
        conn = await pool.getconn("interactive")
        assert events == [found, ZombieForgiven(found, 405.0)]
        await pool.putconn(conn)
        clock.advance(10.0)
        assert watch.scan() == []
        await asyncio.sleep(0.05)
        assert backend.open == 1 and watch.reclaimed == 0 and len(events) == 2
