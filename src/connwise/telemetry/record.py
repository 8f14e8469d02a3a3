"""The connection record: one row per managed connection, from establishment to termination.

`FIELDS` is the one description of a record: the store schemas (SQLite and PostgreSQL), the
parquet and CSV exports, and docs/telemetry.md are all derived from it or checked against it, so
a metric added here reaches every one of them or a test fails.

`ConnRecord` is the mutable accumulator a live connection fills: the shell that owns the
connection (the pool recorder, the gateway) bumps its counters in place — `rec.bytes_in += n`
costs what an attribute store costs — and moves it between phases with `phase(name, now)`, which
adds the time spent to the phase left. Times are seconds of the owner's clock while the
connection lives; the `Recorder` turns them into Unix time when the connection ends.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

ColumnType = Literal["text", "int", "real"]
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Field:
    """One column of the record."""

    name: str
    type: ColumnType
    unit: str
    doc: str
    #: Schema version that added the column (see `connwise.telemetry.schema`).
    since: int = 1
    #: Value when not filled; None means SQL NULL ("not measured").
    default: Any = None


def _f(name: str, type_: ColumnType, unit: str, doc: str, *, since: int = 1,
       default: Any = None) -> Field:
    return Field(name, type_, unit, doc, since, default)


FIELDS: tuple[Field, ...] = (
    _f("conn_id", "text", "", "Connection id, unique per (node, source) while the connection "
       "lives; for logs, nginx's `$connection` or the line number.", default=""),
    _f("node", "text", "", "The connwise node (or ingest run) that recorded the connection.",
       default=""),
    _f("source", "text", "", "The listener, pool or log file the connection belongs to.",
       default=""),
    _f("kind", "text", "", "`pool` (a pool's connection to its backend), `client` (accepted by "
       "a listener), `upstream` (opened by the gateway), `request` (one request of a log), "
       "`session` (one TCP session of a log).", default=""),
    _f("backend", "text", "", "Backend or upstream server the connection leads to.", default=""),
    _f("class_name", "text", "", "Priority class at the end (the last acquirer's, for a pool).",
       default=""),
    _f("class_changes", "int", "count", "Times the class changed during the connection's life.",
       since=2, default=0),
    _f("cqi_business", "real", "0..1", "CQI axis: business criticality.", since=2),
    _f("cqi_technical", "real", "0..1", "CQI axis: technical requirements.", since=2),
    _f("cqi_user", "real", "0..1", "CQI axis: user context.", since=2),
    _f("cqi_resource", "real", "0..1", "CQI axis: resource impact.", since=2),
    _f("cqi_score", "real", "0..1", "CQI score that picked the class.", since=2),
    _f("started_at", "real", "Unix s", "Establishment began (connect or accept)."),
    _f("ended_at", "real", "Unix s", "Termination (closed or failed)."),
    _f("queued_s", "real", "s", "Time queued for admission before being served.", default=0.0),
    _f("connecting_s", "real", "s", "Time establishing (TCP, TLS, protocol handshake).",
       default=0.0),
    _f("active_s", "real", "s", "Time serving: held by a caller or carrying a request.",
       default=0.0),
    _f("idle_s", "real", "s", "Time open but unused (health checks included).", default=0.0),
    _f("draining_s", "real", "s", "Time draining: no new work, finishing the current one.",
       default=0.0),
    _f("bytes_in", "int", "bytes", "Bytes received from the peer (the request side).",
       default=0),
    _f("bytes_out", "int", "bytes", "Bytes sent to the peer (the response side).", default=0),
    _f("msgs_in", "int", "count", "Messages or requests received (frames, queries).",
       default=0),
    _f("msgs_out", "int", "count", "Messages or responses sent.", default=0),
    _f("requests", "int", "count", "Uses: requests served, or acquisitions of a pool connection.",
       default=0),
    _f("conn_seq", "int", "count", "For a request record: its ordinal on its connection "
       "(nginx `$connection_requests`); 1 means it opened the connection.", since=2),
    _f("errors", "int", "count", "Errors seen: connect or check failures, breaks, 5xx, aborts.",
       default=0),
    _f("status", "int", "", "HTTP status of a request record."),
    _f("first_byte_s", "real", "s", "Latency to the first response byte (gateway: of the "
       "connection's first answered request, from its admission)."),
    _f("upstream_connect_s", "real", "s", "Time to connect to the upstream (gateway client: the "
       "longest connect a request waited for, NULL if all found a warm connection; HAProxy Tc, "
       "nginx `$upstream_connect_time`)."),
    _f("rtt_ms", "real", "ms", "Smoothed RTT from TCP_INFO, last sample (Linux)."),
    _f("retransmits", "int", "count", "Total retransmitted segments from TCP_INFO (Linux)."),
    _f("degradations", "int", "count", "Degradation steps applied to this connection's traffic.",
       default=0),
    _f("max_gap_s", "real", "s", "Longest idle stretch that ended in useful traffic (a healthy "
       "gap); for a log record, the hold time of a useful exchange. Zombie thresholds are "
       "learned from it.", since=2, default=0.0),
    _f("tail_idle_s", "real", "s", "Idle time from the last useful traffic (or from "
       "establishment, if none) to termination; what a zombie is judged on.", since=2,
       default=0.0),
    _f("max_held_s", "real", "s", "Longest single hold by a caller; what a leak is judged on.",
       since=2, default=0.0),
    _f("flag", "text", "", "What a live watch found: `zombie`, `half_open`, `leak`, or empty.",
       since=2, default=""),
    _f("close_reason", "text", "", "Why it ended: the pool's or gateway's reason, the HAProxy "
       "termination state, or the HTTP outcome.", default=""),
    _f("final_state", "text", "", "`closed` or `failed`.", default="closed"),
    _f("client_addr", "text", "", "Client IP address (client and log records).", default=""),
    _f("region", "text", "", "Client region, from a configured header or the CIDR table.",
       default=""),
    _f("device", "text", "", "Client device: desktop, mobile, tablet, bot or other.",
       default=""),
)

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
#: Position of each column in a row: what fast row builders (the log parsers) index with.
COLUMN: dict[str, int] = {name: i for i, name in enumerate(FIELD_NAMES)}
DEFAULT_ROW: Row = tuple(f.default for f in FIELDS)

#: Phases a connection's time is split into; each has a `<phase>_s` column.
PHASES = ("queued", "connecting", "active", "idle", "draining")
_PHASE_SET = frozenset(PHASES)


#: The body of `ConnRecord.request_done` for the record `{r}`, its request's start `{start}`
#: and status `{status}` (the end, class and degradation are shared): one text that makes the
#: method and `requests_done`, which runs it for two records in one call.
_REQUEST_DONE = """\
held = end - {start}
phase = {r}._phase
if phase == "idle":  # nearly always: one comparison on the way
    if not {r}._idle_owed:  # else `idle_s` takes `active_s` off later (`compile_maker`)
        {r}.idle_s -= held
elif phase == "draining":
    if {r}._idle_owed:
        {r}.idle_s -= {r}.active_s
        {r}._idle_owed = False
    after = min(held, end - {r}._phase_at)
    {r}.draining_s -= after
    {r}.idle_s -= held - after
else:
    {r}.phase("idle", {start})
    if not {r}._idle_owed:
        {r}.idle_s -= held
idle_at = {r}._idle_at
if idle_at is not None and {start} - idle_at > {r}.max_gap_s:
    {r}.max_gap_s = {start} - idle_at
{r}.active_s += held
if held > {r}.max_held_s:  # a comparison costs less than max()
    {r}.max_held_s = held
{r}._idle_at = end
{r}.requests += 1
{r}.status = {status}
if {status} >= 500:
    {r}.errors += 1
if class_name != {r}.class_name:
    if {r}.class_name:
        {r}.class_changes += 1
    {r}.class_name = class_name
if degraded:
    {r}.degradations += 1
"""


def _request_done_body(r: str, start: str, status: str) -> str:
    return textwrap.indent(_REQUEST_DONE.format(r=r, start=start, status=status), "    ")


def _compile_request_done() -> Callable[[ConnRecord, float, float, str, bool, int], None]:
    """`ConnRecord.request_done`, from `_REQUEST_DONE`."""
    namespace: dict[str, Any] = {}
    exec("def request_done(self, start, end, class_name, degraded, status):\n"
         + _request_done_body("self", "start", "status"), namespace)
    function: Callable[[ConnRecord, float, float, str, bool, int], None] = (
        namespace["request_done"])
    return function


class ConnRecord:
    """One connection's record while it lives; see the module docstring."""

    __slots__ = (*FIELD_NAMES, "_held_at", "_idle_at", "_idle_owed", "_phase", "_phase_at")

    conn_id: str
    node: str
    source: str
    kind: str
    backend: str
    class_name: str
    class_changes: int
    cqi_business: float | None
    cqi_technical: float | None
    cqi_user: float | None
    cqi_resource: float | None
    cqi_score: float | None
    started_at: float
    ended_at: float
    queued_s: float
    connecting_s: float
    active_s: float
    idle_s: float
    draining_s: float
    bytes_in: int
    bytes_out: int
    msgs_in: int
    msgs_out: int
    requests: int
    conn_seq: int | None
    errors: int
    status: int | None
    first_byte_s: float | None
    upstream_connect_s: float | None
    rtt_ms: float | None
    retransmits: int | None
    degradations: int
    max_gap_s: float
    tail_idle_s: float
    max_held_s: float
    flag: str
    close_reason: str
    final_state: str
    client_addr: str
    region: str
    device: str
    _phase: str
    _phase_at: float
    _idle_at: float | None
    _held_at: float | None
    #: `idle_s` (still 0.0) owes `active_s` (its spans only): see `compile_maker`.
    _idle_owed: bool

    def __init__(self, conn_id: str, kind: str, source: str, started_at: float, *,
                 phase: str = "connecting", **values: Any) -> None:
        if phase not in _PHASE_SET:
            raise ValueError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
        _init(self, conn_id, kind, source, started_at, phase)
        for name, value in values.items():
            if name not in FIELD_BY_NAME:
                raise TypeError(f"ConnRecord has no field {name!r}; the fields are listed in "
                                "connwise.telemetry.record.FIELDS")
            setattr(self, name, value)

    @property
    def current_phase(self) -> str:
        return self._phase

    def phase(self, name: str, now: float) -> None:
        """Leave the current phase at `now` (its time is added to its column) and enter `name`.
        Plain attribute arithmetic rather than a `getattr`/`setattr` pair on a computed name:
        this runs a few times per connection on the data plane, at a third of the cost."""
        spent = now - self._phase_at
        current = self._phase
        if self._idle_owed and current in {"idle", "active"}:
            self.idle_s -= self.active_s
            self._idle_owed = False
        if current == "active":
            self.active_s += spent
        elif current == "idle":
            self.idle_s += spent
        elif current == "connecting":
            self.connecting_s += spent
        elif current == "queued":
            self.queued_s += spent
        elif current == "draining":
            self.draining_s += spent
        else:
            raise ValueError(f"phase {current!r} is not one of {', '.join(PHASES)}")
        self._phase = name
        self._phase_at = now
        if name == "idle" and self._idle_at is None and self._held_at is None:
            self._idle_at = now

    def use(self, now: float) -> None:
        """Useful traffic starts (an acquire, a request): the idle stretch before it was
        healthy, and the connection counts one more use."""
        if self._idle_at is not None:
            gap = now - self._idle_at
            self.max_gap_s = max(self.max_gap_s, gap)
            self._idle_at = None
        self.requests += 1
        self._held_at = now

    def unuse(self, now: float) -> None:
        """The use ends (a release, a response sent): idleness starts again."""
        if self._held_at is not None:
            held = now - self._held_at
            self.max_held_s = max(self.max_held_s, held)
            self._held_at = None
        self._idle_at = now

    if TYPE_CHECKING:
        def request_done(self, start: float, end: float, class_name: str, degraded: bool,
                         status: int) -> None:
            """A proxied request admitted at `start`, answered at `end` with `status`, run in
            `class_name` (a change counted), degraded or not, on a record its owner keeps in
            the idle phase while timing the requests itself (the gateway's client and upstream
            records): the span moves from the idle column to the active one, and a record in
            another phase (queued for admission) goes idle at `start` first. One call per
            request, at its end, with clock readings the owner made anyway: separate start and
            end steps cost the gateway several percent of its throughput. A record draining
            (`start_draining`) moves the span from the draining column as far as it lies after
            the drain began, the rest from the idle one. Generated (`_REQUEST_DONE`), as
            `requests_done` is from the same text."""
    else:
        request_done = _compile_request_done()

    def start_draining(self, now: float) -> None:
        """The gateway drains: from `now` on, the connection's time is draining time, its
        current work finishing with no new work to come. Only from `idle` (an http client
        between, or timing, its requests) or `active` (a relay): a record queued or
        connecting keeps its phase, which `request_done` ends."""
        if self._phase in {"idle", "active"}:
            self.phase("draining", now)

    def upstream_connected(self, start: float, connected_at: float, connect_s: float) -> None:
        """A request admitted at `start` goes to a fresh upstream connection that finished
        connecting at `connected_at` after `connect_s`: if that was after the admission, the
        request waited for the connect, and `upstream_connect_s` keeps the longest such wait
        (None when every request found a warm connection)."""
        if connected_at >= start:
            current = self.upstream_connect_s
            if current is None or connect_s > current:
                self.upstream_connect_s = connect_s

    def finish(self, now: float, reason: str, *, failed: bool = False) -> None:
        """Close the books at `now`: the last phase, the tail of idleness, the outcome. A
        reason set before the end (the gateway's zombie reclaim) wins over `reason`, the close
        path's generic one."""
        self.close_books(now, reason, failed, 0.0)

    def close_books(self, now: float, reason: str, failed: bool, offset: float) -> None:
        """`finish` and then `shift` by `offset`, in one call: what a recorder runs once per
        connection on the data plane, with the phase step written out (the last phase of a
        gateway record is nearly always `idle`) rather than called."""
        if self._idle_owed:
            self.idle_s -= self.active_s
            self._idle_owed = False
        spent = now - self._phase_at
        current = self._phase
        if current == "idle":
            self.idle_s += spent
        elif current == "active":
            self.active_s += spent
        else:
            self.phase(current, now)
        self._phase_at = now
        held_at = self._held_at
        if held_at is not None:
            held = now - held_at
            if held > self.max_held_s:  # noqa: PLR1730 -- a comparison costs less than max()
                self.max_held_s = held
            self._held_at = None
            self._idle_at = None
        else:
            idle_at = self._idle_at
            if idle_at is not None:
                self.tail_idle_s = now - idle_at
        self.ended_at = now + offset
        if offset:
            self.started_at += offset
        if not self.close_reason:
            self.close_reason = reason
        if failed:
            self.final_state = "failed"

    def shift(self, offset: float) -> None:
        """Move the timestamps from the owner's clock to Unix time."""
        self.started_at += offset
        self.ended_at += offset

    def row(self) -> Row:
        """The values in `FIELD_NAMES` order, as the stores take them."""
        return row_of(self)

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(FIELD_NAMES, self.row(), strict=True))

    def __repr__(self) -> str:
        return (f"<ConnRecord {self.kind} {self.source}/{self.conn_id} {self._phase} "
                f"uses {self.requests}>")


def _stores(given: dict[str, str], phase: str = "phase", owing_idle: bool = False) -> str:
    """The body that fills a new record, the way dataclasses generate `__init__`: every field's
    argument (the names in `given`) or default (each a literal), and the private state, in
    straight slot stores. A record is made per connection on the data plane; this costs half
    of storing the defaults in a loop and then the arguments."""
    given = {"conn_id": "conn_id", "kind": "kind", "source": "source",
             "started_at": "started_at", "ended_at": "started_at", **given}
    lines = [f"    self.{f.name} = {given.get(f.name, repr(f.default))}" for f in FIELDS]
    lines += [f"    self._phase = {phase}", "    self._phase_at = started_at",
              "    self._idle_at = None", "    self._held_at = None",
              f"    self._idle_owed = {owing_idle}"]
    return "\n".join(lines) + "\n"


def _compile_init() -> Callable[[ConnRecord, str, str, str, float, str], None]:
    """The body of `ConnRecord.__init__`."""
    namespace: dict[str, Any] = {}
    exec("def init(self, conn_id, kind, source, started_at, phase):\n" + _stores({}),
         namespace)
    function: Callable[[ConnRecord, str, str, str, float, str], None] = namespace["init"]
    return function


def compile_maker(name: str, params: str, given: dict[str, str], phase: str = "phase",
                  owing_idle: bool = False) -> Callable[..., ConnRecord]:
    """A function `name(params)` that makes a record: the instance made in the same function (no
    `__init__` call, no keyword dictionary, no phase check: the phase must be one of `PHASES`)
    and every column stored at once, those in `given` from an expression of the parameters
    (`{"node": "recorder.node"}`), the others from their default, and the phase from `phase`
    (a parameter's name, or a literal such as `"'connecting'"`). What the gateway calls per
    connection: about half of `ConnRecord(...)` and the stores after it. A recorder's own
    makers (`Recorder.begin_client`) are made with it rather than calling a shared maker: one
    Python call (~500 instructions) less per connection.

    `owing_idle` (for records whose owner times its requests with `request_done`, and
    `idle_s` and `active_s` not in `given`): while the record is idle, `request_done` adds
    each span to `active_s` only, and `idle_s` takes the sum off at once when the record
    first leaves the idle phase (or an active one) or ends. The same value as taking each
    span off as it comes: from 0.0, subtracting the spans one by one gives exactly minus
    their sum added one by one, rounding to nearest being symmetric. An attribute update
    (~300 instructions) less per request and record."""
    namespace: dict[str, Any] = {"new": object.__new__, "ConnRecord": ConnRecord}
    exec(f"def {name}({params}):\n    self = new(ConnRecord)\n"
         + _stores(given, phase, owing_idle) + "    return self\n", namespace)
    function: Callable[..., ConnRecord] = namespace[name]
    return function


def _compile_requests_done() -> Callable[
        [ConnRecord, ConnRecord, float, float, float, str, bool, int, int], None]:
    """`requests_done`: `_REQUEST_DONE` for the client's record, then for the upstream's."""
    namespace: dict[str, Any] = {}
    exec("def requests_done(client, upstream, start, busy_at, end, class_name, degraded, "
         "status, upstream_status):\n"
         + _request_done_body("client", "start", "status")
         + _request_done_body("upstream", "busy_at", "upstream_status"), namespace)
    function: Callable[[ConnRecord, ConnRecord, float, float, float, str, bool, int, int],
                       None] = namespace["requests_done"]
    return function


#: `requests_done(client, upstream, start, busy_at, end, class_name, degraded, status,
#: upstream_status)` is `client.request_done(start, end, class_name, degraded, status)` and
#: `upstream.request_done(busy_at, end, class_name, degraded, upstream_status)` in one call:
#: what the gateway runs when an upstream answer ends a client's request, the two records'
#: updates at the same moment. A Python call (~500 instructions) less per proxied request.
requests_done = _compile_requests_done()


#: Most items CPython's compiler puts in one tuple display (its `STACK_USE_GUIDELINE`): past it,
#: a display is built as a list, one LIST_APPEND per item, and then converted.
_TUPLE_DISPLAY_MAX = 30


def _compile_row_of() -> Callable[[ConnRecord], Row]:
    """`ConnRecord.row`'s tuple as one expression of plain attribute loads, generated from
    `FIELDS`: a third of the cost of an `attrgetter` of 41 names, once per connection. Written
    as tuples of at most `_TUPLE_DISPLAY_MAX` items joined by `+`, not one display of 41: that
    one is a list filled item by item, ~1,400 instructions more per record (callgrind)."""
    chunks = [FIELD_NAMES[i:i + _TUPLE_DISPLAY_MAX]
              for i in range(0, len(FIELD_NAMES), _TUPLE_DISPLAY_MAX)]
    items = " + ".join("(" + "".join(f"rec.{name}, " for name in chunk) + ")"
                       for chunk in chunks)
    namespace: dict[str, Any] = {}
    exec(f"def row_of(rec):\n    return {items}\n", {}, namespace)
    function: Callable[[ConnRecord], Row] = namespace["row_of"]
    return function


_init = _compile_init()
#: `row_of(rec)` is `rec.row()` without the method call: what the process writer runs per record.
row_of = _compile_row_of()


def fields_markdown() -> str:
    """The record's fields as a Markdown table, for docs/telemetry.md (a test keeps it there)."""
    lines = ["| column | type | unit | since | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        doc = f.doc.replace("|", "\\|")
        lines.append(f"| `{f.name}` | {f.type} | {f.unit or '-'} | v{f.since} | {doc} |")
    return "\n".join(lines)
