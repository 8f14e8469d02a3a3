"""Zombie and leak rules of the core: the rule table, the learner, the live tracker, and a
planted-zombie population with a known ground truth."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connwise.core.zombies import (
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    GapHistogram,
    Thresholds,
    Verdict,
    ZombieRules,
    ZombieTracker,
    judge,
    learned_threshold,
    looks_half_open,
)
from connwise.errors import ConfigError


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"k": 0.5}, "zombies.k"),
    ({"quantile": 1.0}, "zombies.quantile"),
    ({"min_samples": 0}, "zombies.min_samples"),
    ({"floor": 0.0}, "zombies.floor"),
    ({"floor": 500.0}, "zombies.floor"),
    ({"leak_threshold": -1.0}, "zombies.leak_threshold"),
])
def test_rules_refuse_bad_values_naming_the_key(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ZombieRules(**kwargs).validate()  # type: ignore[arg-type]
    assert info.value.key == key
    assert str(info.value).endswith(".")


@pytest.mark.parametrize(("kwargs", "verdict"), [
    ({"idle_for": 5.0, "threshold": 10.0}, Verdict.HEALTHY),
    ({"idle_for": 10.0, "threshold": 10.0}, Verdict.HEALTHY),
    ({"idle_for": 10.1, "threshold": 10.0}, Verdict.ZOMBIE),
    ({"idle_for": 0.0, "threshold": 10.0, "half_open": True}, Verdict.HALF_OPEN),
    ({"idle_for": 0.0, "threshold": 10.0, "held_for": 31.0, "leak_threshold": 30.0},
     Verdict.LEAK),
    ({"idle_for": 0.0, "threshold": 10.0, "held_for": 31.0}, Verdict.HEALTHY),
    ({"idle_for": 99.0, "threshold": 10.0, "half_open": True, "held_for": 99.0,
      "leak_threshold": 1.0}, Verdict.HALF_OPEN),
])
def test_judge_table(kwargs: dict[str, float], verdict: Verdict) -> None:
    assert judge(**kwargs) is verdict  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "half_open"), [
    ({"tcp_state": TCP_ESTABLISHED}, False),
    ({"tcp_state": TCP_CLOSE_WAIT}, True),
    ({"tcp_state": TCP_ESTABLISHED, "unacked": 3, "backoff": 2}, False),
    ({"tcp_state": TCP_ESTABLISHED, "unacked": 3, "backoff": 3}, True),
    ({"tcp_state": TCP_ESTABLISHED, "unacked": 0, "backoff": 5}, False),
])
def test_half_open_from_tcp_info(kwargs: dict[str, int], half_open: bool) -> None:
    assert looks_half_open(**kwargs) is half_open


def test_histogram_quantile_is_within_four_percent_above() -> None:
    rng = random.Random(7)
    gaps = [rng.lognormvariate(0.0, 1.5) for _ in range(20_000)]
    histogram = GapHistogram()
    for gap in gaps:
        histogram.observe(gap)
    exact = sorted(gaps)[int(0.99 * len(gaps)) - 1]
    estimate = histogram.quantile(0.99)
    assert exact <= estimate <= exact * 1.04 * 1.04
    assert GapHistogram().quantile(0.99) == 0.0


def test_learned_threshold_falls_back_below_min_samples() -> None:
    rules = ZombieRules(k=3, min_samples=10, default_threshold=300.0, floor=1.0)
    assert learned_threshold(rules, 2.0, 10) == 6.0
    assert learned_threshold(rules, 0.01, 10) == 1.0  # the floor
    assert learned_threshold(rules, 2.0, 9) == 300.0
    assert learned_threshold(rules, 2.0, 9, fallback=420.0) == 420.0  # borrowed: longer
    assert learned_threshold(rules, 2.0, 9, fallback=42.0) == 300.0  # never shorter
    assert learned_threshold(rules, 2.0, 9, longest=150.0) == 450.0  # its own longest gap


def test_thresholds_per_segment_then_global_then_default() -> None:
    thresholds = Thresholds(ZombieRules(k=2, min_samples=5))
    assert thresholds.threshold("a") == 300.0
    for _ in range(5):
        thresholds.observe("a", 10.0)
    a = thresholds.threshold("a")
    assert 20.0 <= a <= 20.0 * 1.05
    # "b" has too few gaps of its own: it keeps the default, as a segment never seen does
    # (all gaps together say ~200 s, k x its longest gap ~200 s: both shorter).
    thresholds.observe("b", 100.0)
    assert thresholds.threshold("b") == thresholds.threshold("never-seen") == 300.0
    # Borrowed when longer: "c" is still learning, the node's gaps are long.
    for _ in range(30):
        thresholds.observe("b", 1000.0)
    assert 2000.0 <= thresholds.threshold("c") <= 2100.0
    assert 2000.0 <= thresholds.threshold("b") <= 2100.0
    assert thresholds.samples("b") == 31 and thresholds.segments == ["a", "b"]


def test_tracker_reports_once_per_idle_stretch_and_forgives_use() -> None:
    tracker = ZombieTracker("pool", Thresholds(ZombieRules(min_samples=1, k=2)))
    tracker.idle(1, "s", 0.0)
    tracker.busy(1, 1.0)  # a healthy gap of 1 s: threshold ~2 s
    tracker.idle(1, "s", 1.5)
    assert tracker.scan(3.0) == []
    found = tracker.scan(4.0)
    assert [(f.key, f.verdict) for f in found] == [(1, Verdict.ZOMBIE)]
    assert found[0].seconds == 2.5 and found[0].threshold == pytest.approx(2.0, rel=0.05)
    assert tracker.scan(100.0) == []  # reported once
    assert tracker.flagged() == [1]
    assert tracker.reclaimable(4.5, grace=1.0) == []
    assert tracker.reclaimable(5.0, grace=1.0) == [1]
    tracker.busy(1, 5.0)  # used again: forgiven, and its 3.5 s gap was healthy after all
    assert tracker.reclaimable(10.0, grace=1.0) == [] and tracker.flagged() == []
    tracker.idle(1, "s", 6.0)
    assert tracker.scan(6.5) == []
    tracker.forget(1)
    assert len(tracker) == 0 and tracker.scan(1000.0) == []


def test_tracker_leaks_only_when_pooled() -> None:
    rules = ZombieRules(leak_threshold=30.0)
    pooled = ZombieTracker("pool", Thresholds(rules))
    gateway = ZombieTracker("listener", Thresholds(rules), pooled=False)
    for tracker in (pooled, gateway):
        tracker.idle("c", "s", 0.0)
        tracker.busy("c", 1.0)
    assert [f.verdict for f in pooled.scan(31.0)] == [Verdict.LEAK]
    assert gateway.scan(31.0) == []


def test_tracker_half_open_is_found_at_once() -> None:
    tracker = ZombieTracker("pool")
    tracker.idle(3, "s", 0.0)
    tracker.half_open(3, 0.1)
    [finding] = tracker.scan(0.2)
    assert finding.verdict is Verdict.HALF_OPEN and finding.threshold == 0.0
    assert tracker.reclaimable(0.2, grace=0.0) == [3]


def test_idle_healthy_connections_hold_no_entry_of_their_own() -> None:
    # A gateway's idle connections each held an _Entry of six slots (~80 bytes); all an idle,
    # healthy one needs is since when, in its segment.
    # A segment that learned nothing takes the larger of the default and the node's threshold.
    thresholds = Thresholds(ZombieRules(min_samples=1, k=2, floor=1.0, default_threshold=5.0))
    tracker = ZombieTracker("listener", thresholds, pooled=False)
    since = 10.0
    for key in range(3):
        tracker.idle(key, "s", since)
    assert tracker._entries == {} and len(tracker) == 3
    assert tracker._idle["s"][0] is since  # the caller's float, not a copy
    tracker.idle(0, "t", 12.0)  # its segment changed: the stretch goes on
    tracker.busy(0, 13.0)
    assert thresholds.samples("t") == 1 and thresholds.samples("s") == 0
    assert len(tracker) == 2  # not pooled: nothing kept between idle stretches
    tracker.half_open(1, 14.0)
    [found] = tracker.scan(14.0)
    assert (found.key, found.verdict, found.seconds) == (1, Verdict.HALF_OPEN, 4.0)
    [found] = tracker.scan(17.0)  # 7 s idle, past 2 x the one 3 s gap
    assert (found.key, found.verdict, found.seconds) == (2, Verdict.ZOMBIE, 7.0)
    assert found.threshold == pytest.approx(6.0, rel=0.05)
    assert set(tracker.flagged()) == {1, 2} and tracker.scan(30.0) == []
    assert tracker.reclaimable(18.0, grace=1.0) == [1, 2]
    tracker.busy(2, 19.0)  # forgiven: healthy again, and its gap learned
    assert tracker.flagged() == [1] and thresholds.samples("s") == 1
    tracker.forget(1)
    assert len(tracker) == 0


def test_a_pooled_connection_keeps_its_entry_while_held() -> None:
    tracker = ZombieTracker("pool", Thresholds(ZombieRules(leak_threshold=5.0)))
    tracker.idle("c", "s", 0.0)
    tracker.busy("c", 1.0)
    assert list(tracker._entries) == ["c"] and tracker._idle == {}
    [leak] = tracker.scan(7.0)
    assert (leak.verdict, leak.seconds) == (Verdict.LEAK, 6.0)
    tracker.idle("c", "s", 8.0)  # released: back to a plain idle stretch
    assert tracker._entries == {} and tracker._idle == {"s": {"c": 8.0}}


# -- planted zombies with a known ground truth -----------------------------------------------------

#: Segments with very different healthy gaps: median 2 s, 10 s and 60 s (lognormal, sigma 1).
SEGMENTS = {"eu/desktop": 2.0, "us/mobile": 10.0, "ap/batch": 60.0}
HORIZON = 3600.0


def _population(rng: random.Random, per_segment: int = 100,
                zombie_share: float = 0.15) -> list[tuple[str, str, list[float], bool]]:
    """Connections as (key, segment, alternating busy/idle event times, is_zombie).

    A healthy connection alternates short uses with idle gaps from its segment until the
    horizon. A zombie behaves the same until it dies at a random time in the first half, and
    stays idle from then on.
    """
    connections = []
    for segment, median in SEGMENTS.items():
        for i in range(per_segment):
            zombie = rng.random() < zombie_share
            dies = rng.uniform(0, HORIZON / 2) if zombie else math.inf
            events: list[float] = []
            t = rng.uniform(0, median)
            while True:
                t += rng.lognormvariate(math.log(median), 1.0)  # idle gap
                if t >= HORIZON or t >= dies:
                    break
                events.append(t)  # busy
                t += rng.uniform(0.001, 0.05)
                events.append(t)  # idle again
            connections.append((f"{segment}#{i}", segment, events, zombie))
    return connections


def _evaluate(connections: list[tuple[str, str, list[float], bool]],
              segment_of: dict[str, str]) -> tuple[float, float]:
    tracker = ZombieTracker("planted", pooled=False)
    for key, segment, events, _ in connections:
        tracker.idle(key, segment_of[segment], 0.0)
        for n, t in enumerate(events):
            if n % 2 == 0:
                tracker.busy(key, t)
            else:
                tracker.idle(key, segment_of[segment], t)
    flagged = {f.key for f in tracker.scan(HORIZON) if f.verdict is Verdict.ZOMBIE}
    truth = {key for key, _, _, zombie in connections if zombie}
    hits = len(flagged & truth)
    precision = hits / len(flagged) if flagged else 1.0
    recall = hits / len(truth)
    return precision, recall


def test_planted_zombies_are_found_with_precision_and_recall_above_095() -> None:
    connections = _population(random.Random(2024))
    truth = sum(zombie for *_, zombie in connections)
    assert 25 <= truth <= 75  # the draw planted a real population
    precision, recall = _evaluate(connections, {s: s for s in SEGMENTS})
    assert precision >= 0.95, precision
    assert recall >= 0.95, recall


def test_one_global_threshold_does_worse_than_learning_per_segment() -> None:
    """Why thresholds are learned per segment: one threshold for all flags the slow segment's
    healthy connections (their gaps are long) or misses the fast segment's zombies."""
    connections = _population(random.Random(2024))
    per_segment = _evaluate(connections, {s: s for s in SEGMENTS})
    pooled = _evaluate(connections, dict.fromkeys(SEGMENTS, "all"))
    assert min(pooled) < 0.95 <= min(per_segment)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["idle", "busy", "forget", "scan"]),
                          st.integers(0, 3), st.floats(0.0, 50.0)), max_size=60))
def test_tracker_never_flags_a_busy_connection_as_zombie(steps: list[tuple[str, int, float]]
                                                         ) -> None:
    tracker = ZombieTracker("h", Thresholds(ZombieRules(min_samples=1, floor=1.0)),
                            pooled=False)
    now = 0.0
    busy: set[int] = set()
    reported: set[tuple[int, float]] = set()
    for action, key, dt in steps:
        now += dt
        if action == "idle":
            tracker.idle(key, "s", now)
            busy.discard(key)
        elif action == "busy":
            tracker.busy(key, now)
            busy.add(key)
        elif action == "forget":
            tracker.forget(key)
            busy.discard(key)
        else:
            for finding in tracker.scan(now):
                assert finding.key not in busy
                assert finding.seconds > finding.threshold
                stretch = (int(str(finding.key)), now - finding.seconds)
                assert stretch not in reported  # each idle stretch is reported once
                reported.add(stretch)


def test_a_clock_stepping_back_teaches_nothing() -> None:
    # Idle at 100, busy at 50: the stretch has no length. Learnt as a 0 s "healthy gap", one
    # such sample made the segment's threshold the 1 s floor instead of the 300 s default.
    thresholds = Thresholds(ZombieRules(min_samples=1))
    tracker = ZombieTracker("pool", thresholds)
    tracker.idle("c", "eu/phone", 100.0)
    tracker.busy("c", 50.0)
    assert thresholds.samples("eu/phone") == 0
    assert thresholds.threshold("eu/phone") == ZombieRules().default_threshold


@pytest.mark.parametrize("gap", [math.nan, math.inf, -1.0])
def test_a_gap_that_is_no_measurement_is_ignored(gap: float) -> None:
    thresholds = Thresholds(ZombieRules(min_samples=1))
    thresholds.observe("s", gap)  # nan and inf raised from the bucket index
    assert thresholds.samples("s") == 0


def test_a_segment_still_learning_never_borrows_a_shorter_threshold() -> None:
    """HTTP keep-alive connections that come back within 2 s taught the node a 6 s threshold;
    WebSockets that speak once a minute have too few gaps of their own. Borrowed, the 6 s
    called every quiet WebSocket a zombie (and reclaim closed it before its first gap ended,
    so the segment could never learn). Still learning, a segment keeps the default, or more
    where its own longest gap or the node's threshold says so."""
    thresholds = Thresholds(ZombieRules(k=3, min_samples=30, floor=1.0))
    for _ in range(100):
        thresholds.observe("web/http", 2.0)
    assert thresholds.threshold("web/http") <= 6.3
    assert thresholds.threshold("web/websocket") == 300.0
    for _ in range(3):
        thresholds.observe("web/websocket", 200.0)
    assert 600.0 <= thresholds.threshold("web/websocket") <= 630.0  # 3 x its longest gap


def test_quiet_websockets_beside_busy_http_are_never_flagged() -> None:
    tracker = ZombieTracker("web", Thresholds(ZombieRules(k=3, min_samples=30, floor=1.0)),
                            pooled=False)
    for key in range(20):
        tracker.idle(("http", key), "web/http", 0.0)
    tracker.idle("ws", "web/websocket", 0.0)
    found = []
    for second in range(1, 601):
        now = float(second)
        if second % 2 == 0:
            for key in range(20):
                tracker.busy(("http", key), now)
                tracker.idle(("http", key), "web/http", now)
        if second % 60 == 0:
            tracker.busy("ws", now)
            tracker.idle("ws", "web/websocket", now)
        found.extend(tracker.scan(now))
    assert tracker.thresholds.threshold("web/http") <= 6.3
    assert found == []


def test_tracker_hands_back_the_finding_a_connection_is_forgiven_or_reclaimed_for() -> None:
    """The watches' forgiven and reclaimed events carry the finding: `busy` returns the zombie
    finding it forgives (None when there was none, or for a leak or half-open connection) and
    `finding` the one a reclaimable connection was reported for."""
    tracker = ZombieTracker("pool", Thresholds(ZombieRules(min_samples=1, k=2)))
    tracker.idle(1, "s", 0.0)
    assert tracker.busy(1, 1.0) is None  # healthy: nothing to forgive
    assert tracker.busy(2, 1.0) is None  # unknown
    tracker.idle(1, "s", 1.5)
    assert tracker.finding(1) is None
    [found] = tracker.scan(4.0)
    assert tracker.finding(1) is found and tracker.finding(2) is None
    assert tracker.reclaimable(5.0, grace=1.0) == [1]
    assert tracker.busy(1, 5.0) is found
    assert tracker.finding(1) is None and tracker.busy(1, 6.0) is None
    tracker.idle(3, "s", 0.0)
    tracker.half_open(3, 0.1)
    [half_open] = tracker.scan(0.2)
    assert tracker.finding(3) is half_open and tracker.busy(3, 0.3) is None
