"""Escalation: activity and group rules, hold and quiet periods, the cap, bounded memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connwise.core.classes import ClassTable
from connwise.core.cqi import ClassChange
from connwise.core.escalation import ActivityRule, EscalationConfig, EscalationEngine, GroupRule
from connwise.errors import ConfigError, IllegalTransition, UnknownClass

CLASSES = ClassTable()
CHATTY = ActivityRule("chatty", threshold=10, window=10.0, raise_by=1, hold=30.0)
COEDIT = GroupRule("coedit", min_members=3, raise_by=1, quiet=20.0)


def engine(*, activity: Sequence[ActivityRule] = (CHATTY,),
           groups: Sequence[GroupRule] = (COEDIT,), **overrides: Any) -> EscalationEngine:
    overrides.setdefault("max_escalated_share", 1.0)
    return EscalationEngine(EscalationConfig(activity=tuple(activity), groups=tuple(groups),
                                             **overrides), CLASSES)


def moves(changes: Sequence[ClassChange]) -> list[tuple[int, str | None, str]]:
    return [(c.conn_id, c.from_class, c.to_class) for c in changes]


def burst(e: EscalationEngine, conn_id: int, now: float, n: int) -> list[ClassChange]:
    changes: list[ClassChange] = []
    for _ in range(n):
        changes.extend(e.on_activity(conn_id, now))
    return changes


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "key"), [
    (EscalationConfig(activity=(ActivityRule(""),)), "escalation.activity[0].name"),
    (EscalationConfig(activity=(CHATTY, CHATTY)), "escalation.activity[1].name"),
    (EscalationConfig(activity=(ActivityRule("a", threshold=0),)),
     "escalation.activity[0].threshold"),
    (EscalationConfig(activity=(ActivityRule("a", window=math.inf),)),
     "escalation.activity[0].window"),
    (EscalationConfig(activity=(ActivityRule("a", hold=-1),)), "escalation.activity[0].hold"),
    (EscalationConfig(activity=(ActivityRule("a", raise_by=0),)),
     "escalation.activity[0].raise_by"),
    (EscalationConfig(activity=(ActivityRule("a", to_class="vip"),)),
     "escalation.activity[0].to_class"),
    (EscalationConfig(activity=(ActivityRule("a", classes=("vip",)),)),
     "escalation.activity[0].classes"),
    (EscalationConfig(groups=(GroupRule("g", min_members=1),)),
     "escalation.groups[0].min_members"),
    (EscalationConfig(groups=(GroupRule("g", quiet=math.nan),)), "escalation.groups[0].quiet"),
    (EscalationConfig(activity=(ActivityRule("g"),), groups=(GroupRule("g"),)),
     "escalation.groups[0].name"),
    (EscalationConfig(max_escalated_share=1.5), "escalation.max_escalated_share"),
    (EscalationConfig(max_tracked=0), "escalation.max_tracked"),
    (EscalationConfig(max_groups=0), "escalation.max_groups"),
])
def test_bad_configuration_names_its_key_path(config: EscalationConfig, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        EscalationEngine(config, CLASSES)
    assert info.value.key == key


def test_no_rules_by_default_and_nothing_escalates() -> None:
    e = EscalationEngine(EscalationConfig(), CLASSES)
    e.open(1, "bulk", 0.0, group_key="doc")
    assert burst(e, 1, 0.0, 1000) == []
    assert e.class_of(1) == "bulk"


def test_connection_bookkeeping() -> None:
    e = engine()
    assert e.open(1, "bulk", 0.0) == []
    with pytest.raises(IllegalTransition):
        e.open(1, "bulk", 0.0)
    with pytest.raises(UnknownClass):
        e.open(2, "vip", 0.0)
    assert e.on_activity(99, 0.0) == ()
    assert e.on_join(99, "doc", 0.0) == []
    assert e.on_leave(99, 0.0) == []
    assert e.close(99, 0.0) == []
    assert e.set_base(99, "bulk", 0.0) is None
    assert e.class_of(99) is None
    assert e.rate(99, "chatty", 0.0) == 0.0
    with pytest.raises(KeyError):
        e.rate(1, "nope", 0.0)


def test_base_and_group_say_what_another_engine_needs_to_take_a_connection_over() -> None:
    e = engine()
    e.open(1, "bulk", 0.0, group_key="doc")
    e.open(2, "interactive", 0.0)
    burst(e, 2, 0.0, 10)
    assert (e.base_of(1), e.group_of(1)) == ("bulk", "doc")
    assert (e.base_of(2), e.group_of(2), e.class_of(2)) == ("interactive", None, "critical")
    e.on_leave(1, 1.0)
    assert e.group_of(1) is None
    assert e.base_of(99) is None and e.group_of(99) is None


# -- activity -----------------------------------------------------------------------------------


def test_a_rate_over_the_threshold_raises_the_class_by_one_rank_for_the_hold() -> None:
    e = engine()
    e.open(1, "bulk", 0.0)
    assert burst(e, 1, 1.0, 9) == []
    [change] = burst(e, 1, 1.0, 1)
    assert (change.conn_id, change.from_class, change.to_class, change.at) == \
        (1, "bulk", "interactive", 1.0)
    assert "activity rule 'chatty'" in change.reason
    assert burst(e, 1, 1.0, 50) == []          # already raised: nothing new
    assert e.tick(30.9) == []                  # hold runs 30 s from the last over-threshold
    [back] = e.tick(31.0)
    assert (back.from_class, back.to_class) == ("interactive", "bulk")
    assert "back to its CQI class" in back.reason and "chatty" in back.reason
    assert e.class_of(1) == "bulk"


def test_activity_that_stays_over_the_threshold_extends_the_hold() -> None:
    e = engine()
    e.open(1, "bulk", 0.0)
    burst(e, 1, 0.0, 10)
    for t in range(1, 40):
        burst(e, 1, float(t), 2)               # 2/s: 20 per window, still over 10
        assert e.tick(float(t)) == []
    assert e.class_of(1) == "interactive"
    assert moves(e.tick(39 + 30.0)) == [(1, "interactive", "bulk")]


@pytest.mark.parametrize(("gap", "escalates"), [(0.5, True), (1.0, True), (1.5, False)])
def test_the_sliding_window_measures_the_rate(gap: float, escalates: bool) -> None:
    # 10 events per 10 s: one every second reaches it, one every 1.5 s does not.
    e = engine()
    e.open(1, "bulk", 0.0)
    changes: list[ClassChange] = []
    t = 0.0
    while t < 60.0:
        changes.extend(e.on_activity(1, t))
        t += gap
    assert bool(changes) is escalates


def test_rate_reports_the_sliding_window_estimate() -> None:
    e = engine(activity=(ActivityRule("r", threshold=1000, window=10.0),))
    e.open(1, "bulk", 0.0)
    burst(e, 1, 5.0, 8)                            # window [0, 10): 8 events
    assert e.rate(1, "r", 9.0) == 8
    assert e.rate(1, "r", 12.5) == pytest.approx(8 * 0.75)   # 75% of the old window inside
    burst(e, 1, 12.5, 2)
    assert e.rate(1, "r", 12.5) == pytest.approx(8 * 0.75 + 2)
    assert e.rate(1, "r", 35.0) == 0.0


@pytest.mark.parametrize(("rule", "base", "expected"), [
    (ActivityRule("up1", threshold=1), "bulk", "interactive"),
    (ActivityRule("up2", threshold=1, raise_by=2), "bulk", "critical"),
    (ActivityRule("up9", threshold=1, raise_by=9), "bulk", "critical"),
    (ActivityRule("to", threshold=1, to_class="critical"), "bulk", "critical"),
    (ActivityRule("to", threshold=1, to_class="interactive"), "interactive", "interactive"),
    (ActivityRule("to", threshold=1, to_class="bulk"), "interactive", "interactive"),
    (ActivityRule("top", threshold=1), "critical", "critical"),
    (ActivityRule("only", threshold=1, classes=("interactive",)), "bulk", "bulk"),
    (ActivityRule("only", threshold=1, classes=("interactive",)), "interactive", "critical"),
])
def test_rule_targets(rule: ActivityRule, base: str, expected: str) -> None:
    e = engine(activity=(rule,))
    e.open(1, base, 0.0)
    changes = e.on_activity(1, 0.0)
    assert e.class_of(1) == expected
    assert len(changes) == (expected != base)


def test_the_best_of_several_active_rules_wins() -> None:
    e = engine(activity=(ActivityRule("soft", threshold=2, hold=10),
                         ActivityRule("hard", threshold=5, to_class="critical", hold=5)))
    e.open(1, "bulk", 0.0)
    assert moves(burst(e, 1, 0.0, 2)) == [(1, "bulk", "interactive")]
    changes = burst(e, 1, 0.0, 3)
    assert moves(changes) == [(1, "interactive", "critical")]
    assert "'hard'" in changes[0].reason
    assert moves(e.tick(5.0)) == [(1, "critical", "interactive")]     # hard's hold is over
    assert moves(e.tick(10.0)) == [(1, "interactive", "bulk")]


# -- groups -------------------------------------------------------------------------------------


def test_a_group_reaching_min_members_raises_all_of_them() -> None:
    e = engine()
    for conn_id in (1, 2):
        e.open(conn_id, "bulk", 0.0, group_key="doc:42")
    assert e.group_size("doc:42") == 2
    assert [e.class_of(i) for i in (1, 2)] == ["bulk", "bulk"]
    changes = e.open(3, "interactive", 1.0, group_key="doc:42")
    assert sorted(moves(changes)) == [(1, "bulk", "interactive"), (2, "bulk", "interactive"),
                                      (3, "interactive", "critical")]
    assert "3 live connections share key 'doc:42' (>= 3)" in changes[0].reason
    # A fourth member is raised on joining.
    assert moves(e.open(4, "bulk", 2.0, group_key="doc:42")) == [(4, "bulk", "interactive")]
    # Another group is not affected.
    assert e.open(5, "bulk", 2.0, group_key="doc:7") == []


def test_a_shrunk_group_stays_raised_for_the_quiet_period() -> None:
    e = engine()
    for conn_id in (1, 2, 3):
        e.open(conn_id, "bulk", 0.0, group_key="doc")
    # The leaver loses the group's raise at once; the others keep it for `quiet`.
    assert moves(e.on_leave(3, 10.0)) == [(3, "interactive", "bulk")]
    assert e.tick(29.9) == []
    assert sorted(moves(e.tick(30.0))) == [(1, "interactive", "bulk"), (2, "interactive", "bulk")]


def test_a_member_that_reconnects_within_the_quiet_period_does_not_make_the_group_flap() -> None:
    e = engine()
    for conn_id in (1, 2, 3):
        e.open(conn_id, "bulk", 0.0, group_key="doc")
    assert e.close(3, 5.0) == []
    assert moves(e.open(4, "bulk", 6.0, group_key="doc")) == [(4, "bulk", "interactive")]
    assert e.tick(100.0) == []
    assert [e.class_of(i) for i in (1, 2, 4)] == ["interactive"] * 3


def test_an_empty_group_is_forgotten_after_its_quiet_period() -> None:
    e = engine()
    for conn_id in (1, 2, 3):
        e.open(conn_id, "bulk", 0.0, group_key="doc")
    for conn_id in (1, 2, 3):
        e.close(conn_id, 1.0)
    e.tick(5.0)
    assert e.stats()["groups"] == 1
    e.tick(21.0)
    assert e.stats()["groups"] == 0


def test_joining_another_group_leaves_the_first() -> None:
    e = engine()
    for conn_id in (1, 2, 3):
        e.open(conn_id, "bulk", 0.0, group_key="a")
    assert e.on_join(3, "a", 0.0) == []                     # same group: nothing
    changes = e.on_join(3, "b", 1.0)
    assert moves(changes) == [(3, "interactive", "bulk")]
    assert (e.group_size("a"), e.group_size("b")) == (2, 1)


# -- the cap ------------------------------------------------------------------------------------


def test_at_most_the_share_of_live_connections_is_escalated_and_the_rest_wait() -> None:
    e = engine(max_escalated_share=0.2)
    for conn_id in range(10):
        e.open(conn_id, "bulk", 0.0)
    assert e.allowed() == 2
    for conn_id in range(5):
        burst(e, conn_id, 1.0, 10)
    assert e.escalated == 2
    assert [e.class_of(i) for i in range(5)] == ["interactive"] * 2 + ["bulk"] * 3
    stats = e.stats()
    assert (stats["refused"], stats["pending"]) == (3, 3)
    # More connections make room; tick grants pending escalations in arrival order.
    for conn_id in range(10, 15):
        e.open(conn_id, "bulk", 2.0)
    assert moves(e.tick(2.0)) == [(2, "bulk", "interactive")]
    assert e.escalated == e.allowed() == 3


def test_closing_connections_undoes_the_newest_escalations_first() -> None:
    e = engine(max_escalated_share=0.2)
    for conn_id in range(10):
        e.open(conn_id, "bulk", 0.0)
    burst(e, 0, 1.0, 10)
    burst(e, 1, 2.0, 10)
    changes = [c for conn_id in range(5, 10) for c in e.close(conn_id, 3.0)]
    assert moves(changes) == [(1, "interactive", "bulk")]
    assert "escalation cap: at most 1 of 9 live connections" in changes[0].reason
    assert e.stats()["capped"] == 1
    # When room returns, the capped one is granted again while it still wants it.
    for conn_id in range(20, 25):
        e.open(conn_id, "bulk", 4.0)
    assert moves(e.tick(4.0)) == [(1, "bulk", "interactive")]


def test_a_capped_group_escalates_its_members_as_room_appears() -> None:
    e = engine(max_escalated_share=0.25)
    for conn_id in range(4):
        e.open(conn_id, "bulk", 0.0, group_key="doc")       # 1 may be escalated of 4
    assert e.escalated == 1
    for conn_id in range(10, 14):
        e.open(conn_id, "bulk", 1.0)                         # 8 live: 2 allowed
    assert len(e.tick(1.0)) == 1
    assert e.escalated == 2


def test_a_quiet_gateway_still_escalates_one_connection() -> None:
    """Below 1/share live connections (5 at 20%) the floor of share x live is 0: a group of
    three editors, the only connections, escalated nobody. At least one may be escalated."""
    e = engine(max_escalated_share=0.2)
    changes: list[ClassChange] = []
    for conn_id in (1, 2, 3):
        changes += e.open(conn_id, "bulk", 0.0, group_key="doc")
    assert e.allowed() == 1
    assert moves(changes) == [(1, "bulk", "interactive")]
    assert e.stats()["pending"] == 2
    # The share governs again from 1/share connections on: 10 live, 2 allowed.
    for conn_id in range(10, 17):
        e.open(conn_id, "bulk", 1.0)
    assert moves(e.tick(1.0)) == [(2, "bulk", "interactive")]
    assert e.escalated == e.allowed() == 2


def test_a_single_live_connection_may_be_escalated() -> None:
    e = engine(max_escalated_share=0.2)
    e.open(1, "bulk", 0.0)
    assert moves(burst(e, 1, 1.0, 10)) == [(1, "bulk", "interactive")]
    # Its hold over, it comes down; the allowance stays one while it is live.
    assert moves(e.tick(31.0)) == [(1, "interactive", "bulk")]
    assert e.allowed() == 1
    e.close(1, 32.0)
    assert e.allowed() == 0


def test_closing_down_to_few_connections_keeps_the_oldest_escalation() -> None:
    e = engine(max_escalated_share=0.2)
    for conn_id in range(10):
        e.open(conn_id, "bulk", 0.0)
    burst(e, 0, 1.0, 10)
    burst(e, 1, 2.0, 10)
    changes = [c for conn_id in range(2, 10) for c in e.close(conn_id, 3.0)]
    assert moves(changes) == [(1, "interactive", "bulk")]   # 2 live: one may stay
    assert [e.class_of(i) for i in (0, 1)] == ["interactive", "bulk"]


def test_a_zero_share_disables_escalation() -> None:
    e = engine(max_escalated_share=0.0)
    e.open(1, "bulk", 0.0)
    assert burst(e, 1, 0.0, 100) == []


# -- base class changes -------------------------------------------------------------------------


def test_set_base_returns_the_change_of_the_effective_class() -> None:
    e = engine()
    e.open(1, "bulk", 0.0)
    burst(e, 1, 0.0, 10)                                     # bulk -> interactive
    change = e.set_base(1, "interactive", 1.0, reason="CQI: gold user")
    assert change is not None
    assert moves([change]) == [(1, "interactive", "critical")]   # one rank above the new base
    assert change.reason == "CQI: gold user; activity rule 'chatty': at least 10 events in 10 s"
    assert e.set_base(1, "critical", 2.0) is None            # already critical
    assert e.escalated == 0                                  # but no longer escalated
    change = e.set_base(1, "bulk", 3.0)
    assert change is not None and change.to_class == "interactive"   # still chatty
    assert e.escalated == 1
    assert moves(e.tick(31.0)) == [(1, "interactive", "bulk")]


def test_a_cqi_change_of_an_escalated_connection_still_says_which_rule_lifts_it() -> None:
    # The change is what explain() shows as the reason of the escalation: it named only the
    # CQI change, and /connections said a connection was escalated because a user is gold.
    e = engine(groups=(GroupRule("coedit", min_members=2),))
    for conn_id in (1, 2):
        e.open(conn_id, "bulk", 0.0, group_key="doc-7")
    assert e.class_of(1) == "interactive"
    assert e.reason_of(1) == e.reason_of(2) != ""
    change = e.set_base(1, "interactive", 1.0, reason="CQI: gold user")
    assert change is not None and moves([change]) == [(1, "interactive", "critical")]
    assert change.reason.startswith("CQI: gold user")
    assert "group rule 'coedit'" in change.reason
    e.on_leave(1, 2.0)
    assert e.reason_of(1) == ""


def test_set_base_without_rules_passes_the_cqi_change_through() -> None:
    e = EscalationEngine(EscalationConfig(), CLASSES)
    e.open(1, "interactive", 0.0)
    change = e.set_base(1, "bulk", 1.0, reason="heavy")
    assert change == ClassChange(1, "interactive", "bulk", "heavy", 1.0)


# -- bounded memory -----------------------------------------------------------------------------


def test_past_max_tracked_the_least_recently_active_connection_is_forgotten() -> None:
    e = engine(max_tracked=3)
    for conn_id in (1, 2, 3):
        e.open(conn_id, "bulk", 0.0)
    burst(e, 1, 1.0, 10)                         # 1 is escalated and now the most recent
    e.on_activity(2, 2.0)
    assert e.open(4, "bulk", 3.0) == []          # 3 was the least recently active
    assert e.class_of(3) is None
    e.on_activity(4, 4.0)
    e.on_activity(2, 4.0)
    changes = e.open(5, "bulk", 5.0)             # now 1 is the oldest, and escalated
    assert moves(changes) == [(1, "interactive", "bulk")]
    assert "max_tracked" in changes[0].reason
    assert e.live == 3 and e.escalated == 0
    assert e.stats()["evicted"] == 2


def test_past_max_groups_the_oldest_group_is_forgotten() -> None:
    e = engine(max_groups=1)
    for conn_id in (1, 2, 3):
        e.open(conn_id, "bulk", 0.0, group_key="a")
    changes = e.open(4, "bulk", 1.0, group_key="b")
    assert sorted(moves(changes)) == [(1, "interactive", "bulk"), (2, "interactive", "bulk"),
                                      (3, "interactive", "bulk")]
    assert "max_groups" in changes[0].reason
    assert e.group_size("a") == 0 and e.stats()["groups_evicted"] == 1


def test_stats_and_repr() -> None:
    e = engine(max_escalated_share=0.5)
    e.open(1, "bulk", 0.0)
    e.open(2, "bulk", 0.0)
    burst(e, 1, 0.0, 10)
    assert e.stats()["escalated"] == 1 and e.stats()["escalations"] == 1
    assert repr(e) == "<EscalationEngine [live 2, escalated 1/1, pending 0]>"


# -- invariants ---------------------------------------------------------------------------------

operations = st.lists(st.tuples(
    st.sampled_from(["open", "close", "activity", "join", "leave", "tick", "rebase"]),
    st.integers(0, 11),                 # connection id
    st.integers(0, 2),                  # group key / class index
    st.floats(0.0, 5.0),                # time step
), max_size=80)


@settings(max_examples=300, deadline=None)
@given(operations, st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]))
def test_the_escalation_cap_always_holds(ops: list[tuple[str, int, int, float]],
                                         share: float) -> None:
    e = engine(activity=(ActivityRule("a", threshold=3, window=5.0, hold=4.0),
                         ActivityRule("b", threshold=6, window=5.0, to_class="critical",
                                      hold=2.0)),
               groups=(GroupRule("g", min_members=2, quiet=3.0),
                       GroupRule("h", min_members=4, raise_by=2, quiet=1.0)),
               max_escalated_share=share, max_tracked=8, max_groups=2)
    names = CLASSES.names
    base: dict[int, str] = {}
    current: dict[int, str] = {}
    now = 0.0
    for op, conn_id, k, step in ops:
        now += step
        changes: Sequence[ClassChange] = []
        if op == "open" and conn_id not in base:
            changes = e.open(conn_id, names[k], now, group_key=f"g{k}" if conn_id % 2 else None)
            base[conn_id] = current[conn_id] = names[k]
        elif op == "close" and conn_id in base:
            changes = e.close(conn_id, now)
            del base[conn_id], current[conn_id]
        elif op == "activity":
            changes = burst(e, conn_id, now, 1 + k * 3)
        elif op == "join":
            changes = e.on_join(conn_id, f"g{k}", now)
        elif op == "leave":
            changes = e.on_leave(conn_id, now)
        elif op == "tick":
            changes = e.tick(now)
        elif op == "rebase" and conn_id in base:
            change = e.set_base(conn_id, names[k], now)
            base[conn_id] = names[k]
            changes = [change] if change else []
        for change in changes:
            if change.conn_id in current:                  # evicted ones are gone
                assert current[change.conn_id] == change.from_class
                current[change.conn_id] = change.to_class
                assert change.at == now
        for known in list(base):
            if e.class_of(known) is None:                  # forgotten past max_tracked
                del base[known], current[known]
        floor = math.floor(share * e.live + 1e-9)
        assert e.escalated <= e.allowed() == (max(1, floor) if share and e.live else 0)
        for known, name in current.items():
            assert e.class_of(known) == name               # the changes tell the whole story
            assert CLASSES[name].rank >= CLASSES[base[known]].rank     # never lowered
        assert e.escalated == sum(current[c] != base[c] for c in current)
