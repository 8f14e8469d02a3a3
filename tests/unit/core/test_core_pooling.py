"""PoolPolicy driven by explicit `now` values, its actions fed back the way a shell would."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from connwise.core.classes import ClassTable
from connwise.core.lifecycle import TRANSITIONS, LifecycleEvent, State, Trigger
from connwise.core.pooling import (
    COUNTERS,
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
from connwise.core.scheduler import WaiterState
from connwise.errors import ConfigError, IllegalTransition, TooManyWaiters

S, T = State, Trigger


def limits(**kw: Any) -> PoolLimits:
    """Limits with every timer off unless a test turns it on, so each test sees one mechanism."""
    base: dict[str, Any] = {"min_size": 0, "max_size": 10, "max_lifetime": None,
                            "idle_timeout": None, "leak_threshold": None, "check_interval": 1e6}
    base.update(kw)
    return PoolLimits(**base)


class Sim:
    """A shell with explicit time: it records and classifies every action the policy returns."""

    def __init__(self, seed: int = 7, **kw: Any) -> None:
        self.events: list[LifecycleEvent] = []
        self.p = PoolPolicy(name="main", limits=limits(**kw), classes=ClassTable(),
                            rng=random.Random(seed), listener=self.events.append)
        self.connecting: list[int] = []
        self.checking: list[int] = []
        self.assigned: list[Assign] = []
        self.closed: list[Close] = []
        self.rejected: list[Reject] = []
        self.leaks: list[Leak] = []
        self.peak_connecting = 0

    def feed(self, actions: list[Action]) -> list[Action]:
        for a in actions:
            if isinstance(a, Connect):
                assert a.conn_id not in self.connecting
                self.connecting.append(a.conn_id)
            elif isinstance(a, Check):
                self.checking.append(a.conn_id)
            elif isinstance(a, Assign):
                self.assigned.append(a)
            elif isinstance(a, Close):
                self.closed.append(a)
            elif isinstance(a, Reject):
                self.rejected.append(a)
            else:
                self.leaks.append(a)
        self.peak_connecting = max(self.peak_connecting, len(self.connecting))
        return actions

    def pump(self, now: float) -> list[Action]:
        return self.feed(self.p.pump(now))

    def connect_one(self, now: float, latency: float = 0.01) -> list[Action]:
        return self.feed(self.p.connected(self.connecting.pop(0), now, latency))

    def connect_all(self, now: float, latency: float = 0.01) -> list[Action]:
        """Complete every pending connect, and those the completions open, in order."""
        out: list[Action] = []
        while self.connecting:
            out += self.connect_one(now, latency)
        return out

    def fail_one(self, now: float, error: str = "refused") -> list[Action]:
        return self.feed(self.p.connect_failed(self.connecting.pop(0), now, error))

    def check_all(self, now: float, latency: float = 0.01, ok: bool = True) -> list[Action]:
        out: list[Action] = []
        while self.checking:
            out += self.feed(self.p.check_done(self.checking.pop(0), now, latency, ok))
        return out

    def open(self, n: int, now: float = 0.0, latency: float = 0.01) -> list[int]:
        """Open `n` idle connections through the warm target, then drop the target."""
        self.feed(self.p.set_target(n, now))
        self.connect_all(now, latency)
        self.feed(self.p.set_target(0, now))
        assert self.p.idle >= n
        return sorted(self.p.records)

    def hold(self, class_name: str, now: float) -> int:
        conn_id = self.p.acquire_now(class_name, now)
        assert conn_id is not None
        return conn_id

    def maintain(self, now: float) -> list[Action]:
        return self.feed(self.p.maintain(now))

    def release(self, conn_id: int, now: float, **kw: bool) -> list[Action]:
        return self.feed(self.p.release(conn_id, now, **kw))


def state(p: PoolPolicy) -> PoolState:
    """The pool's state, read through a call (mypy would narrow `p.state` across asserts)."""
    return p.state


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def closes(actions: list[Action]) -> list[tuple[int, str]]:
    return [(a.conn_id, a.reason) for a in actions if isinstance(a, Close)]


# -- configuration --------------------------------------------------------------------------------


BAD_LIMITS: list[tuple[dict[str, Any], str]] = [
    ({"max_size": 0}, "pool.max_size"),
    ({"min_size": -1}, "pool.min_size"),
    ({"min_size": 11, "max_size": 10}, "pool.min_size"),
    ({"max_waiters": -1}, "pool.max_waiters"),
    ({"max_lifetime": 0}, "pool.max_lifetime"),
    ({"idle_timeout": -5}, "pool.idle_timeout"),
    ({"leak_threshold": 0.0}, "pool.leak_threshold"),
    ({"lifetime_jitter": 1.0}, "pool.lifetime_jitter"),
    ({"lifetime_jitter": -0.1}, "pool.lifetime_jitter"),
    ({"max_connecting": 0}, "pool.max_connecting"),
    ({"check_interval": 0}, "pool.check_interval"),
    ({"check_interval": 5, "check_interval_floor": 6}, "pool.check_interval"),
    ({"check_interval_floor": 0}, "pool.check_interval"),
    ({"quality_threshold": 1.0}, "pool.quality_threshold"),
    ({"backoff_base": 0}, "pool.backoff_base"),
    ({"backoff_base": 40, "backoff_cap": 30}, "pool.backoff_base"),
    ({"trim_step": 0}, "pool.trim_step"),
    ({"max_connecting": 2.0}, "pool.max_connecting"),
    ({"max_waiters": 10.5}, "pool.max_waiters"),
    ({"trim_step": 1.5}, "pool.trim_step"),
]


@pytest.mark.parametrize(("kw", "key"), BAD_LIMITS, ids=[k for _, k in BAD_LIMITS])
def test_bad_limits_name_the_key(kw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        PoolPolicy(name="main", limits=limits(**kw), classes=ClassTable())
    assert info.value.key == key
    assert str(info.value).startswith(f"{key} = ")


def test_the_defaults_validate_and_none_disables_timers() -> None:
    assert PoolLimits().validate() == PoolLimits()
    PoolPolicy(name="main", limits=limits(), classes=ClassTable())


# -- growth ---------------------------------------------------------------------------------------


def test_pump_opens_min_size_connections_and_no_more() -> None:
    sim = Sim(min_size=3)
    actions = sim.pump(0.0)
    assert actions == [Connect(1), Connect(2), Connect(3)]
    assert sim.p.open_connections == 3
    assert sim.pump(0.0) == []
    sim.connect_all(0.1)
    assert sim.p.idle == 3
    assert sim.pump(0.2) == []


def test_min_size_beyond_max_connecting_opens_in_rounds() -> None:
    sim = Sim(min_size=6, max_connecting=4)
    assert len(sim.pump(0.0)) == 4
    assert sim.pump(0.0) == [], "never more than max_connecting connects at a time"
    assert of(Connect, sim.connect_one(0.1)) == [Connect(5)]
    assert of(Connect, sim.connect_one(0.1)) == [Connect(6)]
    sim.connect_all(0.2)
    assert sim.p.idle == 6
    assert sim.peak_connecting == 4


def test_waiters_open_connections_within_max_connecting_and_are_served_in_order() -> None:
    sim = Sim(max_connecting=3)
    waiters = [sim.p.submit("critical", 0.0) for _ in range(8)]
    sim.pump(0.0)
    assert len(sim.connecting) == 3
    t = 0.0
    while sim.connecting:
        t += 0.1
        sim.connect_one(t)
    assert sim.peak_connecting == 3
    assert [a.waiter for a in sim.assigned] == waiters
    assert len({a.conn_id for a in sim.assigned}) == 8
    assert sim.p.counts[S.IN_USE] == 8
    assert sim.p.scheduler.in_use == 8


def test_dispatch_serves_waiters_in_priority_order() -> None:
    sim = Sim(max_size=3)
    sim.open(3)
    held = [sim.hold("critical", 0.0) for _ in range(3)]
    bulk = sim.p.submit("bulk", 1.0)
    inter = sim.p.submit("interactive", 1.1)
    crit = sim.p.submit("critical", 1.2)
    assert sim.pump(1.2) == [], "the pool is full: no connect, no assignment"
    served = []
    for i, conn_id in enumerate(held):
        actions = sim.release(conn_id, 2.0 + i)
        (assign,) = of(Assign, actions)
        assert assign.conn_id == conn_id
        served.append(assign.waiter)
    assert served == [crit, inter, bulk]
    wait = sim.p.stats(5.0)["wait_seconds"]
    assert wait["critical"]["count"] == 3 + 1      # three fast-path acquires, one wait
    assert wait["critical"]["max"] == pytest.approx(0.8)
    assert wait["bulk"]["sum"] == pytest.approx(3.0)


def test_a_newcomer_may_not_jump_the_queue_through_the_fast_path() -> None:
    sim = Sim(max_size=1)
    sim.open(1)
    conn = sim.hold("bulk", 0.0)
    w = sim.p.submit("bulk", 0.0)
    sim.release(conn, 1.0)
    assert [a.waiter for a in sim.assigned] == [w]
    assert sim.p.acquire_now("critical", 1.0) is None


# -- connect failures and backoff -------------------------------------------------------------


def test_connect_failures_back_off_exponentially_with_jitter_then_probe_one_at_a_time() -> None:
    seed = 11
    mirror = random.Random(seed)             # the policy draws from an identical generator
    sim = Sim(seed=seed, min_size=3, max_connecting=4, backoff_base=0.5, backoff_cap=4.0)
    assert len(sim.pump(0.0)) == 3
    now = 0.0
    expected_delays = [0.5, 1.0, 2.0, 4.0, 4.0]   # base * 2^(n-1), capped
    for n, full in enumerate(expected_delays, start=1):
        sim.fail_one(now, f"refused #{n}")
        jitter = 0.5 + 0.5 * mirror.random()
        retry_at = now + full * jitter
        assert full * 0.5 <= retry_at - now < full
        assert sim.p.last_error == f"refused #{n}"
        assert sim.p.counters["connect_failed"] == n
        if sim.connecting:               # the first three were in flight together
            continue
        assert sim.p.next_wakeup(now) == retry_at
        assert sim.pump(math.nextafter(retry_at, 0.0)) == []
        sim.p.submit("critical", retry_at)
        probe = sim.pump(retry_at)
        assert probe == [Connect(sim.connecting[0])], "one probe connect at a time"
        assert sim.pump(retry_at + 100.0) == [], "no second connect while the probe runs"
        now = retry_at + 0.5
    # The probe succeeds: the backoff is forgotten and growth goes back to max_connecting.
    actions = sim.connect_one(now + 1.0)
    assert sim.p.last_error is None
    assert len(of(Assign, actions)) == 1
    assert len(of(Connect, actions)) == 2         # the two missing for min_size 3 (+ waiters)
    sim.connect_all(now + 1.1)
    assert sim.p.counters["created"] == 3


def test_jitter_spreads_the_retries_of_different_pools() -> None:
    retries = set()
    for seed in range(5):
        sim = Sim(seed=seed, min_size=1, backoff_base=1.0, backoff_cap=30.0)
        sim.pump(0.0)
        sim.fail_one(0.0)
        retries.add(sim.p.next_wakeup(0.0))
    assert len(retries) == 5
    assert all(0.5 <= r < 1.0 for r in retries)


# -- warm targets ---------------------------------------------------------------------------------


def test_set_target_opens_ahead_of_time_and_is_met_by_its_time() -> None:
    latency = 0.25
    sim = Sim(max_size=20, max_connecting=4)
    sim.feed(sim.p.set_target(1, 0.0))
    sim.connect_all(latency, latency)            # observed connect latency: 0.25 s
    assert sim.feed(sim.p.set_target(9, 1.0, at=100.0)) == []
    # 8 connects missing, 4 at a time: 2 rounds of 0.25 s, doubled, plus one second.
    assert sim.p.target_lead(9) == 2 * 2 * latency + 1.0 == 2.0
    assert sim.p.target == 1
    assert sim.p.next_wakeup(1.0) == 98.0
    # Run the shell's loop: wake at next_wakeup, complete connects after `latency`.
    pending: dict[int, float] = {}
    connect_times: list[float] = []
    now = 1.0
    for _ in range(100):
        wake = sim.p.next_wakeup(now)
        due = min(pending.values(), default=math.inf)
        now = min(wake, due)
        if now > 100.0:
            break
        if due <= wake:
            conn_id = min(pending, key=lambda c: pending[c])
            del pending[conn_id]
            sim.connecting.remove(conn_id)
            actions = sim.feed(sim.p.connected(conn_id, now, latency))
        else:
            actions = sim.maintain(now)
        for a in of(Connect, actions):
            pending[a.conn_id] = now + latency
            connect_times.append(now)
    assert min(connect_times) == 98.0, "opening starts at at - target_lead, not before"
    assert sorted(set(connect_times)) == [98.0, 98.25]
    assert sim.p.idle == 9 and sim.p.counts[S.CONNECTING] == 0
    assert sim.p.target == 9


def test_target_lead_assumes_100_ms_before_any_connect_was_seen() -> None:
    sim = Sim(max_connecting=4)
    assert sim.p.target_lead(10) == 2 * 3 * 0.1 + 1.0


@pytest.mark.parametrize("n", [-1, 11])
def test_set_target_is_validated(n: int) -> None:
    sim = Sim(max_size=10)
    with pytest.raises(ConfigError) as info:
        sim.p.set_target(n, 0.0)
    assert info.value.key == "target"
    assert sim.p.target == 0


def test_an_immediate_target_opens_at_once_and_replaces_a_scheduled_one() -> None:
    sim = Sim(max_connecting=10)
    sim.feed(sim.p.set_target(5, 0.0, at=50.0))
    assert sim.connecting == []
    sim.feed(sim.p.set_target(3, 1.0))
    assert len(sim.connecting) == 3
    assert sim.p.target == 3
    assert sim.p.next_wakeup(1.0) == 1.0 + 1e6, "no scheduled target is left"


# -- idle trimming --------------------------------------------------------------------------------


def test_idle_trimming_after_idle_timeout_down_to_the_floor_trim_step_per_pass() -> None:
    sim = Sim(min_size=2, idle_timeout=60.0, trim_step=2)
    sim.open(8)
    assert sim.maintain(math.nextafter(60.0, 0.0)) == []
    steps = [sim.maintain(60.0) for _ in range(4)]
    assert [len(closes(s)) for s in steps] == [2, 2, 2, 0]
    assert all(reason == "idle_timeout" for s in steps for _, reason in closes(s))
    assert sim.p.idle == 2
    assert sim.maintain(10_000.0) == []
    assert sim.p.counters["closed"] == 6
    assert sim.p.counters["recycled"] == 0


def test_trimming_keeps_the_warm_target_and_the_recently_used() -> None:
    sim = Sim(min_size=1, idle_timeout=60.0, trim_step=10)
    ids = sim.open(6)
    sim.feed(sim.p.set_target(4, 0.0))
    used = sim.hold("bulk", 30.0)
    sim.release(used, 30.0)                       # idle since 30: not trimmable at 60
    trimmed = [c for c, _ in closes(sim.maintain(60.0))]
    assert len(trimmed) == 2
    assert used not in trimmed
    assert set(trimmed) <= set(ids)
    assert sim.p.idle == 4


def test_trimming_counts_connections_recycled_in_the_same_pass() -> None:
    """Four open, floor 2: two expire while the other two sit idle past idle_timeout. The pass
    recycles the expired two and trims nothing, rather than closing all four and opening two
    new ones at once."""
    sim = Sim(min_size=2, idle_timeout=60.0, trim_step=10, max_lifetime=100.0,
              lifetime_jitter=0.0)
    sim.pump(0.0)
    sim.connect_all(0.0)                          # conns 1-2, expire at 100
    sim.feed(sim.p.set_target(4, 50.0))
    sim.connect_all(50.0)                         # conns 3-4, expire at 150
    sim.feed(sim.p.set_target(0, 50.0))
    actions = sim.maintain(110.0)
    assert closes(actions) == [(1, "max_lifetime"), (2, "max_lifetime")]
    assert of(Connect, actions) == []
    assert sim.p.idle == 2
    assert sim.p.open_connections == 2
    # With one expired only, one more is trimmed: down to the floor, not below.
    sim2 = Sim(min_size=2, idle_timeout=60.0, trim_step=10, max_lifetime=100.0,
               lifetime_jitter=0.0)
    sim2.feed(sim2.p.set_target(3, 0.0))
    sim2.connect_one(0.0)                         # conn 1, expires at 100
    sim2.connect_all(50.0)                        # conns 2-3, expire at 150
    sim2.feed(sim2.p.set_target(4, 50.0))
    sim2.connect_all(50.0)                        # conn 4
    sim2.feed(sim2.p.set_target(0, 50.0))
    actions = sim2.maintain(110.0)
    assert closes(actions) == [(1, "max_lifetime"), (2, "idle_timeout")]
    assert of(Connect, actions) == []
    assert sim2.p.open_connections == 2


def test_trimming_counts_a_held_connection_that_retires_in_the_same_pass() -> None:
    """Three open, floor 2: one is held past its lifetime (it retires), the two idle ones sit
    past idle_timeout. Trimming one of them as well would leave one usable connection, below
    the floor (found by the state machine with --hypothesis-seed=1)."""
    sim = Sim(min_size=2, idle_timeout=60.0, trim_step=10, max_lifetime=100.0,
              lifetime_jitter=0.0)
    sim.feed(sim.p.set_target(1, 0.0))
    sim.connect_one(0.0)                          # conn 1, expires at 100
    sim.feed(sim.p.set_target(3, 50.0))
    sim.connect_all(50.0)                         # conns 2-3, expire at 150
    sim.feed(sim.p.set_target(0, 50.0))
    held = [sim.hold("bulk", 50.0) for _ in range(3)]
    for conn_id in held:
        if conn_id != 1:
            sim.release(conn_id, 50.0)
    actions = sim.maintain(110.0)
    assert closes(actions) == []
    assert sim.p.records[1].state is State.DRAINING
    assert sim.p.open_connections == 2


# -- lifetime -------------------------------------------------------------------------------------


def test_lifetimes_are_jittered_and_expired_idle_connections_are_replaced() -> None:
    sim = Sim(min_size=10, max_connecting=10, max_lifetime=100.0, lifetime_jitter=0.2)
    sim.pump(0.0)
    sim.connect_all(0.0)
    expiries = sorted(rec.expires_at for rec in sim.p.records.values())
    assert len(set(expiries)) == 10, "connections opened together expire apart"
    assert all(80.0 <= e <= 100.0 for e in expiries)
    assert expiries[-1] - expiries[0] > 5.0
    assert sim.p.next_wakeup(0.0) == expiries[0]
    assert sim.maintain(math.nextafter(expiries[0], 0.0)) == []
    actions = sim.maintain(expiries[2])
    assert [r for _, r in closes(actions)] == ["max_lifetime"] * 3
    assert len(of(Connect, actions)) == 3, "expired connections are replaced up to min_size"
    assert sim.p.counters["recycled"] == 3


def test_a_connection_that_expires_while_held_is_closed_on_release_and_replaced() -> None:
    sim = Sim(min_size=1, max_size=1, max_lifetime=100.0, lifetime_jitter=0.0)
    (conn,) = sim.open(1)
    sim.hold("bulk", 10.0)
    assert sim.maintain(100.0) == []
    assert sim.p.records[conn].state is S.DRAINING
    assert sim.p.scheduler.in_use == 1
    actions = sim.release(conn, 120.0)
    assert closes(actions) == [(conn, "retired")]
    assert conn not in sim.p.records
    assert of(Connect, actions) == [Connect(conn + 1)]
    assert sim.p.scheduler.in_use == 0


def test_release_of_an_expired_connection_not_yet_seen_by_maintain_recycles_it() -> None:
    sim = Sim(min_size=1, max_lifetime=100.0, lifetime_jitter=0.0)
    (conn,) = sim.open(1)
    sim.hold("bulk", 10.0)
    actions = sim.release(conn, 100.0)
    assert closes(actions) == [(conn, "max_lifetime")]
    assert sim.p.counters["recycled"] == 1
    assert len(of(Connect, actions)) == 1
    # Closed for good: no record left behind in DRAINING to hold capacity forever.
    assert conn not in sim.p.records
    assert sim.p.counts[S.DRAINING] == 0
    assert [(e.from_state, e.to_state) for e in sim.events[-2:]] == [(S.IN_USE, S.IDLE),
                                                                     (S.IDLE, S.CLOSED)]
    sim.connect_all(100.5)
    sim.feed(sim.p.drain(101.0))
    assert state(sim.p) is PoolState.CLOSED


# -- quality --------------------------------------------------------------------------------------


def test_failures_lower_the_score_and_bring_checks_forward() -> None:
    sim = Sim(min_size=2, check_interval=30.0, check_interval_floor=1.0, quality_threshold=0.1)
    a, b = sim.open(2)
    for t in (1.0, 2.0):
        conn = sim.hold("bulk", t)
        assert conn == b                          # LIFO: the last one opened is hot
        sim.release(conn, t, failed=True)
    rec_a, rec_b = sim.p.records[a], sim.p.records[b]
    assert rec_b.quality.score(2.0, None) == pytest.approx(0.25, rel=1e-2)
    assert rec_a.quality.score(2.0, None) == 1.0
    # Two recent failures: checked about every 7.5 s instead of 30.
    assert of(Check, sim.maintain(9.0)) == []
    assert of(Check, sim.maintain(10.0)) == [Check(b)]
    sim.check_all(10.0)
    assert of(Check, sim.maintain(29.9)) == [Check(b)], "b again, about 7.8 s later; a not yet"
    sim.check_all(29.9)
    assert of(Check, sim.maintain(30.0)) == [Check(a)]


def test_two_recent_failures_put_a_connection_below_the_default_threshold() -> None:
    sim = Sim(min_size=2)
    a, b = sim.open(2)
    conn = sim.hold("bulk", 1.0)
    sim.release(conn, 1.0, failed=True)
    assert sim.maintain(1.0) == [], "one failure: score 0.5, kept"
    conn = sim.hold("bulk", 2.0)
    sim.release(conn, 2.0, failed=True)
    actions = sim.maintain(2.0)
    assert actions == [Close(conn, "low_quality"), Connect(3)]
    assert {a, b} - {conn} <= set(sim.p.records)


def test_a_connection_with_slow_checks_falls_below_the_threshold_and_is_recycled() -> None:
    sim = Sim(min_size=3, check_interval=10.0, quality_threshold=0.3)
    a, b, c = sim.open(3)
    assert len(of(Check, sim.maintain(10.0))) == 3
    for conn, latency in ((a, 0.010), (b, 0.012), (c, 1.0)):
        sim.checking.remove(conn)
        sim.feed(sim.p.check_done(conn, 10.0, latency, True))
    assert sim.p.typical_check_latency() == 0.012
    # 1.0 s is 83 x the typical check: 0.5 ** log4(83) = 0.12 < 0.3.
    assert sim.p.records[c].quality.score(10.0, 0.012) < 0.3
    actions = sim.maintain(10.5)
    assert closes(actions) == [(c, "low_quality")]
    assert of(Connect, actions) == [Connect(4)]
    assert sim.p.counters["recycled"] == 1
    assert sim.p.counters["checks"] == 3


def test_a_failed_check_closes_and_replaces() -> None:
    sim = Sim(min_size=1, check_interval=10.0)
    (conn,) = sim.open(1)
    sim.maintain(10.0)
    assert sim.checking == [conn]
    actions = sim.feed(sim.p.check_done(sim.checking.pop(), 10.1, 0.0, False, "reset"))
    assert actions == [Close(conn, "check_failed"), Connect(conn + 1)]
    assert sim.p.counters["checks_failed"] == 1
    assert sim.events[-1].to_state is S.FAILED
    assert sim.events[-1].reason == "check failed: reset"


def test_at_most_max_connecting_checks_run_at_once() -> None:
    sim = Sim(min_size=6, max_connecting=2, check_interval=10.0)
    sim.pump(0.0)
    sim.connect_all(0.0)
    assert len(of(Check, sim.maintain(10.0))) == 2
    assert len(of(Check, sim.maintain(10.0))) == 0
    sim.check_all(10.5)
    assert len(of(Check, sim.maintain(10.5))) == 2


# -- leaks, broken and failed releases -----------------------------------------------------------


def test_one_leak_action_per_held_connection_past_the_threshold() -> None:
    sim = Sim(min_size=2, leak_threshold=30.0)
    a, b = sim.open(2)
    first = sim.hold("bulk", 0.0)
    second = sim.hold("critical", 10.0)
    assert sim.maintain(math.nextafter(30.0, 0.0)) == []
    assert sim.maintain(30.0) == [Leak(first, 30.0)]
    assert sim.maintain(39.0) == []
    assert sim.maintain(45.0) == [Leak(second, 35.0)]
    assert sim.maintain(1000.0) == [], "a leak is reported once per holding"
    assert sim.p.counters["leaked"] == 2
    sim.release(first, 1001.0)
    again = sim.hold("bulk", 1002.0)
    assert sim.maintain(1032.0) == [Leak(again, 30.0)]
    assert {a, b} == {first, second}


def test_release_broken_closes_and_replaces() -> None:
    sim = Sim(min_size=1)
    (conn,) = sim.open(1)
    sim.hold("interactive", 1.0)
    actions = sim.release(conn, 2.0, broken=True)
    assert actions == [Close(conn, "broken"), Connect(conn + 1)]
    assert sim.p.counters["broken"] == 1
    assert sim.p.scheduler.in_use == 0
    last = sim.events[-1]
    assert (last.from_state, last.to_state, last.trigger) == (S.IN_USE, S.FAILED, T.BREAK)


def test_release_failed_keeps_the_connection_but_remembers() -> None:
    sim = Sim(min_size=1)
    (conn,) = sim.open(1)
    sim.hold("bulk", 1.0)
    assert sim.release(conn, 2.0, failed=True) == []
    assert sim.p.records[conn].state is S.IDLE
    assert sim.p.records[conn].quality.recent_failures(2.0) == 1.0


def test_release_of_a_connection_not_held_is_illegal() -> None:
    sim = Sim(min_size=1)
    (conn,) = sim.open(1)
    with pytest.raises(IllegalTransition) as info:
        sim.p.release(conn, 1.0)
    assert "idle" in str(info.value)
    with pytest.raises(IllegalTransition) as info:
        sim.p.release(99, 1.0)
    assert "unknown" in str(info.value)
    assert sim.p.scheduler.in_use == 0


# -- waiters: refuse, cancel, expire -------------------------------------------------------------


def test_refuse_passes_the_connection_to_the_next_waiter() -> None:
    sim = Sim(max_size=1)
    (conn,) = sim.open(1)
    held = sim.hold("bulk", 0.0)
    w1 = sim.p.submit("critical", 0.0)
    w2 = sim.p.submit("bulk", 0.0)
    (assign,) = of(Assign, sim.release(held, 1.0))
    assert assign == Assign(conn, w1)
    actions = sim.feed(sim.p.refuse(assign, 1.5))
    assert actions == [Assign(conn, w2)]
    assert w1.state is WaiterState.REFUSED
    assert sim.p.counters["refused"] == 1
    assert sim.p.records[conn].quality.uses == 2     # bulk, then w2; the refusal is not a use


def test_refuse_of_a_connection_retired_meanwhile_closes_it() -> None:
    """The hand-off raced with a retirement (zombie reclaim, lifetime, drain): the refused
    connection must be closed, not put back among the idle ones."""
    sim = Sim(max_size=2)
    (conn,) = sim.open(1)
    w = sim.p.submit("bulk", 0.0)
    (assign,) = of(Assign, sim.pump(0.0))
    assert sim.feed(sim.p.retire(conn, 0.5, "zombie")) == []
    assert sim.p.records[conn].state is S.DRAINING
    actions = sim.feed(sim.p.refuse(assign, 1.0))
    assert closes(actions) == [(conn, "retired")]
    assert conn not in sim.p.records
    assert sim.p.idle == 0 and sim.p.scheduler.in_use == 0
    assert w.state is WaiterState.REFUSED
    # The pool goes on: a new waiter gets a new connection, and nothing stale is handed out.
    w2 = sim.p.submit("bulk", 2.0)
    sim.pump(2.0)
    (new,) = sim.connecting
    assert [a.waiter for a in of(Assign, sim.connect_all(2.1))] == [w2]
    assert sim.assigned[-1].conn_id == new


def test_detach_frees_the_slot_without_a_close_and_serves_the_next_waiter() -> None:
    """A WebSocket relay keeps its upstream connection for hours: detached, it no longer
    counts against max_size, and a waiter gets a new connection in its place."""
    sim = Sim(max_size=1)
    (conn,) = sim.open(1)
    held = sim.hold("bulk", 0.0)
    w = sim.p.submit("critical", 0.0)
    assert sim.pump(0.0) == []                       # full: nothing to open
    actions = sim.feed(sim.p.detach(held, 1.0))
    assert actions == [Connect(conn + 1)]            # no Close: the holder owns it now
    assert conn not in sim.p.records
    assert sim.p.scheduler.in_use == 0 and sim.p.counters["detached"] == 1
    assert sim.p.counters["closed"] == 0
    assert sim.events[-1].trigger is Trigger.CLOSE and "detached" in sim.events[-1].reason
    assert [a.waiter for a in of(Assign, sim.connect_all(1.1))] == [w]
    with pytest.raises(IllegalTransition, match="detach"):
        sim.p.detach(held, 2.0)                       # not held any more
    idle = sim.p.records[conn + 1]
    sim.release(idle.id, 2.0)
    with pytest.raises(IllegalTransition, match="detach"):
        sim.p.detach(idle.id, 2.0)                    # idle: not the caller's to keep


def test_detach_of_the_last_held_connection_lets_a_draining_pool_close() -> None:
    sim = Sim(max_size=2)
    sim.open(1)
    held = sim.hold("bulk", 0.0)
    sim.feed(sim.p.drain(0.5))
    assert state(sim.p) is PoolState.DRAINING
    assert sim.feed(sim.p.detach(held, 1.0)) == []
    assert state(sim.p) is PoolState.CLOSED and sim.p.scheduler.in_use == 0


def test_refuse_after_drain_closes_and_lets_the_pool_close() -> None:
    sim = Sim(max_size=2)
    (conn,) = sim.open(1)
    sim.p.submit("bulk", 0.0)
    (assign,) = of(Assign, sim.pump(0.0))
    sim.feed(sim.p.drain(0.5))
    assert state(sim.p) is PoolState.DRAINING
    assert closes(sim.feed(sim.p.refuse(assign, 1.0))) == [(conn, "retired")]
    assert state(sim.p) is PoolState.CLOSED
    assert sim.p.scheduler.in_use == 0


def test_cancel_loses_to_an_assignment_and_expire_counts_timeouts() -> None:
    sim = Sim(max_size=1)
    (conn,) = sim.open(1)
    held = sim.hold("bulk", 0.0)
    w1 = sim.p.submit("critical", 0.0)               # waits at most 5 s
    w2 = sim.p.submit("bulk", 0.0, timeout=2.0)
    w3 = sim.p.submit("interactive", 0.0)
    assert sim.p.cancel(w3, timed_out=False, now=1.0)
    assert sim.p.expire(math.nextafter(2.0, 0.0)) == []
    assert sim.p.expire(2.0) == [w2]
    assert sim.p.counters["timed_out"] == 1
    assert sim.p.stats(2.0)["wait_seconds"]["bulk"]["count"] == 2   # fast path + timeout
    sim.release(held, 3.0)
    assert sim.assigned[-1] == Assign(conn, w1)
    assert not sim.p.cancel(w1, timed_out=True, now=3.0)
    assert sim.p.counters["timed_out"] == 1


def test_too_many_waiters_and_displacement_in_the_pool() -> None:
    sim = Sim(max_size=1, max_waiters=2)
    sim.open(1)
    sim.hold("critical", 0.0)
    b1 = sim.p.submit("bulk", 0.0)
    b2 = sim.p.submit("bulk", 0.0)
    sim.p.submit("critical", 0.0)
    sim.pump(0.0)
    assert [(r.waiter, r.reason) for r in sim.rejected] == [(b2, "displaced")]
    assert b2.state is WaiterState.DISPLACED
    assert b1.state is WaiterState.WAITING
    assert sim.p.counters["displaced"] == 1
    with pytest.raises(TooManyWaiters):
        sim.p.submit("bulk", 0.0)


# -- drain and force close -------------------------------------------------------------------------


def test_drain_rejects_waiters_closes_idle_then_held_ones_as_they_return() -> None:
    sim = Sim(max_size=4)
    a, b, c = sim.open(3)
    held = [sim.hold("bulk", 0.0), sim.hold("bulk", 0.0)]
    assert sim.p.acquire_now("bulk", 0.0) is None      # the rest is reserved
    w = sim.p.submit("bulk", 0.0)
    sim.feed(sim.p.set_target(4, 0.0))
    (connecting,) = sim.connecting
    idle = ({a, b, c} - set(held)).pop()
    actions = sim.feed(sim.p.drain(1.0))
    assert actions == [Reject(w, "draining"), Close(idle, "draining")]
    assert w.state is WaiterState.CANCELLED
    assert state(sim.p) is PoolState.DRAINING
    assert sim.p.counters["rejected"] == 1
    assert sim.p.counts[S.DRAINING] == 3
    assert sim.p.acquire_now("critical", 1.0) is None
    assert sim.feed(sim.p.drain(1.0)) == [], "a second drain is a no-op"
    assert sim.release(held[0], 2.0) == [Close(held[0], "retired")]
    assert sim.connect_one(2.5) == [Close(connecting, "draining")]
    assert state(sim.p) is PoolState.DRAINING
    assert sim.release(held[1], 3.0) == [Close(held[1], "retired")]
    assert state(sim.p) is PoolState.CLOSED
    assert sim.p.records == {}
    assert sim.p.scheduler.in_use == 0
    assert sim.pump(4.0) == []
    assert sim.maintain(4.0) == []


def test_draining_while_checking_or_connecting_closes_when_they_end() -> None:
    sim = Sim(max_size=4, check_interval=10.0)
    a, b = sim.open(2)
    sim.maintain(10.0)
    assert sorted(sim.checking) == [a, b]
    sim.feed(sim.p.set_target(3, 10.0))
    sim.feed(sim.p.drain(10.5))
    assert sim.p.counts[S.DRAINING] == 3
    assert sim.feed(sim.p.check_done(a, 11.0, 0.01, True)) == [Close(a, "draining")]
    assert sim.feed(sim.p.check_done(b, 11.0, 0.01, False)) == [Close(b, "check_failed")]
    assert state(sim.p) is PoolState.DRAINING
    assert sim.fail_one(11.5) == []
    assert state(sim.p) is PoolState.CLOSED


def test_an_empty_pool_closes_at_once_on_drain() -> None:
    sim = Sim()
    assert sim.feed(sim.p.drain(0.0)) == []
    assert state(sim.p) is PoolState.CLOSED


def test_force_close_closes_held_connections_and_frees_their_slots() -> None:
    sim = Sim(max_size=3)
    a, b = sim.open(2)
    sim.hold("critical", 0.0)
    sim.hold("bulk", 0.0)
    actions = sim.feed(sim.p.force_close(5.0))
    assert sorted(closes(actions)) == [(a, "drain_timeout"), (b, "drain_timeout")]
    assert state(sim.p) is PoolState.CLOSED
    assert sim.p.scheduler.in_use == 0
    assert sim.p.scheduler.in_use_by_class() == {"critical": 0, "interactive": 0, "bulk": 0}
    assert sim.p.counts[S.CLOSED] == 2
    # Holders that come back late find nothing to give back.
    assert sim.release(a, 6.0) == []


def test_force_close_after_drain_with_connects_and_checks_in_flight() -> None:
    """Connecting and checking connections drained are DRAINING but hold no slot: force_close
    must close them without touching the scheduler's count."""
    sim = Sim(max_size=4, check_interval=10.0)
    a, b = sim.open(2)
    used = sim.hold("bulk", 1.0)
    held = sim.hold("critical", 1.0)
    sim.release(used, 2.0)                        # held by bulk before: now holds no slot
    sim.maintain(12.0)                            # the idle one goes checking
    assert sim.checking == [used]
    sim.feed(sim.p.set_target(4, 12.0))
    assert len(sim.connecting) == 2
    sim.feed(sim.p.drain(12.5))
    assert sim.p.counts[S.DRAINING] == 4
    actions = sim.feed(sim.p.force_close(20.0))
    assert sorted(c for c, _ in closes(actions)) == [a, b, 3, 4]
    assert {a, b} == {used, held}
    assert state(sim.p) is PoolState.CLOSED
    assert sim.p.scheduler.in_use == 0
    assert sim.p.scheduler.in_use_by_class() == {"critical": 0, "interactive": 0, "bulk": 0}
    # The late completions of what was in flight are told to close.
    for conn_id in sim.connecting:
        assert sim.p.connected(conn_id, 21.0, 0.1) == [Close(conn_id, "pool closed")]
    for conn_id in sim.checking:
        assert sim.p.check_done(conn_id, 21.0, 0.1, True) == [Close(conn_id, "pool closed")]


def test_force_close_without_drain_drains_first() -> None:
    sim = Sim(max_size=2)
    sim.open(1)
    w = sim.p.submit("bulk", 0.0)
    (assign,) = of(Assign, sim.pump(0.0))
    actions = sim.feed(sim.p.force_close(1.0, reason="shutdown"))
    assert closes(actions) == [(assign.conn_id, "shutdown")]
    assert w.state is WaiterState.GRANTED
    assert state(sim.p) is PoolState.CLOSED


# -- resize ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_size", "max_size", "key"), [
    (0, 0, "pool.max_size"), (5, 4, "pool.min_size"), (-1, 4, "pool.min_size"),
    # A float bound used to pass, and the pump that followed raised TypeError in range().
    (2, 7.5, "pool.max_size"), (1.0, 4, "pool.min_size"),
])
def test_resize_is_validated_like_the_constructor(min_size: int, max_size: int,
                                                  key: str) -> None:
    sim = Sim(min_size=1, max_size=5)
    before = sim.p.limits
    with pytest.raises(ConfigError) as info:
        sim.p.resize(min_size, max_size, 0.0)
    assert info.value.key == key
    assert sim.p.limits is before
    assert sim.p.scheduler.capacity == 5


def test_growth_serves_waiters_at_once() -> None:
    sim = Sim(max_size=2)
    sim.open(2)
    sim.hold("critical", 0.0)
    sim.hold("critical", 0.0)
    w = sim.p.submit("critical", 0.0)
    assert sim.pump(0.0) == []
    actions = sim.feed(sim.p.resize(0, 3, 1.0))
    assert len(of(Connect, actions)) == 1
    assert sim.p.scheduler.capacity == 3
    assert [a.waiter for a in of(Assign, sim.connect_all(1.1))] == [w]


def test_shrinking_is_gradual() -> None:
    sim = Sim(max_size=10, trim_step=2)
    ids = sim.open(8)
    held = [sim.hold("critical", 0.0) for _ in range(2)]
    sim.feed(sim.p.resize(0, 4, 1.0))
    assert sim.p.scheduler.capacity == 4
    assert sim.p.open_connections == 8, "nothing is closed by resize itself"
    passes = [closes(sim.maintain(2.0)) for _ in range(3)]
    assert [len(p) for p in passes] == [2, 2, 0]
    assert {reason for p in passes for _, reason in p} == {"resize"}
    assert sim.p.open_connections == 4
    assert sim.p.idle == 2
    assert set(held) <= set(ids)
    # Held connections come back to an idle pool: kept, as 4 is within the new max.
    assert sim.release(held[0], 3.0) == []


def test_held_connections_beyond_a_lower_max_close_on_release() -> None:
    sim = Sim(max_size=6)
    sim.open(6)
    held = [sim.hold("critical", 0.0) for _ in range(6)]
    sim.feed(sim.p.resize(0, 4, 1.0))
    assert sim.p.acquire_now("critical", 1.0) is None
    assert closes(sim.release(held[0], 2.0)) == [(held[0], "resize")]
    assert closes(sim.release(held[1], 2.0)) == [(held[1], "resize")]
    assert sim.release(held[2], 2.0) == []
    assert sim.p.open_connections == 4
    assert sim.p.counters["recycled"] == 2
    assert sim.p.counts[S.DRAINING] == 0, "the closed ones leave no DRAINING record behind"
    assert held[0] not in sim.p.records and held[1] not in sim.p.records
    # The full new max is usable: two more acquires after the releases.
    sim.release(held[3], 3.0)
    assert sim.p.acquire_now("critical", 3.0) is not None


def test_resize_caps_the_target() -> None:
    sim = Sim(max_size=10)
    sim.feed(sim.p.set_target(8, 0.0))
    sim.feed(sim.p.resize(0, 5, 0.0))
    assert sim.p.target == 5


# -- next_wakeup ----------------------------------------------------------------------------------


def test_next_wakeup_does_not_spin_on_idle_connections_kept_by_the_floor() -> None:
    """Idle past idle_timeout but at min_size: nothing to trim, so no reason to wake at once."""
    sim = Sim(min_size=2, idle_timeout=60.0, check_interval=1000.0)
    sim.pump(0.0)
    sim.connect_all(0.0)
    assert sim.p.next_wakeup(0.0) == 1000.0
    assert sim.maintain(100.0) == []
    assert sim.p.next_wakeup(100.0) == 1100.0    # a check interval later, at the latest
    sim.feed(sim.p.set_target(3, 100.0))
    sim.connect_all(100.0)
    sim.feed(sim.p.set_target(0, 100.0))
    assert sim.p.next_wakeup(100.0) == 100.0, "one above the floor, idle long enough: trim now"


def test_next_wakeup_does_not_spin_on_a_held_connection_that_expired() -> None:
    sim = Sim(min_size=1, max_size=1, max_lifetime=100.0, lifetime_jitter=0.0,
              check_interval=1000.0)
    (conn,) = sim.open(1)
    sim.hold("bulk", 1.0)
    assert sim.p.next_wakeup(1.0) == 100.0
    sim.maintain(100.0)
    assert sim.p.records[conn].state is S.DRAINING
    assert sim.p.next_wakeup(100.0) == 1100.0


def test_next_wakeup_covers_leaks_and_expiry() -> None:
    sim = Sim(min_size=1, leak_threshold=30.0, max_lifetime=100.0, lifetime_jitter=0.0,
              check_interval=1000.0)
    sim.open(1)
    assert sim.p.next_wakeup(0.0) == 100.0
    sim.hold("bulk", 5.0)
    assert sim.p.next_wakeup(5.0) == 35.0
    sim.maintain(35.0)
    assert sim.p.next_wakeup(35.0) == 100.0


# -- observation ----------------------------------------------------------------------------------


def test_stats_and_repr() -> None:
    sim = Sim(min_size=1, max_size=4)
    sim.open(3)
    sim.hold("critical", 0.0)
    sim.feed(sim.p.set_target(4, 0.0))
    stats = sim.p.stats(1.0)
    assert set(COUNTERS) == set(stats["counters"])
    assert stats["name"] == "main"
    assert stats["state"] == "open"
    assert (stats["min_size"], stats["max_size"], stats["target"]) == (1, 4, 4)
    assert stats["connections"] == {"connecting": 1, "idle": 2, "checking": 0, "in_use": 1,
                                    "draining": 0}
    assert stats["in_use_by_class"] == {"critical": 1, "interactive": 0, "bulk": 0}
    assert stats["reserved"] == {"critical": 1, "interactive": 1, "bulk": 0}
    assert stats["waiting"] == {"critical": 0, "interactive": 0, "bulk": 0}
    assert stats["counters"]["created"] == 3
    assert stats["counters"]["acquired"] == 1
    assert stats["connect_latency"] == pytest.approx(0.01)
    assert stats["last_error"] is None
    assert stats["wait_seconds"]["critical"]["buckets"]["0.0001"] == 1
    assert repr(sim.p) == "<PoolPolicy main [in use 1, idle 2, warming 1 | waiting 0]>"
    assert sim.p.describe() == "open, in use 1, idle 2, connecting 1, waiting 0, max 4"


def test_the_listener_sees_every_transition_with_its_states() -> None:
    sim = Sim(min_size=1, check_interval=10.0)
    sim.pump(0.0)
    sim.connect_all(0.5, latency=0.5)
    conn = sim.hold("bulk", 1.0)
    sim.release(conn, 2.0)
    sim.maintain(12.0)
    sim.check_all(12.1)
    sim.feed(sim.p.drain(13.0))
    assert [(e.from_state, e.trigger, e.to_state) for e in sim.events] == [
        (S.CONNECTING, T.CONNECTED, S.IDLE),
        (S.IDLE, T.ACQUIRE, S.IN_USE),
        (S.IN_USE, T.RELEASE, S.IDLE),
        (S.IDLE, T.CHECK, S.CHECKING),
        (S.CHECKING, T.CHECK_OK, S.IDLE),
        (S.IDLE, T.RETIRE, S.CLOSED),
    ]
    for e in sim.events:
        assert TRANSITIONS[e.from_state, e.trigger] is e.to_state
        assert (e.conn_id, e.owner) == (conn, "main")
    assert [e.at for e in sim.events] == [0.5, 1.0, 2.0, 12.0, 12.1, 13.0]
    assert sim.events[0].reason == "connected in 500.0 ms"
    assert sim.events[1].reason == "bulk"             # the class that acquired it
    assert sim.events[2].metrics["class"] == "bulk"    # the class that gives it back
    assert sim.events[-1].reason == "pool draining"


def test_counts_by_state_match_the_records_through_a_busy_life() -> None:
    sim = Sim(min_size=2, max_size=5, check_interval=5.0, leak_threshold=3.0,
              max_lifetime=50.0, idle_timeout=20.0)
    sim.pump(0.0)
    for t in range(60):
        now = float(t)
        if t % 3 == 0:
            sim.p.submit(("critical", "interactive", "bulk")[t % 9 // 3], now)
            sim.pump(now)
        sim.connect_all(now)
        sim.check_all(now)
        sim.maintain(now)
        for a in list(sim.assigned):
            if a.conn_id in sim.p.records and t % 2:
                sim.assigned.remove(a)
                sim.release(a.conn_id, now)
        live = [r.state for r in sim.p.records.values()]
        for state in State:
            if state not in (S.CLOSED, S.FAILED):
                assert sim.p.counts[state] == live.count(state)
    assert sim.p.counts[S.CLOSED] == len(sim.closed) - sim.p.counts[S.FAILED]


# -- audit: sizing and lifecycle ------------------------------------------------------------------


def test_backoff_survives_a_backend_down_for_a_thousand_failed_connects() -> None:
    """`backoff_base * 2 ** (failures - 1)` overflowed a float past 1024 failures (about six
    hours of a dead backend at the 30 s cap): connect_failed raised, the record stayed
    CONNECTING for good and the pool never connected again."""
    sim = Sim(min_size=1, backoff_base=0.5, backoff_cap=30.0)
    sim.pump(0.0)
    now = 0.0
    for _ in range(1100):
        sim.fail_one(now)
        now = sim.p.next_wakeup(now)
        assert sim.pump(now) == [Connect(sim.connecting[0])]
    assert now < 1100 * 30.0
    sim.connect_one(now)
    assert sim.p.idle == 1


def test_a_success_forgets_the_backoff_of_connects_that_failed_beside_it() -> None:
    """Connects in flight together: three fail, the fourth succeeds. The backend answers, so
    growth goes back to full speed at once, not after the last failure's delay."""
    sim = Sim(min_size=4, max_connecting=4, backoff_base=1.0, backoff_cap=30.0)
    sim.pump(0.0)
    for _ in range(3):
        sim.fail_one(0.0)
    actions = sim.connect_one(0.01)
    assert len(of(Connect, actions)) == 3
    assert sim.p.next_wakeup(0.01) == 0.01 + 1e6


def test_a_connection_retired_while_held_is_still_reported_as_a_leak() -> None:
    """A holder past max_lifetime keeps a DRAINING connection; it can leak just the same."""
    sim = Sim(min_size=1, max_size=2, max_lifetime=100.0, lifetime_jitter=0.0,
              leak_threshold=30.0, check_interval=1000.0)
    (conn,) = sim.open(1)
    sim.hold("bulk", 90.0)
    assert of(Leak, sim.maintain(100.0)) == []
    assert sim.p.records[conn].state is S.DRAINING
    sim.connect_all(100.0)
    assert sim.p.next_wakeup(100.0) == 120.0
    assert of(Leak, sim.maintain(120.0)) == [Leak(conn, 30.0)]
    assert of(Leak, sim.maintain(150.0)) == [], "once per holding"
    assert sim.p.counters["leaked"] == 1


@pytest.mark.parametrize(("n", "at", "key"), [(2.5, None, "target"), (3.0, None, "target"),
                                              (3, math.nan, "target.at"),
                                              (3, math.inf, "target.at")])
def test_set_target_refuses_a_fractional_count_or_a_time_that_never_comes(
        n: Any, at: float | None, key: str) -> None:
    """A float target (a forecast's 2.5 connections) used to be stored, then every pump raised
    TypeError in range(); a NaN or infinite `at` was kept as a target that never takes over."""
    sim = Sim(min_size=1)
    sim.open(1)
    with pytest.raises(ConfigError) as info:
        sim.p.set_target(n, 0.0, at)
    assert info.value.key == key
    assert sim.p.target == 0
    assert sim.pump(1.0) == []


def test_a_connect_retired_before_it_ends_is_replaced_when_it_closes() -> None:
    """As after a check or a release of a retired connection: the close makes room, and the
    floor or the waiters get a replacement then, not at the next maintenance pass."""
    sim = Sim(min_size=1, max_size=1)
    (first,) = [a.conn_id for a in of(Connect, sim.pump(0.0))]
    assert sim.feed(sim.p.retire(first, 0.1, "operator")) == []
    actions = sim.connect_one(0.2)
    assert closes(actions) == [(first, "draining")]
    assert of(Connect, actions) == [Connect(first + 1)]
