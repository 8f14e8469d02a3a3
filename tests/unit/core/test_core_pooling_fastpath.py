"""The fast paths of `acquire_now` and `release` (taken when no listener subscribes) against the
general path (`_move`, taken with a listener): the same random sequence of events through both
must leave the same actions, counters, waits, records and idle stack at every step."""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any

import pytest

from connwise.core.classes import ClassTable, PriorityClass
from connwise.core.lifecycle import LifecycleEvent, State, Trigger
from connwise.core.pooling import (
    Action,
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
from connwise.errors import TooManyWaiters

CLASSES = [PriorityClass("critical", rank=2, max_wait=5.0, reserved_share=0.2),
           PriorityClass("bulk", rank=0, max_wait=5.0, aging_rate=1.0)]


def policy(listener: Any) -> PoolPolicy:
    return PoolPolicy(name="p", limits=PoolLimits(min_size=2, max_size=6, max_waiters=8,
                                                  max_lifetime=5.0, idle_timeout=2.0,
                                                  leak_threshold=3.0, check_interval=1.5,
                                                  max_connecting=2),
                      classes=ClassTable(CLASSES), rng=random.Random(3), listener=listener)


def shape(action: Action) -> tuple[Any, ...]:
    """An action as comparable data (a waiter by its sequence number)."""
    if isinstance(action, Assign):
        return ("assign", action.conn_id, action.waiter.seq)
    if isinstance(action, Reject):
        return ("reject", action.waiter.seq, action.reason)
    if isinstance(action, Close):
        return ("close", action.conn_id, action.reason)
    if isinstance(action, Leak):
        return ("leak", action.conn_id, action.held_for)
    assert isinstance(action, Connect | Check)
    return (type(action).__name__, action.conn_id)


def state_of(p: PoolPolicy, now: float) -> dict[str, Any]:
    """Everything the bookkeeping of an acquire or a release touches."""
    return {
        "stats": p.stats(now),
        "queue_waits": {n: h.snapshot() for n, h in p.scheduler.queue_waits().items()},
        "idle": list(p._idle),
        "records": {i: (r.state, r.class_name, r.acquired_at, r.idle_since, r.leak_reported,
                        r.expires_at, asdict(r.quality)) for i, r in p.records.items()},
        "wakeup": p.next_wakeup(now),
    }


class Driven:
    """One policy with the shell's side: held connections, connects and checks in flight."""

    def __init__(self, listener: Any) -> None:
        self.p = policy(listener)
        self.held: list[int] = []
        self.connecting: list[int] = []
        self.checking: list[int] = []
        self.waiters: list[Waiter] = []

    def run(self, actions: list[Action], now: float) -> list[tuple[Any, ...]]:
        done = []
        for action in actions:
            done.append(shape(action))
            if isinstance(action, Connect):
                self.connecting.append(action.conn_id)
            elif isinstance(action, Check):
                self.checking.append(action.conn_id)
            elif isinstance(action, Assign):
                self.held.append(action.conn_id)
        return done

    def step(self, op: str, pick: float, now: float) -> list[tuple[Any, ...]]:
        p = self.p
        if op == "acquire":
            class_name = "critical" if pick < 0.3 else "bulk"
            conn_id = p.acquire_now(class_name, now)
            if conn_id is None:
                try:
                    self.waiters.append(p.submit(class_name, now, timeout=1.0))
                except TooManyWaiters:
                    return [("refused",)]
                return [("queued",), *self.run(p.pump(now), now)]
            self.held.append(conn_id)
            return [("took", conn_id)]
        if op == "release" and self.held:
            conn_id = self.held.pop(int(pick * len(self.held)))
            broken, failed = pick < 0.1, 0.1 <= pick < 0.3
            actions = p.release(conn_id, now, broken=broken, failed=failed)
            if not actions:  # `release` wrote out pump's hot path: pump has nothing to do
                assert p.pump(now) == []
            return self.run(actions, now)
        if op == "connect" and self.connecting:
            conn_id = self.connecting.pop(0)
            if pick < 0.15:
                return self.run(p.connect_failed(conn_id, now, "refused"), now)
            return self.run(p.connected(conn_id, now, 0.01), now)
        if op == "check" and self.checking:
            return self.run(p.check_done(self.checking.pop(0), now, 0.002, pick > 0.1), now)
        if op == "maintain":
            expired = [("expired", w.seq) for w in p.expire(now)]
            return [*expired, *self.run(p.maintain(now), now)]
        if op == "target":
            n = min(int(pick * 5), p.limits.max_size)
            return self.run(p.set_target(n, now, at=now + pick * 3), now)
        if op == "resize":
            return self.run(p.resize(int(pick * 2), 2 + int(pick * 4), now), now)
        return []


OPS = ("acquire", "acquire", "acquire", "release", "release", "release", "release", "connect",
       "connect", "check", "maintain", "maintain", "target", "resize")


@pytest.mark.parametrize("seed", range(40))
def test_fast_path_keeps_the_general_paths_bookkeeping(seed: int) -> None:
    events: list[LifecycleEvent] = []
    fast, general = Driven(None), Driven(events.append)
    rng = random.Random(seed)
    now = 0.0
    took = released = 0
    for _ in range(400):
        now += rng.choice((0.0, 0.0, 0.01, 0.3, 1.0))
        op, pick = rng.choice(OPS), rng.random()
        done = fast.step(op, pick, now)
        assert general.step(op, pick, now) == done
        assert state_of(fast.p, now) == state_of(general.p, now)
        took += sum(1 for d in done if d[0] == "took")
        released += op == "release" and not done
    # Both paths ran many times, and only the general one told a listener.
    assert took >= 10 and released >= 20, (took, released)
    assert fast.p.listener is None and events


def test_fast_paths_emit_the_tables_transitions_to_a_listener() -> None:
    events: list[LifecycleEvent] = []
    p = policy(events.append)
    p.connected(p.pump(0.0)[0].conn_id, 0.0, 0.01)  # type: ignore[union-attr]
    events.clear()
    conn_id = p.acquire_now("bulk", 1.0)
    assert conn_id is not None
    assert p.release(conn_id, 2.0) == []
    assert [(e.from_state, e.to_state, e.trigger, e.at) for e in events] == [
        (State.IDLE, State.IN_USE, Trigger.ACQUIRE, 1.0),
        (State.IN_USE, State.IDLE, Trigger.RELEASE, 2.0)]
    assert events[0].reason == events[1].metrics["class"] == "bulk"
