"""VirtualClock moves only when told to, and never backwards; MonotonicClock reads real time."""

from __future__ import annotations

import pytest

from connwise.core.clock import Clock, MonotonicClock, VirtualClock
from connwise.errors import ConfigError


def test_virtual_clock_starts_where_told() -> None:
    assert VirtualClock().now() == 0.0
    assert VirtualClock(start=12.5).now() == 12.5


def test_advance_moves_forward_and_returns_the_new_time() -> None:
    clock = VirtualClock(start=1.0)
    assert clock.advance(2.5) == 3.5
    assert clock.now() == 3.5
    assert clock.advance(0.0) == 3.5
    assert clock.now() == 3.5


def test_set_jumps_to_a_later_or_equal_time() -> None:
    clock = VirtualClock(start=1.0)
    clock.set(10.0)
    assert clock.now() == 10.0
    clock.set(10.0)
    assert clock.now() == 10.0


def test_advance_refuses_a_negative_duration_and_keeps_the_time() -> None:
    clock = VirtualClock(start=5.0)
    with pytest.raises(ConfigError) as info:
        clock.advance(-0.001)
    assert info.value.key == "seconds"
    assert info.value.value == -0.001
    assert "backwards" in str(info.value)
    assert clock.now() == 5.0


def test_set_refuses_an_earlier_time_and_keeps_the_time() -> None:
    clock = VirtualClock(start=5.0)
    with pytest.raises(ConfigError) as info:
        clock.set(4.999)
    assert info.value.key == "when"
    assert info.value.value == 4.999
    assert "already at 5.0" in str(info.value)
    assert clock.now() == 5.0


def test_repr_shows_the_time() -> None:
    assert repr(VirtualClock(start=1.5)) == "<VirtualClock t=1.500000>"


def test_both_clocks_satisfy_the_protocol_and_monotonic_does_not_go_back() -> None:
    clocks: list[Clock] = [VirtualClock(), MonotonicClock()]
    for clock in clocks:
        first = clock.now()
        assert clock.now() >= first
