"""Hypothesis state machine over PoolPolicy: a shell with explicit time and a model of every
connection's whereabouts, checked against the policy's bookkeeping after every step.

The model knows what a shell knows: which connects and checks are in flight, which connections
it holds (and for which class), which waiters are queued. Actions are fed back exactly as a shell
would carry them out, and each one is checked against the model when it arrives.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from connwise.core.classes import ClassTable
from connwise.core.lifecycle import FINAL, State
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
from connwise.core.scheduler import Waiter, WaiterState
from connwise.errors import ConfigError, TooManyWaiters

CLASSES = ClassTable()
NAMES = CLASSES.names
LEAK_THRESHOLD = 5.0

#: Record states a connection may be in, given what the shell sees it doing.
ALLOWED = {
    "connecting": {State.CONNECTING, State.DRAINING},
    "checking": {State.CHECKING, State.DRAINING},
    "held": {State.IN_USE, State.DRAINING},
    "idle": {State.IDLE},
}


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._p: PoolPolicy | None = None
        self.now = 0.0
        self.phase: dict[int, str] = {}
        self.held_class: dict[int, str] = {}
        self.fresh: dict[int, Assign] = {}          # handed out by an Assign, still refusable
        self.leaked: set[int] = set()
        self.ghosts: set[int] = set()               # in flight when force_close closed them
        self.live: dict[int, Waiter] = {}
        self.assigned_seqs: set[int] = set()
        self.drained = False
        self.steps = 0
        self.total_before = 0

    @property
    def p(self) -> PoolPolicy:
        assert self._p is not None
        return self._p

    # -- feeding actions back -------------------------------------------------------------------

    def process(self, actions: list[Action], *, completing: int | None = None,
                forced: bool = False) -> None:
        """Carry out `actions`; `completing` is the connection whose connect, check or release
        produced them (the only in-flight or held one that may be closed, unless `forced`)."""
        connects = 0
        for a in actions:
            if isinstance(a, Connect):
                assert a.conn_id not in self.phase and a.conn_id not in self.ghosts
                assert self.p.state is PoolState.OPEN, "no connect once the pool drains"
                self.phase[a.conn_id] = "connecting"
                connects += 1
            elif isinstance(a, Check):
                assert self.phase.get(a.conn_id) == "idle", f"check of {a.conn_id}"
                self.phase[a.conn_id] = "checking"
            elif isinstance(a, Assign):
                assert self.phase.get(a.conn_id) == "idle", f"assign of {a.conn_id} " \
                                                            f"({self.phase.get(a.conn_id)})"
                seq = a.waiter.seq
                assert seq in self.live, f"assign to a waiter not waiting: {a.waiter}"
                assert seq not in self.assigned_seqs, "a waiter was assigned twice"
                assert a.waiter.state is WaiterState.GRANTED
                self.assigned_seqs.add(seq)
                del self.live[seq]
                self.phase[a.conn_id] = "held"
                self.held_class[a.conn_id] = a.waiter.class_name
                self.fresh[a.conn_id] = a
            elif isinstance(a, Reject):
                assert a.waiter.seq in self.live
                assert a.reason in ("draining", "displaced")
                del self.live[a.waiter.seq]
            elif isinstance(a, Leak):
                assert self.phase.get(a.conn_id) == "held"
                assert a.conn_id not in self.leaked, "a leak is reported once per holding"
                assert a.held_for >= LEAK_THRESHOLD
                self.leaked.add(a.conn_id)
            else:
                assert isinstance(a, Close)
                if a.conn_id in self.ghosts:
                    assert a.conn_id == completing
                    self.ghosts.discard(a.conn_id)
                    continue
                where = self.phase.get(a.conn_id)
                assert where is not None, f"close of unknown connection {a.conn_id}"
                if where != "idle" and not forced:
                    assert a.conn_id == completing, f"{a} closed a {where} connection"
                self._forget(a.conn_id)
        total = self.p.open_connections + self.p.counts[State.DRAINING]
        if connects:
            assert total <= self.p.limits.max_size, "a connect beyond max_size"
        # A shrink may leave more open than the new max_size (closing is gradual), but then
        # the number only falls.
        assert total <= max(self.p.limits.max_size, self.total_before)
        self.total_before = total

    def _forget(self, conn_id: int) -> None:
        del self.phase[conn_id]
        self.held_class.pop(conn_id, None)
        self.fresh.pop(conn_id, None)
        self.leaked.discard(conn_id)

    def _give_back(self, conn_id: int) -> None:
        """The shell no longer holds `conn_id`; the policy's actions say what became of it."""
        self.phase[conn_id] = "idle"
        self.held_class.pop(conn_id, None)
        self.fresh.pop(conn_id, None)
        self.leaked.discard(conn_id)

    def _completed(self, conn_id: int, actions: list[Action]) -> None:
        """A connect or check of `conn_id` ended: it is idle unless the actions closed it, or
        failed (gone from the records without a Close)."""
        self.phase[conn_id] = "idle"
        self.process(actions, completing=conn_id)
        if conn_id in self.phase and conn_id not in self.p.records:
            self._forget(conn_id)   # connect or check failed: FAILED, nothing to close

    def in_phase(self, name: str) -> list[int]:
        return sorted(c for c, ph in self.phase.items() if ph == name)

    # -- rules --------------------------------------------------------------------------------

    @initialize(seed=st.integers(0, 2**16), min_size=st.integers(0, 4),
                extra=st.integers(0, 4), max_waiters=st.integers(0, 6),
                max_connecting=st.integers(1, 3), trim_step=st.integers(1, 2),
                lifetime=st.sampled_from([None, 20.0, 20.0, 60.0]),
                idle_timeout=st.sampled_from([None, 8.0, 8.0]), warm=st.booleans())
    def setup(self, seed: int, min_size: int, extra: int, max_waiters: int,
              max_connecting: int, trim_step: int, lifetime: float | None,
              idle_timeout: float | None, warm: bool) -> None:
        limits = PoolLimits(min_size=min_size, max_size=max(1, min_size + extra),
                            max_waiters=max_waiters, max_lifetime=lifetime,
                            lifetime_jitter=0.2, idle_timeout=idle_timeout,
                            leak_threshold=LEAK_THRESHOLD, max_connecting=max_connecting,
                            check_interval=4.0, check_interval_floor=0.5,
                            backoff_base=0.5, backoff_cap=4.0, trim_step=trim_step)
        self._p = PoolPolicy(name="machine", limits=limits, classes=CLASSES,
                             rng=random.Random(seed))
        self.process(self.p.pump(self.now))
        if warm:    # start with min_size open, as a pool opened with wait=True
            self.backend_catches_up()

    @precondition(lambda self: self._p is not None and self._p.state is PoolState.OPEN)
    @rule(name=st.sampled_from(NAMES))
    def acquire_now(self, name: str) -> None:
        conn_id = self.p.acquire_now(name, self.now)
        if conn_id is None:
            return
        assert not self.live, "the fast path never jumps the queue"
        assert self.phase.get(conn_id) == "idle"
        self.phase[conn_id] = "held"
        self.held_class[conn_id] = name

    @precondition(lambda self: self._p is not None and self._p.state is PoolState.OPEN)
    @rule(name=st.sampled_from(NAMES),
          timeout=st.none() | st.sampled_from([0.0, 1.0, 3.0, 60.0]))
    def submit(self, name: str, timeout: float | None) -> None:
        try:
            w = self.p.submit(name, self.now, timeout)
        except TooManyWaiters:
            assert len(self.live) >= self.p.limits.max_waiters
            return
        self.live[w.seq] = w
        self.process(self.p.pump(self.now))

    @precondition(lambda self: any(ph == "held" for ph in self.phase.values()))
    @rule(data=st.data(), how=st.sampled_from(["ok", "ok", "failed", "broken"]))
    def release(self, data: st.DataObject, how: str) -> None:
        conn_id = data.draw(st.sampled_from(self.in_phase("held")))
        actions = self.p.release(conn_id, self.now, broken=how == "broken",
                                 failed=how == "failed")
        self._give_back(conn_id)
        self.process(actions, completing=conn_id)
        if how == "broken":
            assert Close(conn_id, "broken") in actions

    @precondition(lambda self: bool(self.fresh))
    @rule(data=st.data())
    def refuse(self, data: st.DataObject) -> None:
        self.refuse_conn(data.draw(st.sampled_from(sorted(self.fresh))))

    def refuse_conn(self, conn_id: int) -> None:
        assign = self.fresh[conn_id]
        actions = self.p.refuse(assign, self.now)
        assert assign.waiter.state is WaiterState.REFUSED
        self._give_back(conn_id)
        self.process(actions, completing=conn_id)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), timed_out=st.booleans())
    def cancel(self, data: st.DataObject, timed_out: bool) -> None:
        seq = data.draw(st.sampled_from(sorted(self.live)))
        assert self.p.cancel(self.live.pop(seq), timed_out=timed_out, now=self.now)

    @precondition(lambda self: bool(self.fresh))
    @rule(data=st.data(), then_refuse=st.booleans())
    def cancel_after_assign(self, data: st.DataObject, then_refuse: bool) -> None:
        """The waiter gives up after its assignment: cancel loses, and a shell refuses."""
        conn_id = data.draw(st.sampled_from(sorted(self.fresh)))
        assert not self.p.cancel(self.fresh[conn_id].waiter, timed_out=True, now=self.now)
        if then_refuse:
            self.refuse_conn(conn_id)

    @precondition(lambda self: any(ph == "connecting" for ph in self.phase.values())
                  or bool(self.ghosts))
    @rule(data=st.data(), ok=st.sampled_from([True, True, False]),
          latency=st.sampled_from([0.01, 0.2, 1.0]))
    def connect_done(self, data: st.DataObject, ok: bool, latency: float) -> None:
        pending = self.in_phase("connecting") + sorted(self.ghosts)
        conn_id = data.draw(st.sampled_from(pending))
        if conn_id in self.ghosts:
            if ok:
                self.process(self.p.connected(conn_id, self.now, latency), completing=conn_id)
            else:
                assert self.p.connect_failed(conn_id, self.now, "refused") == []
                self.ghosts.discard(conn_id)
            assert conn_id not in self.ghosts
            return
        if ok:
            self._completed(conn_id, self.p.connected(conn_id, self.now, latency))
        else:
            self._completed(conn_id, self.p.connect_failed(conn_id, self.now, "refused"))
            assert conn_id not in self.phase

    @precondition(lambda self: any(ph in ("connecting", "checking")
                                   for ph in self.phase.values()))
    @rule()
    def backend_catches_up(self) -> None:
        """Every connect and check in flight succeeds, and those they start too."""
        for _ in range(50):
            busy = self.in_phase("connecting") + self.in_phase("checking")
            if not busy:
                return
            conn_id = busy[0]
            if self.phase[conn_id] == "connecting":
                self._completed(conn_id, self.p.connected(conn_id, self.now, 0.05))
            else:
                self._completed(conn_id, self.p.check_done(conn_id, self.now, 0.002, True))

    @precondition(lambda self: any(ph == "checking" for ph in self.phase.values()))
    @rule(data=st.data(), ok=st.sampled_from([True, True, True, False]),
          latency=st.sampled_from([0.001, 0.002, 0.05, 0.5]))
    def check_done(self, data: st.DataObject, ok: bool, latency: float) -> None:
        conn_id = data.draw(st.sampled_from(self.in_phase("checking")))
        self._completed(conn_id, self.p.check_done(conn_id, self.now, latency, ok, "reset"))
        if not ok:
            assert conn_id not in self.phase

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 30.0]))
    def advance_and_maintain(self, dt: float) -> None:
        self.now += dt
        for w in self.p.expire(self.now):
            assert w.seq in self.live and w.deadline <= self.now
            assert w.state is WaiterState.TIMED_OUT
            del self.live[w.seq]
        assert all(w.deadline > self.now for w in self.live.values()), "a due waiter was kept"
        floor = self.p.floor(self.now)
        actions = self.p.maintain(self.now)
        self.process(actions)
        if any(isinstance(a, Close) and a.reason == "idle_timeout" for a in actions):
            opened = sum(isinstance(a, Connect) for a in actions)
            assert self.p.open_connections - opened >= floor, "trimmed below the floor"
        # No busy loop: a wake-up due at once means the next pass has work to do (or a check
        # in flight holds a connection that expired, which is closed when the check ends).
        if self.p.next_wakeup(self.now) <= self.now:
            again = self.p.maintain(self.now)
            checking_expired = any(rec.state is State.CHECKING and rec.expires_at <= self.now
                                   for rec in self.p.records.values())
            assert again or checking_expired, "next_wakeup asks for a pass with nothing to do"
            self.process(again)

    @rule(dt=st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    def advance_without_maintain(self, dt: float) -> None:
        """Time passes and the shell has not run its maintenance pass yet."""
        self.now += dt

    @precondition(lambda self: self._p is not None and self._p.state is PoolState.OPEN)
    @rule(data=st.data(), ahead=st.sampled_from([None, 0.0, 2.0, 20.0]))
    def set_target(self, data: st.DataObject, ahead: float | None) -> None:
        n = data.draw(st.integers(0, self.p.limits.max_size))
        at = None if ahead is None else self.now + ahead
        self.process(self.p.set_target(n, self.now, at))

    @rule(min_size=st.integers(0, 3) | st.just(-1), max_size=st.integers(1, 7) | st.just(0))
    def resize(self, min_size: int, max_size: int) -> None:
        before = self.p.limits
        try:
            actions = self.p.resize(min_size, max_size, self.now)
        except ConfigError:
            assert not 0 <= min_size <= max_size or max_size < 1
            assert self.p.limits is before
            return
        assert self.p.scheduler.capacity == max_size
        self.process(actions)

    @precondition(lambda self: bool(self.phase))
    @rule(data=st.data())
    def retire(self, data: st.DataObject) -> None:
        conn_id = data.draw(st.sampled_from(sorted(self.phase)))
        actions = self.p.retire(conn_id, self.now, "zombie")
        self.process(actions)

    @precondition(lambda self: bool(self.in_phase("held")))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        """The holder keeps the connection (a relay): the pool forgets it, closing nothing."""
        conn_id = data.draw(st.sampled_from(self.in_phase("held")))
        self._forget(conn_id)
        actions = self.p.detach(conn_id, self.now)
        assert conn_id not in self.p.records
        assert not any(isinstance(a, Close) and a.conn_id == conn_id for a in actions)
        self.process(actions)

    @precondition(lambda self: self._p is not None and self._p.state is PoolState.OPEN
                  and self.steps >= 25)
    @rule()
    def drain(self) -> None:
        self.drained = True
        self.process(self.p.drain(self.now))
        assert not self.live, "every waiter is rejected by a drain"
        assert self.in_phase("idle") == []
        assert self.p.state is not PoolState.OPEN

    @precondition(lambda self: self.drained)
    @rule()
    def force_close(self) -> None:
        inflight = set(self.in_phase("connecting") + self.in_phase("checking"))
        self.process(self.p.force_close(self.now), forced=True)
        assert self.phase == {}
        self.ghosts |= inflight
        assert self.p.state is PoolState.CLOSED
        # Holders coming back late find nothing to give back.
        assert self.p.release(10**6, self.now) == []

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def count_steps(self) -> None:
        self.steps += 1     # drains come late in a run, so that most of it is an open pool

    @invariant()
    def counts_match_the_records(self) -> None:
        if self._p is None:
            return
        by_state = Counter(rec.state for rec in self.p.records.values())
        for state in State:
            if state not in FINAL:
                assert self.p.counts[state] == by_state[state], state
        assert sorted(self.p._idle) == sorted(
            c for c, rec in self.p.records.items() if rec.state is State.IDLE)

    @invariant()
    def the_model_and_the_records_agree(self) -> None:
        if self._p is None:
            return
        records = self.p.records
        assert set(records) == set(self.phase), (sorted(records), sorted(self.phase))
        for conn_id, where in self.phase.items():
            assert records[conn_id].state in ALLOWED[where], (conn_id, where,
                                                              records[conn_id].state)
        assert not self.ghosts & set(records)

    @invariant()
    def slots_match_the_held_connections(self) -> None:
        if self._p is None:
            return
        s = self.p.scheduler
        held = [c for c, ph in self.phase.items() if ph == "held"]
        assert s.in_use == len(held)
        records = self.p.records
        in_use_or_draining_held = sum(1 for c in held
                                      if records[c].state in (State.IN_USE, State.DRAINING))
        assert s.in_use == in_use_or_draining_held
        assert s.in_use == self.p.counts[State.IN_USE] + sum(
            1 for c in held if records[c].state is State.DRAINING)
        expected = Counter(self.held_class.values())
        assert s.in_use_by_class() == {name: expected[name] for name in NAMES}

    @invariant()
    def waiters_match(self) -> None:
        if self._p is None:
            return
        assert self.p.scheduler.waiting == len(self.live)
        assert {w.seq for w in self.p.scheduler.waiters()} == set(self.live)

    @invariant()
    def pool_state_follows_the_records(self) -> None:
        if self._p is None:
            return
        if self.drained:
            assert (self.p.state is PoolState.CLOSED) == (not self.p.records)
        else:
            assert self.p.state is PoolState.OPEN
        stats: dict[str, Any] = self.p.stats(self.now)
        assert stats["state"] == self.p.state.value
        assert repr(self.p).startswith("<PoolPolicy machine [")


# Derandomized so that CI is repeatable; explore with `--hypothesis-seed=N` (seed 1 finds a
# maintenance pass that dips one connection below the floor before reopening: open issue).
PoolMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=50, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# A failure is shrunk to a minimal example, which can take minutes (Hypothesis stops shrinking
# after five): allow that rather than report a bare timeout.
TestPoolPolicy = pytest.mark.timeout(400)(PoolMachine.TestCase)
