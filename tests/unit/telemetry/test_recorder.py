"""The recorder turns a pool's lifecycle events into one record per connection: driven here by
the core `PoolPolicy` itself on virtual time, the same bookkeeping the asyncio pool runs."""

from __future__ import annotations

import pytest

from connwise.core.classes import ClassTable
from connwise.core.lifecycle import LeakEvent
from connwise.core.pooling import Connect, PoolLimits, PoolPolicy
from connwise.telemetry.memory import MemorySink
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.recorder import Recorder

EPOCH = 1_700_000_000.0


def make(min_size: int = 1, **limits: object) -> tuple[PoolPolicy, MemorySink[ConnRecord],
                                                         Recorder]:
    sink: MemorySink[ConnRecord] = MemorySink()
    recorder = Recorder(sink, node="n1", wall_offset=EPOCH)
    recorder.backends["main"] = "db-primary"
    options: dict[str, object] = {"min_size": min_size, "max_size": 4, "idle_timeout": None,
                                  "max_lifetime": None}
    options.update(limits)
    policy = PoolPolicy(name="main", limits=PoolLimits(**options),  # type: ignore[arg-type]
                        classes=ClassTable(), listener=recorder.on_pool_event)
    return policy, sink, recorder


def connect_all(policy: PoolPolicy, now: float, latency: float) -> list[int]:
    ids = [a.conn_id for a in policy.pump(now) if isinstance(a, Connect)]
    for conn_id in ids:
        policy.connected(conn_id, now + latency, latency)
    return ids


def test_one_record_per_connection_from_connect_to_close() -> None:
    policy, sink, recorder = make()
    [conn] = connect_all(policy, 10.0, 0.25)                  # connected at 10.25
    assert policy.acquire_now("critical", 12.25) == conn     # 2 s warm gap
    policy.release(conn, 12.75)
    assert policy.acquire_now("bulk", 20.75) == conn         # 8 s gap, class change
    policy.release(conn, 21.75)
    assert recorder.open_records == 1 and len(sink) == 0
    policy.drain(31.75)
    [rec] = sink.events
    assert recorder.open_records == 0
    assert (rec.kind, rec.source, rec.node, rec.backend, rec.conn_id) == (
        "pool", "main", "n1", "db-primary", str(conn))
    assert rec.started_at == pytest.approx(EPOCH + 10.0)
    assert rec.ended_at == pytest.approx(EPOCH + 31.75)
    assert rec.connecting_s == pytest.approx(0.25)
    assert rec.active_s == pytest.approx(1.5)
    assert rec.idle_s == pytest.approx(20.0)
    assert (rec.requests, rec.class_name, rec.class_changes) == (2, "bulk", 1)
    assert rec.max_gap_s == pytest.approx(8.0)
    assert rec.max_held_s == pytest.approx(1.0)
    assert rec.tail_idle_s == pytest.approx(10.0)
    assert (rec.close_reason, rec.final_state, rec.errors) == ("pool draining", "closed", 0)


def test_a_connection_first_seen_mid_life_is_not_counted_as_connecting() -> None:
    sink: MemorySink[ConnRecord] = MemorySink()
    recorder = Recorder(sink, node="n1")
    policy = PoolPolicy(name="main", limits=PoolLimits(min_size=1, max_size=2,
                                                       idle_timeout=None),
                        classes=ClassTable())
    [conn] = connect_all(policy, 0.0, 0.5)
    policy.listener = recorder.on_pool_event  # subscribed late, at t=100
    policy.acquire_now("bulk", 100.5)
    policy.release(conn, 101.5)
    policy.drain(102.5)
    [rec] = sink.events
    assert rec.connecting_s == 0.0
    assert rec.started_at == pytest.approx(0.5)  # its establishment
    assert rec.idle_s == pytest.approx(101.0) and rec.active_s == pytest.approx(1.0)


def test_a_failed_connect_is_a_failed_record_with_an_error() -> None:
    policy, sink, _ = make()
    [action] = policy.pump(0.0)
    assert isinstance(action, Connect)
    policy.connect_failed(action.conn_id, 1.5, "connection refused")
    [rec] = sink.events
    assert (rec.final_state, rec.errors, rec.close_reason) == ("failed", 1,
                                                               "connection refused")
    assert rec.connecting_s == pytest.approx(1.5) and rec.requests == 0


def test_broken_while_held_and_leak_flag() -> None:
    policy, sink, recorder = make(leak_threshold=5.0)
    [conn] = connect_all(policy, 0.0, 0.1)
    policy.acquire_now("interactive", 1.0)
    recorder.on_pool_event(LeakEvent(conn, "main", "interactive", 6.0, 7.0, ()))
    policy.release(conn, 9.0, broken=True)
    rec = sink.events[0]
    assert (rec.flag, rec.errors, rec.final_state) == ("leak", 1, "failed")
    assert rec.max_held_s == pytest.approx(8.0)


def test_checks_are_idle_time_not_uses() -> None:
    policy, sink, _ = make(check_interval=5.0)
    [conn] = connect_all(policy, 0.0, 0.1)
    actions = policy.maintain(6.0)
    assert any(type(a).__name__ == "Check" for a in actions)
    policy.check_done(conn, 6.1, 0.1, True)
    policy.drain(10.1)
    [rec] = sink.events
    assert rec.requests == 0 and rec.max_gap_s == 0.0
    assert rec.idle_s == pytest.approx(10.0)
    assert rec.tail_idle_s == pytest.approx(10.0)


def test_retire_of_an_idle_zombie_closes_with_its_reason() -> None:
    policy, sink, _ = make(min_size=2)
    first, second = connect_all(policy, 0.0, 0.1)
    actions = policy.retire(first, 50.0, "zombie")
    # Below min_size the pool opens a replacement at once: why the zombie watch never
    # reclaims below the pool's floor.
    assert [type(a).__name__ for a in actions] == ["Close", "Connect"]
    assert sink.events[0].close_reason == "zombie"
    assert policy.retire(999, 50.0, "zombie") == []
    policy.acquire_now("bulk", 51.0)
    assert policy.retire(second, 52.0, "zombie") == []  # held: closes when given back
    policy.release(second, 53.0)
    assert sink.events[-1].conn_id == str(second)


def test_begin_client_makes_the_record_begin_makes() -> None:
    sink: MemorySink[ConnRecord] = MemorySink()
    recorder = Recorder(sink, node="n1", wall_offset=0.0)
    fast = recorder.begin_client("7", "web", 3.0, "queued", "10.0.0.1")
    slow = recorder.begin("7", "client", "web", 3.0, phase="queued", client_addr="10.0.0.1")
    assert fast.row() == slow.row()
    assert fast.current_phase == slow.current_phase == "queued"
    assert fast.node == "n1" and fast.kind == "client" and fast.client_addr == "10.0.0.1"


def test_begin_client_and_begin_upstream_make_the_records_begin_makes() -> None:
    recorder = Recorder(MemorySink[ConnRecord](), node="n1", wall_offset=0.0)
    client = recorder.begin_client("7", "web", 3.0, "idle", "10.0.0.1", "eu-west")
    assert client.row() == recorder.begin("7", "client", "web", 3.0, phase="idle",
                                          client_addr="10.0.0.1", region="eu-west").row()
    upstream = recorder.begin_upstream("8", "origin", 4.0, "10.0.0.9:80")
    assert upstream.row() == recorder.begin("8", "upstream", "origin", 4.0,
                                            backend="10.0.0.9:80").row()
    assert upstream.current_phase == "connecting"


def test_end_takes_failed_by_position_as_the_gateway_passes_it() -> None:
    sink: MemorySink[ConnRecord] = MemorySink()
    recorder = Recorder(sink, node="n1", wall_offset=10.0)
    recorder.end(recorder.begin_client("1", "web", 1.0, "idle", "10.0.0.1"), 2.0, "reset", True)
    recorder.end(recorder.begin_client("2", "web", 1.0, "idle", "10.0.0.1"), 3.0, "client closed",
                 False)
    assert [(r.conn_id, r.final_state, r.close_reason, r.ended_at) for r in sink.events] == [
        ("1", "failed", "reset", 12.0), ("2", "closed", "client closed", 13.0)]
