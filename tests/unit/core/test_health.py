"""Backend health: the transition table, checks, outlier ejection, the cap, slow start, drain."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connwise.core.health import (
    AVAILABLE,
    HEALTH_TRANSITIONS,
    BackendHealth,
    HealthConfig,
    HealthEvent,
    HealthGroup,
    HealthState,
    IllegalBackendTransition,
    state_diagram,
)
from connwise.errors import ConfigError, IllegalTransition

H, E = HealthState, HealthEvent
DOCS = Path(__file__).resolve().parents[3] / "docs"


def backend(now: float = 0.0, **overrides: float) -> BackendHealth:
    return BackendHealth("10.0.0.1:80", HealthConfig(**overrides), now)  # type: ignore[arg-type]


def state(health: BackendHealth) -> HealthState:
    """The state, read through a call so that mypy does not narrow it across transitions."""
    return health.state


def fail(health: BackendHealth, times: int, now: float) -> None:
    for _ in range(times):
        health.record_failure(now)


def checks(health: BackendHealth, results: str, now: float) -> list[HealthState]:
    """Feed check results ('+' ok, '-' failed) at `now`; return the state after each."""
    states = []
    for result in results:
        health.record_check(result == "+", now)
        states.append(health.state)
    return states


# -- the table ----------------------------------------------------------------------------------


def test_the_docs_hold_the_generated_state_diagram() -> None:
    assert state_diagram() in (DOCS / "gateway-policies.md").read_text()


def test_every_state_is_reachable_and_can_be_drained() -> None:
    reached = {H.HEALTHY}
    frontier = [H.HEALTHY]
    while frontier:
        state = frontier.pop()
        for (source, _), target in HEALTH_TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(HealthState)
    assert all((s, E.DRAIN) in HEALTH_TRANSITIONS for s in HealthState if s is not H.DRAINING)


@pytest.mark.parametrize(("state", "event"), [
    (s, e) for s, e in itertools.product(HealthState, HealthEvent)
    if (s, e) not in HEALTH_TRANSITIONS
])
def test_an_event_outside_the_table_raises_naming_backend_state_and_event(
        state: HealthState, event: HealthEvent) -> None:
    health = backend()
    health.state = state
    with pytest.raises(IllegalBackendTransition) as info:
        health._fire(event, 0.0, "test")
    error = info.value
    assert isinstance(error, IllegalTransition)
    assert (error.backend, error.state, error.trigger) == ("10.0.0.1:80", state.value,
                                                          event.value)
    assert str(error).startswith(f"backend '10.0.0.1:80' is {state.value} and cannot take "
                                 f"event '{event.value}'")


@pytest.mark.parametrize(("overrides", "key"), [
    ({"rise": 0}, "health.rise"),
    ({"fall": 1.5}, "health.fall"),
    ({"consecutive_failures": 0}, "health.consecutive_failures"),
    ({"interval": 0}, "health.interval"),
    ({"timeout": math.inf}, "health.timeout"),
    ({"base_ejection_time": -1}, "health.base_ejection_time"),
    ({"max_ejection_time": 10}, "health.max_ejection_time"),
    ({"max_ejection_percent": 101}, "health.max_ejection_percent"),
    ({"slow_start": -1}, "health.slow_start"),
    ({"slow_start_min_weight": 0}, "health.slow_start_min_weight"),
    ({"log_size": 0}, "health.log_size"),
])
def test_bad_configuration_names_its_key_path(overrides: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        HealthConfig(**overrides).validate()  # type: ignore[arg-type]
    assert info.value.key == key
    with pytest.raises(ConfigError):
        backend(**overrides)


# -- active checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(("results", "expected"), [
    ("--", H.HEALTHY),                  # fall is 3
    ("--+--", H.HEALTHY),               # a success breaks the run
    ("---", H.UNHEALTHY),
    ("----+", H.UNHEALTHY),             # rise is 2
    ("---++", H.SLOW_START),
    ("---+-++", H.SLOW_START),
    ("---++---", H.UNHEALTHY),
])
def test_rise_and_fall(results: str, expected: HealthState) -> None:
    health = backend()
    checks(health, results, 1.0)
    assert health.state is expected
    assert health.available(1.0) is (expected in AVAILABLE)


def test_an_unhealthy_backend_takes_no_work_and_passive_failures_do_not_eject_it() -> None:
    health = backend()
    checks(health, "---", 1.0)
    assert not health.available(1.0) and health.weight(1.0) == 0.0
    fail(health, 20, 2.0)
    assert health.state is H.UNHEALTHY and health.ejections == 0


def test_slow_start_ramps_the_weight_then_becomes_healthy_when_due() -> None:
    health = backend(slow_start=10.0)
    checks(health, "---", 0.0)
    transitions = health.record_check(True, 100.0) + health.record_check(True, 100.0)
    assert [(t.from_state, t.to_state) for t in transitions] == [(H.UNHEALTHY, H.SLOW_START)]
    assert health.weight(100.0) == pytest.approx(0.1)      # slow_start_min_weight
    assert health.weight(102.5) == pytest.approx(0.25)
    assert health.weight(105.0) == pytest.approx(0.5)
    assert state(health) is H.SLOW_START
    assert health.weight(130.0) == 1.0
    assert state(health) is H.HEALTHY
    assert health.since == 110.0                          # the ramp ended when it was due


def test_no_slow_start_means_straight_back_to_healthy() -> None:
    health = backend(slow_start=0.0)
    checks(health, "---", 0.0)
    health.record_check(True, 1.0)
    transitions = health.record_check(True, 1.0)
    assert [t.to_state for t in transitions] == [H.SLOW_START, H.HEALTHY]
    assert health.weight(1.0) == 1.0


# -- passive outlier ejection -------------------------------------------------------------------


def test_consecutive_failures_eject_and_a_success_resets_the_run() -> None:
    health = backend()
    fail(health, 4, 1.0)
    health.record_success(1.0)
    fail(health, 4, 1.0)
    assert health.state is H.HEALTHY
    [transition] = health.record_failure(1.0)
    assert (transition.from_state, transition.to_state, transition.event) == \
        (H.HEALTHY, H.EJECTED, E.EJECT)
    assert "5 consecutive failures: ejected for 30 s" in transition.reason
    assert not health.available(30.9)
    assert health.available(31.0)                         # back at base_ejection_time
    assert state(health) is H.SLOW_START and health.since == 31.0


@pytest.mark.parametrize(("gaps", "durations"), [
    # gap: seconds back in service before the next run of failures.
    ([0, 0, 0, 0, 0, 0], [30, 60, 120, 240, 300, 300]),   # doubles, capped at 300
    ([0, 0, 30, 0], [30, 60, 60, 120]),                   # 30 s back: one step forgiven
    ([0, 0, 0, 1000], [30, 60, 120, 30]),                 # a long healthy spell: all forgiven
])
def test_ejection_time_doubles_with_each_ejection_and_is_forgiven_over_time(
        gaps: list[float], durations: list[float]) -> None:
    health = backend(slow_start=0.0)
    now = 0.0
    seen = []
    for gap in gaps:
        now += gap
        fail(health, 5, now)
        assert health.state is H.EJECTED
        seen.append(health.ejected_until - now)
        now = health.ejected_until
        assert health.available(now)
    assert seen == durations
    assert health.ejections == len(gaps)


@pytest.mark.parametrize("pause", ["drain", "checks"])
def test_time_in_service_stays_forgiven_across_a_drain_or_failed_checks(pause: str) -> None:
    """Three ejections, then 1000 s back in service forgive them all; a drain or a spell of
    failed checks afterwards must not bring the backoff back."""
    health = backend(slow_start=0.0)
    now = 0.0
    for _ in range(3):
        fail(health, 5, now)
        now = health.ejected_until
        assert health.available(now)
    now += 1000.0
    if pause == "drain":
        health.drain(now)
        health.undrain(now + 1.0)
    else:
        checks(health, "---", now)
        checks(health, "++", now + 1.0)
    assert health.ejection_time(now + 1.0) == 30.0
    fail(health, 5, now + 1.0)
    assert health.ejected_until - (now + 1.0) == 30.0


def test_the_end_of_a_slow_start_forgives_nothing_twice() -> None:
    health = backend(slow_start=40.0)
    now = 0.0
    for _ in range(3):
        fail(health, 5, now)
        now = health.ejected_until
    assert health.weight(now + 45.0) == 1.0                # ramped at +40: one step forgiven
    assert health.ejection_time(now + 60.0) == 60.0        # two of three forgiven by +60


def test_failures_while_out_of_rotation_do_not_count_towards_the_next_ejection() -> None:
    """Requests in flight when a backend was ejected fail after it: their run was acted on
    already, and one failure after its return must not eject it again, for twice as long."""
    health = backend()
    fail(health, 5, 0.0)
    fail(health, 4, 0.5)                                   # the tail of its requests in flight
    assert health.available(30.0)
    assert health.record_failure(30.0) == []
    assert state(health) is H.SLOW_START and health.ejections == 1
    fail(health, 4, 31.0)
    assert state(health) is H.EJECTED                      # a run of its own, after its return


def test_ejection_time_predicts_the_next_ejection() -> None:
    health = backend()
    assert health.ejection_time(0.0) == 30.0
    fail(health, 5, 0.0)
    assert health.ejection_time(30.0) == 60.0


def test_failing_checks_during_an_ejection_make_the_backend_unhealthy() -> None:
    health = backend()
    fail(health, 5, 0.0)
    checks(health, "---", 5.0)
    assert state(health) is H.UNHEALTHY
    assert not health.available(1000.0)                   # the ejection timer is void
    checks(health, "++", 1000.0)
    assert state(health) is H.SLOW_START


def test_a_refused_ejection_keeps_the_run_so_the_next_failure_ejects() -> None:
    health = backend()
    for _ in range(5):
        assert health.record_failure(0.0, may_eject=False) == []
    assert health.ejections_refused == 1
    assert health.consecutive_failures == 5
    [transition] = health.record_failure(1.0)
    assert transition.to_state is H.EJECTED


# -- drain --------------------------------------------------------------------------------------


def test_drain_and_undrain_go_through_slow_start() -> None:
    health = backend()
    [drained] = health.drain(1.0)
    assert drained.to_state is H.DRAINING and not health.available(1.0)
    checks(health, "-+-", 2.0)                            # still counted while draining
    assert health.state is H.DRAINING
    [back] = health.undrain(3.0)
    assert back.to_state is H.SLOW_START and health.weight(3.0) == pytest.approx(0.1)


def test_undrain_with_failing_checks_lands_on_unhealthy() -> None:
    health = backend()
    health.drain(1.0)
    checks(health, "---", 2.0)
    transitions = health.undrain(3.0)
    assert [t.to_state for t in transitions] == [H.SLOW_START, H.UNHEALTHY]
    assert not health.available(3.0)


def test_draining_an_ejected_backend_cancels_its_return() -> None:
    health = backend()
    fail(health, 5, 0.0)
    health.drain(1.0)
    assert health.state is H.DRAINING and not health.available(100.0)


def test_drain_twice_or_undrain_without_drain_is_a_bookkeeping_bug() -> None:
    health = backend()
    with pytest.raises(IllegalTransition):
        health.undrain(0.0)
    health.drain(0.0)
    with pytest.raises(IllegalBackendTransition, match="is draining and cannot take event "
                       "'drain'"):
        health.drain(1.0)


# -- reload -------------------------------------------------------------------------------------


def test_a_rebuilt_backend_takes_over_its_ejection_and_backoff() -> None:
    old = backend()
    fail(old, 5, 0.0)
    new = backend(10.0, base_ejection_time=30.0, max_ejection_time=600.0)
    new.take_over(old, 10.0)
    assert not new.available(29.9) and new.available(30.0)
    fail(new, 5, 30.0)
    assert new.ejected_until == 90.0                       # the second ejection: doubled
    assert new.ejections == 2 and new.config.max_ejection_time == 600.0


def test_a_backend_down_by_its_checks_returns_when_a_reload_turns_them_off() -> None:
    """Nothing would ever pass a check again to bring it back."""
    old = backend()
    checks(old, "---", 1.0)
    drained = backend()
    drained.drain(0.0)
    checks(drained, "---", 1.0)
    for previous in (old, drained):
        new = backend(2.0)
        new.take_over(previous, 2.0, checks=False)
        assert new.snapshot(2.0)["checks_down"] is False
        if previous is drained:
            assert state(new) is H.DRAINING
            new.undrain(3.0)
        assert new.available(3.0)
    kept = backend(2.0)
    kept.take_over(old, 2.0)
    assert state(kept) is H.UNHEALTHY


def test_a_slow_start_taken_over_ramps_over_the_new_window() -> None:
    old = backend(slow_start=10.0)
    fail(old, 5, 0.0)
    assert old.weight(32.0) == pytest.approx(0.2)          # ramping since 30
    longer = backend(32.0, slow_start=20.0)
    longer.take_over(old, 32.0)
    assert longer.weight(40.0) == pytest.approx(0.5) and state(longer) is H.SLOW_START
    assert longer.weight(50.0) == 1.0 and state(longer) is H.HEALTHY
    none = backend(32.0, slow_start=0.0)                  # no window: healthy at once
    none.take_over(old, 32.0)
    assert none.weight(32.0) == 1.0 and state(none) is H.HEALTHY


# -- observation --------------------------------------------------------------------------------


def test_transitions_are_logged_boundedly_for_telemetry() -> None:
    health = backend(log_size=2)
    fail(health, 5, 0.0)
    health.available(31.0)                                 # ejection_ended, lazily
    health.available(41.0)                                 # ramped
    taken = health.take_transitions()
    assert [(t.event, t.at) for t in taken] == [(E.EJECTION_ENDED, 30.0), (E.RAMPED, 40.0)]
    assert health.take_transitions() == []


def test_snapshot_and_repr() -> None:
    health = backend()
    fail(health, 5, 0.0)
    snap = health.snapshot(1.0)
    assert snap["state"] == "ejected" and snap["ejected_until"] == 30.0
    assert snap["available"] is False and snap["weight"] == 0.0
    assert repr(health) == "<BackendHealth 10.0.0.1:80 ejected>"


# -- the group and its ejection cap -------------------------------------------------------------


@pytest.mark.parametrize(("n", "percent", "expected"), [
    (3, 10.0, 1),        # at least one, as Envoy
    (10, 10.0, 1),
    (19, 10.0, 1),
    (20, 10.0, 2),
    (10, 50.0, 5),
    (4, 0.0, 1),
    (4, 100.0, 4),
])
def test_max_ejected(n: int, percent: float, expected: int) -> None:
    group = HealthGroup([f"b{i}" for i in range(n)], HealthConfig(max_ejection_percent=percent),
                        0.0)
    assert group.max_ejected() == expected


def test_the_group_refuses_ejections_over_the_cap_and_allows_them_when_room_returns() -> None:
    group = HealthGroup(["a", "b", "c"], HealthConfig(slow_start=0.0), 0.0, owner="api")
    for _ in range(5):
        group.record_failure("a", 0.0)
    for _ in range(5):
        assert group.record_failure("b", 1.0) == []
    assert group.ejected(1.0) == 1
    assert group["b"].ejections_refused == 1 and group["b"].state is H.HEALTHY
    assert group.available(1.0) == ["b", "c"]
    # a returns at 30; b's next failure then ejects it.
    [transition] = group.record_failure("b", 31.0)
    assert transition.to_state is H.EJECTED
    assert group.available(31.0) == ["a", "c"]


@pytest.mark.parametrize("others", [[], ["down"], ["drained"]])
def test_the_last_backend_in_rotation_is_never_ejected(others: list[str]) -> None:
    """With nowhere else to send its requests, ejecting a backend fails them all for the
    ejection's length, however soon it recovers (Envoy's panic threshold would send them to it
    anyway): the ejection is refused, and happens once another backend is back."""
    group = HealthGroup(["only", *others], HealthConfig(slow_start=0.0), 0.0)
    if others == ["down"]:
        for _ in range(3):
            group.record_check("down", False, 0.0)
    elif others == ["drained"]:
        group.drain("drained", 0.0)
    for _ in range(5):
        assert group.record_failure("only", 1.0) == []
    assert group.available(1.0) == ["only"] and group["only"].ejections_refused == 1
    if others == ["drained"]:
        group.undrain("drained", 2.0)
        [transition] = group.record_failure("only", 2.0)
        assert transition.to_state is H.EJECTED


def test_group_bookkeeping() -> None:
    group = HealthGroup(["a", "b"], HealthConfig(), 0.0, owner="api")
    with pytest.raises(ConfigError) as info:
        group["zz"]
    assert info.value.key == "api.backends"
    with pytest.raises(ConfigError):
        group.add("a", 0.0)
    group.add("c", 0.0)
    group.remove("b")
    group.remove("never")
    assert len(group) == 2
    group.drain("a", 1.0)
    assert group.weights(1.0) == {"a": 0.0, "c": 1.0}
    group.record_check("c", False, 1.0)
    group.record_success("c", 1.0)
    group.undrain("a", 2.0)
    assert group.weights(2.0)["a"] == pytest.approx(0.1)
    assert [t.event for t in group.poll(20.0)] == [E.RAMPED]
    snap = group.snapshot(20.0)
    assert snap["ejected"] == 0 and snap["max_ejected"] == 1
    assert [b["state"] for b in snap["backends"]] == ["healthy", "healthy"]
    assert repr(group) == "<HealthGroup api [a healthy, c healthy]>"


group_ops = st.lists(st.tuples(
    st.sampled_from(["fail", "fail", "fail", "ok", "check_ok", "check_fail", "drain",
                     "undrain"]),
    st.integers(0, 9),
    st.floats(0.0, 20.0),
), max_size=200)


@settings(max_examples=200, deadline=None)
@given(group_ops, st.integers(1, 10), st.sampled_from([0.0, 10.0, 25.0, 50.0, 100.0]))
def test_the_ejected_share_never_exceeds_the_cap(ops: list[tuple[str, int, float]], n: int,
                                                 percent: float) -> None:
    config = HealthConfig(max_ejection_percent=percent, consecutive_failures=2, fall=2,
                          base_ejection_time=10.0, max_ejection_time=40.0, slow_start=5.0)
    names = [f"b{i}" for i in range(n)]
    group = HealthGroup(names, config, 0.0)
    cap = max(1, math.floor(percent / 100 * n + 1e-9))
    now = 0.0
    for op, i, gap in ops:
        now += gap
        name = names[i % n]
        health = group[name]
        if op == "fail":
            others = [o for o in names if o != name and group[o].available(now)]
            ejected_now = any(t.event is E.EJECT for t in group.record_failure(name, now))
            assert others or not ejected_now               # never the last in rotation
        elif op == "ok":
            group.record_success(name, now)
        elif op in ("check_ok", "check_fail"):
            group.record_check(name, op == "check_ok", now)
        elif op == "drain" and health.state is not H.DRAINING:
            group.drain(name, now)
        elif op == "undrain" and health.state is H.DRAINING:
            group.undrain(name, now)
        ejected = group.ejected(now)
        assert ejected <= cap
        assert ejected / n <= max(percent / 100, 1 / n) + 1e-9
        for other in names:
            h = group[other]
            assert 0.0 <= h.weight(now) <= 1.0
            assert h.available(now) is (h.state in AVAILABLE)
