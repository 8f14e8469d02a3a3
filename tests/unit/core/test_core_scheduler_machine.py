"""Hypothesis state machine over Scheduler: a model of slots and waiters checked at every step.

The model keeps its own account of who waits, who holds a slot and what was reserved, and an
independent reference of the grant order (the docstring's rule applied to *all* live waiters, not
only the class heads). At every grant it checks the reserved shares and the starvation bound; at
every expiry, that exactly the waiters due at `now` time out; at every submit to a full queue,
that the documented waiter is displaced or TooManyWaiters raised. After every step it also probes,
on a copy, the grant the scheduler would make in that state.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from connwise.core.classes import ClassTable, PriorityClass
from connwise.core.scheduler import Scheduler, Waiter, WaiterState
from connwise.errors import TooManyWaiters

TABLES = {
    "default": ClassTable(),
    # Two top classes of equal rank, a reserving middle class that ages fast, a slow bottom one.
    "custom": ClassTable([
        PriorityClass("gold", rank=3, reserved_share=0.3, max_wait=4.0),
        PriorityClass("silver", rank=3, reserved_share=0.1, max_wait=8.0),
        PriorityClass("bronze", rank=1, reserved_share=0.2, max_wait=12.0, aging_rate=0.5),
        PriorityClass("lead", rank=0, reserved_share=0.0, max_wait=40.0, aging_rate=0.25),
    ]),
}

DURATIONS = st.one_of(st.sampled_from([0.0, 0.25, 1.0, 2.0, 4.0, 5.0, 10.0, 20.0]),
                      st.floats(min_value=0.0, max_value=12.0, allow_nan=False))
TIMEOUTS = st.one_of(st.none(), st.none(), st.sampled_from([0.0, 0.5, 2.0, 5.0, 100.0]),
                     st.floats(min_value=0.0, max_value=45.0, allow_nan=False))


@dataclass
class Slot:
    class_name: str
    waiter: Waiter | None    # the waiter it was granted to; None for the fast path


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._s: Scheduler | None = None
        self.table = TABLES["default"]
        self.now = 0.0
        self.live: dict[int, Waiter] = {}
        self.held: list[Slot] = []
        self.outcome: dict[int, WaiterState] = {}
        self.granted_seqs: set[int] = set()

    @property
    def s(self) -> Scheduler:
        assert self._s is not None
        return self._s

    # -- the model's own view ---------------------------------------------------------------

    def held_by_class(self) -> dict[str, int]:
        counts = dict.fromkeys(self.table.names, 0)
        for slot in self.held:
            counts[slot.class_name] += 1
        return counts

    def unused_above(self, class_name: str) -> int:
        """Unused reservations of every class ranked strictly above `class_name`."""
        rank = self.table[class_name].rank
        reserved = self.table.reserved_slots(self.s.capacity)
        held = self.held_by_class()
        return sum(max(0, reserved[c.name] - held[c.name]) for c in self.table
                   if c.rank > rank)

    def model_allowed(self, class_name: str) -> bool:
        free = self.s.capacity - len(self.held)
        return free > 0 and free > self.unused_above(class_name)

    def expected_victim(self, name: str) -> Waiter | None:
        """The waiter a newcomer of `name` pushes out of a full queue: the newest of the lowest
        class (the last defined, among equal ranks) ranked strictly below the newcomer's."""
        rank = self.table[name].rank
        for cls in reversed(self.table.classes):
            if cls.rank >= rank:
                return None
            mine = [w for w in self.live.values() if w.class_name == cls.name]
            if mine:
                return max(mine, key=lambda w: w.seq)
        return None

    def promoted_at(self, w: Waiter) -> float:
        return w.arrived + self.table.promotion_delay(w.class_name)

    def key(self, w: Waiter) -> tuple[int, float, int]:
        if self.now >= self.promoted_at(w):
            return (1, -self.promoted_at(w), -w.seq)
        cls = self.table[w.class_name]
        return (0, cls.rank + cls.aging_rate * (self.now - w.arrived), -w.seq)

    # -- rules --------------------------------------------------------------------------------

    @initialize(table=st.sampled_from(sorted(TABLES)), capacity=st.integers(1, 6),
                max_waiters=st.integers(0, 10), start=st.sampled_from([0.0, 1000.5]),
                prefill=st.booleans())
    def setup(self, table: str, capacity: int, max_waiters: int, start: float,
              prefill: bool) -> None:
        self.table = TABLES[table]
        self.now = start
        self._s = Scheduler(self.table, capacity=capacity, max_waiters=max_waiters,
                            owner="machine")
        if prefill:     # start saturated, so that waiters queue up and compete
            top = self.table.names[0]
            while self.s.try_admit(top):
                self.held.append(Slot(top, None))

    @rule(data=st.data(), count=st.integers(1, 3))
    def submit(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            self._submit(data.draw(st.sampled_from(self.table.names)), data.draw(TIMEOUTS))

    def _submit(self, name: str, timeout: float | None) -> None:
        victim: Waiter | None = None
        if len(self.live) >= self.s.max_waiters:
            victim = self.expected_victim(name)
            if victim is None:
                try:
                    self.s.submit(name, self.now, timeout)
                except TooManyWaiters as err:
                    assert (err.owner, err.class_name, err.limit) == ("machine", name,
                                                                      self.s.max_waiters)
                else:
                    raise AssertionError("a full queue with nobody below must raise "
                                         "TooManyWaiters")
                assert self.s.take_displaced() == []
                return
        w = self.s.submit(name, self.now, timeout)
        displaced = self.s.take_displaced()
        if victim is None:
            assert displaced == []
        else:
            assert displaced == [victim], f"{name} displaced {displaced}, expected {victim}"
            assert victim.state is WaiterState.DISPLACED
            del self.live[victim.seq]
            self.outcome[victim.seq] = WaiterState.DISPLACED
        max_wait = self.table[name].max_wait
        assert w.deadline == self.now + (max_wait if timeout is None else min(timeout, max_wait))
        assert w.promoted_at == self.promoted_at(w)
        assert w.seq not in self.outcome and w.seq not in self.live
        self.live[w.seq] = w

    @rule(data=st.data())
    def try_admit(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.table.names))
        expected = not self.live and self.model_allowed(name)
        assert self.s.try_admit(name) is expected
        if expected:
            self.held.append(Slot(name, None))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release_and_grant(self, data: st.DataObject) -> None:
        """What a shell does when a unit comes back: release its slot, serve the best waiter."""
        self.release(data)
        self.grant()

    @rule()
    def grant(self) -> None:
        allowed = {name: self.model_allowed(name) for name in self.table.names}
        candidates = [w for w in self.live.values() if allowed[w.class_name]]
        got = self.s.grant(self.now)
        if not candidates:
            assert got is None, f"{got} granted although no live waiter may take a slot"
            return
        best = max(candidates, key=self.key)
        assert got is best, f"granted {got}, the reference order says {best}"
        assert got.seq not in self.granted_seqs, "a waiter was granted twice"
        assert got.state is WaiterState.GRANTED
        assert got.granted_at == self.now
        # Starvation bound: nobody that could have taken this slot was overtaken by a waiter
        # that arrived more than its promotion delay after it.
        for x in candidates:
            if x is not got:
                assert not got.arrived > x.arrived + self.table.promotion_delay(x.class_name), (
                    f"{x} (arrived {x.arrived}) overtaken by {got} (arrived {got.arrived})")
        del self.live[got.seq]
        self.granted_seqs.add(got.seq)
        self.outcome[got.seq] = WaiterState.GRANTED
        self.held.append(Slot(got.class_name, got))
        # Reserved shares: what is left still covers the unused reservations above the class.
        free = self.s.capacity - len(self.held)
        assert free >= self.unused_above(got.class_name)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        slot = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.s.release(slot.class_name)

    @precondition(lambda self: any(slot.waiter is not None for slot in self.held))
    @rule(data=st.data())
    def refuse(self, data: st.DataObject) -> None:
        granted = [slot for slot in self.held if slot.waiter is not None]
        slot = data.draw(st.sampled_from(granted))
        assert slot.waiter is not None
        self.s.refuse(slot.waiter)
        self.held.remove(slot)
        assert slot.waiter.state is WaiterState.REFUSED
        self.outcome[slot.waiter.seq] = WaiterState.REFUSED

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        seq = data.draw(st.sampled_from(sorted(self.live)))
        w = self.live.pop(seq)
        assert self.s.cancel(w)
        assert w.state is WaiterState.CANCELLED
        self.outcome[seq] = WaiterState.CANCELLED

    @precondition(lambda self: any(slot.waiter is not None for slot in self.held))
    @rule(data=st.data())
    def cancel_after_grant(self, data: st.DataObject) -> None:
        granted = [slot.waiter for slot in self.held if slot.waiter is not None]
        w = data.draw(st.sampled_from(granted))
        in_use = self.s.in_use
        assert not self.s.cancel(w), "cancel must lose against a grant that came first"
        assert w.state is WaiterState.GRANTED
        assert self.s.in_use == in_use

    def _expire(self) -> None:
        due = {seq for seq, w in self.live.items() if w.deadline <= self.now}
        expired = self.s.expire(self.now)
        assert {w.seq for w in expired} == due, "timeouts must fire exactly at their deadline"
        assert len(expired) == len(due), "a waiter expired twice"
        assert [w.deadline for w in expired] == sorted(w.deadline for w in expired)
        for w in expired:
            assert w.state is WaiterState.TIMED_OUT
            del self.live[w.seq]
            self.outcome[w.seq] = WaiterState.TIMED_OUT

    @rule(dt=DURATIONS)
    def advance(self, dt: float) -> None:
        self.now += dt
        self._expire()

    @precondition(lambda self: bool(self.live))
    @rule()
    def advance_to_next_deadline(self) -> None:
        deadline = self.s.next_deadline()
        assert deadline == min(w.deadline for w in self.live.values())
        before = math.nextafter(deadline, -math.inf)
        if before >= self.now:
            self.now = before
            self._expire()
            assert all(w.deadline > self.now for w in self.live.values())
        self.now = max(self.now, deadline)
        self._expire()

    @rule(data=st.data())
    def set_capacity(self, data: st.DataObject) -> None:
        capacity = data.draw(st.integers(max(1, len(self.held)), 8))
        self.s.set_capacity(capacity)
        assert self.s.reserved_by_class() == self.table.reserved_slots(capacity)

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def slots_match(self) -> None:
        if self._s is None:
            return
        s = self.s
        assert s.in_use <= s.capacity
        assert s.in_use == len(self.held)
        assert s.in_use_by_class() == self.held_by_class()
        assert sum(s.in_use_by_class().values()) == s.in_use

    @invariant()
    def waiters_match(self) -> None:
        if self._s is None:
            return
        s = self.s
        assert s.waiting == len(self.live)
        by_class = dict.fromkeys(self.table.names, 0)
        for w in self.live.values():
            by_class[w.class_name] += 1
            assert w.state is WaiterState.WAITING
        assert s.waiting_by_class() == by_class
        assert {w.seq for w in s.waiters()} == set(self.live)
        assert s.waiting <= s.max_waiters
        expected = min((w.deadline for w in self.live.values()), default=None)
        assert s.next_deadline() == expected

    @invariant()
    def outcomes_are_final_and_single(self) -> None:
        assert not set(self.live) & set(self.outcome)
        for slot in self.held:
            if slot.waiter is not None:
                assert slot.waiter.state is WaiterState.GRANTED
                assert self.outcome[slot.waiter.seq] is WaiterState.GRANTED

    @invariant()
    def a_grant_now_would_follow_the_reference(self) -> None:
        """Probe, on a copy, the grant every state would give: the rules grant only now and then,
        the probe checks the order and the reserved shares in every state the machine visits."""
        if self._s is None:
            return
        allowed = {name: self.model_allowed(name) for name in self.table.names}
        candidates = [w for w in self.live.values() if allowed[w.class_name]]
        got = copy.deepcopy(self.s).grant(self.now)
        if not candidates:
            assert got is None, f"{got} would be granted although no waiter may take a slot"
        else:
            assert got is not None
            assert got.seq == max(candidates, key=self.key).seq

    @invariant()
    def admissible_waiting_matches_the_model(self) -> None:
        """Per class, the waiters the free slots left by higher reservations could serve; at
        most the free slots in all."""
        if self._s is None:
            return
        free = self.s.capacity - len(self.held)
        total = 0
        for name in self.table.names:
            waiting = sum(1 for w in self.live.values() if w.class_name == name)
            total += min(waiting, max(0, free - self.unused_above(name)))
        assert self.s.admissible_waiting() == min(total, max(0, free))

    @invariant()
    def allowed_matches_the_model(self) -> None:
        if self._s is None:
            return
        for name in self.table.names:
            assert self.s.allowed(name) is self.model_allowed(name)


SchedulerMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# A failure is shrunk to a minimal example, which can take minutes (Hypothesis stops shrinking
# after five): allow that rather than report a bare timeout.
TestScheduler = pytest.mark.timeout(400)(SchedulerMachine.TestCase)


# -- the grant order alone, over long queues ------------------------------------------------------

#: The rank and aging of the default and custom tables, with waits long enough that nobody expires.
PATIENT = {
    name: ClassTable([PriorityClass(c.name, c.rank, c.reserved_share, 1e6, c.aging_rate)
                      for c in table])
    for name, table in TABLES.items()
}


def reference_key(table: ClassTable, w: Waiter, now: float) -> tuple[int, float, int]:
    promoted_at = w.arrived + table.promotion_delay(w.class_name)
    if now >= promoted_at:
        return (1, -promoted_at, -w.seq)
    cls = table[w.class_name]
    return (0, cls.rank + cls.aging_rate * (now - w.arrived), -w.seq)


@settings(max_examples=300, deadline=None)
@given(table_name=st.sampled_from(sorted(PATIENT)), data=st.data(),
       gaps=st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0, 4.0, 7.5, 10.0]) |
                     st.floats(min_value=0.0, max_value=15.0), min_size=1, max_size=12))
def test_grant_order_matches_the_reference(table_name: str, data: st.DataObject,
                                           gaps: list[float]) -> None:
    """Waiters of random classes arrive at random times on a saturated scheduler without
    reservations in the way; slots then free one by one at random later times. Every grant goes
    to the waiter the documented order ranks first among *all* live waiters, and never overtakes
    one that arrived more than its promotion delay earlier."""
    table = PATIENT[table_name]
    free_table = ClassTable([PriorityClass(c.name, c.rank, 0.0, c.max_wait, c.aging_rate)
                             for c in table])
    s = Scheduler(free_table, capacity=1, max_waiters=100)
    assert s.try_admit(table.names[0])
    held = table.names[0]
    now = 0.0
    live: list[Waiter] = []
    for gap in gaps:
        now += gap
        live.append(s.submit(data.draw(st.sampled_from(table.names)), now))
    while live:
        now += data.draw(st.sampled_from([0.0, 0.5, 2.0, 5.0, 12.0]))
        s.release(held)
        got = s.grant(now)
        best = max(live, key=lambda w: reference_key(table, w, now))
        assert got is best
        for x in live:
            assert not got.arrived > x.arrived + table.promotion_delay(x.class_name)
        live.remove(got)
        held = got.class_name
