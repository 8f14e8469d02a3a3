"""The asyncio Pool over real loopback sockets: priority, timeouts, warm targets, backoff,
maintenance, leaks, drain, and cancellation at every await."""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncIterator

import pytest

import connwise
from connwise.core.lifecycle import LeakEvent, LifecycleEvent, State
from connwise.errors import PoolClosed, PoolTimeout, TooManyWaiters, UnknownClass
from connwise.pool.drivers.tcp import TcpConnection, TcpDriver
from connwise.telemetry.memory import MemorySink
from tests.integration.tcp_backend import TcpBackend


@pytest.fixture
async def backend() -> AsyncIterator[TcpBackend]:
    server = await TcpBackend().start()
    yield server
    await server.stop()


def make_pool(backend: TcpBackend, **kwargs: object) -> connwise.Pool[TcpConnection]:
    options: dict[str, object] = {"min_size": 0, "max_size": 2, "name": "t"}
    options.update(kwargs)
    return connwise.Pool(TcpDriver("127.0.0.1", backend.port, greeting=b"HELLO"),
                         **options)  # type: ignore[arg-type]


async def until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_roundtrip_stats_and_repr(backend: TcpBackend) -> None:
    async with make_pool(backend, min_size=1) as pool:
        async with pool.acquire("critical") as conn:
            await conn.send(b"ping\n")
            assert await conn.readline() == b"ping\n"
            assert re.fullmatch(r"<Pool t \[in use 1, idle \d, warming \d \| waiting 0\]>",
                                repr(pool))
        stats = pool.stats()
        assert stats["counters"]["acquired"] == 1
        assert stats["connections"]["in_use"] == 0
        assert stats["wait_seconds"]["critical"]["count"] == 1
        assert stats["driver"] == "tcp"
    assert pool.stats()["state"] == "closed"
    await until(lambda: backend.open == 0)


async def test_a_detached_connection_stays_open_and_its_slot_serves_a_waiter(
        backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1) as pool:
        kept = await pool.getconn("critical")
        waiter = asyncio.create_task(pool.getconn("critical", timeout=5))
        await until(lambda: pool.policy.scheduler.waiting == 1)
        pool.detach(kept)
        other = await waiter
        assert other is not kept and pool.stats()["counters"]["detached"] == 1
        await kept.send(b"still here\n")                 # the pool did not close it
        assert await kept.readline() == b"still here\n"
        with pytest.raises(connwise.ConfigError, match="does not belong"):
            await pool.putconn(kept)
        await pool.putconn(other)
    await until(lambda: backend.open == 1)                 # closing the pool left it alone
    await TcpDriver("127.0.0.1", backend.port).close(kept)
    await until(lambda: backend.open == 0)


class CountingResetDriver(TcpDriver):
    """A TCP driver whose connections always need a reset, which it counts."""

    resets = 0

    def needs_reset(self, conn: TcpConnection) -> bool:
        return True

    async def reset(self, conn: TcpConnection, *, full: bool) -> None:
        self.resets += 1


async def test_a_connection_detached_inside_acquire_is_left_to_its_holder(
        backend: TcpBackend) -> None:
    driver = CountingResetDriver("127.0.0.1", backend.port, greeting=b"HELLO")
    async with connwise.Pool(driver, min_size=0, max_size=1) as pool:
        async with pool.acquire() as kept:
            pool.detach(kept)
        assert driver.resets == 0  # not the pool's any more: neither reset nor given back
        assert pool.policy.scheduler.in_use == 0
        async with pool.acquire(timeout=2) as other:
            assert other is not kept
        await kept.send(b"mine\n")
        assert await kept.readline() == b"mine\n"
    await driver.close(kept)
    await until(lambda: backend.open == 0)


async def test_critical_served_before_earlier_bulk(backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1) as pool:
        order: list[str] = []

        async def take(name: str, cls: str) -> None:
            async with pool.acquire(cls, timeout=5):
                order.append(name)
                await asyncio.sleep(0.01)

        async with pool.acquire("critical"):
            tasks = [asyncio.create_task(take(f"bulk{i}", "bulk")) for i in range(3)]
            await until(lambda: pool.policy.scheduler.waiting == 3)
            tasks.append(asyncio.create_task(take("crit", "critical")))
            await until(lambda: pool.policy.scheduler.waiting == 4)
        await asyncio.gather(*tasks)
        assert order == ["crit", "bulk0", "bulk1", "bulk2"]


async def test_timeout_names_class_wait_and_state(backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1) as pool, pool.acquire("critical"):
        with pytest.raises(PoolTimeout) as info:
            async with pool.acquire("bulk", timeout=0.05):
                pass
        message = str(info.value)
        assert "'bulk'" in message and "in use 1" in message
        assert 0.04 <= info.value.waited < 1.0
        assert pool.stats()["counters"]["timed_out"] == 1
        assert pool.policy.scheduler.waiting == 0


async def test_a_timeout_leaves_no_reference_cycle(backend: TcpBackend) -> None:
    """Under overload timeouts are many: each must be freed by reference counting, not left
    (exception, traceback, frame, future, waiter) for the garbage collector."""
    async with make_pool(backend, max_size=1) as pool, pool.acquire("critical"):
        gc.collect()
        flags = gc.get_debug()
        gc.garbage.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for _ in range(3):
                try:
                    async with pool.acquire("bulk", timeout=0.01):
                        pass
                except PoolTimeout as exc:
                    assert exc.waited >= 0.0
            gc.collect()
            left = [type(o).__name__ for o in gc.garbage
                    if isinstance(o, (PoolTimeout, asyncio.Future))]
        finally:
            gc.set_debug(flags)
            gc.garbage.clear()
        assert left == []
        assert pool.stats()["counters"]["timed_out"] == 3


async def test_waiter_bound_and_unknown_class(backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1, max_waiters=1) as pool, pool.acquire("critical"):
        first = asyncio.create_task(pool.getconn("bulk", timeout=2))
        await until(lambda: pool.policy.scheduler.waiting == 1)
        with pytest.raises(TooManyWaiters, match="1 callers are already waiting"):
            await pool.getconn("bulk")
        with pytest.raises(UnknownClass, match="'gold' is not configured"):
            await pool.getconn("gold")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
    assert pool.policy.scheduler.in_use == 0


async def test_reserved_share_keeps_slot_for_critical(backend: TcpBackend) -> None:
    classes = [connwise.PriorityClass("critical", rank=1, reserved_share=0.5, max_wait=5),
               connwise.PriorityClass("bulk", rank=0, max_wait=5, aging_rate=0.01)]
    async with make_pool(backend, max_size=2, min_size=2, classes=classes,
                         default_class="bulk") as pool:
        await until(lambda: pool.policy.idle == 2)
        async with pool.acquire("bulk"):
            with pytest.raises(PoolTimeout):
                async with pool.acquire("bulk", timeout=0.05):
                    pass
            async with pool.acquire("critical", timeout=0.05) as conn:
                assert conn is not None


async def test_set_target_warms_by_deadline_at_bounded_rate() -> None:
    backend = await TcpBackend(handshake=0.05).start()
    try:
        async with make_pool(backend, max_size=20, max_connecting=4) as pool:
            at = pool.now() + 2.0
            pool.set_target(12, at=at)
            lead = pool.policy.target_lead(12)
            assert 1.0 <= lead < 2.0
            assert pool.policy.open_connections == 0, "nothing opens before at - lead"
            await until(lambda: pool.policy.open_connections > 0, timeout=3)
            assert pool.now() >= at - lead - 0.01
            await until(lambda: pool.policy.idle >= 12, timeout=5)
            assert pool.now() <= at + 0.05
            assert backend.max_in_handshake <= 4
            assert pool.stats()["target"] == 12
    finally:
        await backend.stop()


async def test_backoff_when_backend_down_then_recovery(backend: TcpBackend) -> None:
    port = backend.port
    await backend.stop()
    async with make_pool(backend, min_size=3, max_size=3, max_connecting=3) as pool:
        with pytest.raises(PoolTimeout, match="connection refused"):
            async with pool.acquire("critical", timeout=0.6):
                pass
        failed = pool.stats()["counters"]["connect_failed"]
        assert 1 <= failed <= 4, f"{failed} connects in 0.6 s: backoff must prevent a storm"
        backend.port = port
        await backend.start()
        async with pool.acquire("critical", timeout=5) as conn:
            await conn.send(b"back\n")
            assert await conn.readline() == b"back\n"


async def test_broken_connection_discarded_on_release(backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1) as pool:
        async with pool.acquire() as conn:
            backend.cut()
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await conn.readline()
        assert pool.stats()["counters"]["broken"] == 1
        async with pool.acquire() as fresh:
            assert fresh is not conn
            await fresh.send(b"x\n")
            assert await fresh.readline() == b"x\n"


async def test_check_replaces_connection_closed_by_server(backend: TcpBackend) -> None:
    async with make_pool(backend, min_size=1, max_size=1, check_interval=0.05) as pool:
        await until(lambda: pool.policy.idle == 1)
        backend.cut()
        await until(lambda: pool.stats()["counters"]["checks_failed"] >= 1)
        await until(lambda: pool.policy.idle == 1)
        async with pool.acquire() as conn:
            await conn.send(b"y\n")
            assert await conn.readline() == b"y\n"


async def test_leak_reported_once_with_acquirer_stack(backend: TcpBackend) -> None:
    sink: MemorySink[object] = MemorySink()
    async with make_pool(backend, leak_threshold=0.05) as pool:
        pool.subscribe(sink)
        async with pool.acquire("bulk"):
            await asyncio.sleep(0.3)
        leaks = [e for e in sink.events if isinstance(e, LeakEvent)]
        assert len(leaks) == 1
        assert leaks[0].class_name == "bulk" and leaks[0].held_for >= 0.05
        assert any("test_leak_reported_once_with_acquirer_stack" in f for f in leaks[0].stack)
        assert pool.stats()["counters"]["leaked"] == 1


async def test_events_for_every_transition(backend: TcpBackend) -> None:
    sink: MemorySink[object] = MemorySink()
    pool = make_pool(backend, max_size=1)
    pool.subscribe(sink)
    async with pool, pool.acquire():
        pass
    moves = [(e.from_state, e.to_state) for e in sink.events if isinstance(e, LifecycleEvent)]
    assert moves == [(State.CONNECTING, State.IDLE), (State.IDLE, State.IN_USE),
                     (State.IN_USE, State.IDLE), (State.IDLE, State.CLOSED)]
    first = sink.events[0]
    assert isinstance(first, LifecycleEvent) and first.owner == "t" and "age" in first.metrics


async def test_drain_lets_holders_finish_and_refuses_new_work(backend: TcpBackend) -> None:
    pool = make_pool(backend, max_size=3)  # interactive may take 2; the third is for critical
    await pool.open()
    held = await pool.getconn()
    other = await pool.getconn()
    waiter = asyncio.create_task(pool.getconn(timeout=5))
    await until(lambda: pool.policy.scheduler.waiting == 1)
    drain = asyncio.create_task(pool.drain(timeout=5))
    await asyncio.sleep(0.02)
    with pytest.raises(PoolClosed, match="draining"):
        await waiter
    with pytest.raises(PoolClosed):
        await pool.getconn()
    assert not drain.done()
    await held.send(b"still works\n")
    assert await held.readline() == b"still works\n"
    await pool.putconn(held)
    await pool.putconn(other)
    result = await drain
    assert result == {"closed": 2, "forced": 0}  # nothing opened for the blocked waiter
    await until(lambda: backend.open == 0)


async def test_drain_timeout_closes_held_connections(backend: TcpBackend) -> None:
    pool = make_pool(backend, max_size=1)
    await pool.open()
    conn = await pool.getconn()
    result = await pool.drain(timeout=0.05)
    assert result["forced"] == 1
    await until(lambda: backend.open == 0)
    await pool.putconn(conn)
    assert pool.stats()["state"] == "closed"


async def test_cancel_while_waiting_leaks_nothing(backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1) as pool:
        async with pool.acquire():
            task = asyncio.create_task(pool.getconn(timeout=5))
            await until(lambda: pool.policy.scheduler.waiting == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.policy.scheduler.waiting == 0
        async with pool.acquire(timeout=0.5):
            assert pool.policy.scheduler.in_use == 1
        assert pool.policy.scheduler.in_use == 0


async def test_cancel_after_handoff_before_resume_returns_connection(backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1) as pool:
        holder = await pool.getconn()
        task = asyncio.create_task(pool.getconn(timeout=5))
        await until(lambda: pool.policy.scheduler.waiting == 1)
        await pool.putconn(holder)  # hands the connection to the waiter's future...
        task.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.policy.scheduler.in_use == 0
        assert pool.policy.idle == 1


async def test_cancel_while_holding_releases(backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1) as pool:
        entered = asyncio.Event()

        async def hold() -> None:
            async with pool.acquire():
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(hold())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.policy.scheduler.in_use == 0
        async with pool.acquire(timeout=0.5):
            pass


class SlowResetDriver(TcpDriver):
    """A TCP driver whose connections always need a reset that takes a while (a real sleep on a
    real socket round trip), to cancel a release in the middle of it."""

    async def reset(self, conn: TcpConnection, *, full: bool) -> None:
        await conn.send(b"reset\n")
        await asyncio.sleep(0.5)
        await conn.readline()

    def needs_reset(self, conn: TcpConnection) -> bool:
        return True


async def test_cancel_during_reset_discards_connection(backend: TcpBackend) -> None:
    driver = SlowResetDriver("127.0.0.1", backend.port, greeting=b"HELLO")
    async with connwise.Pool(driver, min_size=0, max_size=1) as pool:
        conn = await pool.getconn()
        release = asyncio.create_task(pool.putconn(conn))
        await asyncio.sleep(0.05)
        release.cancel()
        with pytest.raises(asyncio.CancelledError):
            await release
        assert pool.stats()["counters"]["broken"] == 1
        assert pool.policy.scheduler.in_use == 0
        async with pool.acquire(timeout=2) as fresh:
            assert fresh is not conn


async def test_putconn_while_the_first_putconn_resets_is_refused(backend: TcpBackend) -> None:
    driver = SlowResetDriver("127.0.0.1", backend.port, greeting=b"HELLO")
    async with connwise.Pool(driver, min_size=0, max_size=1) as pool:
        conn = await pool.getconn()
        waiter = asyncio.create_task(pool.getconn(timeout=5))
        await until(lambda: pool.policy.scheduler.waiting == 1)
        first = asyncio.create_task(pool.putconn(conn))
        await asyncio.sleep(0.05)  # in the middle of the reset
        with pytest.raises(connwise.ConfigError, match="given back already"):
            await pool.putconn(conn)
        await first
        assert await asyncio.wait_for(waiter, 2) is conn
        # Released once, so the waiter holds it alone: nobody else may take it.
        assert pool.policy.scheduler.in_use == 1
        assert pool.try_getconn() is None
        await pool.putconn(conn)


async def test_resize_growth_serves_waiters_at_once(backend: TcpBackend) -> None:
    async with make_pool(backend, max_size=1) as pool, pool.acquire():
        waiter = asyncio.create_task(pool.getconn(timeout=5))
        await until(lambda: pool.policy.scheduler.waiting == 1)
        pool.resize(0, 3)  # at 2, interactive may not take the slot reserved for critical
        conn = await asyncio.wait_for(waiter, 2)
        await pool.putconn(conn)
        with pytest.raises(connwise.ConfigError, match="min_size"):
            pool.resize(3, 2)


async def test_lifetime_recycles_with_jitter(backend: TcpBackend) -> None:
    async with make_pool(backend, min_size=2, max_size=2, max_lifetime=0.2,
                         lifetime_jitter=0.5) as pool:
        await until(lambda: pool.stats()["counters"]["recycled"] >= 2, timeout=5)
        await until(lambda: pool.policy.idle == 2)
        assert backend.accepted >= 4


async def test_putconn_of_foreign_connection_is_refused(backend: TcpBackend) -> None:
    async with make_pool(backend) as pool:
        conn = await pool.getconn()
        await pool.putconn(conn)
        with pytest.raises(connwise.ConfigError, match="given back already"):
            await pool.putconn(conn)
        # `try_putconn`'s own test of a held connection refuses it the same way.
        conn = await pool.getconn()
        assert pool.try_putconn(conn)
        with pytest.raises(connwise.ConfigError, match="given back already"):
            pool.try_putconn(conn)
        with pytest.raises(connwise.ConfigError, match="does not belong"):
            pool.try_putconn(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("interrupt", ["timeout", "cancel"])
async def test_a_holder_interrupted_mid_exchange_does_not_pass_its_reply_on(
        backend: TcpBackend, interrupt: str) -> None:
    """Raw TCP has no protocol to settle a cut exchange: the reply to `first` would reach the
    next holder as the answer to its own request, so the pool discards the connection."""
    async with make_pool(backend, max_size=1) as pool:
        async def hold() -> None:
            async with pool.acquire("critical") as conn:
                await conn.send(b"first\n")
                if interrupt == "timeout":
                    await asyncio.wait_for(conn.readline(), 0)
                else:
                    asyncio.current_task().cancel()  # type: ignore[union-attr]
                    await conn.readline()

        with pytest.raises(TimeoutError if interrupt == "timeout" else asyncio.CancelledError):
            await asyncio.create_task(hold())
        async with pool.acquire("critical") as conn:
            await conn.send(b"second\n")
            assert await conn.readline() == b"second\n"
        assert pool.stats()["counters"]["broken"] == 1


async def test_an_acquire_from_another_event_loop_is_refused_and_leaks_nothing(
        backend: TcpBackend) -> None:
    """The waiter's future belongs to the pool's loop: awaited from another loop it raised
    RuntimeError, the waiter stayed queued, and the next connection given back went to it,
    held by nobody for good."""
    async with make_pool(backend, max_size=1) as pool:
        conn = await pool.getconn("critical")
        errors: list[BaseException] = []

        def elsewhere() -> None:
            try:
                asyncio.run(pool.getconn("critical", timeout=0.5))
            except BaseException as exc:  # recorded for the assertion below
                errors.append(exc)

        await asyncio.to_thread(elsewhere)
        assert len(errors) == 1 and isinstance(errors[0], connwise.ConfigError)
        assert "event loop" in str(errors[0])
        await pool.putconn(conn)
        again = await pool.getconn("critical", timeout=1)
        assert pool.stats()["connections"]["in_use"] == 1
        await pool.putconn(again)


async def test_open_wait_counts_connections_in_use_and_stops_at_a_drain(
        backend: TcpBackend) -> None:
    """`open(wait=True)` waits for `min_size` connections open: it used to count only idle
    ones, so with callers holding them it timed out on a healthy pool, and it went on waiting
    out its timeout on a pool being drained."""
    pool = make_pool(backend, min_size=2, max_size=2)
    await pool.open(wait=True, timeout=2)
    held = [await pool.getconn("critical"), await pool.getconn("critical")]
    await asyncio.wait_for(pool.open(wait=True, timeout=1), 0.5)
    for conn in held:
        await pool.putconn(conn)
    slow = make_pool(backend, min_size=1, max_size=1, connect_timeout=5)
    backend.handshake = 1.0
    opening = asyncio.create_task(slow.open(wait=True, timeout=3))
    await until(lambda: slow.policy.counts[State.CONNECTING] == 1)
    draining = asyncio.create_task(slow.drain(timeout=0.1))
    with pytest.raises(PoolClosed):
        await asyncio.wait_for(opening, 1)
    await draining
    await pool.close()


async def test_a_target_and_a_resize_set_before_open_take_effect_at_open(
        backend: TcpBackend) -> None:
    """Before `open`, set_target and resize are settings: called from code with no running
    loop (synchronous setup, a thread) they used to start connects on no loop, raise, and
    leave the records connecting for good, so the pool never opened a connection."""
    pool = make_pool(backend, min_size=0, max_size=2)
    await asyncio.to_thread(pool.resize, 1, 3)
    await asyncio.to_thread(pool.set_target, 3)
    assert backend.accepted == 0
    async with pool:
        await until(lambda: pool.policy.idle == 3)
        assert pool.stats()["connections"]["connecting"] == 0
