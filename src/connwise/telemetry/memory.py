"""An in-memory, bounded event sink: the subscriber of tests, the demo and `Pool.events()`.

Subscribers run on the data plane, so this sink never blocks and never grows without bound:
when it is full the oldest event is dropped and counted.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

E = TypeVar("E")


class MemorySink(Generic[E]):
    """Keeps the last `capacity` events; `dropped` counts the ones pushed out."""

    __slots__ = ("dropped", "events")

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError(f"MemorySink capacity must be >= 1, got {capacity}")
        self.events: deque[E] = deque(maxlen=capacity)
        self.dropped = 0

    def __call__(self, event: E) -> None:
        events = self.events
        if len(events) == events.maxlen:
            self.dropped += 1
        events.append(event)

    def __len__(self) -> int:
        return len(self.events)
