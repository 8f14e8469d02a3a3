"""`connwise.Pool`: the asyncio shell around the core `PoolPolicy`.

The policy decides; this module carries its actions out. Every bookkeeping step is one
synchronous call into the policy with no `await` inside; connects, checks, resets and closes run
afterwards as tracked tasks, so a caller waits only on the pool, never on one particular connect,
and a slow backend never holds the bookkeeping.

Cancellation is safe at every await: a waiter cancelled or timed out before the hand-off refuses
the connection and it goes to the next waiter; a holder cancelled during reset gives the
connection back as broken (its session state is unknown), and so does a holder cancelled or timed
out mid-exchange on a driver that cannot settle the exchange (raw TCP, where the late reply would
reach the next holder); nothing leaks a slot.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterable
from types import CodeType, FrameType, TracebackType
from typing import Any, Generic, Literal, TypeVar

from connwise.core.classes import DEFAULT_CLASSES, ClassTable, PriorityClass
from connwise.core.clock import Clock, MonotonicClock
from connwise.core.lifecycle import LeakEvent, LifecycleEvent, State
from connwise.core.pooling import (
    Action,
    Assign,
    Check,
    Close,
    Connect,
    Leak,
    PoolLimits,
    PoolPolicy,
    PoolState,
    Reject,
)
from connwise.core.scheduler import Waiter
from connwise.errors import ConfigError, PoolClosed, PoolTimeout, TooManyWaiters
from connwise.pool.drivers.base import Driver
from connwise.telemetry.zombie_watch import ZombieSettings, ZombieWatch

C = TypeVar("C")
Event = LifecycleEvent | LeakEvent
log = logging.getLogger("connwise.pool")

#: Frames of the acquirer's stack kept for leak reports (HikariCP keeps the whole trace; a
#: dozen frames name the culprit and cost about a microsecond to capture).
LEAK_STACK_DEPTH = 12


#: A captured stack: (code, offset of its last instruction) per frame, innermost first.
Stack = tuple[tuple[CodeType, int], ...]

#: Enum members read per acquire and release (a member read goes through the enum metaclass's
#: `__getattr__` hook in Python 3.11: ~800 instructions each under callgrind, a global ~20).
_OPEN = PoolState.OPEN
_HELD = frozenset({State.IN_USE, State.DRAINING})
_IN_USE = State.IN_USE
#: Every pool reports its zombies unless told otherwise (`zombies=None`): report only, scanned
#: once a second at no cost per acquire; `ZombieSettings(reclaim=True)` also closes them.
DEFAULT_ZOMBIES = ZombieSettings()


def _capture_stack(skip: int) -> Stack:
    """The acquirer's frames, cheaply: `f_lineno` costs a line-table walk per frame, so keep the
    instruction offset and turn it into a line number only if a leak is reported."""
    frame: FrameType | None = sys._getframe(skip)
    frames: list[tuple[CodeType, int]] = []
    append = frames.append
    for _ in range(LEAK_STACK_DEPTH):
        if frame is None:
            break
        append((frame.f_code, frame.f_lasti))
        frame = frame.f_back
    return tuple(frames)


def _format_stack(stack: Stack) -> tuple[str, ...]:
    """`file:line in function` per frame, as `frame.f_lineno` would have said at capture."""
    lines = []
    for code, lasti in stack:
        line = code.co_firstlineno
        if lasti >= 0:
            for start, end, number in code.co_lines():
                if start <= lasti < end:
                    if number is not None:
                        line = number
                    break
        lines.append(f"{code.co_filename}:{line} in {code.co_name}")
    return tuple(lines)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class Pool(Generic[C]):
    """A priority-aware, predictive, leak-safe asyncio connection pool for any `Driver`.

    Use it as an async context manager; `acquire(class_name, timeout=...)` is another one::

        async with connwise.Pool(AsyncpgDriver(dsn), min_size=2, max_size=20) as pool:
            async with pool.acquire("critical", timeout=2.0) as conn:
                await conn.fetchval("SELECT 1")

    Times are seconds of the pool's clock (`pool.now()`), monotonic by default.
    """

    def __init__(
        self,
        driver: Driver[C],
        *,
        name: str = "pool",
        min_size: int = 2,
        max_size: int = 10,
        classes: Iterable[PriorityClass] | ClassTable = DEFAULT_CLASSES,
        default_class: str = "interactive",
        max_lifetime: float | None = 1800.0,
        lifetime_jitter: float = 0.1,
        idle_timeout: float | None = 600.0,
        leak_threshold: float | None = 30.0,
        max_waiters: int = 1024,
        max_connecting: int = 4,
        check_interval: float = 30.0,
        quality_threshold: float = 0.3,
        reset: Literal["cheap", "full"] = "cheap",
        connect_timeout: float = 10.0,
        check_timeout: float = 5.0,
        reset_timeout: float = 5.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        zombies: ZombieSettings | None = DEFAULT_ZOMBIES,
    ) -> None:
        table = classes if isinstance(classes, ClassTable) else ClassTable(classes)
        if default_class not in table:
            raise ConfigError("default_class", default_class, "it is not one of the pool's "
                              f"classes ({', '.join(table.names)})", "name a configured class")
        if reset not in ("cheap", "full"):
            raise ConfigError("reset", reset, "unknown reset mode", "use 'cheap' or 'full'")
        for key, value in (("connect_timeout", connect_timeout), ("check_timeout", check_timeout),
                           ("reset_timeout", reset_timeout)):
            if value <= 0:
                raise ConfigError(key, value, "a timeout must be positive", "use seconds > 0")
        limits = PoolLimits(
            min_size=min_size, max_size=max_size, max_waiters=max_waiters,
            max_lifetime=max_lifetime, lifetime_jitter=lifetime_jitter,
            idle_timeout=idle_timeout, leak_threshold=leak_threshold,
            max_connecting=max_connecting, check_interval=check_interval,
            check_interval_floor=min(1.0, check_interval), quality_threshold=quality_threshold,
        )
        self.driver = driver
        self.name = name
        self.default_class = default_class
        self.clock: Clock = clock or MonotonicClock()
        self._policy = PoolPolicy(name=name, limits=limits, classes=table, rng=rng)
        self._full_reset = reset == "full"
        #: Errors that leave the connection broken: a holder interrupted mid-exchange, for a
        #: driver whose client library does not settle the exchange itself.
        self._interrupts: tuple[type[BaseException], ...] = (
            () if getattr(driver, "settles_interrupts", True)
            else (asyncio.CancelledError, TimeoutError))
        self._connect_timeout = connect_timeout
        self._check_timeout = check_timeout
        self._reset_timeout = reset_timeout
        self._conns: dict[int, C] = {}
        self._ids: dict[int, int] = {}
        self._stacks: dict[int, Stack] = {}
        #: Held connections whose release awaits their reset: still IN_USE in the policy, but
        #: given back, so a second `putconn` meanwhile must be refused, not release them again
        #: (it would release them from under whoever the first release hands them to).
        self._returning: set[int] = set()
        self._subscribers: list[Callable[[Event], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Checks and resets given up at their timeout, still settling (see `_bounded`).
        self._abandoned: set[asyncio.Future[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed_event: asyncio.Event | None = None
        self._opened = False
        #: Actions of set_target and resize called before `open` (connects): carried out when
        #: the pool opens, maybe on a loop not running yet, rather than started on none.
        self._deferred: list[Action] = []
        #: Maintenance runs at least this often, so leaks and idle timeouts are seen promptly.
        self._tick = min(1.0, (leak_threshold or 4.0) / 4, (idle_timeout or 4.0) / 4)
        #: The pool's own zombie watch (None when built with `zombies=None`); runs while open.
        self.zombies: ZombieWatch | None = (
            ZombieWatch.from_settings(self, zombies) if zombies is not None else None)

    # -- life of the pool ---------------------------------------------------------------------

    async def open(self, *, wait: bool = False, timeout: float = 30.0) -> None:
        """Start maintenance and open `min_size` connections; with `wait`, until they are open
        (also when the pool was opened before)."""
        if not self._opened:
            self._loop = asyncio.get_running_loop()
            self._closed_event = asyncio.Event()
            self._opened = True
            self._run_deferred()
            self._run(self._policy.pump(self.now()))
            self._schedule()
            if self.zombies is not None:
                self.zombies.start()
        policy = self._policy
        deadline = self.now() + timeout
        while True:
            if policy.state is not PoolState.OPEN:
                raise PoolClosed(self.name, policy.state.value)
            # Established connections, held ones included: callers may take them meanwhile.
            if not wait or (policy.open_connections - policy.counts[State.CONNECTING]
                            >= policy.limits.min_size):
                return
            if self.now() >= deadline:
                raise PoolTimeout(self.name, "open", timeout, policy.describe(),
                                  policy.last_error)
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Pool[C]:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def drain(self, timeout: float | None = 30.0) -> dict[str, int]:
        """Hand out nothing new, let holders finish (closing connections as they come back), then
        close. After `timeout` seconds, connections still held are closed under their holders;
        None waits for the holders however long they take (the caller bounds it, by cancelling
        this and calling `close`). Returns how many connections were closed gracefully and how
        many forcibly."""
        if not self._opened:
            self._opened = True
            self._closed_event = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._run_deferred()  # connects the drain below retires: they close when done
        policy = self._policy
        before = policy.counters["closed"]
        self._run(policy.drain(self.now()))
        forced = 0
        assert self._closed_event is not None
        if policy.state is not PoolState.CLOSED:
            try:
                await asyncio.wait_for(self._closed_event.wait(), timeout)
            except TimeoutError:
                actions = policy.force_close(self.now())
                forced = sum(isinstance(a, Close) for a in actions)
                self._run(actions)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.zombies is not None:
            self.zombies.stop()
        await self._stop_abandoned(max(self._connect_timeout, 1.0))
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(self._connect_timeout, 1.0))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        return {"closed": policy.counters["closed"] - before - forced, "forced": forced}

    async def close(self, timeout: float | None = 30.0) -> None:
        """Drain, then close: see `drain`."""
        await self.drain(timeout)

    # -- acquiring and releasing --------------------------------------------------------------

    def acquire(self, class_name: str | None = None, *,
                timeout: float | None = None) -> _Acquire[C]:
        """An async context manager that holds one connection of the pool.

        Waits at most `min(timeout, class max_wait)` seconds, served by class priority. Raises
        `PoolTimeout`, `TooManyWaiters`, `UnknownClass` or `PoolClosed`.
        """
        return _Acquire(self, class_name or self.default_class, timeout)

    async def getconn(self, class_name: str | None = None, *,
                      timeout: float | None = None) -> C:
        """Take a connection without a context manager; give it back with `putconn`."""
        conn_id = await self._acquire(class_name or self.default_class, timeout, 3)
        return self._conns[conn_id]

    def try_getconn(self, class_name: str | None = None) -> C | None:
        """`getconn`'s fast path without a coroutine: an idle connection at once, or None
        (nobody idle, or callers wait first); then `await getconn`. A proxy takes a keep-alive
        connection per request, so the coroutine and its await are a visible share of its
        CPU."""
        if not self._opened:
            return None
        policy = self._policy
        driver = self.driver  # its method read per call: no bound method made for the loop
        while True:
            conn_id = policy.acquire_now(class_name or self.default_class, self.clock.now())
            if conn_id is None:
                return None
            conn = self._conns[conn_id]
            if not driver.is_broken(conn):
                break
            self._run(policy.release(conn_id, self.clock.now(), broken=True))
        if policy.limits.leak_threshold is not None:
            self._stacks[conn_id] = _capture_stack(2)
        return conn

    async def putconn(self, conn: C, *, error: BaseException | None = None) -> None:
        """Give back a connection taken with `getconn`; `error` is what its holder hit, if any."""
        conn_id = self._held_id(conn)
        if conn_id is not None:
            await self._release(conn_id, conn, error)

    def try_putconn(self, conn: C, *, error: BaseException | None = None) -> bool:
        """`putconn`'s fast path without a coroutine, as `try_getconn` is `getconn`'s: True
        once the connection is back (or discarded); False, with nothing done, when the driver
        must reset it first: then `await putconn`."""
        policy = self._policy
        conn_id = self._ids.get(id(conn), -1)  # -1: no record has it (ids count from 1)
        rec = policy.records.get(conn_id)
        if rec is None or rec.state is not _IN_USE or conn_id in self._returning:
            # Not the common case (a connection held, in use): `_held_id` sorts it out.
            held = self._held_id(conn)
            if held is None:
                return True
            conn_id = held
        driver = self.driver
        broken = driver.is_broken(conn) or (error is not None
                                            and isinstance(error, self._interrupts))
        if not broken and (self._full_reset or driver.needs_reset(conn)):
            return False
        if self._stacks:
            self._stacks.pop(conn_id, None)
        failed = error is not None and driver.is_connection_error(error)
        actions = policy.release(conn_id, self.clock.now(), broken=broken, failed=failed)
        if actions or policy.state is not _OPEN:
            self._run(actions)
        return True

    def detach(self, conn: C) -> None:
        """Take `conn`, held by the caller, out of the pool for good, without closing it: its
        slot is free at once and the pool may open another connection in its place; the caller
        now owns it and closes it. For a holding that outlives any request, such as a
        WebSocket relayed on an upstream connection, which would otherwise keep a slot of
        `max_size` for hours. Raises `ConfigError` for a connection not held from this pool."""
        conn_id = self._held_id(conn)
        if conn_id is None:
            return  # closed under its holder by a drain timeout: nothing left to detach
        self._conns.pop(conn_id, None)
        self._ids.pop(id(conn), None)
        self._stacks.pop(conn_id, None)
        self._run(self._policy.detach(conn_id, self.clock.now()))

    def _held_id(self, conn: C) -> int | None:
        """The id of `conn`, held by a caller; None when a drain timeout closed it already."""
        conn_id = self._ids.get(id(conn))
        if conn_id is None and self._policy.state is not _OPEN:
            return None  # closed under its holder by a drain timeout: nothing left to give back
        rec = self._policy.records.get(conn_id) if conn_id is not None else None
        if (conn_id is None or rec is None or rec.state not in _HELD
                or conn_id in self._returning):
            raise ConfigError("conn", conn, f"the connection does not belong to pool "
                              f"{self.name!r} or was given back already",
                              "give back each connection once, to its own pool")
        return conn_id

    async def _acquire(self, class_name: str, timeout: float | None, depth: int) -> int:
        policy = self._policy
        if not self._opened:
            await self.open()
        elif asyncio.get_running_loop() is not self._loop:
            # Its connections, timer and waiters' futures belong to the loop that opened it;
            # a waiter queued from here could never be woken, and would take a connection.
            raise ConfigError("loop", asyncio.get_running_loop(), f"pool {self.name!r} was "
                              "opened on another event loop", "use a pool only from the event "
                              "loop that opened it: open one pool per loop")
        is_broken = self.driver.is_broken
        while True:
            now = self.clock.now()
            conn_id = policy.acquire_now(class_name, now)
            if conn_id is None:
                conn_id = await self._wait(class_name, timeout, now)
            if not is_broken(self._conns[conn_id]):
                break
            # The driver already knows this one is dead (the server ended the session while it
            # sat idle): discard it and take the next, within the same wait.
            self._run(policy.release(conn_id, self.clock.now(), broken=True))
        if policy.limits.leak_threshold is not None:
            self._stacks[conn_id] = _capture_stack(depth)
        return conn_id

    async def _wait(self, class_name: str, timeout: float | None, now: float) -> int:
        policy = self._policy
        if policy.state is not PoolState.OPEN:
            raise PoolClosed(self.name, policy.state.value)
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[int] = loop.create_future()
        waiter = policy.submit(class_name, now, timeout, future)
        self._run(policy.pump(now))
        if future.done():
            return future.result()
        handle = loop.call_later(waiter.deadline - now, self._on_timeout, waiter)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                await self._release(future.result(), self._conns[future.result()], None)
            else:
                policy.cancel(waiter, timed_out=False, now=self.clock.now())
            raise
        finally:
            handle.cancel()
            # A PoolTimeout raised here has this frame in its traceback, and the future (and
            # the waiter holding it) has the exception: without these, each timeout would be
            # a reference cycle of ~14 objects for the garbage collector, under overload.
            del future, waiter

    def _on_timeout(self, waiter: Waiter) -> None:
        now = self.clock.now()
        if self._policy.cancel(waiter, timed_out=True, now=now):
            future: asyncio.Future[int] = waiter.token
            if not future.done():
                future.set_exception(PoolTimeout(self.name, waiter.class_name,
                                                 now - waiter.arrived, self._policy.describe(),
                                                 self._policy.last_error))

    async def _release(self, conn_id: int, conn: C, error: BaseException | None) -> None:
        driver = self.driver
        self._stacks.pop(conn_id, None)
        broken = driver.is_broken(conn) or isinstance(error, self._interrupts)
        failed = error is not None and driver.is_connection_error(error)
        if not broken and (self._full_reset or driver.needs_reset(conn)):
            self._returning.add(conn_id)
            try:
                await self._bounded(driver.reset(conn, full=self._full_reset),
                                    self._reset_timeout, "reset")
            except asyncio.CancelledError:
                self._run(self._policy.release(conn_id, self.clock.now(), broken=True))
                raise
            except Exception as exc:
                log.warning("pool %s: reset of connection %d failed, discarding it: %s",
                            self.name, conn_id, _describe(exc))
                broken = True
            finally:
                self._returning.discard(conn_id)
        self._run(self._policy.release(conn_id, self.clock.now(), broken=broken, failed=failed))

    # -- targets and sizes --------------------------------------------------------------------

    def now(self) -> float:
        """The pool's clock, in seconds; the unit of `set_target(at=...)`."""
        return self.clock.now()

    def set_target(self, n: int, at: float | None = None) -> None:
        """Have `n` connections open by time `at` (pool clock; default now), and keep them.

        The actuator of forecast-driven pre-warming: the pool starts opening early enough, at
        its bounded connect rate, for the connections to be ready by `at`. Before `open`, it
        is a setting: connections open when the pool opens (so with `resize`).
        """
        self._carry_out(self._policy.set_target(n, self.now(), at))

    def resize(self, min_size: int, max_size: int) -> None:
        """Change the bounds, validated like the constructor. Growth serves waiters at once;
        shrinking closes idle connections gradually and held ones as they come back."""
        self._carry_out(self._policy.resize(min_size, max_size, self.now()))

    def retire(self, conn_id: int, reason: str = "retired") -> None:
        """Close connection `conn_id` (the id of its events): at once if idle, when given back if
        held. Unknown or closing connections are ignored. Zombie reclaim uses it."""
        self._run(self._policy.retire(conn_id, self.now(), reason))

    # -- observation --------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call `callback` with every lifecycle and leak event; returns an unsubscribe function.

        Callbacks run on the event loop in the middle of the pool's bookkeeping: they must be
        quick and must not raise (a `MemorySink` is).
        """
        self._subscribers.append(callback)
        self._policy.listener = self._emit

        def unsubscribe() -> None:
            self._subscribers.remove(callback)
            if not self._subscribers:
                self._policy.listener = None

        return unsubscribe

    def _emit(self, event: Event) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("pool %s: event subscriber %r failed", self.name, callback)

    def stats(self) -> dict[str, Any]:
        """A snapshot of gauges (connections by state, waiters by class), counters and waits."""
        stats = self._policy.stats(self.now())
        stats["driver"] = self.driver.name
        return stats

    @property
    def policy(self) -> PoolPolicy:
        """The core policy behind this pool (read it; do not drive it from outside)."""
        return self._policy

    def __repr__(self) -> str:
        counts = self._policy.counts
        return (f"<Pool {self.name} [in use {counts[State.IN_USE]}, idle {counts[State.IDLE]}, "
                f"warming {counts[State.CONNECTING]} | waiting {self._policy.scheduler.waiting}]>")

    # -- carrying out the policy's actions ----------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Assign):
                future: asyncio.Future[int] = action.waiter.token
                if future.done():
                    actions.extend(self._policy.refuse(action, self.clock.now()))
                else:
                    future.set_result(action.conn_id)
            elif isinstance(action, Connect):
                self._spawn(self._connect(action.conn_id))
            elif isinstance(action, Close):
                conn = self._conns.pop(action.conn_id, None)
                self._stacks.pop(action.conn_id, None)
                if conn is not None:
                    self._ids.pop(id(conn), None)
                    self._spawn(self._close(conn))
            elif isinstance(action, Check):
                self._spawn(self._check(action.conn_id))
            elif isinstance(action, Reject):
                future = action.waiter.token
                if not future.done():
                    future.set_exception(
                        TooManyWaiters(self.name, action.waiter.class_name,
                                       self._policy.limits.max_waiters)
                        if action.reason == "displaced"
                        else PoolClosed(self.name, self._policy.state.value))
            elif isinstance(action, Leak):
                self._report_leak(action)
        if self._policy.state is PoolState.CLOSED and self._closed_event is not None:
            self._closed_event.set()

    def _carry_out(self, actions: list[Action]) -> None:
        """`_run` and re-arm maintenance; before `open`, keep the actions for it."""
        if not self._opened:
            self._deferred.extend(actions)
            return
        self._run(actions)
        self._schedule()

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        self._run(deferred)

    async def _bounded(self, coro: Awaitable[None], timeout: float, what: str) -> None:
        """Await `coro` for at most `timeout` seconds, then raise TimeoutError without waiting
        for it to wind down (`asyncio.wait_for` waits): a client library may take long to settle
        a cancelled exchange with a server that stopped answering (psycopg sends a cancel
        request and waits for the query, 5 s each). The connection is discarded after a timeout;
        the task is left to settle, and `drain` cancels it again (psycopg then closes at once)."""
        task = asyncio.ensure_future(coro)
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
            task.add_done_callback(_settled)
            raise TimeoutError(f"{what} timed out after {timeout} s")
        task.result()

    async def _stop_abandoned(self, timeout: float) -> None:
        """Cancel the checks and resets still settling after their timeout, again and again
        until they end (a second cancel that meets the first before it was delivered is lost),
        at most `timeout` seconds; psycopg closes the connection when cancelled twice."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._abandoned and loop.time() < deadline:
            for task in self._abandoned:
                task.cancel()
            await asyncio.wait(list(self._abandoned), timeout=0.05)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn_id: int) -> None:
        start = self.clock.now()
        try:
            conn = await asyncio.wait_for(self.driver.connect(), self._connect_timeout)
        except asyncio.CancelledError:
            self._run(self._policy.connect_failed(conn_id, self.clock.now(), "cancelled"))
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                # Drivers name the server in their errors (password masked); say it here too.
                address = getattr(self.driver, "address", None) or f"the {self.driver.name} server"
                exc = TimeoutError(f"could not connect to {address}: timed out after "
                                   f"{self._connect_timeout} s (connect_timeout)")
            log.warning("pool %s: connect failed: %s", self.name, _describe(exc))
            self._run(self._policy.connect_failed(conn_id, self.clock.now(), _describe(exc)))
            self._schedule()
            return
        now = self.clock.now()
        self._conns[conn_id] = conn
        self._ids[id(conn)] = conn_id
        self._run(self._policy.connected(conn_id, now, now - start))

    async def _check(self, conn_id: int) -> None:
        conn = self._conns.get(conn_id)
        start = self.clock.now()
        ok, error = True, ""
        try:
            if conn is None:
                raise RuntimeError("connection handle missing")
            await self._bounded(self.driver.check(conn), self._check_timeout, "check")
        except asyncio.CancelledError:
            self._run(self._policy.check_done(conn_id, self.clock.now(), 0.0, False, "cancelled"))
            raise
        except Exception as exc:
            ok, error = False, _describe(exc) or "check timed out"
        now = self.clock.now()
        self._run(self._policy.check_done(conn_id, now, now - start, ok, error))

    async def _close(self, conn: C) -> None:
        try:
            await asyncio.wait_for(self.driver.close(conn), self._connect_timeout)
        except Exception as exc:
            log.debug("pool %s: close raised %s", self.name, _describe(exc))

    def _report_leak(self, leak: Leak) -> None:
        stack = _format_stack(self._stacks.get(leak.conn_id, ()))
        rec = self._policy.records.get(leak.conn_id)
        class_name = rec.class_name if rec else ""
        log.warning("pool %s: connection %d (%s) held for %.1f s, past leak_threshold; "
                    "acquired at:\n  %s", self.name, leak.conn_id, class_name, leak.held_for,
                    "\n  ".join(stack) or "(stack not captured)")
        if self._subscribers:
            self._emit(LeakEvent(leak.conn_id, self.name, class_name, leak.held_for,
                                 self.clock.now(), stack))

    def _schedule(self) -> None:
        """Arm the maintenance timer for the policy's next wake-up (weakly: a forgotten pool
        is not kept alive by its own timer)."""
        loop = self._loop
        if loop is None or self._policy.state is PoolState.CLOSED:
            return
        if self._timer is not None:
            self._timer.cancel()
        now = self.clock.now()
        delay = min(self._policy.next_wakeup(now) - now, self._tick)
        delay = max(0.01, delay)
        self._timer = loop.call_later(delay, _maintain, weakref.ref(self))


def _settled(task: asyncio.Task[None]) -> None:
    """Done callback of a check or reset abandoned at its timeout: retrieve its end, which
    nobody awaits, so that asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _maintain(ref: weakref.ReferenceType[Pool[Any]]) -> None:
    pool = ref()
    if pool is None or pool._policy.state is PoolState.CLOSED:
        return
    try:
        pool._run(pool._policy.maintain(pool.clock.now()))
    except Exception:
        log.exception("pool %s: maintenance pass failed; continuing", pool.name)
    pool._schedule()


class _Acquire(Generic[C]):
    """The context manager `Pool.acquire` returns: a slot while inside, released on exit."""

    __slots__ = ("_class", "_conn", "_id", "_pool", "_timeout")

    def __init__(self, pool: Pool[C], class_name: str, timeout: float | None) -> None:
        self._pool = pool
        self._class = class_name
        self._timeout = timeout
        self._id = 0
        self._conn: C | None = None

    async def __aenter__(self) -> C:
        pool = self._pool
        self._id = await pool._acquire(self._class, self._timeout, 3)
        conn = pool._conns[self._id]
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        conn = self._conn
        pool = self._pool
        if conn is not None:
            self._conn = None
            # Not when the holder detached it (the connection is the holder's now: the pool
            # would reset it under them) or a drain timeout closed it: the pool forgot it then.
            if pool._ids.get(id(conn)) == self._id:
                await pool._release(self._id, conn, exc)
