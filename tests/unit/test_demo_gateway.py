"""The pure parts of `connwise demo gateway`: the seeded schedule, the gateway's configuration,
the WebSocket framing of the embedded echo, the ladder log, and the closing sentences, which must
say so when connwise did not help."""

from __future__ import annotations

import asyncio
import copy
import gc
import itertools
import warnings
from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.demo.gateway_demo import (
    CLASSES,
    ROUTE_PREFIXES,
    DemoApp,
    EchoServer,
    LadderLog,
    Phase,
    Scenario,
    build_schedule,
    findings,
    gateway_config,
    parse_ws_frame,
    ws_accept,
    ws_connect,
    ws_frame,
)
from connwise.errors import ConfigError

# -- the schedule ---------------------------------------------------------------------------------


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    assert build_schedule(Scenario(seed=11)) == build_schedule(Scenario(seed=11))
    assert build_schedule(Scenario(seed=11)).requests != build_schedule(Scenario(seed=12)).requests
    assert build_schedule(Scenario(seed=11)).sessions != build_schedule(Scenario(seed=12)).sessions


def test_schedule_is_ordered_inside_the_duration_with_each_class_service_range() -> None:
    scenario = Scenario(duration=10.0)
    schedule = build_schedule(scenario)
    times = [r.at for r in schedule.requests]
    assert times == sorted(times)
    assert times[0] > 0 and times[-1] < scenario.duration
    assert {r.class_name for r in schedule.requests} == set(CLASSES)
    for request in schedule.requests:
        lo, hi = scenario.service_range(request.class_name)
        assert lo <= request.service_ms <= hi
        # The path is what the gateway routes on: the class's prefix.
        assert request.path.startswith(ROUTE_PREFIXES[request.class_name] + "/")
        assert request.path.endswith(f"?ms={request.service_ms:g}")


def test_each_phase_offers_its_load_and_the_mix_holds() -> None:
    # Long enough that the seeded Poisson counts sit close to their means.
    scenario = Scenario(duration=120.0, seed=3)
    schedule = build_schedule(scenario)
    hold = scenario.mean_service()
    for name, start, end, concurrency in scenario.phase_spans():
        count = sum(start <= r.at < end for r in schedule.requests)
        # Little's law: offered concurrency = arrival rate x mean service time.
        assert count / (end - start) * hold == pytest.approx(concurrency, rel=0.1), name
    total = len(schedule.requests)
    assert schedule.count("critical") / total == pytest.approx(scenario.critical_share,
                                                               abs=0.02)
    assert schedule.count("interactive") / total == pytest.approx(scenario.interactive_share,
                                                                  abs=0.02)


def test_overload_needs_more_than_the_capacity_even_when_bulk_is_degraded() -> None:
    """The scenario's premise: in the overload something must give even if every bulk request
    is degraded, while critical and interactive work alone fit."""
    s = Scenario()
    overload = next(c for name, _, _, c in s.phase_spans() if name == "overload")
    rate = overload / s.mean_service()
    bulk_share = 1 - s.critical_share - s.interactive_share
    critical = s.critical_share * sum(s.critical_ms) / 2000
    interactive = s.interactive_share * sum(s.interactive_ms) / 2000
    degraded_bulk = bulk_share * sum(s.bulk_ms) / 2000 / s.degrade_factor
    assert rate * (critical + interactive + degraded_bulk) > 1.2 * s.capacity
    assert rate * (critical + interactive) < 0.8 * s.capacity


def test_phases_are_contiguous_and_end_at_the_duration() -> None:
    scenario = Scenario(duration=7.0)
    spans = scenario.phase_spans()
    assert [name for name, *_ in spans] == ["baseline", "spike", "overload", "recovery"]
    assert spans[0][1] == 0.0 and spans[-1][2] == 7.0
    for (_, _, end, _), (_, start, _, _) in itertools.pairwise(spans):
        assert end == start
    assert scenario.phase_at(0.0)[0] == "baseline"
    assert scenario.phase_at(7.0) == ("finishing", 0.0)


def test_websocket_sessions_span_the_overload_and_leave_the_requests_alone() -> None:
    scenario = Scenario(duration=20.0)
    schedule = build_schedule(scenario)
    assert len(schedule.sessions) == scenario.ws_sessions
    for session in schedule.sessions:
        assert 0 <= session.at <= 0.2 * scenario.duration
        assert 0.85 * scenario.duration <= session.until <= scenario.duration
    other = build_schedule(Scenario(duration=20.0, ws_sessions=2))
    assert other.requests == schedule.requests and len(other.sessions) == 2


def test_quick_shortens_the_run_unless_a_duration_is_given() -> None:
    assert Scenario.from_options(quick=True).duration == 5.0
    assert Scenario.from_options().duration == 15.0
    assert Scenario.from_options(quick=True, duration=4.0).duration == 4.0


@pytest.mark.parametrize(("scenario", "key"), [
    (Scenario(duration=2.0), "duration"),
    (Scenario(duration=-1.0), "duration"),
    (Scenario(duration=601.0), "duration"),
    (Scenario(duration=float("nan")), "duration"),
    (Scenario(phases=(Phase("only", 0.5, 1.0),)), "phases"),
    (Scenario(phases=(Phase("a", 0.5, 0.0), Phase("b", 0.5, 1.0))), "phases.a"),
    (Scenario(critical_share=0.8, interactive_share=0.3), "critical_share"),
    (Scenario(bulk_ms=(50.0, 10.0)), "bulk_ms"),
    (Scenario(capacity=0), "capacity"),
    (Scenario(degrade_factor=0.5), "degrade_factor"),
])
def test_bad_scenarios_name_their_key(scenario: Scenario, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        scenario.validate()
    assert error.value.key == key


def test_the_gateway_configuration_validates_and_routes_each_prefix_to_its_class() -> None:
    scenario = Scenario()
    apps = [DemoApp("app1", 5.0), DemoApp("app2", 5.0)]
    config = load_gateway_config(gateway_config(scenario, apps, EchoServer()))
    by_prefix = {r.path_prefix: (r.group, r.class_name) for r in config.routes}
    for name in CLASSES:
        assert by_prefix[ROUTE_PREFIXES[name]] == ("app", name)
    assert by_prefix["/ws"][0] == "ws"
    group = config.groups["app"]
    assert group.max_in_flight == scenario.capacity
    assert group.max_waiters == scenario.max_waiters
    assert len(group.backends) == scenario.backends


# -- WebSocket framing ----------------------------------------------------------------------------


def test_ws_accept_matches_rfc_6455_example() -> None:
    assert ws_accept(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 70000])
@pytest.mark.parametrize("mask", [None, b"\x01\x02\x03\x04"])
def test_ws_frames_round_trip_masked_or_not(size: int, mask: bytes | None) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = ws_frame(0x2, payload, mask)
    assert parse_ws_frame(frame + b"next") == (len(frame), 0x2, payload)
    assert parse_ws_frame(frame[:-1] if size else frame[:1]) is None
    if mask is not None and size:
        assert payload not in frame, "a client's payload goes masked on the wire"


# -- the ladder log -------------------------------------------------------------------------------


def test_ladder_log_records_moves_and_time_and_utilization_per_level() -> None:
    log = LadderLog()
    log.sample({"critical": 0, "interactive": 0, "bulk": 0}, 0.0, 0.5)
    log.sample({"critical": 0, "interactive": 0, "bulk": 4}, 1.0, 1.0)
    log.sample({"critical": 0, "interactive": 0, "bulk": 3}, 3.0, 0.25)
    figures = log.figures()
    # The ladder climbs one step per update: the steps a sample skipped are logged at its time.
    assert figures["transitions"] == [
        {"t": 1.0, "class": "bulk", "from": "none", "to": "throttle"},
        {"t": 1.0, "class": "bulk", "from": "throttle", "to": "signal"},
        {"t": 1.0, "class": "bulk", "from": "signal", "to": "queue"},
        {"t": 1.0, "class": "bulk", "from": "queue", "to": "shed"},
        {"t": 3.0, "class": "bulk", "from": "shed", "to": "queue"}]
    assert figures["peak"] == {"critical": "none", "interactive": "none", "bulk": "shed"}
    assert figures["end"]["bulk"] == "queue"
    assert figures["first_reached_s"]["bulk"] == {"throttle": 1.0, "signal": 1.0, "queue": 1.0,
                                                  "shed": 1.0}
    # 0..1 s at none (utilization seen at 1 s: 1.0), 1..3 s at shed (seen at 3 s: 0.25).
    assert figures["seconds_at_level"]["bulk"] == {"none": 1.0, "shed": 2.0}
    assert figures["utilization_at_level"]["bulk"] == {"none": 1.0, "shed": 0.25}
    assert figures["seconds_at_level"]["critical"] == {"none": 3.0}


# -- the closing sentences ------------------------------------------------------------------------


def _class(requests: int, served: int, shed: int = 0, degraded: int = 0,
           p99: dict[str, float] | None = None) -> dict[str, Any]:
    p99 = p99 or {"baseline": 20.0, "overload": 25.0}
    return {"requests": requests, "served": served, "shed": shed,
            "errors": requests - served - shed, "degraded": degraded,
            "latency_ms": {"p99": max(p99.values())},
            "phases": {phase: {"requests": requests // 4, "shed": 0,
                               "latency_ms": {"p99": value}} for phase, value in p99.items()}}


def _result(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "scenario": {"phases": [{"name": n} for n in ("baseline", "spike", "overload",
                                                        "recovery")]},
        "run": {
            "classes": {"critical": _class(100, 100), "interactive": _class(300, 290, 10),
                        "bulk": _class(600, 200, 300, 150)},
            "report_service_ms": {"full_mean": 250.0, "degraded_mean": 50.0},
            "ladder": {"peak": {"critical": "none", "interactive": "throttle", "bulk": "shed"},
                       "end": {"critical": "none", "interactive": "none", "bulk": "none"},
                       "first_reached_s": {"critical": {}, "interactive": {"throttle": 7.0},
                                           "bulk": {"throttle": 5.0, "signal": 6.0,
                                                    "queue": 7.0, "shed": 8.0}},
                       "phase_starts_s": {"baseline": 0.0, "spike": 4.5, "overload": 8.1,
                                          "recovery": 14.4},
                       "seconds_at_level": {"critical": {"none": 18.0},
                                            "interactive": {"none": 10.0, "throttle": 8.0},
                                            "bulk": {"none": 5.0, "shed": 5.0}},
                       "utilization_at_level": {"critical": {"none": 0.5},
                                                "interactive": {"none": 0.5, "throttle": 0.9},
                                                "bulk": {"none": 0.5, "shed": 0.95}}},
            "websocket": {"sessions": 6, "opened": 6, "messages": 400, "errors": 0,
                          "rtt_ms": {"p99": 2.0}},
        },
    }
    for path, value in changes.items():
        target = result["run"]
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[key]
        target[leaf] = value
    return copy.deepcopy(result)


def test_findings_report_what_admission_and_the_ladder_did() -> None:
    served, critical, bulk, ladder, shed, ws = findings(_result())
    assert served.startswith("Served: critical 100% of 100 (p99 25.0 ms), interactive 97% of 300")
    assert critical.startswith("No critical request was shed. Critical p99 was 25.0 ms in the "
                               "overload against 20.0 ms at baseline")
    assert "300 of 600 (50%) shed" in bulk and "150 (25%) served degraded" in bulk
    assert "spent 50.0 ms on such a report instead of 250.0 ms" in bulk
    assert "took bulk up to shed (throttle at 5.0 s, signal at 6.0 s, queue at 7.0 s, shed at " \
           "8.0 s)" in ladder and "left critical at none" in ladder
    assert "still held" not in ladder
    assert "stayed busy (95% of its capacity" in shed
    assert ws.startswith("6 of 6 WebSocket sessions") and "errors" not in ws


def test_findings_say_so_when_critical_work_was_not_protected() -> None:
    critical = _class(100, 90, shed=10, p99={"baseline": 20.0, "overload": 180.0})
    sentence = findings(_result(classes__critical=critical))[1]
    assert sentence.startswith("10 critical requests (10%) were not served (10 shed, 0 failed): "
                               "connwise did not protect all critical work.")
    assert "rose from 20.0 ms at baseline to 180.0 ms in the overload (9.0x)" in sentence
    assert "did not fully shield it" in sentence


def test_findings_say_so_when_the_ladder_did_nothing_or_lags_the_fall() -> None:
    result = _result(classes__bulk=_class(600, 600))
    assert any("neither shed nor degraded" in s and "changed nothing" in s
               for s in findings(result))
    result = _result(ladder__end__bulk="queue")
    sentences = findings(result)
    assert any("At the end it still held bulk at queue" in s for s in sentences)


def test_findings_do_not_blame_the_shed_step_for_capacity_the_calm_left_idle() -> None:
    """The shed step refuses a request only when no slot is free for it and `shed_backlog` x
    capacity requests wait (`DegradeLadder.takes_free_slot` and `sheds`): it cannot refuse work
    a free slot could have taken. A low utilization while a class stood at shed is the calm
    after the overload, in which the ladder lingers 5 s per level, not work refused with room."""
    result = _result(ladder__utilization_at_level__bulk={"none": 0.5, "shed": 0.55},
                     ladder__applied={"bulk": {"shed": 280}},
                     gateway={"group": {"capacity": 10, "max_waiters": 40, "shed_backlog": 3.0}})
    sentence = next(s for s in findings(result) if s.startswith("While bulk stood at shed"))
    assert "shed more than it had to" not in sentence
    assert "also what a free slot could have taken" not in sentence
    assert "used 55% of its capacity" in sentence
    assert "280 bulk requests" in sentence and "30 requests" in sentence


def test_findings_report_websocket_errors() -> None:
    ws = {"sessions": 6, "opened": 5, "messages": 300, "errors": 2, "rtt_ms": {"p99": 9.0}}
    sentence = findings(_result(websocket=ws))[-1]
    assert sentence.startswith("5 of 6 WebSocket sessions") and "with 2 errors" in sentence


def test_ladder_log_records_every_step_of_a_climb_faster_than_its_sampling() -> None:
    """The ladder climbs one step per update, but updates come every 10 ms under contention and
    a step up needs only 0.05 s: a 0.1 s sample can find bulk two steps higher. The log must
    not show an impossible jump (signal -> shed) nor drop the step between (queue)."""
    log = LadderLog()
    log.sample({"critical": 0, "interactive": 0, "bulk": 2}, 1.0, 0.5)
    log.sample({"critical": 0, "interactive": 0, "bulk": 4}, 1.1, 1.0)
    figures = log.figures()
    moves = [(m["from"], m["to"]) for m in figures["transitions"] if m["class"] == "bulk"]
    assert moves == [("none", "throttle"), ("throttle", "signal"), ("signal", "queue"),
                     ("queue", "shed")]
    assert list(figures["first_reached_s"]["bulk"]) == ["throttle", "signal", "queue", "shed"]
    assert figures["first_reached_s"]["bulk"]["queue"] == 1.1


async def test_ws_connect_closes_its_socket_when_the_handshake_is_given_up() -> None:
    """A session gives up on a handshake that takes over 5 s (and Ctrl-C cancels one): the
    socket it opened must be closed then, not left to the garbage collector (a ResourceWarning
    under `python -X dev`, and a connection the gateway keeps open)."""
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the upgrade request, never answered
        try:
            await seen.put(await asyncio.wait_for(reader.read(1), 2.0))  # b"" once closed
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws_connect("127.0.0.1", port), 0.2)
            assert await asyncio.wait_for(seen.get(), 3.0) == b""
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)], \
            [str(w.message) for w in caught]
    finally:
        server.close()
        await server.wait_closed()


def test_findings_put_sheds_in_the_recovery_on_the_backlog_not_on_the_ladder_alone() -> None:
    """In the recovery a bulk request is shed only while the overload's backlog waits: the shed
    step refuses only with `shed_backlog` x capacity requests waiting, the queue only when
    full. The sentence said the ladder might be 'still refusing bulk work' by itself."""
    bulk = _class(600, 200, 300, 150)
    bulk["phases"]["recovery"] = {"requests": 56, "shed": 19, "latency_ms": {"p99": 80.0}}
    result = _result(classes__bulk=bulk,
                     gateway={"group": {"capacity": 10, "max_waiters": 40, "shed_backlog": 3.0}})
    sentence = next(s for s in findings(result) if s.startswith("In the recovery"))
    assert sentence.startswith("In the recovery 19 of 56 bulk requests were still shed")
    assert "was still refusing bulk work" not in sentence
    assert "backlog" in sentence and "30 requests" in sentence and "40" in sentence
