"""The discrete-event engine: one scenario, one policy, the production core objects.

Theory of operation
-------------------
Time is a `VirtualClock`; events sit in a binary heap as `(time, seq, kind, subject, extra)`
tuples (no event objects: the tuple is the event). A *session* is one client connection: it
opens (or is refused at `max_connections`), makes one or more requests separated by think
time, and closes; a planted zombie goes silent after `after_requests` requests and holds its
connection until `hold` ends, a fixed idle timeout closes it, or the learned rule reclaims it.
A session carries its one in-flight request in its own slots, so a lifecycle allocates one
object.

A request picks a backend with the policy's balancer (`RoundRobin`, `LeastOutstandingP2C` or
`BoundedLoadRing` from `connwise.core`), asks that backend's `DegradeLadder` whether to shed,
signal or queue, and acquires a connection from the backend's `PoolPolicy` — the very object
`connwise.Pool` drives — by `acquire_now` or `submit` + `pump`. The engine carries out the pool's
actions as the asyncio shell does: `Connect` becomes a connect that ends after the backend's
connect time (or fails), `Check` a check, `Assign` the start of service, `Reject` a failed
request. Service takes the class's service time (lognormal), slowed in proportion when the
backend holds more than its capacity, cut by `degraded_cost` under the degrade signal, plus the
transfer of its response at the backend bandwidth (or the ladder's throttle rate).

Every `tick` the engine moves each backend's ladder from `contention_from_scheduler` (as the
gateway's ticker does), and between ticks on admission events under contention (a request
queued, a connection released while others wait; at most every `LADDER_UPDATE_INTERVAL`, as
the gateway's `Group.contended`); it samples the time series, and every `scan_interval` runs the
`ZombieTracker` of the learned policy and reclaims what it finds. `PoolPolicy.maintain` runs
when `connwise.Pool`'s maintenance timer would fire: at the pool's `next_wakeup` (a backoff's
end, a target's start, an idle timeout), at most a second apart, re-armed where the pool
re-arms it. A warming policy applies a `WarmPlan` (built by `connwise.core.plan.build_plan`
from the scenario's predictable demand) as the forecast applier does: a `WarmController` per
backend decides at every plan step and every `WARM_TICK` from the plan and the demand the pool
observes (scale out on the plan, scale in only on observed demand), and `PoolPolicy.set_target`
carries the decision out at once.
"""

from __future__ import annotations

import heapq
import math
import random
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from connwise.core.affinity import BoundedLoadRing
from connwise.core.balance import LeastOutstandingP2C, RoundRobin
from connwise.core.classes import ClassTable, PriorityClass
from connwise.core.clock import VirtualClock
from connwise.core.degrade import (
    LADDER_UPDATE_INTERVAL,
    QUEUE,
    SHED,
    SIGNAL,
    THROTTLE,
    DegradeConfig,
    DegradeLadder,
    contention_from_scheduler,
)
from connwise.core.plan import PlanSettings, WarmController, WarmPlan, build_plan
from connwise.core.pooling import (
    Assign,
    Check,
    Close,
    Connect,
    Leak,
    PoolLimits,
    PoolPolicy,
    Reject,
)
from connwise.core.scheduler import Waiter
from connwise.core.zombies import Thresholds, ZombieRules, ZombieTracker
from connwise.errors import TooManyWaiters
from connwise.sim.kpi import ClassStats, PolicyResult, Series
from connwise.sim.scenario import Resolved, Scenario
from connwise.sim.workload import RateProfile, lognormal_params, replay_arrivals

ARRIVE, NEXT, DONE, TIMEOUT, CONNECTED, CHECKED, TICK, END, PLAN, MAINTAIN = range(10)

#: Seconds between two warm-target decisions between plan steps: the forecast applier's
#: default `tick` (`[forecast] tick`), since scale-in follows observed demand.
WARM_TICK = 15.0

#: How a session ended (index into `PolicyResult.closes`).
CLOSE_DONE, CLOSE_IDLE, CLOSE_HOLD, CLOSE_RECLAIM, CLOSE_FAILED = range(5)


class Session:
    """One client connection and its in-flight request."""

    __slots__ = ("arrived", "backend", "client", "cls", "conn", "counted", "degraded", "gen",
                 "hold", "id", "left", "open", "opened", "peak", "sched", "segment", "waiter",
                 "zombie")

    def __init__(self, sid: int, cls: int, client: int, segment: str, zombie: bool, left: int,
                 now: float) -> None:
        self.id = sid
        self.cls = cls
        self.client = client
        self.segment = segment
        self.zombie = zombie
        self.left = left
        self.opened = now
        self.open = True
        self.gen = 0
        self.backend = -1
        self.conn = 0
        self.arrived = now
        self.degraded = 0
        self.peak = False
        self.counted = False
        self.sched = ""
        self.waiter: Waiter | None = None
        #: A replayed session's recorded hold time: it stays open (idle) until opened + hold.
        self.hold = 0.0


class Simulation:
    """Run `scenario` under `policy`; `run()` returns a `PolicyResult`."""

    def __init__(self, scenario: Scenario, policy: Resolved, *,
                 progress: Callable[[float], None] | None = None) -> None:
        self.scenario = scenario
        self.policy = policy
        self.progress = progress
        run = scenario.run
        self.clock = VirtualClock()
        self.duration = run.duration
        seed = run.seed
        self.rng_arrivals = random.Random(seed)
        self.rng_work = random.Random(seed * 7919 + 1)
        self.rng_policy = random.Random(seed * 104729 + 2)
        self.heap: list[tuple[float, int, int, Any, Any]] = []
        self.seq = 0
        # -- classes -------------------------------------------------------------------------
        self.class_names = list(scenario.classes)
        loads = [scenario.classes[n] for n in self.class_names]
        total_share = sum(c.share for c in loads)
        acc = 0.0
        self.cum_share: list[float] = []
        for c in loads:
            acc += c.share / total_share
            self.cum_share.append(acc)
        self.cum_share[-1] = 1.0
        self.service = [lognormal_params(c.service_ms / 1000.0, c.service_sigma) for c in loads]
        self.think = [lognormal_params(c.think_s, c.think_sigma) for c in loads]
        self.size = [c.size_kb * 1024.0 for c in loads]
        self.deadline = [c.deadline for c in loads]
        self.req_p = [1.0 / c.requests for c in loads]
        if policy.scheduling == "priority":
            pcs = []
            for name in self.class_names:
                rank, reserved, max_wait, aging = scenario.class_knobs(name)
                pcs.append(PriorityClass(name, rank=rank, reserved_share=reserved,
                                         max_wait=max_wait, aging_rate=aging))
            self.table = ClassTable(pcs, key="classes")
            self.sched_names = list(self.class_names)
        else:
            # FIFO: one class, waits bounded by the fixed timeout only.
            self.table = ClassTable([PriorityClass("any", rank=0, max_wait=policy.timeout)])
            self.sched_names = ["any"] * len(self.class_names)
        # -- clients -------------------------------------------------------------------------
        clients = scenario.clients
        crng = random.Random(seed * 31 + 3)
        regions, rw = list(clients.regions), list(clients.regions.values())
        devices, dw = list(clients.devices), list(clients.devices.values())
        self.client_region = crng.choices(range(len(regions)), rw, k=clients.count)
        self.client_device = crng.choices(range(len(devices)), dw, k=clients.count)
        self.segments = [f"{r}/{d}" for r in regions for d in devices]
        self.client_segment = [self.segments[r * len(devices) + d] for r, d in
                               zip(self.client_region, self.client_device, strict=True)]
        gaps = [clients.device_gap.get(d, 1.0) for d in devices]
        self.client_gap = [gaps[d] for d in self.client_device]
        self.client_last = array("i", [-1]) * clients.count
        self.client_key = [f"client-{i}" for i in range(clients.count)]
        self.n_clients = clients.count
        # -- backends ------------------------------------------------------------------------
        be = scenario.backends
        self.n_backends = be.count
        self.backend_names = [f"backend-{i}" for i in range(be.count)]
        self.capacity = be.capacity
        self.connect = lognormal_params(max(be.connect_ms, 1e-3) / 1000.0, be.connect_sigma)
        self.connect_zero = be.connect_ms == 0
        self.connect_fail = be.connect_fail
        self.bandwidth = be.bandwidth_mbps * 1e6 / 8.0
        self.degraded_cost = be.degraded_cost
        self.affinity_saving = be.affinity_saving
        limits = PoolLimits(min_size=policy.pool_min, max_size=policy.pool_max,
                            max_waiters=policy.max_waiters, idle_timeout=policy.idle_timeout,
                            leak_threshold=None)
        self.pools = [PoolPolicy(name=n, limits=limits, classes=self.table,
                                 rng=random.Random(self.rng_policy.random()))
                      for n in self.backend_names]
        #: `connwise.Pool`'s maintenance timer: at most this many seconds apart (its `_tick`),
        #: and one generation per backend, so that re-arming it cancels the armed one.
        self.maintain_every = min(1.0, (limits.leak_threshold or 4.0) / 4,
                                  (limits.idle_timeout or 4.0) / 4)
        self.maintain_gen = [0] * be.count
        self.ladders: list[DegradeLadder] | None = None
        if policy.degrade:
            self.ladders = [DegradeLadder(DegradeConfig(), self.table)
                            for _ in self.backend_names]
            self.ladder_state = [[lad.state(s) for s in self.sched_names] for lad in self.ladders]
            #: When each ladder last moved (a tick or an admission event; see `_contended`).
            self.ladder_at = [-LADDER_UPDATE_INTERVAL] * be.count
        self.balancer: RoundRobin | LeastOutstandingP2C | BoundedLoadRing
        if policy.balance == "hash":
            self.balancer = BoundedLoadRing(self.backend_names,
                                            balance_factor=policy.balance_factor)
        elif policy.balance == "p2c":
            self.balancer = LeastOutstandingP2C(self.backend_names,
                                                rng=random.Random(self.rng_policy.random()))
        else:
            self.balancer = RoundRobin(self.backend_names)
        self.backend_index = {n: i for i, n in enumerate(self.backend_names)}
        self.loads = dict.fromkeys(self.backend_names, 0)
        self.busy = [0] * be.count
        # -- zombies -------------------------------------------------------------------------
        self.zombie_rate = scenario.zombies.rate
        self.zombie_after = scenario.zombies.after_requests
        self.zombie_hold = scenario.zombies.hold
        self.tracker: ZombieTracker | None = None
        if policy.zombies == "learned":
            self.tracker = ZombieTracker("sim", Thresholds(ZombieRules(k=policy.zombie_k)),
                                         pooled=False)
        self.sessions: dict[int, Session] = {}
        self.open_sessions = 0
        # -- arrivals ------------------------------------------------------------------------
        self.profile = RateProfile(scenario.arrivals)
        self.replay = None
        if scenario.arrivals.replay is not None or scenario.arrivals.replay_log is not None:
            self.replay = replay_arrivals(scenario.arrivals, self.class_names)
            self.replay_pos = 0
        step = max(1.0, self.duration / 2000.0)
        rates = [self.profile(i * step) for i in range(int(self.duration / step) + 1)]
        self.peak_rate = max(rates)
        self.peak_cut = run.peak_fraction * self.peak_rate
        self.warmup = run.warmup
        # -- results -------------------------------------------------------------------------
        self.stats = [ClassStats(n) for n in self.class_names]
        self.result = PolicyResult(policy.name, policy.base, scenario.run.name, self.stats)
        self.series = Series()
        self.result.series = self.series
        self.result.backend_requests = [0] * be.count
        self.plan: WarmPlan | None = None
        self.warm: list[WarmController] = []
        self.warm_set: list[int | None] = []

    # -- scheduling ---------------------------------------------------------------------------

    def push(self, when: float, kind: int, subject: Any = None, extra: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (when, self.seq, kind, subject, extra))

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> PolicyResult:
        clock = self.clock
        heap = self.heap
        pop = heapq.heappop
        end = self.duration
        self._schedule_arrival(0.0)
        self.push(0.0, TICK, 0)
        if self.policy.warm:
            self._build_plan()
        for b, pool in enumerate(self.pools):
            self._actions(b, pool.pump(0.0), 0.0)
            self._schedule(b, 0.0)
        progress = self.progress
        next_progress = end / 100.0
        on_arrive = self._arrive
        on_done = self._done
        on_next = self._next
        events = 0
        while heap:
            when, _, kind, subject, extra = pop(heap)
            if when > end:
                break
            clock._now = when  # VirtualClock.set without the check: the heap is ordered
            events += 1
            if kind == DONE:
                on_done(subject, when)
            elif kind == ARRIVE:
                on_arrive(when)
            elif kind == NEXT:
                on_next(subject, extra, when)
            elif kind == END:
                if subject.open and subject.gen == extra[0]:
                    self._close(subject, when, extra[1])
            elif kind == TIMEOUT:
                self._timeout(subject, extra, when)
            elif kind == CONNECTED:
                self._connected(subject, extra, when)
            elif kind == CHECKED:
                self._actions(subject, self.pools[subject].check_done(extra, when, 0.002, True),
                              when)
            elif kind == TICK:
                self._tick(when, subject)
                if progress is not None and when >= next_progress:
                    progress(when / end)
                    next_progress = when + end / 100.0
            elif kind == PLAN:
                self._warm(when)
            elif kind == MAINTAIN and extra == self.maintain_gen[subject]:
                self._actions(subject, self.pools[subject].maintain(when), when)
                self._schedule(subject, when)
        self._finish(events)
        if progress is not None:
            progress(1.0)
        return self.result

    # -- arrivals -----------------------------------------------------------------------------

    def _schedule_arrival(self, now: float) -> None:
        if self.replay is not None:
            if self.replay_pos < len(self.replay):
                self.push(self.replay[self.replay_pos].at, ARRIVE)
            return
        rng = self.rng_arrivals
        profile = self.profile
        peak = profile.peak
        t = now
        while True:
            t += rng.expovariate(peak)
            if t > self.duration:
                return
            if profile(t) >= peak or rng.random() * peak < profile(t):
                break
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, ARRIVE, None, None))

    def _arrive(self, now: float) -> None:
        rng = self.rng_arrivals
        rec = None
        if self.replay is not None:
            rec = self.replay[self.replay_pos]
            self.replay_pos += 1
            cls = self.class_names.index(rec.class_name)
            # crc32, not hash(): str hashes change per process, and a replay must repeat.
            client = zlib.crc32((rec.client or rec.region + "/" + rec.device).encode()) \
                % self.n_clients
        else:
            cls = bisect_right(self.cum_share, rng.random())
            if cls >= len(self.cum_share):
                cls = len(self.cum_share) - 1
            client = rng.randrange(self.n_clients)
        zombie = self.zombie_rate > 0 and rng.random() < self.zombie_rate
        p = self.req_p[cls]
        if zombie:
            left = self.zombie_after
        elif rec is not None:
            left = rec.requests
        elif p >= 1.0:
            left = 1
        else:  # log1p: for a mean of 1e17 requests, 1 - p rounds to 1 and log(1 - p) to 0
            left = 1 + int(math.log(1.0 - rng.random()) / math.log1p(-p))
        self._schedule_arrival(now)
        result = self.result
        result.sessions += 1
        if zombie:
            result.zombies_planted += 1
        if self.open_sessions >= self.policy.max_connections:
            if now >= self.warmup:
                result.refused += 1
                self.stats[cls].refused += 1
            return
        result.next_id += 1
        segment = self.client_segment[client] if rec is None else f"{rec.region}/{rec.device}"
        s = Session(result.next_id, cls, client, segment, zombie, left, now)
        s.sched = self.sched_names[cls]
        if rec is not None and rec.hold is not None:
            s.hold = rec.hold
        result.segments[segment] = result.segments.get(segment, 0) + 1
        self.sessions[s.id] = s
        self.open_sessions += 1
        self._request(s, now)

    def _next(self, s: Session, gen: int, now: float) -> None:
        if not s.open:
            if s.gen != gen:
                return
            # Closed while idle (idle timeout or reclaim): the client reconnects.
            if self.open_sessions >= self.policy.max_connections:
                if now >= self.warmup:
                    self.result.refused += 1
                    self.stats[s.cls].refused += 1
                return
            self.result.reconnects += 1
            s.open = True
            s.gen += 1
            s.opened = now
            self.sessions[s.id] = s
            self.open_sessions += 1
        self._request(s, now)

    # -- requests -----------------------------------------------------------------------------

    def _request(self, s: Session, now: float) -> None:
        s.arrived = now
        s.counted = counted = now >= self.warmup
        stats = self.stats[s.cls]
        if counted:
            stats.requests += 1
        s.peak = self.profile(now) >= self.peak_cut if self.replay is None else False
        name = self.balancer.pick(self.client_key[s.client], self.loads)
        assert name is not None
        b = self.backend_index[name]
        s.backend = b
        last = self.client_last[s.client]
        if counted:
            self.result.backend_requests[b] += 1
            if last >= 0:
                self.result.affinity_chances += 1
                if last != b:
                    self.result.cross_instance += 1
        self.loads[name] += 1
        if self.tracker is not None:
            self.tracker.busy(s.id, now)
        pool = self.pools[b]
        ladder = self.ladders[b] if self.ladders is not None else None
        if ladder is None or ladder.takes_free_slot(s.sched, pool.scheduler):
            conn = pool.acquire_now(s.sched, now)
            if conn is not None:
                s.conn = conn
                self._serve(s, now)
                return
        if ladder is not None and ladder.sheds(s.sched, pool.scheduler):
            ladder.record(s.sched, SHED)
            self._fail(s, now, "shed")
            return
        try:
            waiter = pool.submit(s.sched, now, self.policy.timeout, s)
        except TooManyWaiters:
            self._fail(s, now, "rejected")
            return
        if ladder is not None and ladder.should_queue(s.sched):
            ladder.record(s.sched, QUEUE)  # counted once queued, as the gateway counts it
        s.waiter = waiter
        self.push(waiter.deadline, TIMEOUT, s, waiter)
        if ladder is not None:
            self._contended(b, now)
        self._actions(b, pool.pump(now), now)

    def _serve(self, s: Session, now: float) -> None:
        rng = self.rng_work
        cls = s.cls
        b = s.backend
        mu, sigma = self.service[cls]
        t = rng.lognormvariate(mu, sigma) if sigma > 0 else math.exp(mu)
        busy = self.busy[b] + 1
        self.busy[b] = busy
        if busy > self.capacity:
            t *= busy / self.capacity
        if self.affinity_saving and self.client_last[s.client] == b:
            t *= 1.0 - self.affinity_saving
        self.client_last[s.client] = b
        size = self.size[cls]
        # The signal as the gateway sends it: read when the request is dispatched.
        level = 0
        if self.ladders is not None:
            level = self.ladders[b].level(s.sched)
            if level >= SIGNAL:
                self.ladders[b].record(s.sched, SIGNAL)
        s.degraded = level
        if level >= SIGNAL:
            t *= self.degraded_cost
        if size:
            nbytes = rng.expovariate(1.0 / size)
            bw = self.bandwidth
            if level >= THROTTLE:
                bw = min(bw, 1024.0 * 1024.0)
            if level >= SIGNAL:
                nbytes *= self.degraded_cost
            t += nbytes / bw
        stats = self.stats[cls]
        if s.counted:
            wait = now - s.arrived
            stats.waits.append(wait)
            if s.peak:
                stats.peak_waits.append(wait)
            if level >= SIGNAL:
                stats.degraded += 1
        self.seq += 1
        heapq.heappush(self.heap, (now + t, self.seq, DONE, s, None))

    def _done(self, s: Session, now: float) -> None:
        b = s.backend
        self.busy[b] -= 1
        self.loads[self.backend_names[b]] -= 1
        pool = self.pools[b]
        contended = self.ladders is not None and pool.scheduler.waiting
        actions = pool.release(s.conn, now)
        if contended:
            self._contended(b, now)
        if actions:
            self._actions(b, actions, now)
        cls = s.cls
        if s.counted:
            stats = self.stats[cls]
            latency = now - s.arrived
            stats.completed += 1
            stats.latencies.append(latency)
            if latency <= self.deadline[cls]:
                stats.served += 1
        s.left -= 1
        if not s.open:  # reclaimed while its request ran
            return
        if s.left <= 0:
            if s.zombie:
                self._idle(s, now, self.zombie_hold, CLOSE_HOLD)
            elif s.opened + s.hold > now:
                self._idle(s, now, s.opened + s.hold - now, CLOSE_DONE)
            else:
                self._close(s, now, CLOSE_DONE)
            return
        mu, sigma = self.think[cls]
        gap = (self.rng_work.lognormvariate(mu, sigma) if sigma > 0 else math.exp(mu)) \
            * self.client_gap[s.client]
        self._idle(s, now, gap, -1)

    def _idle(self, s: Session, now: float, gap: float, close_reason: int) -> None:
        """The session goes idle for `gap` s, then sends its next request (close_reason -1)
        or closes (`close_reason`); a fixed idle timeout may close it first."""
        if self.tracker is not None:
            self.tracker.idle(s.id, s.segment, now)
        limit = self.policy.client_idle_timeout
        if gap > limit:
            self.push(now + limit, END, s, (s.gen, CLOSE_IDLE))
        if close_reason < 0:
            self.push(now + gap, NEXT, s, s.gen)
        elif gap <= limit:
            self.push(now + gap, END, s, (s.gen, close_reason))

    def _fail(self, s: Session, now: float, why: str) -> None:
        b = s.backend
        if b >= 0:
            self.loads[self.backend_names[b]] -= 1
        if s.counted:
            stats = self.stats[s.cls]
            if why == "shed":
                stats.shed += 1
            elif why == "timeout":
                stats.timed_out += 1
            else:
                stats.rejected += 1
        self._close(s, now, CLOSE_FAILED)

    def _timeout(self, s: Session, waiter: Waiter, now: float) -> None:
        if self.pools[s.backend].cancel(waiter, timed_out=True, now=now):
            self._fail(s, now, "timeout")

    def _close(self, s: Session, now: float, reason: int) -> None:
        if not s.open:
            return
        s.open = False
        s.gen += 1
        self.open_sessions -= 1
        del self.sessions[s.id]
        result = self.result
        held = now - s.opened
        result.conn_seconds += held
        if s.zombie:
            result.zombie_seconds += held
        result.closes[reason] += 1
        result.closed += 1
        if self.tracker is not None:
            self.tracker.forget(s.id)
        if reason == CLOSE_RECLAIM:
            result.reclaimed += 1
            if s.zombie and s.left <= 0:
                result.reclaimed_zombies += 1

    # -- the pool's actions -------------------------------------------------------------------

    def _actions(self, b: int, actions: list[Any], now: float) -> None:
        for action in actions:
            kind = type(action)
            if kind is Assign:
                s = action.waiter.token
                s.conn = action.conn_id
                s.waiter = None
                self._serve(s, now)
            elif kind is Connect:
                rng = self.rng_work
                latency = 0.0 if self.connect_zero else rng.lognormvariate(*self.connect)
                ok = not (self.connect_fail and rng.random() < self.connect_fail)
                self.result.connects += 1
                if not ok:
                    self.result.connect_failures += 1
                self.push(now + latency, CONNECTED, b, (action.conn_id, latency, ok))
            elif kind is Reject:
                s = action.waiter.token
                self._fail(s, now, "rejected")
            elif kind is Check:
                self.push(now + 0.002, CHECKED, b, action.conn_id)
            elif kind is Close or kind is Leak:
                pass

    def _connected(self, b: int, extra: tuple[int, float, bool], now: float) -> None:
        conn_id, latency, ok = extra
        pool = self.pools[b]
        if ok:
            self._actions(b, pool.connected(conn_id, now, latency), now)
        else:
            self._actions(b, pool.connect_failed(conn_id, now, "connect refused"), now)
            self._schedule(b, now)  # the retry is due when the backoff ends

    def _schedule(self, b: int, now: float) -> None:
        """Arm backend `b`'s maintenance for the pool's next wake-up, as `connwise.Pool` does
        (after it opens, after maintenance, after a failed connect, after `set_target`): at
        most `maintain_every` seconds ahead, at least 10 ms."""
        self.maintain_gen[b] += 1
        delay = min(self.pools[b].next_wakeup(now) - now, self.maintain_every)
        self.push(now + max(0.01, delay), MAINTAIN, b, self.maintain_gen[b])

    # -- periodic -----------------------------------------------------------------------------

    def _contended(self, b: int, now: float) -> None:
        """An admission event under contention (a request queued, a connection released while
        others wait): move the ladder now, at most every `LADDER_UPDATE_INTERVAL`, as the
        gateway's `Group.contended` does. (On a release, the gateway reads the scheduler
        between the release and the grant; here `PoolPolicy.release` has granted already.)"""
        assert self.ladders is not None
        if now - self.ladder_at[b] >= LADDER_UPDATE_INTERVAL:
            self.ladder_at[b] = now
            self.ladders[b].update(contention_from_scheduler(self.pools[b].scheduler, now), now)

    def _tick(self, now: float, n: int) -> None:
        tick = self.scenario.run.tick
        if self.ladders is not None:
            for b, (pool, ladder) in enumerate(zip(self.pools, self.ladders, strict=True)):
                self.ladder_at[b] = now
                ladder.update(contention_from_scheduler(pool.scheduler, now), now)
        sample = max(1, round(self.scenario.run.sample / tick))
        if n % sample == 0:
            self._sample(now)
        if self.tracker is not None:
            scan = max(1, round(self.policy.scan_interval / tick))
            if n % scan == 0:
                self.tracker.scan(now)
                for key in self.tracker.reclaimable(now, self.policy.reclaim_grace):
                    s = self.sessions.get(key)  # type: ignore[call-overload]
                    if s is not None:
                        self._close(s, now, CLOSE_RECLAIM)
                    else:
                        self.tracker.forget(key)
        self.push(now + tick, TICK, n + 1)

    def _sample(self, now: float) -> None:
        series = self.series
        series.t.append(now)
        series.rate.append(self.profile(now) if self.replay is None else 0.0)
        series.open_sessions.append(self.open_sessions)
        series.pool_open.append(sum(p.open_connections for p in self.pools))
        series.in_use.append(sum(p.scheduler.in_use for p in self.pools))
        series.waiting.append(sum(p.scheduler.waiting for p in self.pools))
        level = 0
        if self.ladders is not None:
            level = max(s.level for states in self.ladder_state for s in states)
        series.level.append(level)

    # -- warming ------------------------------------------------------------------------------

    def _build_plan(self) -> None:
        """A WarmPlan from the predictable part of the profile: requests per step per backend,
        Little's law with the mean hold time; `_warm` applies it from time 0."""
        scenario = self.scenario
        predictable = RateProfile(scenario.arrivals, predictable_only=True)
        loads = [scenario.classes[n] for n in self.class_names]
        total = sum(c.share for c in loads)
        req_per_session = sum(c.share / total * c.requests for c in loads)
        hold = sum(c.share / total * c.requests * (c.service_ms / 1000.0 + c.size_kb * 1024.0
                                                   / self.bandwidth) for c in loads)
        hold /= req_per_session
        step = max(1.0, min(60.0, self.duration / 200.0))
        n = max(1, math.ceil(self.duration / step))
        per_backend = [predictable.mean(i * step, (i + 1) * step, step / 4.0) * req_per_session
                       * step / self.n_backends for i in range(n)]
        policy = self.policy
        settings = PlanSettings(step=step, hold_time=hold, kind="arrivals",
                                lead=policy.warm_lead, headroom=policy.warm_headroom,
                                min_target=0, max_target=policy.pool_max)
        self.plan = plan = build_plan({"backend": (0.0, per_backend)}, settings)
        self.warm = [WarmController(plan, "backend", headroom=policy.warm_headroom)
                     for _ in range(self.n_backends)]
        self.warm_set = [None] * self.n_backends
        self.push(0.0, PLAN)

    def _warm(self, now: float) -> None:
        """One decision of the forecast applier (`connwise.forecast.applier.PlanApplier`) per
        backend: its `WarmController` turns the plan and the demand the pool observes (in use
        plus waiting) into a target, set at once (scale out on the plan, scale in only on
        observed demand); then the next decision at the next plan step or `WARM_TICK`."""
        for b, (pool, controller) in enumerate(zip(self.pools, self.warm, strict=True)):
            scheduler = pool.scheduler
            target = controller.decide(now, float(scheduler.in_use + scheduler.waiting))
            target = min(target, pool.limits.max_size)
            if target != self.warm_set[b]:
                self.warm_set[b] = target
                self._actions(b, pool.set_target(target, now), now)
                self._schedule(b, now)
        assert self.plan is not None
        wake = now + WARM_TICK
        change = self.plan.next_change(now, "backend")
        if change is not None:
            wake = min(wake, change)
        self.push(wake, PLAN)

    # -- the end ------------------------------------------------------------------------------

    def _finish(self, events: int) -> None:
        result = self.result
        end = self.duration
        for s in self.sessions.values():
            held = end - s.opened
            result.conn_seconds += held
            if s.zombie:
                result.zombie_seconds += held
        result.events = events
        result.duration = end
        if self.ladders is not None:
            result.ladder = [lad.stats() for lad in self.ladders]
        pools = [p.stats(end) for p in self.pools]
        result.pool_counters = {k: sum(p["counters"][k] for p in pools)
                                for k in pools[0]["counters"]}
        if self.plan is not None:
            result.plan_peak = self.plan.peak("backend")


def simulate(scenario: Scenario, policy: str, *,
             progress: Callable[[float], None] | None = None) -> PolicyResult:
    """Run one policy of `scenario` and return its result."""
    return Simulation(scenario, scenario.resolve(policy), progress=progress).run()
