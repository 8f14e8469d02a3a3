"""Backend groups at run time: admission, balancing, health and outlier ejection.

A `Group` owns the core objects that decide for its traffic — a `Scheduler` for admission by
class, a balancer (`p2c`, `round_robin` or bounded-load `hash`), one `BackendHealth` per
backend — and carries out their decisions for the listeners. Nothing here awaits: listeners
call in, get an answer, and do their I/O afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from connwise.config import GroupConfig, parse_address
from connwise.core.affinity import BoundedLoadRing
from connwise.core.balance import LeastOutstandingP2C, RoundRobin
from connwise.core.classes import ClassTable, PriorityClass
from connwise.core.degrade import (
    LADDER_UPDATE_INTERVAL,
    DegradeConfig,
    DegradeLadder,
    contention_from_scheduler,
)
from connwise.core.health import AVAILABLE, BackendHealth, HealthGroup
from connwise.core.scheduler import Scheduler
from connwise.gateway.deadlines import FifoDeadlines
from connwise.gateway.relay import RelayHalf, ThrottleStep
from connwise.gateway.upstream_http import (
    UpstreamConnection,
    UpstreamDriver,
    UpstreamRecording,
)
from connwise.pool.pool import Pool

if TYPE_CHECKING:
    from connwise.core.clock import Clock
    from connwise.telemetry.recorder import Recorder

#: Upstream keep-alive pools serve one class: admission by class happened at the group.
UPSTREAM_CLASSES = ClassTable([PriorityClass("any", rank=0, max_wait=60.0)])
#: Connects an upstream pool runs at once (the pool's default is 4, HikariCP-like, for
#: database pools). A proxy's upstream pool grows with its clients' demand, which HAProxy, nginx
#: and Envoy meet with one connect per waiting request and no cap; with 4, a pool grew by 4 per
#: event-loop iteration, about 50 connections a second under load, and 1000 keep-alive clients
#: queued for upstream connections for many seconds. 64 keeps a burst bounded all the same.
UPSTREAM_MAX_CONNECTING = 64
#: Seconds between two looks of a retired group at its queues (`Group.retire`).
RETIRE_POLL_INTERVAL = 0.05

log = logging.getLogger("connwise.gateway")


class Backend:
    """One upstream address of a group, with its live load and health."""

    __slots__ = ("carried", "failures", "health", "host", "name", "outstanding", "pool", "port",
                 "total", "warm_target")

    def __init__(self, address: str, key: str, health: BackendHealth) -> None:
        self.name = address
        self.host, self.port = parse_address(address, key)
        #: Requests and relays (WebSockets, tcp) in flight through this object.
        self.outstanding = 0
        #: The same backend in the groups reloads replaced, while work they started on it goes
        #: on (a WebSocket may for hours): it counts in `load` (`Group.take_over_health`).
        self.carried: tuple[Backend, ...] = ()
        self.total = 0
        self.failures = 0
        self.warm_target = 0
        self.health = health
        self.pool: Pool[UpstreamConnection] | None = None

    @property
    def load(self) -> int:
        """What the balancers read: `outstanding`, plus what is still in flight on this
        backend through the groups a reload replaced."""
        return self.outstanding + sum(b.outstanding for b in self.carried)

    def snapshot(self, now: float) -> dict[str, Any]:
        pool = self.pool.stats()["connections"] if self.pool is not None else {}
        return {"name": self.name, "outstanding": self.load, "total": self.total,
                "failures": self.failures, "health": self.health.snapshot(now),
                "warm_target": self.warm_target, "upstream_connections": pool}


class Group:
    """A named set of backends with its admission scheduler and balancer."""

    def __init__(self, name: str, config: GroupConfig, classes: ClassTable,
                 clock: Callable[[], float], rng: random.Random | None = None, *,
                 degrade: DegradeConfig | None = None) -> None:
        self.name = name
        self.config = config
        #: What the data plane reads of `config` per request, as plain attributes (a pydantic
        #: model's are read through its `__getattr__` hook).
        self.response_timeout = config.response_timeout
        self.retries = config.retries
        #: The deadlines of the tcp relays' upstream connects in flight (`connect_timeout`).
        self.connect_deadlines = FifoDeadlines(config.connect_timeout)
        self.hashed = config.balance == "hash"
        self.clock = clock
        self.scheduler = Scheduler(classes, capacity=config.max_in_flight,
                                   max_waiters=config.max_waiters, owner=f"group {name!r}")
        now = clock()
        self.health = HealthGroup(config.backends, config.health.core(f"groups.{name}.health"),
                                  now, owner=f"groups.{name}")
        #: The degradation ladder (`[degrade]`, or the group's own `degrade` table).
        self.admission = DegradeLadder(degrade or DegradeConfig(), classes,
                                       prefix=f"groups.{name}.degrade")
        self._ladder_at = -LADDER_UPDATE_INTERVAL
        #: The throttle step of each class for tcp relays, one per class (see `relay_throttle`).
        self._relay_throttles: dict[str, ThrottleStep] = {}
        self.backends = [Backend(address, f"groups.{name}.backends[{i}]", self.health[address])
                         for i, address in enumerate(config.backends)]
        self._by_name = {b.name: b for b in self.backends}
        #: Some backend carries the load of a replaced group's (`Backend.carried`).
        self._carrying = False
        names = [b.name for b in self.backends]
        self._balancer: RoundRobin | LeastOutstandingP2C | BoundedLoadRing
        if config.balance == "hash":
            self._balancer = BoundedLoadRing(names, balance_factor=config.balance_factor,
                                             vnodes=config.vnodes)
        elif config.balance == "round_robin":
            self._balancer = RoundRobin(names)
        else:
            self._balancer = LeastOutstandingP2C(names, rng=rng or random.Random())

    def take_over_health(self, previous: Group) -> None:
        """A reload replaces `previous` with this group: each backend both have goes on from
        its health there (down, ejected, drained, ramping up), not healthy afresh, and with
        the load still in flight on it there (and in the groups `previous` replaced), so the
        balancers do not see a backend with hours-long WebSockets open as idle."""
        checks = self.config.health.kind != "none"
        now = self.clock()
        for backend in self.backends:
            old = previous._by_name.get(backend.name)
            if old is not None:
                backend.health.take_over(old.health, now, checks=checks)
                # Flat, held by the newest group only: no chain of retired groups kept alive.
                backend.carried = (old, *(b for b in old.carried if b.outstanding))
                old.carried = ()
                self._carrying = True

    def relay_throttle(self, class_name: str,
                       started: Callable[[RelayHalf], None]) -> ThrottleStep:
        """The throttle step of `class_name` on this group's ladder, shared by its tcp relays
        (`started` is the same function for all of them)."""
        step = self._relay_throttles.get(class_name)
        if step is None:
            step = self._relay_throttles[class_name] = ThrottleStep(self.admission, class_name,
                                                                    started)
        return step

    # -- upstream pools -----------------------------------------------------------------------

    async def open(self, recorder: Recorder | None = None, clock: Clock | None = None, *,
                   records: bool = True) -> None:
        """Open a keep-alive pool per backend, warming `warm_target` connections in each; with
        a `recorder` (and the `clock` its times are read on), connects are timed for the
        client records and, with `records`, every upstream connection is recorded."""
        config = self.config
        for backend in self.backends:
            recording = (UpstreamRecording(recorder, clock, self.name, backend.name,
                                           records=records)
                         if recorder is not None and clock is not None else None)
            pool: Pool[UpstreamConnection] = Pool(
                UpstreamDriver(backend.host, backend.port, recording),
                name=f"{self.name}/{backend.name}",
                min_size=0, max_size=config.max_in_flight, classes=UPSTREAM_CLASSES,
                default_class="any", max_lifetime=None, idle_timeout=60.0, leak_threshold=None,
                check_interval=30.0, connect_timeout=config.connect_timeout,
                max_connecting=UPSTREAM_MAX_CONNECTING,
                # Idle upstream keep-alive connections are trimmed by idle_timeout; the
                # gateway's zombie watch looks at client connections (`[zombies]`).
                zombies=None)
            await pool.open()
            backend.pool = pool
            self.set_warm_target(backend, config.warm_target)

    def set_warm_target(self, backend: Backend, n: int, at: float | None = None) -> None:
        if backend.pool is None:
            return
        n = min(n, self.config.max_in_flight)
        backend.warm_target = n
        backend.pool.set_target(n, at=at)

    async def retire(self) -> None:
        """A reload replaced this group: new connections no longer reach it, established ones
        finish on it. Requests still waiting for its admission or for an upstream connection
        are served first (their class's `max_wait` bounds that); then every pool drains: idle
        connections close at once, held ones as their requests give them back, however long
        those answers stream, with no force close: the gateway's drain timeout (SIGTERM)
        bounds them, and `close` then ends what is left. WebSocket relays left their pools
        when they upgraded, so they go on until their sessions end.

        From then on the group's pools open nothing: an idempotent request of the group whose
        upstream fails is answered 502, not retried on another of its backends."""
        # Polled, not signalled: waiters leave by many ways (grant, deadline, displacement, a
        # client gone, in the group and in its pools), a retired group is rare, and this keeps
        # `release`, run by every request, free of a check for it.
        while self._has_waiters():  # noqa: ASYNC110
            await asyncio.sleep(RETIRE_POLL_INTERVAL)
        await asyncio.gather(*(b.pool.drain(timeout=None) for b in self.backends
                               if b.pool is not None))

    def _has_waiters(self) -> bool:
        """Requests wait for this group's admission or for one of its upstream connections."""
        return bool(self.scheduler.waiting) or any(
            b.pool is not None and b.pool.policy.scheduler.waiting for b in self.backends)

    async def close(self) -> None:
        """Close the upstream pools (the gateway's drain, once its clients are gone):
        connections still held a second later are closed under their holders."""
        for backend in self.backends:
            if backend.pool is not None:
                await backend.pool.close(timeout=1.0)

    def pick(self, key: str, client_ip: str, exclude: Collection[str] = ()) -> Backend | None:
        """The backend for a request with affinity `key` among the available ones; None when
        none is. `exclude` (the backends a retry failed on) is avoided while another backend
        is available, and used when none is: the common retryable failure is a keep-alive
        connection the backend closed as the request went, and a group of one backend (or
        with all tried) retries on it rather than failing for want of another (HAProxy
        retries on the same server; Envoy's previous_hosts predicate falls back likewise)."""
        now = self.clock()
        if len(self.backends) == 1:
            # One backend (a common group): nothing to balance, so no load or weight tables.
            only = self.backends[0]
            if not only.health.available(now):
                return None
            only.total += 1
            return only
        names = self.health.available(now)
        if not names:
            return None
        available = {n for n in names if n not in exclude} or set(names)
        loads = ({b.name: b.load for b in self.backends} if self._carrying
                 else {b.name: b.outstanding for b in self.backends})
        name = self._balancer.pick(key or client_ip, loads, available,
                                   self.health.weights(now))
        if name is None:
            return None
        backend = self._by_name[name]
        backend.total += 1
        return backend

    def connect_ok(self, backend: Backend) -> None:
        backend.health.record_success(self.clock())

    def connect_failed(self, backend: Backend, exc: BaseException) -> None:
        """A connect failed or the backend answered 5xx. Each failure is logged at DEBUG only:
        a backend that is down fails every request, and a WARNING each flooded the log; what
        an operator acts on is the state change (the ejection), which `tick` logs. The counts
        are in `failures` and the admin API."""
        backend.failures += 1
        log.debug("group %s: backend %s failed: %s", self.name, backend.name, exc)
        self.health.record_failure(backend.name, self.clock())

    def check_result(self, backend: Backend, ok: bool) -> None:
        """One active check's result (`health_check`)."""
        self.health.record_check(backend.name, ok, self.clock())

    def tick(self, now: float) -> None:
        """Periodic: move the degradation ladder from the scheduler's contention, fire the
        health timers due (an ejection's or a slow start's end) and log the backends' state
        changes since the last tick, each once: WARNING out of rotation, INFO back. (The
        core's own log of transitions is read, so a change fired on the hot path, where
        `available` advances the timers, is logged too.)"""
        self._ladder_at = now
        self.admission.update(contention_from_scheduler(self.scheduler, now), now)
        self.health.poll(now)
        if self._carrying:
            self._let_go_of_carried()
        for backend in self.backends:
            if not backend.health.log:
                continue
            for change in backend.health.take_transitions():
                level = logging.INFO if change.to_state in AVAILABLE else logging.WARNING
                log.log(level, "group %s: backend %s %s -> %s: %s", self.name, change.backend,
                        change.from_state.value, change.to_state.value, change.reason)

    def _let_go_of_carried(self) -> None:
        """Forget the replaced groups' backends whose work ended. (A retired group may still
        serve its queued requests for a moment after: short ones, uncounted here.)"""
        carrying = False
        for backend in self.backends:
            if backend.carried:
                backend.carried = tuple(b for b in backend.carried if b.outstanding)
                carrying = carrying or bool(backend.carried)
        self._carrying = carrying

    def contended(self, now: float) -> None:
        """An admission event under contention (a request queued, a slot freed while others
        wait): move the ladder now rather than at the next tick, at most every
        `LADDER_UPDATE_INTERVAL`, so its level follows the queue as it forms."""
        if now - self._ladder_at >= LADDER_UPDATE_INTERVAL:
            self._ladder_at = now
            self.admission.update(contention_from_scheduler(self.scheduler, now), now)

    # -- admission ----------------------------------------------------------------------------

    def release(self, class_name: str) -> None:
        """A slot of `class_name` ended: give freed capacity to the best waiters."""
        scheduler = self.scheduler
        scheduler.release(class_name)
        if scheduler.waiting:  # the clock is read only then: most releases find nobody waiting
            now = self.clock()
            self.contended(now)
            self.grant_free(now)

    def grant_free(self, now: float) -> None:
        """Hand the free slots to the best waiters. Besides a release, after a caller queued:
        slots may be free while it waits (the ladder's queue step takes no fast path, and a
        class may take a slot that reserved shares keep from the waiters ahead of it), and no
        release may come to grant them."""
        scheduler = self.scheduler
        while (waiter := scheduler.grant(now)) is not None:
            if not waiter.token.granted():
                scheduler.refuse(waiter)

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        scheduler = self.scheduler
        return {"name": self.name, "balance": self.config.balance,
                "in_flight": scheduler.in_use, "capacity": scheduler.capacity,
                "waiting": scheduler.waiting_by_class(),
                "in_use_by_class": scheduler.in_use_by_class(),
                "degradation": {c.name: self.admission.level(c.name)
                                for c in scheduler.classes},
                "backends": [b.snapshot(now) for b in self.backends]}
