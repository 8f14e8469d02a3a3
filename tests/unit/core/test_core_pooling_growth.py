"""Growth opens connections only for waiters that reserved shares would let take them."""

import random

from connwise.core.classes import ClassTable
from connwise.core.pooling import Connect, PoolLimits, PoolPolicy


def policy() -> PoolPolicy:
    limits = PoolLimits(min_size=0, max_size=10, max_connecting=10)
    return PoolPolicy(name="p", limits=limits, classes=ClassTable(), rng=random.Random(1))


def fill(p: PoolPolicy, class_name: str, n: int, now: float) -> None:
    for _ in range(n):
        p.submit(class_name, now)
    for action in p.pump(now):
        assert isinstance(action, Connect)
        p.connected(action.conn_id, now, 0.01)


def test_no_connect_for_waiters_blocked_by_reservations() -> None:
    p = policy()
    fill(p, "bulk", 7, 0.0)  # bulk may hold 7 of 10: 2 are kept for critical, 1 for interactive
    assert p.scheduler.in_use_by_class()["bulk"] == 7
    for _ in range(3):
        p.submit("bulk", 0.0)
    assert p.scheduler.admissible_waiting() == 0
    assert p.pump(0.0) == []
    assert p.open_connections == 7


def test_connects_for_the_classes_that_may_take_a_slot() -> None:
    p = policy()
    fill(p, "bulk", 7, 0.0)
    for _ in range(3):
        p.submit("bulk", 0.0)
    for _ in range(5):
        p.submit("critical", 0.0)
    assert p.scheduler.admissible_waiting() == 3  # three free slots, critical may use them all
    connects = [a for a in p.pump(0.0) if isinstance(a, Connect)]
    assert len(connects) == 3
