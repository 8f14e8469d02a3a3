"""The connection record: its documented fields and its time and use accounting."""

from __future__ import annotations

import dis

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connwise.telemetry.record import (
    COLUMN,
    DEFAULT_ROW,
    FIELD_NAMES,
    FIELDS,
    PHASES,
    ConnRecord,
    compile_maker,
    requests_done,
    row_of,
)


def test_at_least_fifteen_documented_metrics_with_unique_names() -> None:
    assert len(FIELDS) >= 15
    assert len(set(FIELD_NAMES)) == len(FIELDS)
    for field in FIELDS:
        assert field.doc.endswith("."), field.name
        assert field.type in ("text", "int", "real")
    assert all(f"{phase}_s" in COLUMN for phase in PHASES)
    assert len(DEFAULT_ROW) == len(FIELDS)


def test_the_issue_s_metrics_all_have_a_column() -> None:
    wanted = ["conn_id", "node", "source", "backend", "kind", "class_name", "cqi_business",
              "cqi_technical", "cqi_user", "cqi_resource", "class_changes", "queued_s",
              "connecting_s", "active_s", "idle_s", "draining_s", "started_at", "ended_at",
              "bytes_in", "bytes_out", "msgs_in", "msgs_out", "requests", "errors",
              "first_byte_s", "upstream_connect_s", "rtt_ms", "retransmits", "degradations",
              "close_reason", "region", "device"]
    assert [name for name in wanted if name not in COLUMN] == []


def test_phases_uses_gaps_and_tail() -> None:
    rec = ConnRecord("7", "client", "web", 100.0, client_addr="192.0.2.1")
    rec.phase("idle", 100.5)          # established after 0.5 s
    rec.phase("active", 102.0)
    rec.use(102.0)                    # first use after a 1.5 s gap
    rec.bytes_in += 300
    rec.unuse(102.25)
    rec.phase("idle", 102.25)
    rec.phase("active", 110.25)
    rec.use(110.25)                   # an 8 s gap
    rec.unuse(111.25)                 # held 1 s
    rec.phase("idle", 111.25)
    rec.finish(131.25, "client closed")
    assert rec.connecting_s == pytest.approx(0.5)
    assert rec.active_s == pytest.approx(1.25)
    assert rec.idle_s == pytest.approx(29.5)
    assert (rec.requests, rec.bytes_in) == (2, 300)
    assert rec.max_gap_s == pytest.approx(8.0)
    assert rec.max_held_s == pytest.approx(1.0)
    assert rec.tail_idle_s == pytest.approx(20.0)
    assert (rec.ended_at, rec.close_reason, rec.final_state) == (131.25, "client closed",
                                                                  "closed")
    row = rec.row()
    assert len(row) == len(FIELDS)
    assert row[COLUMN["client_addr"]] == "192.0.2.1"
    assert rec.as_dict()["requests"] == 2


def test_a_connection_never_used_idles_its_whole_life_and_fails_when_told() -> None:
    rec = ConnRecord("1", "pool", "main", 0.0)
    rec.phase("idle", 0.1)
    rec.finish(60.1, "check failed", failed=True)
    assert rec.tail_idle_s == pytest.approx(60.0)
    assert rec.max_gap_s == 0.0 and rec.requests == 0
    assert rec.final_state == "failed"


def test_finishing_while_held_counts_the_hold_not_a_tail() -> None:
    rec = ConnRecord("1", "pool", "main", 0.0, phase="idle")
    rec.phase("active", 1.0)
    rec.use(1.0)
    rec.finish(41.0, "drain_timeout")
    assert rec.max_held_s == pytest.approx(40.0) and rec.tail_idle_s == 0.0


def test_shift_moves_timestamps_to_unix_time() -> None:
    rec = ConnRecord("1", "pool", "main", 5.0)
    rec.finish(6.0, "closed")
    rec.shift(1_700_000_000.0)
    assert (rec.started_at, rec.ended_at) == (1_700_000_005.0, 1_700_000_006.0)


def test_unknown_field_and_phase_are_refused() -> None:
    with pytest.raises(TypeError, match="no field 'bogus'"):
        ConnRecord("1", "pool", "main", 0.0, bogus=1)
    with pytest.raises(ValueError, match="phase 'sleeping'"):
        ConnRecord("1", "pool", "main", 0.0, phase="sleeping")


def test_each_phase_s_time_goes_to_its_own_column() -> None:
    rec = ConnRecord("1", "client", "web", 0.0, phase="queued")
    for step, phase in enumerate(("connecting", "active", "idle", "draining", "idle"), 1):
        rec.phase(phase, float(step * step))  # 1, 4, 9, 16, 25: spans of 1, 3, 5, 7, 9
    assert [getattr(rec, f"{p}_s") for p in PHASES] == [1.0, 3.0, 5.0, 7.0, 9.0]
    rec.phase("elsewhere", 30.0)  # idle: 5 s more
    assert rec.idle_s == 12.0
    with pytest.raises(ValueError, match="'elsewhere' is not one of"):
        rec.phase("idle", 31.0)


def test_the_row_is_every_field_in_order_and_a_new_record_holds_the_defaults() -> None:
    rec = ConnRecord("9", "pool", "main", 5.0)
    expected = list(DEFAULT_ROW)
    for name, value in (("conn_id", "9"), ("kind", "pool"), ("source", "main"),
                        ("started_at", 5.0), ("ended_at", 5.0)):
        expected[COLUMN[name]] = value
    assert rec.row() == tuple(expected)
    for i, name in enumerate(FIELD_NAMES):
        setattr(rec, name, i)
    assert rec.row() == tuple(range(len(FIELDS)))


@given(first=st.sampled_from(["idle", "queued", "connecting"]),
       steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 5.0),
                                st.sampled_from(["bulk", "interactive", "critical"]),
                                st.booleans(), st.sampled_from([200, 404, 502, 503])),
                      max_size=8))
def test_request_done_keeps_the_books_of_the_steps_it_fuses(
        first: str, steps: list[tuple[float, float, str, bool, int]]) -> None:
    fused = ConnRecord("1", "client", "web", 0.0, phase=first)
    stepwise = ConnRecord("1", "client", "web", 0.0, phase=first)
    now = 0.0
    for wait, serve, class_name, degraded, status in steps:
        now += wait
        start = now
        if stepwise.current_phase != "idle":  # what `add_use` does first
            stepwise.phase("idle", now)
        stepwise.phase("active", now)
        stepwise.use(now)
        if stepwise.class_name and stepwise.class_name != class_name:
            stepwise.class_changes += 1
        stepwise.class_name = class_name
        stepwise.degradations += degraded
        now += serve
        fused.request_done(start, now, class_name, degraded, status)
        stepwise.unuse(now)
        stepwise.phase("idle", now)
        stepwise.status = status
        stepwise.errors += status >= 500
    for rec in (fused, stepwise):
        rec.finish(now + 1.0, "client closed")
    assert fused.row() == pytest.approx(stepwise.row())


@given(phases=st.tuples(st.sampled_from(["idle", "queued", "connecting", "draining"]),
                        st.sampled_from(["idle", "connecting", "draining"])),
       steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 1.0), st.floats(0.0, 5.0),
                                st.sampled_from(["bulk", "interactive", "critical"]),
                                st.booleans(), st.sampled_from([200, 404, 502, 503]),
                                st.sampled_from([200, 503])),
                      max_size=8))
def test_requests_done_is_request_done_on_both_records(
        phases: tuple[str, str],
        steps: list[tuple[float, float, float, str, bool, int, int]]) -> None:
    """The gateway's one call for a client's and an upstream's record leaves both exactly as
    their own `request_done` calls would (the same float operations in the same order)."""
    client_phase, upstream_phase = phases
    pair = (ConnRecord("1", "client", "web", 0.0, phase=client_phase),
            ConnRecord("2", "upstream", "app", 0.0, phase=upstream_phase))
    alone = (ConnRecord("1", "client", "web", 0.0, phase=client_phase),
             ConnRecord("2", "upstream", "app", 0.0, phase=upstream_phase))
    now = 0.0
    for wait, connect, serve, class_name, degraded, status, upstream_status in steps:
        now += wait
        start, busy_at = now, now + connect
        now = busy_at + serve
        requests_done(*pair, start, busy_at, now, class_name, degraded, status,
                      upstream_status)
        alone[0].request_done(start, now, class_name, degraded, status)
        alone[1].request_done(busy_at, now, class_name, degraded, upstream_status)
    for rec in (*pair, *alone):
        rec.finish(now + 1.0, "client closed")
    assert [rec.row() for rec in pair] == [rec.row() for rec in alone]


_owing = compile_maker("owing", "conn_id, kind, source, started_at, phase", {},
                       owing_idle=True)


@given(first=st.sampled_from(["idle", "queued", "connecting"]),
       steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 5.0),
                                st.sampled_from(["request", "queued", "draining", "active"]),
                                st.sampled_from([200, 503])),
                      max_size=10))
def test_a_record_owing_its_idle_column_ends_with_the_same_values(
        first: str, steps: list[tuple[float, float, str, int]]) -> None:
    """`owing_idle` takes the spans off `idle_s` at once, not one by one: the row is the
    same to the bit, whatever phases the record goes through between its requests."""
    owing = _owing("1", "client", "web", 0.0, first)
    plain = ConnRecord("1", "client", "web", 0.0, phase=first)
    now = 0.0
    for wait, serve, step, status in steps:
        now += wait
        for rec in (owing, plain):
            if step == "request":
                rec.request_done(now, now + serve, "bulk", False, status)
            elif step == "draining":
                rec.start_draining(now)
            else:
                rec.phase(step, now)
        now += serve
    for rec in (owing, plain):
        rec.finish(now + 1.0, "client closed")
    assert owing.row() == plain.row()


def test_upstream_connect_counts_only_connects_a_request_waited_for() -> None:
    rec = ConnRecord("1", "client", "web", 0.0, phase="idle")
    rec.upstream_connected(1.0, 0.5, 0.01)  # warmed before the request came: no wait
    assert rec.upstream_connect_s is None
    rec.upstream_connected(1.0, 1.02, 0.02)  # finished after the admission: it waited
    assert rec.upstream_connect_s == pytest.approx(0.02)
    rec.upstream_connected(2.0, 2.005, 0.005)  # shorter: the longest wait stays
    assert rec.upstream_connect_s == pytest.approx(0.02)
    rec.upstream_connected(2.0, 2.3, 0.3)
    assert rec.upstream_connect_s == pytest.approx(0.3)


def test_request_done_moves_each_span_from_idle_to_active_and_keeps_the_books() -> None:
    rec = ConnRecord("1", "upstream", "app", 0.0)
    rec.phase("idle", 0.5)  # connected; the owner keeps it idle and times its requests
    rec.request_done(1.0, 1.25, "interactive", False, 200)
    rec.request_done(3.0, 3.5, "bulk", True, 503)
    rec.finish(4.0, "gateway closed")
    assert rec.requests == 2 and rec.status == 503 and rec.errors == 1
    assert (rec.class_name, rec.class_changes, rec.degradations) == ("bulk", 1, 1)
    assert rec.connecting_s == pytest.approx(0.5)
    assert rec.active_s == pytest.approx(0.75)
    assert rec.idle_s == pytest.approx(2.75)
    assert rec.max_gap_s == pytest.approx(1.75)  # from 1.25 to 3.0
    assert rec.max_held_s == pytest.approx(0.5)
    assert rec.tail_idle_s == pytest.approx(0.5)
    total = rec.connecting_s + rec.active_s + rec.idle_s
    assert total == pytest.approx(rec.ended_at - rec.started_at)


def _in_state(state: str) -> ConnRecord:
    rec = ConnRecord("9", "client", "web", 10.0, phase="idle")
    if state == "idle_after_use":
        rec.request_done(11.0, 12.5, "critical", False, 200)
    elif state == "held":
        rec.phase("active", 11.0)
        rec.use(11.0)
    elif state == "idle_never_used":
        pass
    elif state == "never_idle":
        rec = ConnRecord("9", "client", "web", 10.0, phase="queued")
    elif state == "reason_set_before":
        rec.close_reason = "zombie"
    return rec


@pytest.mark.parametrize("state", ["idle_after_use", "held", "idle_never_used", "never_idle",
                                   "reason_set_before"])
@pytest.mark.parametrize("failed", [False, True])
def test_close_books_is_finish_then_shift(state: str, failed: bool) -> None:
    fused, stepwise = _in_state(state), _in_state(state)
    fused.close_books(20.0, "client closed", failed, 1_700_000_000.0)
    stepwise.finish(20.0, "client closed", failed=failed)
    stepwise.shift(1_700_000_000.0)
    assert fused.row() == pytest.approx(stepwise.row())
    assert fused.ended_at == 1_700_000_020.0 and fused.started_at == 1_700_000_010.0


def test_the_row_is_built_as_tuples_not_through_a_list() -> None:
    # A tuple display of more than 30 items compiles to a list filled by one LIST_APPEND per
    # item, then converted: a quarter more instructions per record than tuples of at most 30
    # items joined (what `row_of` is generated as).
    opnames = {instruction.opname for instruction in dis.get_instructions(row_of)}
    assert "LIST_APPEND" not in opnames
    assert "BUILD_TUPLE" in opnames
    rec = ConnRecord("9", "pool", "main", 5.0)
    for i, name in enumerate(FIELD_NAMES):
        setattr(rec, name, i)
    assert row_of(rec) == rec.row() == tuple(range(len(FIELDS)))
