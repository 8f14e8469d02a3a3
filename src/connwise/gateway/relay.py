"""The L4 byte relay: two `asyncio.Protocol` halves joined back to back.

Hot path: `data_received` writes straight into the peer's transport; no copy, no formatting, no
per-chunk allocation beyond the counter updates and the `last_active` timestamp (one clock read,
what the zombie watch judges idleness by). Backpressure is the transports' own: when the
peer's write buffer passes its high-water mark the peer's `pause_writing` pauses *our* reading,
and `resume_writing` resumes it, so a slow reader on one side slows the writer on the other
instead of growing a buffer.

The throttle step of the degradation ladder: every relay of a class reads one shared
`ThrottleStep`, which holds the class's live ladder state (`ClassDegrade`). While the class
stands at `throttle` or above, a token bucket (a `RelayBucket`, made by the first chunk of the
stay and shared by both halves) caps the relay's bytes, both directions together, at the
ladder's `throttle_rate`; a chunk that overdraws it pauses reading on the side it came from for
exactly the time the debt takes to repay. The ladder's state is read on every chunk, so a
long-lived relay is throttled when its class climbs to the step and released when it descends;
off the step a chunk costs two attribute reads.

A WebSocket (an `http` listener's upgraded connection, relayed by the HTTP client and its
upstream connection rather than by two halves) is capped the same way by a `RelayThrottle`,
which also follows its connection's class when an escalation or a reclassification changes it.

Half-close is relayed (`write_eof`), so protocols that shut down one direction (HTTP/1.0
clients, `nc -N`) work; once both directions are shut down both sides close, and a reset on
either side closes both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from connwise.core.degrade import THROTTLE, ClassDegrade, DegradeLadder
from connwise.core.ratelimit import TokenBucket
from connwise.errors import UnknownClass

if TYPE_CHECKING:
    from connwise.gateway.http import HttpClient
    from connwise.gateway.upstream_http import UpstreamConnection

#: Bytes a client may send before its upstream is connected; past it, reading pauses.
EARLY_DATA_LIMIT = 256 * 1024

#: Bits of `RelayHalf._flags`: a half's booleans share one int (a slot each would cost 8 bytes
#: per half, and an idle relay is two halves). A subclass takes bits from `FREE_FLAG` up.
_CLOSED = 1
_EOF_IN = 2
_PAUSED_BY_PEER = 4
FREE_FLAG = 8


class ThrottleStep:
    """The throttle step of one class on one ladder, shared by every relay of the class: what a
    chunk reads to know whether the class stands on the step (`degrade.throttle_rate`). A relay
    holds no throttle state of its own until it is capped (a `RelayBucket` then), so an idle
    relay pays one slot per half for the feature, not an object.

    `started(half)` is called once per relay and stay of the class on the step, with the half
    whose chunk started the cap; the step records it on the ladder itself.
    """

    __slots__ = ("burst", "degrade", "ladder", "started")

    def __init__(self, ladder: DegradeLadder, class_name: str,
                 started: Callable[[RelayHalf], None]) -> None:
        self.ladder = ladder
        #: The class's live ladder state: its `throttle_rate` is read on every chunk.
        self.degrade: ClassDegrade = ladder.state(class_name)
        self.burst = ladder.config.throttle_burst
        self.started = started

    @property
    def active(self) -> bool:
        """Whether the class stands on the throttle step now."""
        return self.degrade.throttle_rate is not None


class RelayBucket(TokenBucket):
    """One relay's cap, shared by its two halves, for one stay of its class on the step."""

    __slots__ = ("episode",)

    def __init__(self, rate: float, burst: float, now: float, episode: int) -> None:
        super().__init__(rate, burst, now)
        #: `ClassDegrade.entered[THROTTLE]` when it was made: a later entry of the step is a new
        #: stay, which starts from a full bucket and is counted again.
        self.episode = episode


class RelayThrottle:
    """The throttle step on one WebSocket relay (tcp relays read a `ThrottleStep`).

    While the class's ladder stands at `throttle` or above, one `TokenBucket` caps the relay's
    bytes, both directions together, at the ladder's `throttle_rate`: a chunk that overdraws it
    pauses reading on the side it came from for exactly the time the debt takes to repay. The
    rate is read from the ladder on every chunk, so a long-lived WebSocket is throttled when its
    class becomes contended and released when it no longer is; unthrottled, a chunk costs one
    attribute read. When the connection's class changes, the gateway calls `follow` (once per
    change, never per chunk).
    """

    __slots__ = ("bucket", "client", "client_timer", "degrade", "ladder", "upstream",
                 "upstream_timer")

    def __init__(self, client: HttpClient, upstream: UpstreamConnection, ladder: DegradeLadder,
                 class_name: str) -> None:
        self.client = client
        self.upstream = upstream
        self.ladder = ladder
        self.degrade: ClassDegrade = ladder.state(class_name)
        self.bucket: TokenBucket | None = None
        self.client_timer: asyncio.TimerHandle | None = None
        self.upstream_timer: asyncio.TimerHandle | None = None

    def client_sent(self, n: int) -> None:
        delay = self._take(n)
        transport = self.client.transport
        if delay > 0 and self.client_timer is None and transport is not None:
            transport.pause_reading()
            self.client_timer = asyncio.get_running_loop().call_later(delay,
                                                                      self._resume_client)

    def upstream_sent(self, n: int) -> None:
        delay = self._take(n)
        transport = self.upstream.transport
        if delay > 0 and self.upstream_timer is None and transport is not None:
            transport.pause_reading()
            self.upstream_timer = asyncio.get_running_loop().call_later(delay,
                                                                        self._resume_upstream)

    def _take(self, n: int) -> float:
        rate = self.degrade.throttle_rate
        bucket = self.bucket
        if rate is None:
            self.bucket = None  # the class left the throttle step: lift the cap
            return 0.0
        client = self.client
        now = client.gateway.clock.now()
        if bucket is None:
            bucket = self.bucket = TokenBucket(rate, self.ladder.config.throttle_burst, now)
            client.gateway.count_class("throttle", self.degrade.name)
            self.ladder.record(self.degrade.name, 1)
            if client.record is not None:
                client.record.degradations += 1
        elif bucket.rate != rate:
            bucket.set_rate(rate, now)
        return bucket.take(n, now)

    def _resume_client(self) -> None:
        self.client_timer = None
        self.resume_client()

    def resume_client(self) -> None:
        """Read the client again, unless its debt (a pending timer) or the upstream's
        backpressure (`UpstreamConnection.pause_writing`) still holds it."""
        client = self.client
        if (client.transport is not None and not client.closed and self.client_timer is None
                and not self.upstream._write_paused):
            client.transport.resume_reading()

    def _resume_upstream(self) -> None:
        self.upstream_timer = None
        upstream = self.upstream
        if (upstream.transport is not None and not upstream.closed
                and not self.client._write_paused):
            upstream.transport.resume_reading()

    def follow(self, class_name: str) -> None:
        """The connection's class changed (an escalation, a reclassification): from the next
        chunk on, the relay is capped by the new class's ladder step. A pause the old class's
        debt imposed ends now, and a new cap starts with a full bucket. A class the relay's
        ladder does not know (a reload changed the classes) leaves the throttle as it is."""
        if class_name == self.degrade.name:
            return
        try:
            self.degrade = self.ladder.state(class_name)
        except UnknownClass:
            return
        self.bucket = None
        if self.client_timer is not None:
            self.client_timer.cancel()
            self._resume_client()
        if self.upstream_timer is not None:
            self.upstream_timer.cancel()
            self._resume_upstream()

    def cancel(self) -> None:
        for timer in (self.client_timer, self.upstream_timer):
            if timer is not None:
                timer.cancel()
        self.client_timer = self.upstream_timer = None


class _Aside:
    """What a relay half holds only for a while, kept out of its own slots (8 bytes each, on
    every half of every idle relay): the bytes that came before its peer existed, then, once
    its class has stood on the throttle step, the relay's bucket and the timer of a pause."""

    __slots__ = ("bucket", "early", "pause")

    def __init__(self, early: list[bytes] | None = None) -> None:
        self.early = early
        #: The relay's cap for the class's current stay on the step (shared with the peer).
        self.bucket: RelayBucket | None = None
        #: Reading paused until the debt is repaid.
        self.pause: asyncio.TimerHandle | None = None


class RelayHalf(asyncio.Protocol):
    """One side of a relay. `peer` is the other side, set once both are connected."""

    __slots__ = (
        "_aside",
        "_flags",
        "bytes_in",
        "clock",
        "last_active",
        "peer",
        "throttle",
        "transport",
    )

    def __init__(self, clock: Callable[[], float] | None = None, *,
                 now: float | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: RelayHalf | None = None
        self.bytes_in = 0
        #: _CLOSED, _EOF_IN (the half-close came in), _PAUSED_BY_PEER (the peer's buffer is
        #: full: only its `resume_writing` resumes reading), and a subclass's own.
        self._flags = 0
        #: The class's throttle step, shared with every relay of the class (None: never
        #: throttled).
        self.throttle: ThrottleStep | None = None
        #: The owner's clock (the gateway passes its own); monotonic time by default.
        self.clock: Callable[[], float] = clock or time.monotonic
        #: When bytes last arrived on this side (or it was created): the zombie watch's input.
        #: `now`, a reading the owner holds anyway, saves a float per idle relay half.
        self.last_active = self.clock() if now is None else now
        #: The early bytes, the throttle's bucket and pause (see `_Aside`); None on the common
        #: path: a relay joined at once and never throttled holds none.
        self._aside: _Aside | None = None

    @property
    def closed(self) -> bool:
        """Whether this side's connection is lost."""
        return bool(self._flags & _CLOSED)

    # -- joining ------------------------------------------------------------------------------

    def itself(self) -> RelayHalf:
        """This half: the protocol factory to connect it with (a bound method, where a closure
        would cost a function and its defaults per connect)."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def join(self, peer: RelayHalf) -> None:
        """Connect this half to `peer`, flush what arrived before the peer existed, and read
        again (reading paused at EARLY_DATA_LIMIT) unless that flush itself passed the peer's
        high-water mark: its `pause_writing` paused us, and only its `resume_writing` may
        resume us, or the peer's buffer would grow without bound."""
        self.peer = peer
        peer.peer = self
        aside = self._aside  # before the peer, it holds early bytes only
        if aside is not None and aside.early and peer.transport is not None:
            peer.transport.write(b"".join(aside.early))
        self._aside = None
        if self._flags & _EOF_IN:
            if peer.transport is not None and peer.transport.can_write_eof():
                peer.transport.write_eof()
        elif self.transport is not None and not self._flags & (_CLOSED | _PAUSED_BY_PEER):
            self.transport.resume_reading()

    # -- data ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """The hot path, once per chunk: count, stamp, write to the peer. Everything else (no
        peer yet, a throttled class) is a method call off this path, so a subclass hooks into
        `_before_peer` rather than overriding this."""
        self.bytes_in += len(data)
        self.last_active = self.clock()
        peer = self.peer
        if peer is None or peer.transport is None:
            self._before_peer(data)
            return
        peer.transport.write(data)
        throttle = self.throttle
        if throttle is not None and throttle.degrade.throttle_rate is not None:
            self._throttle(throttle, len(data))

    def _before_peer(self, data: bytes) -> None:
        """Keep bytes that arrive before the peer is connected (flushed by `join`); past
        EARLY_DATA_LIMIT, stop reading."""
        aside = self._aside
        if aside is None:
            aside = self._aside = _Aside([])
        early = aside.early
        if early is None:
            early = aside.early = []
        early.append(data)
        if sum(map(len, early)) > EARLY_DATA_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def _throttle(self, step: ThrottleStep, size: int) -> None:
        """The class stands on the throttle step: take `size` from the relay's bucket (made,
        for both halves, by the first chunk of each stay) and pause reading for any debt."""
        degrade = step.degrade
        rate = degrade.throttle_rate
        assert rate is not None
        now = self.last_active
        episode = degrade.entered[THROTTLE]
        aside = self._aside
        if aside is None:
            aside = self._aside = _Aside()
        bucket = aside.bucket
        if bucket is None or bucket.episode != episode:
            bucket = aside.bucket = RelayBucket(rate, step.burst, now, episode)
            peer = self.peer
            if peer is not None:
                if peer._aside is None:
                    peer._aside = _Aside()
                peer._aside.bucket = bucket
            step.ladder.record(degrade.name, THROTTLE)
            step.started(self)
        elif bucket.rate != rate:
            bucket.set_rate(rate, now)
        delay = bucket.take(size, now)
        if delay > 0 and self.transport is not None and aside.pause is None:
            self.transport.pause_reading()
            loop = asyncio.get_running_loop()
            aside.pause = loop.call_later(delay, self._unthrottle)

    def _throttle_paused(self) -> bool:
        """Whether reading is paused for the throttle's debt."""
        return self._aside is not None and self._aside.pause is not None

    def _unthrottle(self) -> None:
        if self._aside is not None:
            self._aside.pause = None
        if self.transport is not None and not self._flags & (_CLOSED | _PAUSED_BY_PEER):
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        """Relay the half-close. Once both sides have sent EOF the relay is over: returning
        False closes this side, and `connection_lost` closes the peer (after its buffer). An
        EOF that arrives before the peer exists is kept and forwarded by `join`."""
        self._flags |= _EOF_IN
        peer = self.peer
        if peer is None or peer.transport is None:
            return True
        if not peer.transport.can_write_eof():
            return False
        peer.transport.write_eof()
        return not peer._flags & _EOF_IN

    # -- backpressure from the peer -----------------------------------------------------------

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer._flags |= _PAUSED_BY_PEER
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer._flags &= ~_PAUSED_BY_PEER
            if not peer._throttle_paused() and not peer.closed:
                peer.transport.resume_reading()

    # -- ending -------------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if self._flags & _CLOSED:
            return
        self._flags |= _CLOSED
        if self._aside is not None and self._aside.pause is not None:
            self._aside.pause.cancel()
            self._aside.pause = None
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
