"""Admission: who gets the next free slot, and who waits, gives up or is refused.

Theory of operation
-------------------
The scheduler counts *slots* (pool connections, upstream request permits) held per class against
a capacity, and keeps the callers that could not get one in a bounded queue, one FIFO per class.
It never touches the resources themselves: the shell tells it when a unit is free (`grant`) or
given back (`release`), and it answers with the waiter to serve.

Order. A waiter's effective priority is `rank + aging_rate * waited`. Once that reaches the top
rank, the waiter is promoted and promoted waiters are served in promotion order ahead of all
others; the rest are served by effective priority, ties in arrival order. Within a class, order
is arrival order, so only the head of each class's FIFO is ever compared: a grant costs
O(number of classes).

Starvation bound (tested): a waiter w of class c is never overtaken, on a slot w may take, by a
waiter that arrived more than `promotion_delay(c)` seconds after w. Its wait is therefore at most
`promotion_delay(c)` plus the time to serve the finite set of waiters promoted before it.

Reserved shares. A class may take a slot only if, after it, the free slots still cover the unused
reservations of every higher class: `free > sum(max(0, reserved[d] - in_use[d]))` over classes d
ranked above it. So bulk can never take the last slots kept for critical, and the top class may
always use all free capacity.

Waits are bounded by `min(timeout, class.max_wait)`; the queue by `max_waiters`. When the queue
is full, a newcomer *displaces* the newest waiter of the lowest class ranked below its own (that
waiter is failed by the shell, from `take_displaced()`), so a flood of bulk work cannot lock
critical work out of the queue; with nobody below it, the newcomer gets `TooManyWaiters`.
A waiter that timed out or was cancelled before the shell could hand it a unit is *refused*:
the shell calls `refuse`, the slot returns, and the unit goes to the next waiter.
"""

from __future__ import annotations

import enum
import heapq
import math
from bisect import bisect_left
from collections import deque
from typing import Any

from connwise.core.classes import ClassTable, PriorityClass
from connwise.errors import ConfigError, IllegalTransition, TooManyWaiters, UnknownClass

#: Upper bounds, in seconds, of the wait-time histogram buckets (the last one is +Inf).
WAIT_BUCKETS: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)


class WaitHistogram:
    """Cumulative-free bucket counts of waits (a pool's acquires, a scheduler's admissions),
    with sum and max, Prometheus-shaped."""

    __slots__ = ("counts", "max", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(WAIT_BUCKETS)
        self.total = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, seconds: float) -> None:
        if seconds == 0.0:  # an idle connection taken at once: the common case
            self.counts[0] += 1
            self.total += 1
            return
        self.counts[bisect_left(WAIT_BUCKETS, seconds)] += 1
        self.total += 1
        self.sum += seconds
        self.max = max(self.max, seconds)

    def snapshot(self) -> dict[str, Any]:
        return {"count": self.total, "sum": self.sum, "max": self.max,
                "buckets": dict(zip((str(b) for b in WAIT_BUCKETS), self.counts, strict=True))}


class WaiterState(enum.Enum):
    __hash__ = object.__hash__  # identity hash in C, as connwise.core.lifecycle.State

    WAITING = "waiting"
    GRANTED = "granted"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REFUSED = "refused"
    DISPLACED = "displaced"


W = WaiterState
WAITER_TRANSITIONS: dict[tuple[WaiterState, str], WaiterState] = {
    (W.WAITING, "grant"): W.GRANTED,
    (W.WAITING, "expire"): W.TIMED_OUT,
    (W.WAITING, "cancel"): W.CANCELLED,
    (W.GRANTED, "refuse"): W.REFUSED,
    (W.WAITING, "displace"): W.DISPLACED,
}


class Waiter:
    """One caller waiting for a slot. `token` is the shell's handle (a future, a request)."""

    __slots__ = ("arrived", "class_name", "deadline", "granted_at", "promoted_at", "seq", "state",
                 "token")

    def __init__(self, seq: int, class_name: str, arrived: float, deadline: float,
                 promoted_at: float, token: Any) -> None:
        self.seq = seq
        self.class_name = class_name
        self.arrived = arrived
        self.deadline = deadline
        self.promoted_at = promoted_at
        self.token = token
        self.state = W.WAITING
        self.granted_at = 0.0

    def _move(self, event: str) -> None:
        try:
            self.state = WAITER_TRANSITIONS[self.state, event]
        except KeyError:
            raise IllegalTransition(self.seq, f"waiter of {self.class_name}", self.state.value,
                                    event) from None

    def __repr__(self) -> str:
        return f"<Waiter {self.seq} {self.class_name} {self.state.value}>"


class _ClassQueue:
    __slots__ = ("above", "cls", "in_use", "queue", "reserved", "waiting", "waits")

    def __init__(self, cls: PriorityClass) -> None:
        self.cls = cls
        self.queue: deque[Waiter] = deque()
        self.in_use = 0
        self.waiting = 0
        self.reserved = 0
        self.above: list[_ClassQueue] = []
        #: Time from arrival to a slot of every admission of the class (0 at once).
        self.waits = WaitHistogram()

    def head(self) -> Waiter | None:
        queue = self.queue
        while queue:
            if queue[0].state is W.WAITING:
                return queue[0]
            queue.popleft()
        return None


class Scheduler:
    """Priority admission with aging, reserved shares, bounded waits and a bounded queue."""

    def __init__(self, classes: ClassTable, *, capacity: int, max_waiters: int,
                 owner: str = "scheduler") -> None:
        if max_waiters < 0:
            raise ConfigError("max_waiters", max_waiters, "the waiter bound cannot be negative",
                              "use 0 to refuse all waiting, or a positive bound")
        self.classes = classes
        self.owner = owner
        self.max_waiters = max_waiters
        self._queues = {c.name: _ClassQueue(c) for c in classes}
        ordered = list(self._queues.values())
        for q in ordered:
            q.above = [o for o in ordered if o.cls.rank > q.cls.rank]
        self._ordered = ordered
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._seq = 0
        self._displaced: list[Waiter] = []
        self.waiting = 0
        self.in_use = 0
        self.capacity = 0
        self.set_capacity(capacity)

    # -- capacity ---------------------------------------------------------------------------

    def set_capacity(self, capacity: int) -> None:
        """Change the number of slots; slots held beyond a lower capacity stay until released."""
        if capacity < 1:
            raise ConfigError("capacity", capacity, "a scheduler needs at least one slot",
                              "use a capacity >= 1")
        self.capacity = capacity
        for name, slots in self.classes.reserved_slots(capacity).items():
            self._queues[name].reserved = slots

    def allowed(self, class_name: str) -> bool:
        """Whether a slot may be given to `class_name` now, reserved shares considered."""
        q = self._queues[class_name]
        free = self.capacity - self.in_use
        if free <= 0:
            return False
        needed = 0
        for other in q.above:
            if other.reserved > other.in_use:
                needed += other.reserved - other.in_use
        return free > needed

    def admissible_waiting(self) -> int:
        """Waiters that free slots could serve now: per class at most the slots its higher
        classes' unused reservations leave it, and at most the free slots in all. A pool grows
        by this, not by `waiting`, so it opens no connection that reserved shares keep idle."""
        if not self.waiting:
            return 0
        free = self.capacity - self.in_use
        total = 0
        for q in self._ordered:
            if q.waiting:
                needed = 0
                for other in q.above:
                    if other.reserved > other.in_use:
                        needed += other.reserved - other.in_use
                total += min(q.waiting, max(0, free - needed))
        return min(total, max(0, free))

    # -- the waiter's life --------------------------------------------------------------------

    def try_admit(self, class_name: str) -> bool:
        """The fast path: take a slot at once if nobody waits and the class may take one."""
        q = self._queues.get(class_name)
        if q is None:
            raise UnknownClass(class_name, self.classes.names)
        if self.waiting:
            return False
        # `allowed()` inlined: a proxy admits every request twice (its group's scheduler and
        # its upstream pool's), and a call costs ~400 instructions, as much as this test.
        free = self.capacity - self.in_use
        if free <= 0:
            return False
        if q.above:  # the top class (an upstream pool's one class) has nobody to leave room for
            needed = 0
            for other in q.above:
                if other.reserved > other.in_use:
                    needed += other.reserved - other.in_use
            if free <= needed:
                return False
        self.in_use += 1
        q.in_use += 1
        waits = q.waits  # `waits.observe(0.0)`, inlined: once per admission
        waits.counts[0] += 1
        waits.total += 1
        return True

    def submit(self, class_name: str, now: float, timeout: float | None = None,
               token: Any = None) -> Waiter:
        """Queue a caller. Its deadline is `now + min(timeout, max_wait)`."""
        cls = self.classes[class_name]
        if self.waiting >= self.max_waiters:
            victim = self._newest_below(cls.rank)
            if victim is None:
                raise TooManyWaiters(self.owner, class_name, self.max_waiters)
            victim._move("displace")
            self._drop(victim)
            self._displaced.append(victim)
        wait = cls.max_wait if timeout is None else min(timeout, cls.max_wait)
        self._seq += 1
        waiter = Waiter(self._seq, class_name, now, now + wait,
                        now + self.classes.promotion_delay(class_name), token)
        q = self._queues[class_name]
        q.queue.append(waiter)
        q.waiting += 1
        self.waiting += 1
        heap = self._deadlines
        heapq.heappush(heap, (waiter.deadline, waiter.seq, waiter))
        if len(heap) > 2 * self.waiting + 64:
            # A granted waiter leaves its entry behind (expiry skips it lazily); under steady
            # load the queue never empties, so compact: the heap stays within twice the live
            # queue, at amortised O(1) per submit, and keeps no served waiter (nor its token).
            heap[:] = [entry for entry in heap if entry[2].state is W.WAITING]
            heapq.heapify(heap)
        return waiter

    def grant(self, now: float) -> Waiter | None:
        """Give one slot to the best eligible waiter, or return None if none may take one."""
        if not self.waiting:
            return None
        free = self.capacity - self.in_use
        if free <= 0:
            return None
        best: Waiter | None = None
        best_q: _ClassQueue | None = None
        best_key: tuple[int, float, int] = (-1, 0.0, 0)
        # `allowed()` inlined, for the hot path: `needed` sums the unused reservations of the
        # classes ranked strictly above the one at hand; `_ordered` runs from the top rank down,
        # so `needed` only grows and once it reaches `free` no class below may take a slot.
        needed = 0
        group_rank: float | None = None
        group_unused = 0
        for q in self._ordered:
            cls = q.cls
            if cls.rank != group_rank:
                needed += group_unused
                group_unused = 0
                group_rank = cls.rank
            if q.reserved > q.in_use:
                group_unused += q.reserved - q.in_use
            if free <= needed:
                break
            if not q.waiting:
                continue
            head = q.head()
            if head is None:
                continue
            if now >= head.promoted_at:
                key = (1, -head.promoted_at, -head.seq)
            else:
                key = (0, cls.rank + cls.aging_rate * (now - head.arrived), -head.seq)
            if best is None or key > best_key:
                best, best_q, best_key = head, q, key
        if best is None or best_q is None:
            return None
        best._move("grant")
        best.granted_at = now
        q = best_q
        q.waits.observe(now - best.arrived)
        q.queue.popleft()
        q.waiting -= 1
        q.in_use += 1
        self.waiting -= 1
        self.in_use += 1
        return best

    def refuse(self, waiter: Waiter) -> None:
        """A granted waiter turned the slot down (it timed out or was cancelled meanwhile)."""
        waiter._move("refuse")
        self.release(waiter.class_name)

    def release(self, class_name: str) -> None:
        """Give back a slot held by `class_name`."""
        q = self._queues[class_name]
        if q.in_use <= 0:
            raise IllegalTransition(0, self.owner, f"holding no {class_name} slot", "release")
        q.in_use -= 1
        self.in_use -= 1

    def queue_waits(self) -> dict[str, WaitHistogram]:
        """Per class, the admission waits so far (Prometheus-shaped): a scrape reads them."""
        return {name: q.waits for name, q in self._queues.items()}

    def take_displaced(self) -> list[Waiter]:
        """Waiters pushed out of a full queue by higher classes since the last call."""
        displaced, self._displaced = self._displaced, []
        return displaced

    def _newest_below(self, rank: float) -> Waiter | None:
        for q in reversed(self._ordered):
            if q.cls.rank >= rank:
                return None
            if q.waiting:
                for waiter in reversed(q.queue):
                    if waiter.state is W.WAITING:
                        return waiter
        return None

    def cancel(self, waiter: Waiter) -> bool:
        """Withdraw a waiting caller. False if it was already granted: it then owns a slot."""
        if waiter.state is not W.WAITING:
            return False
        waiter._move("cancel")
        self._drop(waiter)
        return True

    def expire(self, now: float) -> list[Waiter]:
        """Waiters whose deadline is at or before `now`, now timed out and out of the queue."""
        expired: list[Waiter] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, waiter = heapq.heappop(heap)
            if waiter.state is W.WAITING:
                waiter._move("expire")
                self._drop(waiter)
                expired.append(waiter)
        return expired

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][2].state is not W.WAITING:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _drop(self, waiter: Waiter) -> None:
        q = self._queues[waiter.class_name]
        q.waiting -= 1
        self.waiting -= 1
        if not self.waiting:
            for other in self._ordered:
                other.queue.clear()
            self._deadlines.clear()

    # -- observation --------------------------------------------------------------------------

    def waiting_by_class(self) -> dict[str, int]:
        return {name: q.waiting for name, q in self._queues.items()}

    def in_use_by_class(self) -> dict[str, int]:
        return {name: q.in_use for name, q in self._queues.items()}

    def reserved_by_class(self) -> dict[str, int]:
        return {name: q.reserved for name, q in self._queues.items()}

    def oldest_arrival(self, class_name: str) -> float | None:
        """When the longest-waiting caller of `class_name` arrived (None: nobody waits). O(1)
        amortised: a class's queue is in arrival order, so its oldest is its head."""
        q = self._queues[class_name]
        if not q.waiting:
            return None
        head = q.head()
        return head.arrived if head is not None else None

    def waiters(self) -> list[Waiter]:
        """Live waiters, in no particular order (for diagnostics)."""
        return [w for q in self._ordered for w in q.queue if w.state is W.WAITING]

    def __repr__(self) -> str:
        return (f"<Scheduler {self.owner} [in use {self.in_use}/{self.capacity} | "
                f"waiting {self.waiting}]>")
