"""The CQI: axes, weighted score, bands, axes from observations, live reclassification."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connwise.core.classes import ClassTable, PriorityClass
from connwise.core.cqi import (
    AXIS_NAMES,
    MAX_SHARED_AXES,
    RESOURCE_DIGITS,
    Axes,
    Band,
    ClassChange,
    CqiConfig,
    CqiPolicy,
    HeaderScore,
    Weights,
)
from connwise.errors import ConfigError, UnknownClass

CLASSES = ClassTable()
USER_RULES = (
    HeaderScore("x-user-tier", "gold", 1.0),
    HeaderScore("x-user-tier", "free", 0.2),
    HeaderScore("x-device", "mobile", 0.6),
)


def policy(**overrides: Any) -> CqiPolicy:
    return CqiPolicy(CqiConfig(**overrides), CLASSES)


unit = st.floats(0.0, 1.0)
axes_strategy = st.builds(Axes, unit, unit, unit, unit)


# -- axes and configuration ------------------------------------------------------------------


@pytest.mark.parametrize("name", AXIS_NAMES)
@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan, math.inf])
def test_an_axis_outside_0_1_is_refused_by_name(name: str, value: float) -> None:
    values = dict.fromkeys(AXIS_NAMES, 0.5)
    values[name] = value
    with pytest.raises(ConfigError) as info:
        Axes(**values)
    assert info.value.key == f"axes.{name}"


@pytest.mark.parametrize(("config", "key"), [
    (CqiConfig(weights=Weights(business=-1)), "cqi.weights.business"),
    (CqiConfig(weights=Weights(0, 0, 0, 0)), "cqi.weights"),
    (CqiConfig(weights=Weights(resource=math.nan)), "cqi.weights.resource"),
    (CqiConfig(bands=()), "cqi.bands"),
    (CqiConfig(bands=(Band(0.5, "bulk"),)), "cqi.bands"),
    (CqiConfig(bands=(Band(0.0, "bulk"), Band(0.0, "critical"))), "cqi.bands[1].min_score"),
    (CqiConfig(bands=(Band(1.5, "critical"), Band(0.0, "bulk"))), "cqi.bands[0].min_score"),
    (CqiConfig(business={"bulk": 2.0}), "cqi.business.bulk"),
    (CqiConfig(protocols={"http": -0.1}), "cqi.protocols.http"),
    (CqiConfig(websocket_bonus=1.5), "cqi.websocket_bonus"),
    (CqiConfig(user=(HeaderScore("", "gold", 1.0),)), "cqi.user[0].header"),
    (CqiConfig(user=(HeaderScore("x-tier", "gold", 2.0),)), "cqi.user[0].score"),
    (CqiConfig(user=(HeaderScore("x-tier", "göld", 1.0),)), "cqi.user[0].value"),
    (CqiConfig(rate_half=0), "cqi.rate_half"),
    (CqiConfig(duration_half=math.inf), "cqi.duration_half"),
    (CqiConfig(hysteresis=0.5), "cqi.hysteresis"),
    (CqiConfig(history=0), "cqi.history"),
])
def test_bad_configuration_names_its_key_path(config: CqiConfig, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        CqiPolicy(config, CLASSES)
    assert info.value.key == key


def test_bands_and_business_must_name_configured_classes() -> None:
    with pytest.raises(ConfigError) as info:
        policy(bands=(Band(0.5, "vip"), Band(0.0, "bulk")))
    assert info.value.key == "cqi.bands[0].class"
    with pytest.raises(ConfigError) as info:
        policy(business={"vip": 1.0})
    assert info.value.key == "cqi.business.vip"


def test_validate_returns_the_config_and_uses_the_prefix() -> None:
    config = CqiConfig()
    assert config.validate() is config
    with pytest.raises(ConfigError) as info:
        CqiConfig(hysteresis=-1).validate("gateway.cqi")
    assert info.value.key == "gateway.cqi.hysteresis"


# -- score and class --------------------------------------------------------------------------


def test_the_score_is_the_weighted_mean_of_the_axes() -> None:
    p = policy(weights=Weights(business=2, technical=1, user=1, resource=0))
    assert p.score(Axes(1.0, 0.5, 0.0, 1.0)) == pytest.approx((2 * 1 + 0.5 + 0) / 4)


@pytest.mark.parametrize(("score", "expected"), [
    (1.0, "critical"), (0.7, "critical"), (0.6999, "interactive"), (0.4, "interactive"),
    (0.3999, "bulk"), (0.0, "bulk"),
])
def test_bands_map_a_minimum_score_to_a_class(score: float, expected: str) -> None:
    assert policy().band(score).class_name == expected


@pytest.mark.parametrize("axes", [
    Axes(0.1, 0.7, 1.0, 0.4),     # a gold user's busy WebSocket on a bulk route: 0.4
    Axes(0.1, 1.0, 0.7, 0.3),     # 0.4 as well
])
def test_a_score_exactly_on_a_band_edge_is_in_the_band_above(axes: Axes) -> None:
    # The weighted sum comes out as 0.39999999999999997 in binary floating point, and the
    # connection fell to bulk while explain() showed "CQI score 0.400 is in band 'bulk'".
    p = policy()
    assert p.classify(axes) == "interactive"
    assert p.reclassify(p.band(0.0), p.score(axes) + 0.05).class_name == "interactive"


@pytest.mark.parametrize(("base", "score"), [
    ("critical", 0.825), ("interactive", 0.625), ("bulk", 0.375),
])
def test_defaults_keep_the_route_class_when_other_axes_are_neutral(base: str,
                                                                   score: float) -> None:
    p = policy()
    state = p.open(1, 0.0, base_class=base)
    assert state.score == pytest.approx(score)
    assert state.cqi_class == state.class_name == base


@given(axes_strategy)
def test_score_lies_in_0_1_and_the_class_band_contains_it(axes: Axes) -> None:
    p = policy()
    score = p.score(axes)
    assert 0.0 <= score <= 1.0 + 1e-12
    band = p.band(score)
    assert band.min_score <= score
    assert p.classify(axes) == band.class_name


@given(axes_strategy, st.sampled_from(AXIS_NAMES), unit)
def test_raising_an_axis_never_lowers_the_class(axes: Axes, name: str, bump: float) -> None:
    p = policy()
    values = axes.as_dict()
    values[name] = max(values[name], bump)
    before = CLASSES[p.classify(axes)].rank
    after = CLASSES[p.classify(Axes(**values))].rank
    assert after >= before


# -- axes from observations -------------------------------------------------------------------


def test_business_axis_from_the_base_class_or_an_explicit_criticality() -> None:
    p = policy()
    assert [p.business_axis(c) for c in ("critical", "interactive", "bulk")] == [1.0, 0.6, 0.1]
    assert p.business_axis("bulk", criticality=0.9) == 0.9
    with pytest.raises(ConfigError):
        p.business_axis("bulk", criticality=1.2)
    with pytest.raises(UnknownClass):
        p.business_axis("vip")


def test_for_classes_gives_the_defaults_for_the_default_classes() -> None:
    assert CqiConfig.for_classes(CLASSES) == CqiConfig()


@pytest.mark.parametrize("table", [
    [PriorityClass("gold", 4), PriorityClass("silver", 2, aging_rate=0.1),
     PriorityClass("bronze", 0, aging_rate=0.1)],
    [PriorityClass("p0", 9), PriorityClass("p1", 5, aging_rate=1),
     PriorityClass("p2", 4, aging_rate=1), PriorityClass("p3", 0, aging_rate=1)],
    [PriorityClass("only", 0)],
])
def test_for_classes_calibrates_any_class_table(table: list[PriorityClass]) -> None:
    classes = ClassTable(table)
    p = CqiPolicy(CqiConfig.for_classes(classes), classes)
    for cls in classes:                      # neutral axes keep the route's class
        assert p.open(1, 0.0, base_class=cls.name).cqi_class == cls.name


def test_for_classes_with_equal_ranks_still_validates() -> None:
    classes = ClassTable([PriorityClass("a", 1), PriorityClass("b", 1)])
    config = CqiConfig.for_classes(classes)
    assert [b.min_score for b in config.bands][-1] == 0.0
    CqiPolicy(config, classes)


def test_business_axis_of_an_unlisted_class_follows_its_rank() -> None:
    classes = ClassTable([PriorityClass("gold", 4), PriorityClass("silver", 2, aging_rate=0.1),
                          PriorityClass("bronze", 0, aging_rate=0.1)])
    p = CqiPolicy(CqiConfig(bands=(Band(0.5, "gold"), Band(0.0, "bronze")), business={}),
                  classes)
    assert [p.business_axis(n) for n in ("gold", "silver", "bronze")] == [1.0, 0.5, 0.0]


@pytest.mark.parametrize(("protocol", "latency", "websocket", "expected"), [
    ("http", False, False, 0.5),
    ("tcp", False, False, 0.5),
    ("gopher", False, False, 0.5),      # unknown: technical_default
    ("http", True, False, 0.9),
    ("http", False, True, 0.7),
    ("http", True, True, 1.0),          # capped
])
def test_technical_axis(protocol: str, latency: bool, websocket: bool, expected: float) -> None:
    assert policy().technical_axis(protocol, latency, websocket) == pytest.approx(expected)


@pytest.mark.parametrize(("headers", "expected"), [
    ([], 0.5),
    ([(b"x-user-tier", b"gold")], 1.0),
    ([(b"X-User-Tier", b"GOLD")], 1.0),             # case-insensitive name and value
    ([("x-user-tier", "gold")], 1.0),               # str pairs too
    ([(b"x-device", b"mobile")], 0.6),
    ([(b"x-user-tier", b"gold"), (b"x-device", b"mobile")], 0.8),   # the mean of matches
    ([(b"x-user-tier", b"platinum")], 0.5),         # unknown value: default
    ([(b"accept", b"*/*")], 0.5),
])
def test_user_axis_from_configured_headers(headers: list[Any], expected: float) -> None:
    p = policy(user=USER_RULES)
    assert p.user_axis([tuple(h) for h in headers]) == pytest.approx(expected)


def test_a_rule_matched_by_several_header_lines_counts_once() -> None:
    # The axis is the mean of the matching *rules*: a header repeated (by a client, or by a
    # proxy that appends instead of replacing) does not weigh its rule twice.
    p = policy(user=USER_RULES)
    headers = [(b"x-user-tier", b"gold"), (b"x-device", b"mobile"), (b"x-user-tier", b"Gold")]
    assert p.user_axis(headers) == pytest.approx(0.8)
    assert p.user_matches(headers) == [("x-user-tier", "gold", 1.0),
                                       ("x-device", "mobile", 0.6)]


def test_no_user_rules_by_default_so_clients_cannot_promote_themselves() -> None:
    assert policy().user_axis([(b"x-user-tier", b"gold")]) == 0.5


@pytest.mark.parametrize(("rate", "duration", "expected"), [
    (0.0, 0.0, 1.0),
    (1024.0 * 1024.0, 0.0, 0.5),
    (2 * 1024.0 * 1024.0, 0.0, 0.25),
    (0.0, 600.0, 1.0 - 0.3 * 0.5),
    (0.0, 1e9, 0.7),                    # age alone takes at most duration_weight
])
def test_resource_axis(rate: float, duration: float, expected: float) -> None:
    assert policy().resource_axis(rate, duration) == pytest.approx(expected)


@given(st.floats(0, 1e9), st.floats(0, 1e9), st.floats(0, 1e6), st.floats(0, 1e6))
def test_heavier_or_older_never_scores_higher_on_resource(rate: float, more_rate: float,
                                                          age: float, more_age: float) -> None:
    p = policy()
    value = p.resource_axis(rate, age)
    assert 0.0 <= value <= 1.0
    assert p.resource_axis(rate + more_rate, age + more_age) <= value + 1e-12


# -- per connection ---------------------------------------------------------------------------


def test_open_scores_what_is_known_and_records_the_first_class() -> None:
    p = policy(user=USER_RULES)
    state = p.open(7, 3.0, base_class="bulk", protocol="http", websocket=True,
                   headers=[(b"x-user-tier", b"gold")])
    assert state.axes == Axes(business=0.1, technical=0.7, user=1.0, resource=1.0)
    # 0.05 + 0.14 + 0.15 + 0.15 = 0.49: a gold user's WebSocket is interactive.
    assert state.score == pytest.approx(0.49)
    assert state.class_name == state.cqi_class == "interactive"
    assert not state.escalated
    [first] = state.history
    assert (first.conn_id, first.from_class, first.to_class, first.at) == \
        (7, None, "interactive", 3.0)
    assert "0.490" in first.reason


def test_heavy_traffic_lowers_the_cqi_class_step_by_step() -> None:
    p = policy(weights=Weights(0.4, 0.1, 0.1, 0.4), rate_half=1000.0)
    state = p.open(1, 0.0, base_class="interactive")
    assert state.cqi_class == "critical"                       # 0.74
    changes: list[ClassChange] = []
    total = 0
    for second in range(1, 61):
        total += 10_000                                         # 10 kB/s, 10x rate_half
        change = state.observe(total, float(second))
        if change is not None:
            changes.append(change)
    assert [(c.from_class, c.to_class) for c in changes] == \
        [("critical", "interactive"), ("interactive", "bulk")]
    assert all("resource use changed" in c.reason for c in changes)
    assert state.rate == pytest.approx(10_000, rel=0.01)
    assert state.axes.resource < 0.01
    # The effective class is the escalation engine's (or the shell's) to set: not changed yet.
    assert state.class_name == "critical"
    for change in changes:
        state.apply(change)
    assert state.class_name == "bulk"
    assert [c.to_class for c in state.history] == ["critical", "interactive", "bulk"]


def test_a_quiet_connection_keeps_its_class() -> None:
    state = policy().open(1, 0.0, base_class="interactive")
    for second in range(1, 100):
        assert state.observe(100, float(second)) is None
    assert state.rate < 10


def test_observe_at_the_same_instant_changes_nothing() -> None:
    state = policy().open(1, 0.0, base_class="interactive")
    assert state.observe(10**9, 0.0) is None
    assert state.rate == 0.0


@pytest.mark.parametrize(("business_steps", "expected_classes"), [
    # score = 0.5 b + 0.325; the edge of critical is 0.7, the margin 0.05.
    ([0.74, 0.76, 0.74], ["critical", "critical", "critical"]),          # 0.695/0.705: stays
    ([0.64], ["interactive"]),                                            # 0.645 < 0.65
    ([0.64, 0.74, 0.76], ["interactive", "interactive", "interactive"]),  # < 0.75: stays
    ([0.64, 0.86], ["interactive", "critical"]),                          # 0.755 >= 0.75
    ([0.0], ["bulk"]),                                                    # 0.325 < 0.35
])
def test_hysteresis_keeps_a_wandering_score_in_its_band(business_steps: list[float],
                                                        expected_classes: list[str]) -> None:
    state = policy().open(1, 0.0, base_class="critical")
    seen = []
    for i, business in enumerate(business_steps):
        state.update(float(i + 1), business=business)
        seen.append(state.cqi_class)
    assert seen == expected_classes


def test_a_state_opened_from_new_inputs_continues_the_connection() -> None:
    p = policy(rate_half=1000.0)
    old = p.open(1, 0.0, base_class="bulk")
    old.observe(100_000, 10.0)                          # heavy: the resource axis falls
    new = p.open(1, 12.0, base_class="critical", previous=old)
    assert (new.opened_at, new.rate, new.axes.resource) == (0.0, old.rate, old.axes.resource)
    assert new.cqi_class == "interactive"               # 0.675: critical, but heavy
    new.observe(100_000, 13.0)
    assert new.rate < old.rate                          # not a burst of 100 kB in a second
    # The class in force and its history are the connection's, until a change is applied.
    assert new.class_name == "bulk" and new.escalated
    assert new.history == old.history


def test_update_rescores_with_axes_known_later() -> None:
    p = policy()
    state = p.open(1, 0.0, base_class="bulk")
    change = state.update(1.0, technical=p.technical_axis("http", True, True), user=1.0,
                          reason="WebSocket upgrade")
    assert change is not None
    assert (change.from_class, change.to_class) == ("bulk", "interactive")
    assert change.reason.startswith("WebSocket upgrade")
    with pytest.raises(ConfigError):
        state.update(2.0, user=1.5)


def test_apply_refuses_another_connections_change() -> None:
    state = policy().open(1, 0.0, base_class="bulk")
    with pytest.raises(ConfigError):
        state.apply(ClassChange(2, "bulk", "critical", "x", 1.0))


def test_history_is_bounded() -> None:
    state = policy(history=3).open(1, 0.0, base_class="bulk")
    for i in range(10):
        state.apply(ClassChange(1, "bulk", "interactive" if i % 2 else "bulk", f"#{i}", i))
    assert [c.reason for c in state.history] == ["#7", "#8", "#9"]


def test_an_unchanged_connection_holds_no_history_or_inputs_of_its_own() -> None:
    p = policy()
    a = p.open(1, 0.0, base_class="interactive", protocol="tcp")
    b = p.open(2, 0.5, base_class="interactive", protocol="tcp")
    assert a._history is None and b._history is None
    assert a.inputs is b.inputs and a.axes is b.axes and a.score is b.score
    for second in range(1, 5):                        # quiet: no change, no history, rate 0
        assert a.observe(0, float(second)) is None
    assert a._history is None and a.rate == 0.0
    [first] = a.history                                # the opening, rebuilt on demand
    assert (first.conn_id, first.from_class, first.to_class, first.at) == \
        (1, None, "interactive", 0.0)
    assert "0.625" in first.reason
    a.apply(ClassChange(1, "interactive", "critical", "busy", 5.0))
    assert a._history is not None
    assert [(c.to_class, c.reason) for c in a.history] == \
        [("interactive", first.reason), ("critical", "busy")]
    assert [h["to"] for h in a.explain(5.0)["history"]] == ["interactive", "critical"]
    assert b._history is None and b.class_name == "interactive"


def test_user_headers_do_not_share_an_opening() -> None:
    p = policy(user=USER_RULES)
    gold = p.open(1, 0.0, base_class="bulk", headers=[(b"x-user-tier", b"gold")])
    plain = p.open(2, 0.0, base_class="bulk")
    assert gold.inputs.user_headers == (("x-user-tier", "gold", 1.0),)
    assert plain.inputs.user_headers == () and plain.axes.user == 0.5
    assert p.open(3, 0.0, base_class="bulk").inputs is plain.inputs


def test_explain_says_why_the_connection_has_its_class() -> None:
    p = policy(user=USER_RULES)
    state = p.open(5, 0.0, base_class="interactive", headers=[(b"x-device", b"mobile")])
    state.observe(1000, 2.0)
    info = state.explain(2.0)
    assert info["conn_id"] == 5
    assert info["class"] == info["cqi_class"] == "interactive"
    assert info["escalated"] is False
    assert "band 'interactive'" in info["why"]
    assert set(info["axes"]) == set(AXIS_NAMES)
    assert sum(info["contributions"].values()) == pytest.approx(info["score"], abs=1e-5)
    assert info["band"] == {"class": "interactive", "min_score": 0.4}
    assert [b["class"] for b in info["bands"]] == ["critical", "interactive", "bulk"]
    assert info["inputs"]["base_class"] == "interactive"
    assert info["inputs"]["user_headers"] == [{"header": "x-device", "value": "mobile",
                                               "score": 0.6}]
    assert info["inputs"]["age"] == 2.0
    assert info["inputs"]["bytes_per_s"] > 0
    assert info["history"][0]["to"] == "interactive"

    state.apply(ClassChange(5, "interactive", "critical",
                            "group rule 'coedit': 3 live connections share key 'doc'", 3.0))
    info = state.explain(3.0)
    assert info["escalated"] is True
    assert info["class"] == "critical"
    assert "escalated to 'critical' above its CQI class 'interactive'" in info["why"]
    assert "group rule 'coedit'" in info["why"]
    assert repr(state).startswith("<ClassState 5 critical (cqi interactive")


def test_idle_connections_of_the_same_inputs_share_their_live_axes() -> None:
    """Aging alone moves the resource axis: two quiet connections opened a second apart end up
    with the very same axes and score objects, and a step below the kept decimals changes
    nothing (no new object, no rescoring)."""
    p = policy()
    a = p.open(1, 0.0, base_class="interactive")
    b = p.open(2, 1.0, base_class="interactive")
    assert a.axes is b.axes  # the shared opening
    assert a.observe(0, 0.5) is None and a.axes.resource == 1.0  # 0.9997: kept at 1.0
    opening = a.axes
    assert a.observe(0, 120.0) is None and b.observe(0, 121.0) is None
    assert a.axes is not opening and a.axes.resource == round(a.axes.resource, RESOURCE_DIGITS)
    assert a.axes is b.axes and a.score is b.score
    assert a.score == pytest.approx(p.score(a.axes))


def _aging_policy() -> CqiPolicy:
    """Age alone moves a quiet critical connection down to interactive (score 0.825 -> 0.675,
    no hysteresis): after ~155 s."""
    return policy(duration_weight=1.0, duration_half=60.0, hysteresis=0.0)


def test_connections_of_the_same_inputs_share_one_opening() -> None:
    p = policy()
    opening = p.opening(base_class="interactive", protocol="tcp")
    assert opening is p.opening(base_class="interactive", protocol="tcp")
    assert opening.class_name == "interactive" and opening.policy is p
    state = p.open(1, 0.0, base_class="interactive", protocol="tcp")
    assert (state.axes, state.score, state.inputs) == (opening.axes, opening.score,
                                                       opening.inputs)
    assert p.opening(base_class="bulk", protocol="tcp") is not opening


def test_moves_says_when_age_alone_changes_a_quiet_connections_class() -> None:
    """Fed every second with no bytes, a state changes class exactly when its opening says a
    quiet connection of its age moves."""
    p = _aging_policy()
    opening = p.opening(base_class="critical", protocol="tcp")
    fed = p.open(1, 3.0, base_class="critical", protocol="tcp")
    moved_at = None
    for second in range(4, 400):
        moves = opening.moves(3.0, float(second))
        change = fed.observe(0, float(second))
        if change is not None:
            moved_at = second
            assert moves and change.to_class == "interactive"
            break
        assert not moves, second
    assert moved_at is not None and 150 < moved_at - 3 < 160


@pytest.mark.parametrize(("opened_at", "fed_until", "now", "total", "moves"), [
    (3.0, 50.0, 51.0, 0, False),             # aged, quiet, no change yet: the same axes
    (3.0, 50.0, 51.0, 200_000, False),       # its first bytes: the rate of one second's feed
    (3.0, 120.0, 121.0, 50_000_000, True),   # heavy at once: a change of class
    (3.0, 155.0, 160.0, 0, True),            # age moves its class at this feed
    (10.0, 9.0, 11.5, 4096, False),          # opened after the last feed: never fed
])
def test_a_state_made_from_the_opening_is_the_one_fed_all_along(
        opened_at: float, fed_until: float, now: float, total: int, moves: bool) -> None:
    p = _aging_policy()
    fed = p.open(7, opened_at, base_class="critical", protocol="tcp")
    second = opened_at + 1.0
    while second <= fed_until:
        assert fed.observe(0, second) is None
        second += 1.0
    last_feed = second - 1.0 if second > opened_at + 1.0 else opened_at
    made = p.opening(base_class="critical", protocol="tcp").state(7, opened_at,
                                                                  fed_at=last_feed)
    assert (made.axes, made.score, made.class_name) == (fed.axes, fed.score, fed.class_name)
    assert made.explain(last_feed) == fed.explain(last_feed)
    changes = [state.observe(total, now) for state in (made, fed)]
    assert changes[0] == changes[1] and (changes[0] is not None) is moves
    assert (made.rate, made.axes, made.score, made.cqi_class) == \
        (fed.rate, fed.axes, fed.score, fed.cqi_class)
    assert made.explain(now) == fed.explain(now)


def test_shared_axes_are_capped() -> None:
    p = policy()
    steps = [i / 10 ** RESOURCE_DIGITS for i in range(10 ** RESOURCE_DIGITS + 1)]
    made = [p.shared_axes(b, t, 0.5, r) for b in (0.1, 0.6, 1.0) for t in steps[:15] for r in steps]
    assert len(made) > MAX_SHARED_AXES
    assert p.shared_axes(0.1, 0.0, 0.5, 0.0)[0] is made[0][0]  # kept before the cap
    late = p.shared_axes(1.0, steps[14], 0.5, 1.0)
    assert late[0] == Axes(1.0, steps[14], 0.5, 1.0)
    assert p.shared_axes(1.0, steps[14], 0.5, 1.0)[0] is not late[0]  # past the cap: not kept
