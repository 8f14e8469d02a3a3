"""The degradation ladder: pressure, thresholds with hysteresis, dwell, order, decisions."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connwise.core.classes import ClassTable
from connwise.core.degrade import (
    LEVEL_NAMES,
    QUEUE,
    SHED,
    SIGNAL,
    THROTTLE,
    Contention,
    DegradeConfig,
    DegradeLadder,
    LevelChange,
    Step,
    contention_from_scheduler,
)
from connwise.core.scheduler import Scheduler
from connwise.errors import ConfigError, UnknownClass

CLASSES = ClassTable()
NAMES = ("critical", "interactive", "bulk")


def ladder(**overrides: Any) -> DegradeLadder:
    return DegradeLadder(DegradeConfig(**overrides), CLASSES)


def levels(d: DegradeLadder) -> tuple[int, int, int]:
    return (d.level("bulk"), d.level("interactive"), d.level("critical"))


def everywhere(pressure: float) -> dict[str, float]:
    return dict.fromkeys(NAMES, pressure)


# -- configuration ------------------------------------------------------------------------------

FOUR = (Step(0.8, 0.6), Step(1.0, 0.7), Step(1.2, 0.9), Step(1.5, 1.0))


@pytest.mark.parametrize(("config", "key"), [
    (DegradeConfig(steps=FOUR[:3]), "degrade.steps"),
    (DegradeConfig(steps=(Step(0.8, 0.8), *FOUR[1:])), "degrade.steps[0]"),
    (DegradeConfig(steps=(Step(0.8, -0.1), *FOUR[1:])), "degrade.steps[0]"),
    (DegradeConfig(steps=(FOUR[0], Step(0.8, 0.5), *FOUR[2:])), "degrade.steps[1].enter"),
    (DegradeConfig(steps=(*FOUR[:3], Step(math.inf, 1.0))), "degrade.steps[3]"),
    (DegradeConfig(overrides={"vip": FOUR}), "degrade.overrides.vip"),
    (DegradeConfig(overrides={"bulk": FOUR[:2]}), "degrade.overrides.bulk"),
    (DegradeConfig(max_level={"vip": 3}), "degrade.max_level.vip"),
    (DegradeConfig(max_level={"critical": 5}), "degrade.max_level.critical"),
    (DegradeConfig(class_offset=-0.1), "degrade.class_offset"),
    (DegradeConfig(dwell_up=-1), "degrade.dwell_up"),
    (DegradeConfig(dwell_down=math.nan), "degrade.dwell_down"),
    (DegradeConfig(throttle_rate=0), "degrade.throttle_rate"),
    (DegradeConfig(throttle_burst=math.inf), "degrade.throttle_burst"),
    (DegradeConfig(retry_after=-1), "degrade.retry_after"),
    (DegradeConfig(shed_backlog=-1.0), "degrade.shed_backlog"),
    (DegradeConfig(shed_backlog=math.inf), "degrade.shed_backlog"),
])
def test_bad_configuration_names_its_key_path(config: DegradeConfig, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        DegradeLadder(config, CLASSES)
    assert info.value.key == key


def test_thresholds_rise_with_the_class_rank() -> None:
    d = ladder()
    bulk, interactive, critical = (d.state(n) for n in ("bulk", "interactive", "critical"))
    assert bulk.enter[1:] == (0.85, 1.0, 1.25, 1.6)
    assert bulk.exit[1:] == (0.6, 0.5, 0.9, 1.1)
    assert interactive.enter[1:] == pytest.approx((1.0, 1.15, 1.4, 1.75))
    assert critical.enter[1:] == pytest.approx((1.15, 1.3, 1.55, 1.9))
    assert critical.exit[1:] == pytest.approx((0.9, 0.8, 1.2, 1.4))


def test_an_override_replaces_the_derived_steps() -> None:
    d = ladder(overrides={"critical": FOUR})
    assert d.state("critical").enter[1:] == (0.8, 1.0, 1.2, 1.5)


# -- pressure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("contention", "expected"), [
    (Contention(), 0.0),
    (Contention(utilization=0.5), 0.5),
    (Contention(utilization=1.7), 1.0),                              # capped at 1
    (Contention(utilization=1.0, waiting=5, queue_limit=10), 1.5),
    (Contention(utilization=1.0, waiting=5, queue_limit=0), 1.0),    # no known bound
    (Contention(utilization=1.0, oldest_wait=3.0, max_wait=4.0), 1.75),
    (Contention(utilization=1.0, waiting=1, queue_limit=10, oldest_wait=3.0, max_wait=4.0),
     1.75),                                                          # the larger of the two
    (Contention(utilization=1.0, oldest_wait=9.0, max_wait=4.0), 2.0),
])
def test_pressure(contention: Contention, expected: float) -> None:
    assert contention.pressure() == pytest.approx(expected)


def test_contention_from_a_scheduler_counts_the_classes_above() -> None:
    scheduler = Scheduler(CLASSES, capacity=10, max_waiters=10)
    for _ in range(10):
        assert scheduler.try_admit("critical")
    scheduler.submit("bulk", 0.0)
    scheduler.submit("interactive", 1.0)
    scheduler.submit("critical", 2.0)
    signals = contention_from_scheduler(scheduler, 3.0)
    assert signals["critical"] == Contention(1.0, 1, 10, 1.0, 5.0)
    assert signals["interactive"].waiting == 2
    assert signals["bulk"] == Contention(1.0, 3, 10, 1.0, 5.0)
    assert [signals[n].pressure() for n in NAMES] == pytest.approx([1.2, 1.2, 1.3])


def test_contention_of_an_idle_scheduler_is_its_utilization() -> None:
    scheduler = Scheduler(CLASSES, capacity=4, max_waiters=10)
    scheduler.try_admit("bulk")
    signals = contention_from_scheduler(scheduler, 0.0)
    assert {n: c.pressure() for n, c in signals.items()} == everywhere(0.25)


# -- moving on the ladder -----------------------------------------------------------------------


def test_light_pressure_degrades_only_the_lowest_class() -> None:
    d = ladder()
    [change] = d.update_pressure(everywhere(0.9), 0.0)
    assert change == LevelChange("bulk", 0, 1, 0.9, 0.0, "pressure 0.900 >= 0.85")
    for t in range(1, 20):
        assert d.update_pressure(everywhere(0.9), float(t)) == []
    assert levels(d) == (1, 0, 0)


# (time, pressure everywhere, expected (bulk, interactive, critical)); dwell_up 1, dwell_down 2.
CLIMB_AND_RECOVER = [
    (0.0, 2.0, (1, 0, 0)),
    (1.0, 2.0, (2, 1, 0)),          # one step per update; each class one update behind
    (2.0, 2.0, (3, 2, 1)),
    (3.0, 2.0, (4, 3, 2)),
    (4.0, 2.0, (4, 4, 3)),
    (5.0, 2.0, (4, 4, 4)),
    (6.0, 0.0, (4, 4, 4)),          # pressure gone: wait dwell_down
    (7.0, 0.0, (4, 4, 4)),
    (8.0, 0.0, (4, 4, 3)),          # the highest class recovers first
    (9.0, 0.0, (4, 3, 3)),
    (10.0, 0.0, (3, 3, 2)),         # and each step down waits dwell_down again
    (11.0, 0.0, (3, 2, 2)),
    (12.0, 0.0, (2, 2, 1)),
]


def test_the_ladder_is_climbed_and_descended_one_step_at_a_time_in_class_order() -> None:
    d = ladder(dwell_up=1.0, dwell_down=2.0)
    for now, pressure, expected in CLIMB_AND_RECOVER:
        changes = d.update_pressure(everywhere(pressure), now)
        assert all(abs(c.to_level - c.from_level) == 1 for c in changes)
        assert levels(d) == expected, f"at t={now}"


@pytest.mark.parametrize(("pressures", "expected"), [
    # Oscillating between enter and exit: once in, it stays in.
    ([0.86, 0.84, 0.7, 0.61, 0.86, 0.61], 1),
    # Below exit, but not for dwell_down (5 s) in one stretch.
    ([0.86, 0.5, 0.5, 0.5, 0.7, 0.5, 0.5, 0.5], 1),
    # Below exit for 5 s: back to 0.
    ([0.86, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], 0),
])
def test_hysteresis_and_dwell_prevent_flapping(pressures: list[float], expected: int) -> None:
    d = ladder()
    for t, pressure in enumerate(pressures):
        d.update_pressure({"bulk": pressure}, float(t))
    assert d.level("bulk") == expected


def test_signal_is_left_only_far_below_its_entry() -> None:
    d = ladder(dwell_up=0.0, dwell_down=0.0)
    d.update_pressure({"bulk": 1.0}, 0.0)
    d.update_pressure({"bulk": 1.0}, 1.0)
    assert d.level("bulk") == SIGNAL
    d.update_pressure({"bulk": 0.55}, 2.0)           # the signal works: utilization fell
    assert d.level("bulk") == SIGNAL
    d.update_pressure({"bulk": 0.45}, 3.0)
    assert d.level("bulk") == THROTTLE


def test_a_class_does_not_climb_past_the_class_below() -> None:
    d = ladder(dwell_up=0.0)
    for t in range(10):
        d.update_pressure({"critical": 2.0, "interactive": 2.0, "bulk": 0.0}, float(t))
    assert levels(d) == (0, 0, 0)


def test_max_level_stops_a_class_below_shed() -> None:
    d = ladder(dwell_up=0.0, max_level={"critical": QUEUE})
    for t in range(10):
        d.update_pressure(everywhere(2.0), float(t))
    assert levels(d) == (SHED, SHED, QUEUE)
    assert not d.should_shed("critical")


def test_a_lower_class_held_at_its_max_level_does_not_hold_the_classes_above_it() -> None:
    # Bulk is never queued nor shed: interactive and critical still climb the whole ladder.
    d = ladder(dwell_up=0.0, max_level={"bulk": SIGNAL})
    for t in range(12):
        d.update_pressure(everywhere(2.0), float(t))
    assert levels(d) == (SIGNAL, SHED, SHED)


def test_missing_or_nan_pressure_counts_as_none() -> None:
    d = ladder(dwell_up=0.0, dwell_down=0.0)
    d.update_pressure({"bulk": 0.9}, 0.0)
    d.update_pressure({"bulk": math.nan}, 1.0)
    assert d.level("bulk") == 0
    d.update_pressure({}, 2.0)
    assert d.state("bulk").pressure == 0.0


def test_update_takes_contention_signals() -> None:
    d = ladder()
    changes = d.update({"bulk": Contention(utilization=0.95)}, 0.0)
    assert [(c.class_name, c.to_level) for c in changes] == [("bulk", 1)]


# -- decisions and counters ---------------------------------------------------------------------


@pytest.mark.parametrize(("level", "rate", "signal", "header", "queue", "shed"), [
    (0, None, 0, b"", False, False),
    (1, 1048576.0, 0, b"", False, False),
    (2, 1048576.0, 2, b"Connwise-Degrade: 2\r\n", False, False),
    (3, 1048576.0, 3, b"Connwise-Degrade: 3\r\n", True, False),
    (4, 1048576.0, 4, b"Connwise-Degrade: 4\r\n", True, True),
])
def test_decisions_at_each_level_are_cumulative(level: int, rate: float | None, signal: int,
                                                header: bytes, queue: bool, shed: bool) -> None:
    d = ladder(dwell_up=0.0)
    for t in range(level):
        d.update_pressure({"bulk": 2.0}, float(t))
    assert d.level("bulk") == level
    assert d.throttle_rate("bulk") == rate
    assert d.signal_level("bulk") == signal
    assert d.signal_header("bulk") == header
    assert d.should_queue("bulk") is queue
    assert d.should_shed("bulk") is shed
    assert d.retry_after("bulk") == 5
    # The other classes are untouched.
    assert d.throttle_rate("critical") is None and d.signal_header("critical") == b""


def test_steps_are_counted_per_class_when_entered_and_when_applied() -> None:
    d = ladder(dwell_up=0.0, dwell_down=0.0)
    for t, pressure in enumerate([0.9, 0.9, 0.1, 1.1, 1.1, 0.1, 0.1, 0.1]):
        d.update_pressure({"bulk": pressure}, float(t))
    d.record("bulk", THROTTLE)
    d.record("bulk", SIGNAL)
    d.record("bulk", SIGNAL)
    stats = d.stats()
    assert stats["bulk"]["entered"] == {"throttle": 2, "signal": 1, "queue": 0, "shed": 0}
    assert stats["bulk"]["applied"] == {"throttle": 1, "signal": 2, "queue": 0, "shed": 0}
    assert stats["critical"]["entered"] == dict.fromkeys(LEVEL_NAMES[1:], 0)
    assert list(stats) == ["critical", "interactive", "bulk"]
    assert stats["bulk"]["step"] == "none"


def test_unknown_classes_are_named() -> None:
    with pytest.raises(UnknownClass):
        ladder().should_shed("vip")


def test_repr() -> None:
    d = ladder()
    d.update_pressure({"bulk": 0.9}, 0.0)
    assert repr(d) == "<DegradeLadder [critical 0, interactive 0, bulk 1]>"
    assert repr(d.state("bulk")) == "<ClassDegrade bulk level 1 (throttle), pressure 0.90>"


# -- invariants ---------------------------------------------------------------------------------

pressure = st.one_of(st.floats(0.0, 2.2), st.sampled_from([0.6, 0.85, 1.0, 1.25, 1.6, 1.9]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 4.0), pressure, pressure, pressure), max_size=60),
       st.floats(0.0, 2.0), st.floats(0.0, 6.0))
def test_levels_move_one_step_at_a_time_in_order_and_only_on_their_thresholds(
        steps: list[tuple[float, float, float, float]], dwell_up: float,
        dwell_down: float) -> None:
    d = ladder(dwell_up=dwell_up, dwell_down=dwell_down)
    order = ["bulk", "interactive", "critical"]
    now = 0.0
    last_change = dict.fromkeys(order, -math.inf)
    for gap, *values in steps:
        now += gap
        pressures = dict(zip(order, values, strict=True))
        before = {n: d.level(n) for n in order}
        changes = d.update_pressure(pressures, now)
        assert len({c.class_name for c in changes}) == len(changes)   # one move per class
        for c in changes:
            assert abs(c.to_level - c.from_level) == 1
            assert c.from_level == before[c.class_name]
            state = d.state(c.class_name)
            if c.to_level > c.from_level:
                assert pressures[c.class_name] >= state.enter[c.to_level]
                assert now - last_change[c.class_name] >= dwell_up
            else:
                assert pressures[c.class_name] < state.exit[c.from_level]
            last_change[c.class_name] = now
        after = [d.level(n) for n in order]
        assert all(0 <= level <= SHED for level in after)
        assert after == sorted(after, reverse=True)    # bulk >= interactive >= critical
