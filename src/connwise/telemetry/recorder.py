"""The recorder: lifecycle events in, one finished `ConnRecord` per connection out.

Two kinds of callers feed it. A pool is subscribed as is (`pool.subscribe(recorder.on_pool_event)`)
and every pool connection becomes one record from its connect to its close. The gateway (or any
other shell that owns connections) holds its records itself, the cheapest way on a hot path:

    rec = recorder.begin(str(conn_id), "client", "listener-web", now, client_addr=ip)
    rec.phase("active", now); rec.use(now)        # a request arrives
    rec.bytes_in += n                             # as data flows, in place
    rec.unuse(now); rec.phase("idle", now)        # the response is out
    recorder.end(rec, now, "client closed")       # one record to the sink

The recorder runs on the data plane, so it only does arithmetic and hands finished records to
its sink, a callable that must not block: `RecordWriter.submit`, which drops and counts when its
queue is full, or a `MemorySink` in tests.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from connwise.core.clock import Clock
from connwise.core.lifecycle import LeakEvent, LifecycleEvent, State, Trigger
from connwise.telemetry.record import ConnRecord, compile_maker

#: The phase whose column a pool connection's time in each state goes to.
PHASE_OF_STATE: dict[State, str] = {
    State.CONNECTING: "connecting",
    State.IDLE: "idle",
    State.CHECKING: "idle",
    State.IN_USE: "active",
    State.DRAINING: "draining",
}

RecordSink = Callable[[ConnRecord], Any]


class Recorder:
    """Turns lifecycle events into connection records; see the module docstring.

    `wall_offset` is added to the owner's clock readings to get Unix time: with the default
    monotonic clock, `Recorder.for_clock(clock, sink)` measures it once.
    """

    __slots__ = ("_open", "backends", "node", "sink", "wall_offset")

    def __init__(self, sink: RecordSink, *, node: str | None = None,
                 wall_offset: float = 0.0) -> None:
        self.sink = sink
        self.node = node if node is not None else socket.gethostname()
        self.wall_offset = wall_offset
        #: Backend label of each pool (by pool name), for pool records.
        self.backends: dict[str, str] = {}
        self._open: dict[tuple[str, int], ConnRecord] = {}

    @classmethod
    def for_clock(cls, clock: Clock, sink: RecordSink, *, node: str | None = None) -> Recorder:
        return cls(sink, node=node, wall_offset=time.time() - clock.now())

    @property
    def open_records(self) -> int:
        """Pool connections being recorded now."""
        return len(self._open)

    # -- any shell: begin / end ----------------------------------------------------------------

    def begin(self, conn_id: str, kind: str, source: str, now: float, *,
              phase: str = "connecting", **values: Any) -> ConnRecord:
        """A new record for a connection that starts at `now` (owner's clock) in `phase`."""
        rec = ConnRecord(conn_id, kind, source, now, phase=phase, **values)
        rec.node = self.node
        return rec

    if TYPE_CHECKING:
        def begin_client(self, conn_id: str, source: str, now: float, phase: str,
                         client_addr: str, region: str = "") -> ConnRecord:
            """`begin` of a client connection, the gateway's per-connection call, without the
            keyword arguments' dictionary and checks (half of `begin`'s cost). `phase` must
            be one of `PHASES`; the gateway passes literals."""

        def begin_upstream(self, conn_id: str, source: str, now: float,
                           backend: str) -> ConnRecord:
            """`begin` of a connection the gateway opens to `backend`, connecting from
            `now`."""
    else:
        # Generated (`compile_maker`): the record made in the method itself, not in a call to
        # a shared maker from it, a Python call (~500 instructions) less per connection.
        begin_client = compile_maker(
            "begin_client", "recorder, conn_id, source, started_at, phase, client_addr, "
            "region=''", {"kind": "'client'", "node": "recorder.node",
                          "client_addr": "client_addr", "region": "region"},
            owing_idle=True)
        begin_upstream = compile_maker(
            "begin_upstream", "recorder, conn_id, source, started_at, backend",
            {"kind": "'upstream'", "node": "recorder.node", "backend": "backend"},
            phase="'connecting'", owing_idle=True)

    def end(self, rec: ConnRecord, now: float, reason: str, failed: bool = False) -> None:
        """The connection terminated at `now` (`failed`: it ended in an error): close its books
        and hand it to the sink. `failed` may be given by position, as the gateway does: a
        keyword argument costs ~200 instructions more per call."""
        rec.close_books(now, reason, failed, self.wall_offset)
        self.sink(rec)

    # -- pools ---------------------------------------------------------------------------------

    def on_pool_event(self, event: LifecycleEvent | LeakEvent) -> None:
        """A pool's subscriber: `pool.subscribe(recorder.on_pool_event)`."""
        if isinstance(event, LeakEvent):
            leaked = self._open.get((event.owner, event.conn_id))
            if leaked is not None:
                leaked.flag = "leak"
            return
        key = (event.owner, event.conn_id)
        now = event.at
        rec = self._open.get(key)
        if rec is None:
            # First sight: from its connect (the CONNECTED event's age is the connect time), or
            # mid-life if the recorder subscribed late (age then counts from establishment).
            started = now - float(event.metrics.get("age", 0.0))
            rec = self.begin(str(event.conn_id), "pool", event.owner, started,
                             phase=PHASE_OF_STATE[event.from_state],
                             backend=self.backends.get(event.owner, event.owner))
            self._open[key] = rec
        trigger = event.trigger
        if trigger is Trigger.ACQUIRE:
            rec.phase("active", now)
            rec.use(now)
            class_name = event.reason
            if rec.class_name and class_name != rec.class_name:
                rec.class_changes += 1
            rec.class_name = class_name
        elif trigger is Trigger.RELEASE and event.from_state is State.IN_USE:
            rec.unuse(now)
            if event.reason == "refused":
                # The waiter gave up before taking it: the acquire did not count.
                rec.requests -= 1
        elif trigger in (Trigger.BREAK, Trigger.CONNECT_FAILED):
            rec.errors += 1
        to_state = event.to_state
        if to_state is State.CLOSED or to_state is State.FAILED:
            del self._open[key]
            self.end(rec, now, event.reason, failed=to_state is State.FAILED)
        else:
            rec.phase(PHASE_OF_STATE[to_state], now)
