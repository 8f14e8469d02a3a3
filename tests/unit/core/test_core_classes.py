"""Priority classes: the defaults, validation with key paths, promotion delays, reserved slots."""

from __future__ import annotations

import math

import pytest

from connwise.core.classes import DEFAULT_CLASSES, ClassTable, PriorityClass
from connwise.errors import ConfigError, UnknownClass

NAN = float("nan")


def test_default_classes_are_the_documented_ones() -> None:
    table = ClassTable()
    assert table.names == ["critical", "interactive", "bulk"]
    assert len(table) == 3
    assert table.top_rank == 2
    critical, interactive, bulk = table.classes
    assert (critical.rank, critical.reserved_share, critical.max_wait) == (2, 0.2, 5.0)
    assert (interactive.rank, interactive.reserved_share, interactive.max_wait) == (1, 0.1, 10.0)
    assert (bulk.rank, bulk.reserved_share, bulk.max_wait) == (0, 0.0, 30.0)
    assert table.promotion_delay("critical") == 0.0
    assert table.promotion_delay("interactive") == 5.0
    assert table.promotion_delay("bulk") == 20.0
    assert tuple(table) == table.classes
    assert "bulk" in table
    assert "nope" not in table
    assert table["bulk"] is bulk


def test_classes_are_ordered_by_rank_whatever_the_input_order() -> None:
    table = ClassTable(reversed(DEFAULT_CLASSES))
    assert table.names == ["critical", "interactive", "bulk"]


def test_unknown_class_names_the_known_ones() -> None:
    table = ClassTable()
    with pytest.raises(UnknownClass) as info:
        table["nope"]
    assert isinstance(info.value, KeyError)
    assert str(info.value) == ("priority class 'nope' is not configured; use one of critical, "
                               "interactive, bulk or add it to the pool's classes.")
    with pytest.raises(UnknownClass):
        table.promotion_delay("nope")


def top(name: str = "top", **kw: float) -> PriorityClass:
    return PriorityClass(name, rank=kw.pop("rank", 10), **kw)


def low(name: str = "low", **kw: float) -> PriorityClass:
    return PriorityClass(name, rank=kw.pop("rank", 0), **{"aging_rate": 1.0, **kw})


BAD_TABLES: list[tuple[str, list[PriorityClass], str, object]] = [
    ("empty", [], "classes", []),
    ("duplicate name", [top("a"), low("a")], "classes.a", "a"),
    ("duplicate name same rank", [top("a"), top("a")], "classes.a", "a"),
    ("empty name", [top("")], "classes[].name", ""),
    ("name with spaces", [top("a b")], "classes[].name", "a b"),
    ("negative share", [top(reserved_share=-0.1)], "classes.top.reserved_share", -0.1),
    ("share of one", [top(reserved_share=1.0)], "classes.top.reserved_share", 1.0),
    ("share above one", [low(reserved_share=1.5), top()], "classes.low.reserved_share", 1.5),
    ("nan share", [top(reserved_share=NAN)], "classes.top.reserved_share", NAN),
    ("shares sum to one", [top(reserved_share=0.5), low(reserved_share=0.5)],
     "classes.*.reserved_share", 1.0),
    ("shares sum above one", [top(reserved_share=0.7), low(reserved_share=0.6)],
     "classes.*.reserved_share", 1.3),
    ("shares sum to one in float dust", [top(reserved_share=0.6), low("mid", rank=5,
                                                                      reserved_share=0.3),
                                         low(reserved_share=0.1)],
     "classes.*.reserved_share", 1.0),
    ("zero max_wait", [top(max_wait=0)], "classes.top.max_wait", 0),
    ("negative max_wait", [top(), low(max_wait=-1)], "classes.low.max_wait", -1),
    ("nan max_wait", [top(max_wait=NAN)], "classes.top.max_wait", NAN),
    ("negative aging", [top(aging_rate=-0.5)], "classes.top.aging_rate", -0.5),
    ("nan aging", [top(), low(aging_rate=NAN)], "classes.low.aging_rate", NAN),
    ("lower class never ages", [top(), low(aging_rate=0.0)], "classes.low.aging_rate", 0.0),
    ("nan rank", [top(), PriorityClass("odd", rank=NAN, aging_rate=1.0)], "classes.odd.rank",
     NAN),
    ("infinite rank", [PriorityClass("inf", rank=math.inf)], "classes.inf.rank", math.inf),
]


@pytest.mark.parametrize(("classes", "key", "value"), [row[1:] for row in BAD_TABLES],
                         ids=[row[0] for row in BAD_TABLES])
def test_bad_tables_raise_config_error_naming_the_key(classes: list[PriorityClass], key: str,
                                                      value: object) -> None:
    with pytest.raises(ConfigError) as info:
        ClassTable(classes)
    err = info.value
    assert err.key == key
    assert str(err).startswith(f"{key} = ")
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(err.value, float)
        assert math.isnan(err.value)
    else:
        assert err.value == value


def test_the_key_prefix_is_the_callers() -> None:
    with pytest.raises(ConfigError) as info:
        ClassTable([top(max_wait=0)], key="gateway.classes")
    assert info.value.key == "gateway.classes.top.max_wait"


def test_top_classes_need_not_age_and_infinite_waits_are_allowed() -> None:
    table = ClassTable([top("a"), top("b", max_wait=math.inf), low(aging_rate=0.25)])
    assert table.promotion_delay("a") == table.promotion_delay("b") == 0.0
    assert table.promotion_delay("low") == 40.0


@pytest.mark.parametrize(("rank", "aging", "expected"), [
    (9, 1.0, 1.0), (0, 1.0, 10.0), (0, 0.5, 20.0), (5, 0.1, 50.0), (8, 4.0, 0.5),
])
def test_promotion_delay_is_rank_gap_over_aging_rate(rank: float, aging: float,
                                                     expected: float) -> None:
    table = ClassTable([top(), PriorityClass("c", rank=rank, aging_rate=aging)])
    assert table.promotion_delay("c") == pytest.approx(expected)


def shares(*values: float) -> ClassTable:
    classes = [PriorityClass(f"c{i}", rank=10 - i, reserved_share=share,
                             aging_rate=0.0 if i == 0 else 1.0)
               for i, share in enumerate(values)]
    return ClassTable(classes)


@pytest.mark.parametrize(("table_shares", "capacity", "expected"), [
    ((0.1, 0.0), 5, [1, 0]),            # 10% of 5 rounds up to one slot
    ((0.2, 0.0), 10, [2, 0]),           # exactly 2
    ((0.3, 0.0), 10, [3, 0]),           # 0.3 * 10 is 3.0000000000000004 in floats: still 3
    ((0.2, 0.1, 0.0), 10, [2, 1, 0]),   # the defaults at 10
    ((0.2, 0.1, 0.0), 5, [1, 1, 0]),
    ((0.2, 0.1, 0.0), 3, [1, 1, 0]),
    ((0.2, 0.1, 0.0), 2, [1, 0, 0]),    # the lowest class keeps one of two slots
    ((0.2, 0.1, 0.0), 1, [0, 0, 0]),    # nothing can be kept back from a single slot
    ((0.5, 0.4, 0.0), 2, [1, 0, 0]),
    ((0.5, 0.4, 0.0), 10, [5, 4, 0]),
    ((0.5, 0.45, 0.0), 10, [5, 4, 0]),  # 4.5 rounds up to 5 but is capped at 10 - 1 - 5
    ((0.0, 0.0), 7, [0, 0]),
    ((0.5, 0.0, 0.3), 10, [5, 0, 3]),   # a reserving lowest class: the sum still leaves one
    ((0.9,), 10, [9]),
])
def test_reserved_slots_round_up_but_leave_one_slot(table_shares: tuple[float, ...],
                                                    capacity: int,
                                                    expected: list[int]) -> None:
    table = shares(*table_shares)
    slots = table.reserved_slots(capacity)
    assert list(slots) == table.names
    assert list(slots.values()) == expected
    if capacity > 1:
        assert sum(slots.values()) <= capacity - 1


def test_reserved_slots_never_exceed_capacity_minus_one() -> None:
    table = ClassTable()
    for capacity in range(1, 200):
        slots = table.reserved_slots(capacity)
        assert sum(slots.values()) <= max(0, capacity - 1)
        assert slots["critical"] == min(math.ceil(round(0.2 * capacity, 9)), capacity - 1)
