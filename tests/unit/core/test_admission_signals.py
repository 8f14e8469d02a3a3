"""The admission signals the gateway's ladder reads, on a virtual clock: the oldest waiter per
class, the shared admission rule, and a ladder that follows a queue as it forms under 3x
overload and relaxes with hysteresis."""

from __future__ import annotations

import heapq
import math

from connwise.core.classes import ClassTable
from connwise.core.clock import VirtualClock
from connwise.core.degrade import (
    QUEUE,
    SHED,
    SIGNAL,
    DegradeConfig,
    DegradeLadder,
    contention_from_scheduler,
)
from connwise.core.scheduler import Scheduler
from connwise.errors import TooManyWaiters

CLASSES = ClassTable()


def test_oldest_arrival_is_the_head_of_each_class_skipping_withdrawn_waiters() -> None:
    s = Scheduler(CLASSES, capacity=1, max_waiters=10)
    assert s.try_admit("critical")
    first = s.submit("bulk", 1.0)
    s.submit("bulk", 2.0)
    s.submit("interactive", 3.0)
    assert s.oldest_arrival("bulk") == 1.0
    assert s.oldest_arrival("interactive") == 3.0
    assert s.oldest_arrival("critical") is None
    assert s.cancel(first)
    assert s.oldest_arrival("bulk") == 2.0


# -- the ladder under a real overload ------------------------------------------------------------

CAPACITY = 10
FULL, DEGRADED = 0.010, 0.002   # seconds of service; the signal cuts it five-fold
UPDATE_INTERVAL = 0.01          # the gateway's event-driven ladder updates


def overload(ladder: DegradeLadder, seconds: float, rate: float,
             relax_after: float) -> tuple[list[tuple[float, int, int]], int, int]:
    """Drive a scheduler and `ladder` as the gateway does: arrivals every 1/rate s (every tenth
    critical), service of FULL s, DEGRADED s when the signal is in force *when the slot is
    granted*; ladder updates on admission events at most every UPDATE_INTERVAL. After
    `relax_after` s, arrivals drop to a tenth. Returns (time, interactive level, waiting)
    samples every 50 ms, the most waiters ever queued, and how many were refused."""
    s = Scheduler(CLASSES, capacity=CAPACITY, max_waiters=1024)
    clock = VirtualClock()
    done: list[tuple[float, int, str]] = []
    seq = 0
    last_update = -1.0
    samples: list[tuple[float, int, int]] = []
    most = shed = 0

    def update(now: float) -> None:
        nonlocal last_update
        if now - last_update >= UPDATE_INTERVAL:
            last_update = now
            ladder.update(contention_from_scheduler(s, now), now)

    def start(class_name: str, now: float) -> None:
        nonlocal seq
        seq += 1
        cost = DEGRADED if ladder.signal_level(class_name) else FULL
        heapq.heappush(done, (now + cost, seq, class_name))

    n = 0
    next_arrival = 0.0
    next_sample = 0.0
    while clock.now() < seconds:
        now = min(next_arrival, done[0][0] if done else math.inf, next_sample)
        clock.set(now)
        if now == next_sample:
            samples.append((now, ladder.level("interactive"), s.waiting))
            next_sample += 0.05
            ladder.update(contention_from_scheduler(s, now), now)  # the periodic tick
            continue
        if done and now == done[0][0]:
            _, _, class_name = heapq.heappop(done)
            s.release(class_name)
            if s.waiting:
                update(now)
            while (waiter := s.grant(now)) is not None:
                start(waiter.class_name, now)
            continue
        n += 1
        class_name = "critical" if n % 10 == 0 else "interactive"
        next_arrival = now + (1.0 / rate if now < relax_after else 10.0 / rate)
        if s.try_admit(class_name):
            start(class_name, now)
            continue
        try:
            s.submit(class_name, now)
        except TooManyWaiters:
            shed += 1
            continue
        shed += len(s.take_displaced())
        most = max(most, s.waiting)
        update(now)
        while (waiter := s.grant(now)) is not None:
            start(waiter.class_name, now)
    return samples, most, shed


def test_the_ladder_signals_within_a_fraction_of_a_second_and_the_queue_drains() -> None:
    ladder = DegradeLadder(DegradeConfig(), CLASSES)
    samples, most, shed = overload(ladder, seconds=3.0, rate=3000.0, relax_after=math.inf)
    signalled = next(t for t, level, _ in samples if level >= SIGNAL)
    assert signalled <= 0.2
    # Granted requests leave degraded, so 3x the full-quality capacity fits: the queue formed
    # at the start drains and stays short instead of filling to its bound.
    assert most < 400
    assert shed == 0
    assert all(waiting < 50 for t, _, waiting in samples if t >= 1.0)
    assert ladder.level("critical") == 0  # critical itself never waited long: full quality


def test_the_ladder_relaxes_only_after_dwell_down_below_the_exit() -> None:
    ladder = DegradeLadder(DegradeConfig(), CLASSES)
    samples, _, _ = overload(ladder, seconds=9.0, rate=3000.0, relax_after=2.0)
    after = [(t, level) for t, level, _ in samples if t > 2.0]
    # At a tenth of the load utilization falls below the signal's exit; the level holds for
    # dwell_down (5 s) and then steps down.
    assert all(level >= SIGNAL for t, level in after if t < 2.0 + 5.0)
    assert after[-1][1] < SIGNAL


def test_the_shared_admission_rule_by_level() -> None:
    """Below queue a free slot is taken; at queue never; at shed only while nobody waits, and
    what gets no slot at shed is refused once `shed_backlog` rounds of the capacity wait (the
    gateway and the simulator both ask these)."""
    ladder = DegradeLadder(DegradeConfig(dwell_up=0.0), CLASSES)
    s = Scheduler(CLASSES, capacity=2, max_waiters=10)
    assert ladder.takes_free_slot("bulk", s) and not ladder.sheds("bulk", s)
    now = 0.0
    while ladder.level("bulk") < QUEUE:
        now += 0.1
        ladder.update_pressure({"critical": 0.0, "interactive": 0.0, "bulk": 1.3}, now)
    assert ladder.level("bulk") == QUEUE
    assert not ladder.takes_free_slot("bulk", s) and not ladder.sheds("bulk", s)
    while ladder.level("bulk") < SHED:
        now += 0.1
        ladder.update_pressure({"critical": 0.0, "interactive": 0.0, "bulk": 1.7}, now)
    assert ladder.takes_free_slot("bulk", s)
    assert s.try_admit("critical") and s.try_admit("critical")
    # Full: bulk queues behind up to 3 x 2 waiters (the default backlog), then is refused.
    for waiting in range(6):
        assert s.waiting == waiting and not s.try_admit("bulk")
        assert not ladder.sheds("bulk", s)
        s.submit("critical", now)
        assert not ladder.takes_free_slot("bulk", s)
    assert ladder.sheds("bulk", s) and not ladder.takes_free_slot("bulk", s)
    assert not ladder.sheds("critical", s)  # critical is below its shed step
    # No backlog: whatever finds no free slot is refused at once (a loss system).
    lossy = DegradeLadder(DegradeConfig(dwell_up=0.0, shed_backlog=0.0), CLASSES)
    while lossy.level("bulk") < SHED:
        now += 0.1
        lossy.update_pressure({"critical": 0.0, "interactive": 0.0, "bulk": 1.7}, now)
    empty = Scheduler(CLASSES, capacity=2, max_waiters=10)
    assert empty.try_admit("critical") and empty.try_admit("critical")
    assert lossy.sheds("bulk", empty)


def test_the_shed_step_keeps_the_queue_at_its_exit_pressure() -> None:
    """At the shed step, work beyond the backlog is refused only while the class's pressure is
    at or above the step's exit: below it the ladder would be leaving the step, so refusing
    would empty a queue the capacity is serving (the gateway at 3x served 94% shedding by
    count, 97% shedding by pressure)."""
    ladder = DegradeLadder(DegradeConfig(dwell_up=0.0), CLASSES)
    s = Scheduler(CLASSES, capacity=2, max_waiters=100)
    now = 0.0
    while ladder.level("bulk") < SHED:
        now += 0.1
        ladder.update_pressure({"critical": 0.0, "interactive": 0.0, "bulk": 1.7}, now)
    assert s.try_admit("critical") and s.try_admit("critical")
    for _ in range(20):
        s.submit("critical", now)
    assert ladder.sheds("bulk", s)
    # Pressure at 1.05, below shed's exit (1.1) but still on the step (dwell_down holds it):
    # the backlog of 20 > 3 x 2 queues instead of being refused.
    now += 0.1
    ladder.update_pressure({"critical": 0.0, "interactive": 0.0, "bulk": 1.05}, now)
    assert ladder.level("bulk") == SHED
    assert not ladder.sheds("bulk", s)
    now += 0.1
    ladder.update_pressure({"critical": 0.0, "interactive": 0.0, "bulk": 1.1}, now)
    assert ladder.sheds("bulk", s)
