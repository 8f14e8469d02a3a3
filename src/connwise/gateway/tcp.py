"""The `tcp` listener: admit a client connection by class, pick a backend, relay bytes.

A client is admitted through its group's core `Scheduler` (capacity = the group's
`max_in_flight` connections, reserved shares and max waits per class) and its degradation
ladder, by the admission rule the http listener and the simulator share
(`DegradeLadder.takes_free_slot` and `sheds`). A client that must wait keeps its socket open
with reading paused; one that times out, or that the shed step refuses, is closed. The upstream
connect is retried on another backend when it fails.
With SNI routing the first bytes (the TLS ClientHello) pick the group; TLS is not terminated.
"""

from __future__ import annotations

import _socket
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from connwise.core.cqi import ClassState, Opening
from connwise.core.degrade import QUEUE, SHED
from connwise.core.scheduler import Waiter
from connwise.core.zombies import peer_lost
from connwise.gateway.relay import FREE_FLAG, RelayHalf
from connwise.gateway.sni import SniResult, read_sni

if TYPE_CHECKING:
    from connwise.gateway.runtime import Gateway, Listener
    from connwise.gateway.upstreams import Backend, Group
    from connwise.telemetry.record import ConnRecord


#: `_flags` bits: admitted (holds a slot of its group), from the grant to the end; the upstream
#: connect in flight passed its deadline (`connect_timeout`), until `_connect` has seen it.
_ADMITTED = FREE_FLAG
_CONNECT_EXPIRED = FREE_FLAG << 1


class TcpClient(RelayHalf):
    """A client connection of a tcp listener; the upstream half is a plain RelayHalf.

    Memory: most relays sit idle for long, so a client holds no more than it must (18 slots,
    176 bytes; its upstream half 8, 96 bytes): each half's flags in one int and its rarely used
    state aside, the gateway through its listener, the admission class from its CQI opening,
    TCP_INFO through its transport, the ClientHello in the early bytes, one slot for what it
    waits on while it is set up, and the shared CQI opening until it has a class state of its
    own.
    """

    __slots__ = (
        "_cqi",
        "_pending",
        "_timer",
        "backend",
        "client_ip",
        "conn_id",
        "group",
        "listener",
        "opened_at",
        "record",
    )

    def __init__(self, listener: Listener, sock: _socket.socket, peer: Any) -> None:
        super().__init__(clock=listener.gateway.clock.now)
        self.listener = listener
        self.group: Group | None = None
        self.backend: Backend | None = None
        self.conn_id = 0
        # Interned: connections from one address share the string (and the per-IP key).
        self.client_ip = sys.intern(peer[0]) if peer else ""
        self.opened_at = 0.0
        #: What it waits on while it is set up: its admission `Waiter` while queued, then the
        #: task connecting upstream (a client that goes away cancels either); None otherwise.
        self._pending: Waiter | asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.record: ConnRecord | None = None
        #: The CQI state: the listener's shared `Opening` while the connection is quiet (no
        #: bytes moved, no class change), its own `ClassState` from then on.
        self._cqi: ClassState | Opening | None = None

    @property
    def gateway(self) -> Gateway:
        return self.listener.gateway

    @property
    def class_name(self) -> str:
        """The class it was admitted in, which holds its slot whatever its class becomes: its
        CQI opening's (the listener's class until it has one)."""
        cqi = self._cqi
        if cqi is None:
            return self.listener.config.class_name
        return (cqi if isinstance(cqi, Opening) else cqi.opening).class_name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        gateway = self.gateway
        self.opened_at = self.last_active  # one float for both (an idle relay holds it)
        if not gateway.client_opened(self):
            self.abort()
            return
        self._cqi = gateway.cqi.opening(base_class=self.listener.config.class_name,
                                        protocol="tcp")
        if gateway.recorder is not None:
            rec = self.record = gateway.recorder.begin_client(
                str(self.conn_id), self.listener.name, self.opened_at, "queued",
                self.client_ip, gateway.segments.region_of_address(self.client_ip))
            rec.class_name = self.class_name
        if self.listener.config.sni:
            # Wait for the ClientHello in data_received, as long as an http listener waits for
            # a request head: a client that connects and says nothing is closed.
            self._timer = asyncio.get_running_loop().call_later(
                gateway.limits.header_timeout, self._hello_expired)
            return
        self._route(self.listener.config.group)

    def _hello_expired(self) -> None:
        self._timer = None
        if self.group is None:
            self.gateway.count("sni_timeout")
            self.abort()

    def _before_peer(self, data: bytes) -> None:
        """Before the upstream exists: with SNI routing, collect the ClientHello (kept with the
        early bytes, for the upstream) and route by it (the relay's hot path never comes here
        once the upstream is joined)."""
        super()._before_peer(data)
        aside = self._aside
        if self.group is None and not self.closed and aside is not None and aside.early:
            hello = b"".join(aside.early)
            result, name = read_sni(hello)
            if result is SniResult.NEED_MORE and len(hello) < 16_384:
                return
            self._route_by_hello(name)

    def eof_received(self) -> bool:
        """The client half-closed. Waiting for its ClientHello, no more of it will come: it is
        routed by what came (no server name: the listener's group) rather than held until
        `header_timeout`; the EOF follows its bytes upstream."""
        keep_open = super().eof_received()
        if self.group is None and self.listener.config.sni and not self.closed:
            self._route_by_hello(None)
        return keep_open

    def _route_by_hello(self, name: str | None) -> None:
        """Route by the server name read from the ClientHello (None: none, or no ClientHello);
        the bytes it came in stay with the early bytes, for the upstream."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        group = self.listener.config.sni.get(name or "", self.listener.config.group)
        if group is None:
            self.gateway.count("sni_unrouted")
            self.abort()
            return
        self._route(group)

    # -- admission ----------------------------------------------------------------------------

    def _route(self, group_name: str | None) -> None:
        """Admit the connection through its group's ladder and scheduler by the core's rule
        (`DegradeLadder.takes_free_slot` and `sheds`), the one the http listener and the
        simulator apply: a free slot serves it at once unless the ladder queues its class (at
        the shed step, only while nobody waits); otherwise it is closed (shed) or queued."""
        assert group_name is not None
        group = self.gateway.groups[group_name]
        self.group = group
        ladder = group.admission
        scheduler = group.scheduler
        class_name = self.class_name
        # Both halves read it, and it follows the class's ladder for the relay's whole life.
        self.throttle = group.relay_throttle(class_name, _throttle_started)
        if ladder.takes_free_slot(class_name, scheduler) and scheduler.try_admit(class_name):
            self._granted()
            return
        if ladder.sheds(class_name, scheduler):
            self.gateway.count_class("shed", class_name)
            ladder.record(class_name, SHED)
            if self.record is not None:
                self.record.degradations += 1
            self.abort()
            return
        now = self.gateway.clock.now()
        try:
            waiter = scheduler.submit(class_name, now, token=self)
        except Exception:
            self.gateway.count_class("shed", class_name)
            self.abort()
            return
        if ladder.should_queue(class_name):  # counted once queued: a full queue refuses it
            ladder.record(class_name, QUEUE)
            if self.record is not None:
                self.record.degradations += 1
        self._pending = waiter
        self.gateway.count_class("queued", self.class_name)
        for victim in scheduler.take_displaced():
            self.gateway.count_class("displaced", victim.class_name)
            victim.token.displaced()
        if self.transport is not None:
            self.transport.pause_reading()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(waiter.deadline - now, self._expired)
        group.contended(now)
        group.grant_free(now)  # a slot free now is its own now (`granted`), not at a release

    def follow_class(self, class_name: str) -> None:
        """The connection's class changed (an escalation, a reclassification): both halves read
        the new class's throttle step from the next chunk on. The admission slot stays with the
        class it was taken in (`class_name`), which gives it back. Its record counts the
        change."""
        rec = self.record
        if rec is not None and class_name != rec.class_name:
            rec.class_changes += 1
            rec.class_name = class_name
        group = self.group
        if group is None or self.throttle is None or class_name not in group.admission.classes:
            return
        step = self.throttle = group.relay_throttle(class_name, _throttle_started)
        if self.peer is not None:
            self.peer.throttle = step

    # -- CQI ------------------------------------------------------------------------------------

    @property
    def class_state(self) -> ClassState | None:
        """The connection's own CQI state, made (as if fed all along) the first time it is
        asked for: a quiet connection holds only its listener's shared opening until then."""
        cqi = self._cqi
        if isinstance(cqi, Opening):
            cqi = self._cqi = self._quiet_state(cqi)
        return cqi

    def _quiet_state(self, opening: Opening) -> ClassState:
        return opening.state(self.conn_id, self.opened_at, self.gateway.cqi_fed_at)

    def cqi_to_feed(self, now: float) -> ClassState | None:
        """The state to feed this connection's byte count at `now` (`Gateway.observe_resources`).
        None while it is quiet and its age does not move its class: nothing would change, and
        an idle relay keeps no state of its own (~150 bytes)."""
        cqi = self._cqi
        if (isinstance(cqi, Opening) and self.bytes_total() == 0
                and not cqi.moves(self.opened_at, now)):
            return None
        return self.class_state

    def bytes_total(self) -> int:
        return self.bytes_in + (self.peer.bytes_in if self.peer is not None else 0)

    def idle_since(self) -> float | None:
        """When bytes last moved either way; None while the gateway holds the connection up
        itself (queued for admission, connecting upstream): the zombie watch's input."""
        peer = self.peer
        if peer is not None:
            return max(self.last_active, peer.last_active)
        if self._pending is not None or self._flags & _ADMITTED:
            return None
        return self.last_active  # waiting for a ClientHello that does not come

    def reclaim(self) -> None:
        """The zombie watch closes this relay: both sides, reset. A close would first flush
        what is buffered for a side, and a relay is often silent because one side stopped
        reading: that flush never ends, and the relay would keep its slot for good."""
        if self.peer is not None:
            self.peer.abort()
        self.abort()

    def describe(self, now: float) -> dict[str, Any]:
        upstream = self.peer
        cqi = self._cqi
        return {"id": self.conn_id, "kind": "tcp", "state": self.state(),
                "listener": self.listener.name,
                "client": self.client_ip, "age": round(now - self.opened_at, 3),
                "bytes_in": self.bytes_in, "bytes_out": upstream.bytes_in if upstream else 0,
                "backend": self.backend.name if self.backend else None,
                # The effective class (an escalation may have moved it since admission, whose
                # class keeps the slot), as for http connections.
                "class": cqi.class_name if cqi is not None else self.class_name,
                "admitted": bool(self._flags & _ADMITTED),
                "throttled": self.throttle is not None and self.throttle.active,
                # A quiet connection's state is made for the answer, not kept.
                "why": (self._quiet_state(cqi) if isinstance(cqi, Opening) else cqi).explain(now)
                if cqi is not None else None}

    def state(self) -> str:
        """`queued` until admitted (waiting for the ClientHello or a slot), then `active`
        (connecting upstream, then relaying)."""
        return "active" if self._flags & _ADMITTED else "queued"

    def metric_labels(self) -> tuple[str, str, str, str, str]:
        """(listener, kind, state, class, backend) for `connwise_connections`."""
        return (self.listener.name, "tcp", self.state(), self.class_name,
                self.backend.name if self.backend else "")

    def granted(self) -> bool:
        """Called by the group when a slot is handed to this waiter; False refuses it."""
        if self.closed:
            return False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = None
        self._granted()
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        return True

    def displaced(self) -> None:
        """A higher class took this waiter's place in a full queue: close."""
        self._pending = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.gateway.count_class("shed", self.class_name)
        self.abort()

    def _expired(self) -> None:
        """The class's max wait is over while still queued: close, counted as `shed`, as the
        http listener counts a request it answers 503 for the same reason."""
        self._timer = None
        waiter = self._pending
        if (isinstance(waiter, Waiter) and self.group is not None
                and self.group.scheduler.cancel(waiter)):
            self._pending = None
            self.gateway.count_class("shed", self.class_name)
            self.abort()

    def _granted(self) -> None:
        self._flags |= _ADMITTED
        assert self.group is not None
        if self.record is not None:  # admitted: from now on, the upstream connect
            self.record.phase("connecting", self.gateway.clock.now())
        self._pending = self.gateway.spawn(self._connect(self.group))

    async def _connect(self, group: Group) -> None:
        """Connect to a backend of `group` (another one on failure) and join the relay. A
        client that goes away meanwhile cancels this (`connection_lost`): the pending connect
        ends with it rather than at `connect_timeout`, and nothing is retried or counted for
        a client that is gone."""
        # A tuple, not a set: a burst of connects holds one each while it connects, and a
        # retry is rare (56 bytes for one name against a set's 216).
        tried: tuple[str, ...] = ()
        deadlines = group.connect_deadlines
        for _ in range(group.retries + 1):
            backend = group.pick(self.client_ip, self.client_ip, exclude=tried)
            if backend is None:
                break
            tried = (*tried, backend.name)
            started = self.gateway.clock.now()
            upstream = RelayHalf(clock=self.clock, now=started)
            backend.outstanding += 1
            # The group's deadlines, not an asyncio.timeout per connect (see `FifoDeadlines`).
            deadlines.add(self._connect_expired)
            try:
                await asyncio.get_running_loop().create_connection(
                    upstream.itself, backend.host, backend.port)
            except OSError as exc:
                backend.outstanding -= 1
                group.connect_failed(backend, exc)
                continue
            except asyncio.CancelledError:
                backend.outstanding -= 1
                expired = self._flags & _CONNECT_EXPIRED
                self._flags &= ~_CONNECT_EXPIRED
                if not expired or self.closed:
                    raise  # the client went away, or the gateway drains
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                group.connect_failed(backend, TimeoutError(
                    f"no connection to {backend.name} within {deadlines.delay:g} s"))
                continue
            finally:
                deadlines.discard(self._connect_expired)
            self._pending = None
            group.connect_ok(backend)
            rec = self.record
            if rec is not None:
                now = self.gateway.clock.now()
                rec.backend = backend.name
                rec.upstream_connect_s = now - started
                rec.phase("active", now)
                rec.use(now)
            self.backend = backend
            upstream.throttle = self.throttle
            upstream.join(self)
            self.join(upstream)
            return
        self._pending = None
        self.gateway.count("upstream_unavailable")
        self.abort()

    def _connect_expired(self) -> None:
        """The upstream connect in flight passed `connect_timeout`: `_connect` sees its
        cancellation as a timeout, counts it and tries the next backend."""
        task = self._pending
        if isinstance(task, asyncio.Task) and not task.done():
            self._flags |= _CONNECT_EXPIRED
            task.cancel()

    # -- ending -------------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        super().connection_lost(exc)
        if was_closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, None
        if isinstance(pending, asyncio.Task):
            pending.cancel()
        group = self.group
        if group is not None:
            if isinstance(pending, Waiter):
                group.scheduler.cancel(pending)
            if self._flags & _ADMITTED:
                self._flags &= ~_ADMITTED
                if self.backend is not None:
                    self.backend.outstanding -= 1
                group.release(self.class_name)
        lost = peer_lost(exc)
        if lost:
            self.gateway.zombies.peer_lost(self)
        rec = self.record
        recorder = self.gateway.recorder
        if rec is not None and recorder is not None:
            self.record = None
            now = self.gateway.clock.now()
            self.gateway.tcp_info.sample(rec, self.transport, now - self.opened_at)
            rec.bytes_in = self.bytes_in
            rec.bytes_out = self.peer.bytes_in if self.peer is not None else 0
            reason = "half_open" if lost else "reset" if exc else (
                "closed" if self.backend else "refused")
            recorder.end(rec, now, reason,
                         failed=exc is not None or self.backend is None)
        self.gateway.client_closed(self)
        # The halves point at each other: a reference cycle that only the garbage collector
        # would free, with both transports and sockets, were this side to keep its peer.
        self.peer = None


def _throttle_started(half: RelayHalf) -> None:
    """A tcp relay's class cap was applied (once per stay on the throttle step): counted, and
    in the client's record."""
    client = half if isinstance(half, TcpClient) else half.peer
    if isinstance(client, TcpClient):
        client.gateway.count_class("throttle", client.class_name)
        if client.record is not None:
            client.record.degradations += 1
