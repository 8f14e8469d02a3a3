"""Served waiters do not pile up in the deadline heap under steady load."""

from connwise.core.classes import ClassTable
from connwise.core.scheduler import Scheduler


def test_deadline_heap_stays_bounded_while_the_queue_never_empties() -> None:
    s = Scheduler(ClassTable(), capacity=1, max_waiters=100)
    assert s.try_admit("critical")
    s.submit("critical", 0.0)  # one waiter always queued: the heap is never cleared
    for i in range(10_000):
        s.submit("critical", float(i))
        s.release("critical")
        assert s.grant(float(i)) is not None
    assert s.waiting == 1
    assert len(s._deadlines) <= 2 * s.waiting + 65
