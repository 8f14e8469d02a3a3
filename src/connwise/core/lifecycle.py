"""Connection states, the one transition table, and the typed event of every transition.

A connection's life is data: `TRANSITIONS` maps (state, trigger) to the next state, and anything
not in it is a bug that raises `IllegalTransition` naming the connection, its state and the
trigger. DRAINING means "no new work; close when the work in progress ends": a connection that is
retired while held, checked or still connecting finishes that first. CLOSED and FAILED are final.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from connwise.core.quality import Quality
from connwise.errors import IllegalTransition


class State(enum.Enum):
    # Members are singletons compared by identity: hash them by identity too, in C. Enum's own
    # __hash__ is Python code (hash of the name), and the pool looks states up in dicts on
    # every acquire and release.
    __hash__ = object.__hash__

    CONNECTING = "connecting"
    IDLE = "idle"
    CHECKING = "checking"
    IN_USE = "in_use"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


class Trigger(enum.Enum):
    __hash__ = object.__hash__  # see State

    CONNECTED = "connected"
    CONNECT_FAILED = "connect_failed"
    ACQUIRE = "acquire"
    RELEASE = "release"
    CHECK = "check"
    CHECK_OK = "check_ok"
    BREAK = "break"
    RETIRE = "retire"
    CLOSE = "close"


S, T = State, Trigger

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.CONNECTING, T.CONNECTED): S.IDLE,
    (S.CONNECTING, T.CONNECT_FAILED): S.FAILED,
    (S.CONNECTING, T.RETIRE): S.DRAINING,
    (S.CONNECTING, T.CLOSE): S.CLOSED,
    (S.IDLE, T.ACQUIRE): S.IN_USE,
    (S.IDLE, T.CHECK): S.CHECKING,
    (S.IDLE, T.RETIRE): S.CLOSED,
    (S.IDLE, T.CLOSE): S.CLOSED,
    (S.IDLE, T.BREAK): S.FAILED,
    (S.CHECKING, T.CHECK_OK): S.IDLE,
    (S.CHECKING, T.BREAK): S.FAILED,
    (S.CHECKING, T.RETIRE): S.DRAINING,
    (S.CHECKING, T.CLOSE): S.CLOSED,
    (S.IN_USE, T.RELEASE): S.IDLE,
    (S.IN_USE, T.BREAK): S.FAILED,
    (S.IN_USE, T.RETIRE): S.DRAINING,
    (S.IN_USE, T.CLOSE): S.CLOSED,
    (S.DRAINING, T.RELEASE): S.CLOSED,
    (S.DRAINING, T.CHECK_OK): S.CLOSED,
    (S.DRAINING, T.CONNECTED): S.CLOSED,
    (S.DRAINING, T.CONNECT_FAILED): S.FAILED,
    (S.DRAINING, T.BREAK): S.FAILED,
    (S.DRAINING, T.CLOSE): S.CLOSED,
}

FINAL = frozenset({S.CLOSED, S.FAILED})

#: TRANSITIONS by trigger, then state: `transition` looks the next state up without building
#: a tuple key and hashing it (~350 instructions of a pool's acquire or release).
_NEXT: dict[Trigger, dict[State, State]] = {
    trigger: {state: target for (state, t), target in TRANSITIONS.items() if t is trigger}
    for trigger in Trigger}


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One state change of one connection, with the connection's metrics at that moment."""

    conn_id: int
    owner: str
    from_state: State
    to_state: State
    trigger: Trigger
    reason: str
    at: float
    metrics: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LeakEvent:
    """A connection held past its leak threshold, with the stack of the code that acquired it."""

    conn_id: int
    owner: str
    class_name: str
    held_for: float
    at: float
    stack: tuple[str, ...]


class ConnectionRecord:
    """The core's view of one connection: identity, state and quality, no I/O handle."""

    __slots__ = ("acquired_at", "class_name", "expires_at", "id", "idle_since", "leak_reported",
                 "owner", "quality", "state")

    def __init__(self, conn_id: int, owner: str, now: float) -> None:
        self.id = conn_id
        self.owner = owner
        self.state = S.CONNECTING
        self.quality = Quality(created_at=now)
        self.acquired_at = 0.0
        self.idle_since = now
        self.class_name = ""
        self.expires_at = float("inf")
        self.leak_reported = False

    def transition(self, trigger: Trigger) -> State:
        """Apply `trigger`; return the state left. Raises IllegalTransition if not allowed."""
        previous = self.state
        try:
            self.state = _NEXT[trigger][previous]
        except KeyError:
            raise IllegalTransition(self.id, self.owner, previous.value, trigger.value) from None
        return previous

    def event(self, previous: State, trigger: Trigger, reason: str, now: float) -> LifecycleEvent:
        metrics = self.quality.snapshot(now)
        if self.class_name:
            metrics["class"] = self.class_name
        return LifecycleEvent(self.id, self.owner, previous, self.state, trigger, reason, now,
                              metrics)

    def __repr__(self) -> str:
        return f"<Connection {self.id} of {self.owner} {self.state.value}>"


def state_diagram() -> str:
    """The transition table as a Mermaid state diagram, for the docs."""
    lines = ["stateDiagram-v2", "    [*] --> connecting"]
    for (source, trigger), target in TRANSITIONS.items():
        lines.append(f"    {source.value} --> {target.value}: {trigger.value}")
    lines += ["    closed --> [*]", "    failed --> [*]"]
    return "\n".join(lines)
