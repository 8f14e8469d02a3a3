"""Priority classes: who is served first, what capacity is kept back for whom, how long one waits.

A class has a *rank* (higher is served first), a *reserved share* of capacity that lower classes
may never take, a *max wait* after which its waiters give up, and an *aging rate*: a waiter's
effective priority is `rank + aging_rate * seconds_waited`. When that reaches the top rank of
the table the waiter is *promoted* and from then on is served in promotion order together with
the top classes. Hence the starvation bound the scheduler guarantees: a waiter of class c is
never overtaken, on a slot it may take, by a waiter that arrived more than
`promotion_delay(c) = (top_rank - rank_c) / aging_rate_c` seconds after it. A class below the top
must therefore age (aging_rate > 0); the table refuses one that could starve.

The defaults fit a web service in front of a database:

* `critical` (rank 2): payments, logins, health of the business. 20% of capacity reserved, so a
  flood of lower work can never take the last slots; gives up after 5 s (a user is waiting).
* `interactive` (rank 1): ordinary user requests. 10% reserved; promoted after 5 s of waiting;
  gives up after 10 s.
* `bulk` (rank 0): reports, batch jobs, backfills. Nothing reserved; promoted after 20 s, so it
  always progresses; gives up after 30 s (psycopg_pool's default acquire timeout).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from connwise.errors import ConfigError, UnknownClass


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """One priority class; validated by `ClassTable`."""

    name: str
    rank: float
    reserved_share: float = 0.0
    max_wait: float = 30.0
    aging_rate: float = 0.0


DEFAULT_CLASSES: tuple[PriorityClass, ...] = (
    PriorityClass("critical", rank=2, reserved_share=0.2, max_wait=5.0, aging_rate=0.0),
    PriorityClass("interactive", rank=1, reserved_share=0.1, max_wait=10.0, aging_rate=0.2),
    PriorityClass("bulk", rank=0, reserved_share=0.0, max_wait=30.0, aging_rate=0.1),
)


class ClassTable:
    """A validated, immutable set of priority classes, ordered from highest rank down."""

    __slots__ = ("_by_name", "classes", "top_rank")

    def __init__(self, classes: Iterable[PriorityClass] = DEFAULT_CLASSES,
                 *, key: str = "classes") -> None:
        ordered = sorted(classes, key=lambda c: -c.rank)
        if not ordered:
            raise ConfigError(key, [], "no priority class is defined", "define at least one")
        by_name: dict[str, PriorityClass] = {}
        top = ordered[0].rank
        total_reserved = 0.0
        for cls in ordered:
            where = f"{key}.{cls.name}"
            if not math.isfinite(cls.rank):
                raise ConfigError(f"{where}.rank", cls.rank, "a rank must be a finite number",
                                  "use e.g. 0, 1, 2")
            if not cls.name or not cls.name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"{key}[].name", cls.name, "a class name must be a non-empty "
                                  "word of letters, digits, '-' or '_'", "rename the class")
            if cls.name in by_name:
                raise ConfigError(where, cls.name, "the class is defined twice",
                                  "give each class a distinct name")
            if not 0.0 <= cls.reserved_share < 1.0:
                raise ConfigError(f"{where}.reserved_share", cls.reserved_share,
                                  "a reserved share must lie in [0, 1)", "use e.g. 0.2 for 20%")
            if not cls.max_wait > 0:  # also refuses NaN
                raise ConfigError(f"{where}.max_wait", cls.max_wait,
                                  "a class must be allowed to wait some time",
                                  "use a positive number of seconds")
            if not cls.aging_rate >= 0:  # also refuses NaN
                raise ConfigError(f"{where}.aging_rate", cls.aging_rate,
                                  "aging cannot lower priority", "use a rate >= 0")
            if cls.rank < top and cls.aging_rate == 0:
                raise ConfigError(f"{where}.aging_rate", cls.aging_rate,
                                  f"class {cls.name!r} ranks below the top and never ages, so "
                                  "higher classes could starve it", "set aging_rate > 0")
            total_reserved += cls.reserved_share
            by_name[cls.name] = cls
        if round(total_reserved, 9) >= 1.0:  # 0.6 + 0.3 + 0.1 is 0.999...9
            raise ConfigError(f"{key}.*.reserved_share", round(total_reserved, 6),
                              "the reserved shares add up to 100% or more",
                              "leave some capacity unreserved")
        self.classes = tuple(ordered)
        self._by_name = by_name
        self.top_rank = top

    def __getitem__(self, name: str) -> PriorityClass:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownClass(name, list(self._by_name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[PriorityClass]:
        return iter(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def promotion_delay(self, name: str) -> float:
        """Seconds of waiting after which a waiter of `name` is served in arrival order."""
        cls = self[name]
        if cls.rank >= self.top_rank:
            return 0.0
        return (self.top_rank - cls.rank) / cls.aging_rate

    def reserved_slots(self, capacity: int) -> dict[str, int]:
        """Slots kept back for each class at `capacity`: share x capacity, rounded up when > 0.

        Rounding up means a 10% share of a pool of 5 still keeps one slot; the sum is capped so
        that the lowest-ranked class keeps at least one slot whenever capacity allows.
        """
        slots: dict[str, int] = {}
        remaining = max(0, capacity - 1)
        for cls in self.classes:
            want = math.ceil(round(cls.reserved_share * capacity, 9))
            take = min(want, remaining)
            slots[cls.name] = take
            remaining -= take
        return slots
