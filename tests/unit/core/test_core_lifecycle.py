"""The connection transition table, driven row by row, and every pair outside it refused."""

from __future__ import annotations

import itertools

import pytest

from connwise.core.lifecycle import (
    FINAL,
    TRANSITIONS,
    ConnectionRecord,
    LifecycleEvent,
    State,
    Trigger,
    state_diagram,
)
from connwise.errors import IllegalTransition

S, T = State, Trigger

#: The table as the module docstring describes it, written out independently of TRANSITIONS.
EXPECTED: dict[tuple[State, Trigger], State] = {
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

ILLEGAL = [pair for pair in itertools.product(State, Trigger) if pair not in EXPECTED]


def record_in(state: State, conn_id: int = 7, owner: str = "main") -> ConnectionRecord:
    rec = ConnectionRecord(conn_id, owner, now=0.0)
    rec.state = state
    return rec


def test_the_table_is_exactly_the_documented_one() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("pair", "target"), list(EXPECTED.items()),
                         ids=[f"{s.value}-{t.value}" for s, t in EXPECTED])
def test_every_allowed_pair_moves_to_its_target(pair: tuple[State, Trigger],
                                                target: State) -> None:
    state, trigger = pair
    rec = record_in(state)
    assert rec.transition(trigger) is state
    assert rec.state is target


@pytest.mark.parametrize("pair", ILLEGAL, ids=[f"{s.value}-{t.value}" for s, t in ILLEGAL])
def test_every_other_pair_raises_and_names_everything(pair: tuple[State, Trigger]) -> None:
    state, trigger = pair
    rec = record_in(state, conn_id=41, owner="orders-db")
    with pytest.raises(IllegalTransition) as info:
        rec.transition(trigger)
    err = info.value
    message = str(err)
    assert "connection 41" in message
    assert "'orders-db'" in message
    assert f"is {state.value} " in message
    assert repr(trigger.value) in message
    assert (err.conn_id, err.owner, err.state, err.trigger) == (41, "orders-db", state.value,
                                                                trigger.value)
    assert rec.state is state, "a refused transition must not change the state"


def test_there_are_illegal_pairs_for_every_state() -> None:
    # Sanity of the parametrisation above: each state refuses at least one trigger.
    assert {s for s, _ in ILLEGAL} == set(State)


def test_final_states_take_no_trigger_at_all() -> None:
    assert frozenset({S.CLOSED, S.FAILED}) == FINAL
    for state in FINAL:
        assert not [t for t in Trigger if (state, t) in TRANSITIONS]


def test_every_live_state_is_reachable_and_can_end() -> None:
    reachable = {S.CONNECTING}
    frontier = [S.CONNECTING]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(State)
    for state in set(State) - FINAL:
        assert any(source is state and target in FINAL
                   for (source, _), target in TRANSITIONS.items())


def test_a_new_record_is_connecting_with_fresh_quality() -> None:
    rec = ConnectionRecord(3, "main", now=12.0)
    assert rec.state is S.CONNECTING
    assert rec.quality.created_at == 12.0
    assert rec.idle_since == 12.0
    assert rec.expires_at == float("inf")
    assert not rec.leak_reported
    assert repr(rec) == "<Connection 3 of main connecting>"


def test_event_carries_both_states_trigger_time_and_metrics() -> None:
    rec = ConnectionRecord(5, "main", now=10.0)
    previous = rec.transition(T.CONNECTED)
    event = rec.event(previous, T.CONNECTED, "connected in 3.0 ms", now=12.5)
    assert isinstance(event, LifecycleEvent)
    assert (event.conn_id, event.owner) == (5, "main")
    assert (event.from_state, event.to_state, event.trigger) == (S.CONNECTING, S.IDLE,
                                                                 T.CONNECTED)
    assert (event.reason, event.at) == ("connected in 3.0 ms", 12.5)
    assert event.metrics["age"] == 2.5
    assert "class" not in event.metrics
    rec.class_name = "bulk"
    previous = rec.transition(T.ACQUIRE)
    assert rec.event(previous, T.ACQUIRE, "bulk", now=13.0).metrics["class"] == "bulk"


def test_state_diagram_lists_every_transition_once() -> None:
    diagram = state_diagram()
    lines = diagram.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert "    [*] --> connecting" in lines
    assert "    closed --> [*]" in lines
    assert "    failed --> [*]" in lines
    for (source, trigger), target in EXPECTED.items():
        assert lines.count(f"    {source.value} --> {target.value}: {trigger.value}") == 1
    assert len(lines) == len(EXPECTED) + 4
