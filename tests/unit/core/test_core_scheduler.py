"""Admission scenarios driven by explicit `now` values: order, aging, shares, waits, bounds."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from connwise.core.classes import ClassTable, PriorityClass
from connwise.core.scheduler import Scheduler, Waiter, WaiterState
from connwise.errors import ConfigError, IllegalTransition, TooManyWaiters, UnknownClass

CLASSES = ClassTable()
#: The default ranks and aging without reserved shares: order scenarios test order alone.
UNRESERVED = ClassTable([PriorityClass(c.name, c.rank, 0.0, c.max_wait, c.aging_rate)
                         for c in CLASSES])


def sched(capacity: int = 1, max_waiters: int = 100, owner: str = "pool 'main'") -> Scheduler:
    return Scheduler(CLASSES, capacity=capacity, max_waiters=max_waiters, owner=owner)


def fill(s: Scheduler, class_name: str = "critical") -> int:
    """Take every slot `class_name` may take through the fast path; return how many."""
    taken = 0
    while s.try_admit(class_name):
        taken += 1
    return taken


# -- order ----------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """Waiters (class, arrival) queued on a full scheduler of `capacity`; at `grant_at`, slots
    free one by one and must go to waiters in `expected` order (indexes into `arrivals`)."""

    name: str
    arrivals: list[tuple[str, float]]
    grant_at: float
    expected: list[int]
    capacity: int = 10


ORDER_SCENARIOS = [
    Scenario("priority order", [("bulk", 0.0), ("interactive", 0.0), ("critical", 0.0)],
             grant_at=0.0, expected=[2, 1, 0]),
    Scenario("priority beats arrival", [("bulk", 0.0), ("interactive", 1.0), ("critical", 2.0)],
             grant_at=2.0, expected=[2, 1, 0]),
    Scenario("fifo within a class", [("bulk", 0.0), ("bulk", 0.5), ("bulk", 1.0)],
             grant_at=1.0, expected=[0, 1, 2]),
    Scenario("fifo within a class at the same instant", [("interactive", 3.0)] * 4,
             grant_at=3.0, expected=[0, 1, 2, 3]),
    Scenario("fifo per class, priority across", [("bulk", 0.0), ("critical", 0.1),
                                                 ("bulk", 0.2), ("critical", 0.3)],
             grant_at=0.3, expected=[1, 3, 0, 2]),
    # Aging: bulk reaches effective priority 0.1 * 10 = 1.0 after 10 s, the rank of a fresh
    # interactive waiter; the tie goes to the earlier arrival.
    Scenario("aged bulk ties a fresh interactive and wins by arrival",
             [("bulk", 0.0), ("interactive", 10.0)], grant_at=10.0, expected=[0, 1]),
    Scenario("bulk one tick short of the tie loses",
             [("bulk", 0.0), ("interactive", math.nextafter(10.0, 0.0))],
             grant_at=math.nextafter(10.0, 0.0), expected=[1, 0]),
    # An interactive that waited 2 s (priority 1.4) still beats a bulk that waited 12 s (1.2).
    Scenario("aging compares effective priorities",
             [("bulk", 0.0), ("interactive", 10.0)], grant_at=12.0, expected=[1, 0]),
    # At 16 s a bulk that waited 16 s (1.6) beats an interactive that waited 2 s (1.4).
    Scenario("an aged bulk beats a younger interactive",
             [("bulk", 0.0), ("interactive", 14.0)], grant_at=16.0, expected=[0, 1]),
    # Promotion of bulk happens at exactly 20 s: from then on it is served in promotion order
    # with the top class.
    Scenario("promoted bulk beats a critical that arrived after its promotion",
             [("bulk", 0.0), ("critical", 20.5)], grant_at=20.5, expected=[0, 1]),
    Scenario("promoted bulk ties a critical arriving at its promotion instant, wins by arrival",
             [("bulk", 0.0), ("critical", 20.0)], grant_at=20.0, expected=[0, 1]),
    Scenario("a critical that arrived before the bulk's promotion goes first",
             [("bulk", 0.0), ("critical", 19.5)], grant_at=25.0, expected=[1, 0]),
    Scenario("bulk not yet promoted loses to a fresh critical",
             [("bulk", 0.0), ("critical", math.nextafter(20.0, 0.0))],
             grant_at=math.nextafter(20.0, 0.0), expected=[1, 0]),
    Scenario("interactive is promoted after 5 s",
             [("interactive", 1.0), ("critical", 6.0)], grant_at=6.0, expected=[0, 1]),
    Scenario("promoted waiters are served in promotion order, not arrival order",
             # bulk promoted at 20, interactive (arrived 16) at 21: bulk first
             [("interactive", 16.0), ("bulk", 0.0), ("critical", 22.0)],
             grant_at=22.0, expected=[1, 0, 2]),
]


@pytest.mark.parametrize("sc", ORDER_SCENARIOS, ids=[sc.name for sc in ORDER_SCENARIOS])
def test_grant_order(sc: Scenario) -> None:
    s = Scheduler(UNRESERVED, capacity=sc.capacity, max_waiters=100)
    assert fill(s, "critical") == sc.capacity
    waiters = [s.submit(name, now=at) for name, at in sc.arrivals]
    served: list[int] = []
    for _ in waiters:
        s.release("critical")
        w = s.grant(sc.grant_at)
        assert w is not None
        assert w.state is WaiterState.GRANTED
        assert w.granted_at == sc.grant_at
        served.append(waiters.index(w))
    assert served == sc.expected
    assert s.waiting == 0
    assert s.grant(sc.grant_at) is None


def test_promotion_time_is_arrival_plus_promotion_delay() -> None:
    s = sched()
    fill(s)
    w_bulk = s.submit("bulk", now=3.0)
    w_int = s.submit("interactive", now=4.0)
    w_crit = s.submit("critical", now=4.5)
    assert w_bulk.promoted_at == 23.0
    assert w_int.promoted_at == 9.0
    assert w_crit.promoted_at == 4.5


# -- reserved shares --------------------------------------------------------------------------


@pytest.mark.parametrize(("capacity", "held", "cls", "expected"), [
    # defaults at 10: critical keeps 2, interactive 1
    (10, {}, "bulk", 7),
    (10, {}, "interactive", 8),
    (10, {}, "critical", 10),
    (10, {"critical": 1}, "bulk", 7),           # 9 free, 1 + 1 kept: 7
    (10, {"critical": 1}, "interactive", 8),    # only critical's unused one is kept
    (10, {"critical": 2}, "bulk", 7),           # its reservation is used up
    (10, {"critical": 2, "interactive": 1}, "bulk", 7),
    (10, {"critical": 5}, "interactive", 5),    # critical's share is covered: no reservation
    (10, {"bulk": 7}, "interactive", 1),
    (10, {"bulk": 7}, "critical", 3),
    (5, {}, "bulk", 3),                         # 20% and 10% of 5 both round up to one slot
    (2, {}, "bulk", 1),                         # the lowest class keeps one slot of two
    (2, {}, "interactive", 1),
    (1, {}, "bulk", 1),                         # nothing kept back from a single slot
])
def test_reserved_shares_bound_lower_classes(capacity: int, held: dict[str, int], cls: str,
                                             expected: int) -> None:
    s = sched(capacity=capacity)
    for name, n in held.items():
        for _ in range(n):
            assert s.try_admit(name)
    assert fill(s, cls) == expected
    assert s.in_use_by_class()[cls] == held.get(cls, 0) + expected


def test_bulk_waiter_cannot_take_the_last_slots_but_critical_can_take_all() -> None:
    s = sched(capacity=10)
    assert fill(s, "bulk") == 7
    bulk = s.submit("bulk", now=0.0)
    assert s.grant(0.0) is None            # 3 free, all reserved
    assert s.allowed("critical") and s.allowed("interactive") and not s.allowed("bulk")
    crit = [s.submit("critical", now=0.0) for _ in range(3)]
    assert [s.grant(1.0) for _ in range(3)] == crit
    assert s.in_use == s.capacity == 10
    assert s.grant(1.0) is None
    # A bulk slot comes back: it is kept for interactive, whose reservation is unused.
    s.release("bulk")
    assert s.grant(1.0) is None
    # A second one is free beyond every reservation: the bulk waiter takes it.
    s.release("bulk")
    assert s.grant(1.0) is bulk


def test_a_reserved_slot_freed_by_critical_is_not_taken_by_bulk() -> None:
    s = sched(capacity=4)                    # critical keeps 1 (20% of 4 rounds up), inter 1
    assert s.reserved_by_class() == {"critical": 1, "interactive": 1, "bulk": 0}
    assert s.try_admit("critical")
    assert s.try_admit("bulk") and s.try_admit("bulk")
    bulk = s.submit("bulk", now=0.0)
    assert s.grant(0.0) is None              # 1 free, kept for interactive
    s.release("critical")                    # 2 free: 1 for critical, 1 for interactive
    assert s.grant(100.0) is None            # no matter how long bulk waited
    inter = s.submit("interactive", now=100.0)
    assert s.grant(100.0) is inter
    assert s.grant(100.0) is None
    assert bulk.state is WaiterState.WAITING


# -- waits and deadlines ------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "timeout", "wait"), [
    ("critical", None, 5.0), ("critical", 2.0, 2.0), ("critical", 60.0, 5.0),
    ("interactive", None, 10.0), ("interactive", 10.0, 10.0), ("bulk", None, 30.0),
    ("bulk", 0.25, 0.25), ("bulk", 0.0, 0.0),
])
def test_deadline_is_min_of_timeout_and_max_wait_and_fires_exactly_then(
        cls: str, timeout: float | None, wait: float) -> None:
    s = sched()
    fill(s)
    arrived = 100.1
    w = s.submit(cls, now=arrived, timeout=timeout)
    deadline = arrived + wait
    assert w.deadline == deadline
    assert s.next_deadline() == deadline
    assert s.expire(math.nextafter(deadline, -math.inf)) == []
    assert w.state is WaiterState.WAITING
    assert s.expire(deadline) == [w]
    assert w.state is WaiterState.TIMED_OUT  # type: ignore[comparison-overlap]
    assert s.waiting == 0
    assert s.next_deadline() is None
    assert s.expire(deadline + 1000) == []
    s.release("critical")
    assert s.grant(deadline) is None, "an expired waiter is never granted"


def test_expire_returns_all_due_waiters_in_deadline_order_and_keeps_the_rest() -> None:
    s = sched()
    fill(s)
    a = s.submit("bulk", now=0.0, timeout=3.0)
    b = s.submit("critical", now=0.0)              # 5 s
    c = s.submit("interactive", now=1.0, timeout=1.0)
    d = s.submit("bulk", now=1.0)                   # 31 s
    assert s.next_deadline() == 2.0
    assert s.expire(3.0) == [c, a]
    assert s.next_deadline() == 5.0
    assert s.waiting_by_class() == {"critical": 1, "interactive": 0, "bulk": 1}
    assert s.expire(5.0) == [b]
    assert s.next_deadline() == 31.0
    assert s.waiters() == [d]


def test_next_deadline_skips_granted_and_cancelled_waiters() -> None:
    s = sched(capacity=1)
    fill(s)
    first = s.submit("critical", now=0.0, timeout=1.0)
    second = s.submit("critical", now=0.0, timeout=2.0)
    third = s.submit("critical", now=0.0, timeout=3.0)
    assert s.next_deadline() == 1.0
    s.release("critical")
    assert s.grant(0.5) is first
    assert s.next_deadline() == 2.0
    assert s.cancel(second)
    assert s.next_deadline() == 3.0
    assert s.cancel(third)
    assert s.next_deadline() is None


def test_many_waiters_with_the_same_deadline_expire_together() -> None:
    s = sched()
    fill(s)
    ws = [s.submit("bulk", now=0.0, timeout=1.0) for _ in range(5)]
    assert s.expire(1.0) == ws


# -- the bound on waiters ---------------------------------------------------------------------


def test_too_many_waiters_at_the_bound_names_owner_class_and_limit() -> None:
    s = sched(max_waiters=2, owner="pool 'orders'")
    fill(s)
    s.submit("critical", now=0.0)
    kept = s.submit("critical", now=0.0)
    # Full, and nobody ranked below the newcomer to push out: refused.
    for name in ("critical", "interactive", "bulk"):
        with pytest.raises(TooManyWaiters) as info:
            s.submit(name, now=0.0)
        err = info.value
        assert (err.owner, err.class_name, err.limit) == ("pool 'orders'", name, 2)
        assert "pool 'orders'" in str(err)
        assert f"{name!r}" in str(err)
        assert "2 callers" in str(err)
    assert s.waiting == 2
    assert s.take_displaced() == []
    assert s.cancel(kept)
    s.submit("critical", now=0.0)               # room again
    assert s.waiting == 2


def test_a_full_queue_displaces_the_newest_waiter_of_the_lowest_class_below() -> None:
    s = sched(max_waiters=3)
    fill(s)
    a = s.submit("bulk", now=0.0)
    b = s.submit("bulk", now=1.0)
    c = s.submit("interactive", now=2.0)
    d = s.submit("critical", now=3.0)           # pushes out b: newest of the lowest class
    assert b.state is WaiterState.DISPLACED
    assert s.take_displaced() == [b]
    assert s.take_displaced() == [], "each displaced waiter is handed over once"
    e = s.submit("interactive", now=4.0)        # pushes out a: bulk ranks below interactive
    assert s.take_displaced() == [a]
    with pytest.raises(TooManyWaiters):
        s.submit("interactive", now=5.0)        # nobody below interactive waits any more
    g = s.submit("critical", now=6.0)           # pushes out e, the newest interactive
    assert s.take_displaced() == [e]
    assert s.waiting == 3
    assert s.waiting_by_class() == {"critical": 2, "interactive": 1, "bulk": 0}
    assert sorted(w.seq for w in s.waiters()) == [c.seq, d.seq, g.seq]
    # A displaced waiter is gone: it cannot be cancelled, expired or granted.
    assert not s.cancel(b)
    assert s.next_deadline() == d.deadline
    assert s.expire(100.0) == [d, g, c]
    assert b.state is a.state is e.state is WaiterState.DISPLACED
    s.release("critical")
    assert s.grant(100.0) is None


def test_zero_waiters_refuses_all_waiting_but_not_the_fast_path() -> None:
    s = sched(capacity=1, max_waiters=0)
    with pytest.raises(TooManyWaiters):
        s.submit("critical", now=0.0)
    assert s.try_admit("critical")


def test_negative_max_waiters_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        Scheduler(CLASSES, capacity=1, max_waiters=-1)
    assert info.value.key == "max_waiters"


# -- cancel, refuse, release --------------------------------------------------------------------


def test_cancel_before_grant_wins_and_cancel_after_grant_loses() -> None:
    s = sched(capacity=1)
    fill(s)
    a = s.submit("critical", now=0.0)
    b = s.submit("critical", now=0.0)
    assert s.cancel(a)
    assert a.state is WaiterState.CANCELLED
    assert not s.cancel(a), "a second cancel is a no-op"
    s.release("critical")
    assert s.grant(1.0) is b, "the cancelled waiter is skipped"
    assert not s.cancel(b), "a granted waiter owns its slot; cancel says so"
    assert b.state is WaiterState.GRANTED
    assert s.in_use == 1


def test_refuse_returns_the_slot_to_the_next_waiter() -> None:
    s = sched(capacity=1)
    fill(s)
    a = s.submit("interactive", now=0.0)
    b = s.submit("bulk", now=0.0)
    s.release("critical")
    assert s.grant(1.0) is a
    assert s.in_use_by_class()["interactive"] == 1
    s.refuse(a)
    assert a.state is WaiterState.REFUSED
    assert s.in_use == 0
    assert s.in_use_by_class()["interactive"] == 0
    assert s.grant(1.0) is b


@pytest.mark.parametrize("state", ["waiting", "refused", "cancelled", "timed_out"])
def test_refuse_of_a_waiter_not_granted_is_illegal(state: str) -> None:
    s = sched(capacity=1)
    fill(s)
    w = s.submit("bulk", now=0.0, timeout=1.0)
    if state == "refused":
        s.release("critical")
        assert s.grant(0.0) is w
        s.refuse(w)
    elif state == "cancelled":
        s.cancel(w)
    elif state == "timed_out":
        s.expire(1.0)
    in_use = s.in_use
    with pytest.raises(IllegalTransition) as info:
        s.refuse(w)
    assert info.value.state == state
    assert info.value.trigger == "refuse"
    assert f"connection {w.seq} of 'waiter of bulk'" in str(info.value)
    assert s.in_use == in_use


def test_release_of_a_slot_not_held_is_illegal() -> None:
    s = sched(capacity=2)
    assert s.try_admit("bulk")
    with pytest.raises(IllegalTransition) as info:
        s.release("critical")
    assert "holding no critical slot" in str(info.value)
    assert s.in_use == 1
    s.release("bulk")
    assert s.in_use == 0


def test_unknown_class_names() -> None:
    s = sched()
    for call in (lambda: s.submit("nope", now=0.0), lambda: s.try_admit("nope")):
        with pytest.raises(UnknownClass) as info:
            call()
        assert "'nope'" in str(info.value)
        assert "critical, interactive, bulk" in str(info.value)
    assert s.waiting == 0 and s.in_use == 0


# -- fast path and capacity ---------------------------------------------------------------------


def test_fast_path_is_closed_while_anyone_waits() -> None:
    s = sched(capacity=3)
    assert s.try_admit("critical")
    assert s.try_admit("critical")
    assert s.try_admit("critical")
    w = s.submit("interactive", now=0.0)
    s.release("critical")
    assert not s.try_admit("critical"), "a newcomer may not jump the queue"
    assert s.grant(0.0) is w
    assert s.try_admit("critical") is False     # full again
    s.release("critical")
    assert s.try_admit("critical")


def test_set_capacity_grows_shrinks_and_recomputes_reservations() -> None:
    s = sched(capacity=2)
    assert s.reserved_by_class() == {"critical": 1, "interactive": 0, "bulk": 0}
    assert fill(s, "critical") == 2
    w = s.submit("bulk", now=0.0)
    assert s.grant(0.0) is None
    s.set_capacity(3)
    assert s.reserved_by_class() == {"critical": 1, "interactive": 1, "bulk": 0}
    assert s.grant(0.0) is None                 # the one free slot is interactive's
    s.set_capacity(10)
    assert s.reserved_by_class() == {"critical": 2, "interactive": 1, "bulk": 0}
    assert s.grant(0.0) is w
    # Shrink below what is held: nothing is taken back, nothing new is given.
    s.set_capacity(1)
    assert s.in_use == 3 and s.capacity == 1
    assert not s.try_admit("critical")
    s.release("critical")
    s.release("critical")
    assert not s.try_admit("critical")
    s.release("bulk")
    assert s.try_admit("critical")


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_below_one_is_a_config_error(capacity: int) -> None:
    with pytest.raises(ConfigError) as info:
        sched(capacity=capacity)
    assert info.value.key == "capacity"
    s = sched(capacity=4)
    with pytest.raises(ConfigError):
        s.set_capacity(capacity)
    assert s.capacity == 4


def test_observation() -> None:
    s = sched(capacity=3, owner="pool 'main'")
    assert s.try_admit("bulk")
    s.try_admit("critical")
    s.try_admit("critical")
    s.submit("bulk", now=0.0)
    w = s.submit("interactive", now=0.0)
    assert s.in_use_by_class() == {"critical": 2, "interactive": 0, "bulk": 1}
    assert s.waiting_by_class() == {"critical": 0, "interactive": 1, "bulk": 1}
    assert repr(s) == "<Scheduler pool 'main' [in use 3/3 | waiting 2]>"
    assert repr(w) == f"<Waiter {w.seq} interactive waiting>"
    assert isinstance(w, Waiter) and w.token is None
    tok = object()
    assert s.submit("bulk", now=0.0, token=tok).token is tok


def test_custom_classes_and_equal_ranks_share_promotion_order() -> None:
    table = ClassTable([PriorityClass("a", rank=1), PriorityClass("b", rank=1),
                        PriorityClass("c", rank=0, aging_rate=1.0)])
    s = Scheduler(table, capacity=1, max_waiters=10)
    assert s.try_admit("a")
    wb = s.submit("b", now=0.0)
    wc = s.submit("c", now=0.5)     # promoted at 1.5
    wa = s.submit("a", now=1.0)
    out: list[Waiter] = []
    for _ in range(3):
        s.release(out[-1].class_name if out else "a")
        got = s.grant(2.0)
        assert got is not None
        out.append(got)
    assert out == [wb, wa, wc]


# -- the starvation bound, with numbers -----------------------------------------------------------


def test_starvation_bound_under_a_saturating_critical_stream() -> None:
    """Capacity 2, every holder keeps its slot 1 s, the two slots staggered so that one frees every
    0.5 s; a critical arrives every 0.5 s and two criticals are already queued, so every slot that
    frees finds critical work waiting: without aging the bulk waiter would never be served.

    Bulk arrives at 0.25 and is promoted at 0.25 + promotion_delay('bulk') = 20.25. At that moment
    the criticals that arrived at 19.5 and 20.0 are waiting: they were promoted before it (a
    critical is promoted on arrival), so they are served at 20.5 and 21.0, and the bulk waiter
    takes the next slot, at 21.5. The bound of the docstring, with numbers:
    wait <= promotion_delay (20) + time to serve those promoted before it (2 slots at 0.5 s
    each, the first free 0.25 s after promotion, so 1.0 s) + the wait for its own slot (0.25 s).
    """
    s = sched(capacity=2)
    delay = CLASSES.promotion_delay("bulk")
    assert delay == 20.0
    # Holders: (release time, class). Slot A frees at 0.5, 1.5, ...; slot B at 1.0, 2.0, ...
    assert s.try_admit("critical") and s.try_admit("critical")
    holders: list[tuple[float, str]] = [(0.5, "critical"), (1.0, "critical")]
    queued = [s.submit("critical", now=0.0), s.submit("critical", now=0.0)]
    bulk: Waiter | None = None
    bulk_granted_at: float | None = None
    overtaken_while_allowed = 0
    waiting_ahead_at_promotion: list[Waiter] = []
    step = 0
    while bulk_granted_at is None:
        step += 1
        now = step * 0.25
        assert now < 60.0
        if bulk is None and now == 0.25:
            bulk = s.submit("bulk", now=now)
            continue
        if step % 2:                      # odd quarter-steps: only check promotion
            if bulk is not None and now == bulk.promoted_at:
                waiting_ahead_at_promotion = [w for w in s.waiters()
                                              if w.promoted_at < bulk.promoted_at]
            continue
        queued.append(s.submit("critical", now=now))
        assert s.expire(now) == [], "the criticals never wait long enough to time out"
        while holders and holders[0][0] <= now:
            _, cls = holders.pop(0)
            s.release(cls)
            bulk_allowed = s.allowed("bulk")
            w = s.grant(now)
            assert w is not None, "the scheduler is saturated: a slot always finds a waiter"
            if w is bulk:
                bulk_granted_at = now
            elif bulk_allowed:
                overtaken_while_allowed += 1
            holders.append((now + 1.0, w.class_name))
            holders.sort()
    assert bulk is not None
    # Before its promotion the bulk waiter was eligible at every release but lost each time.
    assert overtaken_while_allowed == 2 * 20 + 2   # releases at 0.5, 1.0, ..., 21.0
    assert [w.arrived for w in waiting_ahead_at_promotion] == [19.5, 20.0]
    assert bulk_granted_at == 21.5
    bound = bulk.arrived + delay + len(waiting_ahead_at_promotion) * 0.5 + 0.5
    assert bulk_granted_at <= bound == 21.75
