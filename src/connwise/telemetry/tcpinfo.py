"""TCP_INFO samples on Linux: RTT and retransmits for the record, half-open hints for zombies.

`getsockopt(IPPROTO_TCP, TCP_INFO)` costs one system call and returns the kernel's view of a
connection: its state, smoothed RTT, retransmissions and how long since data last moved. The
gateway samples each client connection once, as it ends (`sample_into`: the socket is still
open while the protocol's `connection_lost` runs, and the end is when the retransmission count
is complete), and fills `rtt_ms` and `retransmits` of its record. That runs once per connection
on the data plane, so it reads the two fields it needs straight out of the buffer, from the
socket object the accept loop got (asking a uvloop transport for its socket builds a new
wrapper object: 3.4 us, more than the system call). Even so the system call on a closing socket
costs about as much as the rest of the record (py-spy: 3.7% of the gateway's CPU under
`Connection: close` load against 4.3% for everything else telemetry does), so `TcpInfoSampler`
reads it at the end of every connection that lived a second or more, where RTT and
retransmissions matter and the cost is spread over the connection's traffic, and of every
`every`-th shorter one, which is plenty for the RTT distributions of the assessment. HAProxy and
nginx read TCP_INFO only when a log format asks for it; `core.zombies.looks_half_open`
reads the same fields. On other systems `read_tcp_info` returns None and those columns stay
NULL.
"""

from __future__ import annotations

import _socket
import asyncio
import socket
import struct
import sys
from dataclasses import dataclass

from connwise.core.zombies import looks_half_open
from connwise.telemetry.record import ConnRecord

# struct tcp_info from include/uapi/linux/tcp.h, up to tcpi_total_retrans: 8 one-byte fields,
# then 24 unsigned 32-bit ones. Later kernels append fields; a prefix read is stable.
_FORMAT = "8B24I"
_SIZE = struct.calcsize(_FORMAT)
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
#: tcpi_rtt (microseconds) and tcpi_total_retrans only, at their offsets in the same struct.
_RTT_RETRANS = struct.Struct("=68xI28xI")
_LINUX = sys.platform.startswith("linux")


@dataclass(frozen=True, slots=True)
class TcpInfo:
    state: int
    retransmits: int
    probes: int
    backoff: int
    unacked: int
    lost: int
    #: Milliseconds since data was last received.
    last_data_recv_ms: int
    rtt_ms: float
    rttvar_ms: float
    total_retrans: int

    @property
    def half_open(self) -> bool:
        return looks_half_open(tcp_state=self.state, unacked=self.unacked, backoff=self.backoff)


def sample_into(rec: ConnRecord, sock: _socket.socket | None) -> None:
    """Fill `rec.rtt_ms` and `rec.retransmits` from `sock`'s TCP_INFO, if it can say (Linux,
    socket still open); otherwise they stay NULL."""
    if sock is None or not _LINUX:
        return
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _RTT_RETRANS.size)
    except OSError:
        return
    if len(raw) == _RTT_RETRANS.size:
        rtt_us, rec.retransmits = _RTT_RETRANS.unpack(raw)
        rec.rtt_ms = rtt_us / 1000.0


class TcpInfoSampler:
    """Decides which connection ends read TCP_INFO; see the module docstring.

    `every` = 1 reads every connection, 0 none; `long_s` is the age from which a connection is
    always read. A plain counter, not a random draw: the data plane pays one increment.
    """

    __slots__ = ("_count", "every", "long_s")

    def __init__(self, every: int, long_s: float = 1.0) -> None:
        if every < 0:
            raise ValueError(f"every={every!r}: use 1 to read every connection, 0 for none")
        self.every = every
        self.long_s = long_s
        self._count = 0

    def sample(self, rec: ConnRecord, transport: asyncio.BaseTransport | None,
               age: float) -> None:
        """At the end of a connection `age` seconds old: fill `rec`'s TCP_INFO columns, from
        the socket of its `transport` (still open in `connection_lost`), if it is one to read.
        The socket is asked of the transport only then: a connection keeps no reference of its
        own to it (8 bytes each), and uvloop makes its socket object on demand."""
        if age < self.long_s:
            # The common case (a short connection, not its turn) in as few steps as it takes:
            # this runs at every connection's end. With `every` = 0 no count is ever under it.
            count = self._count + 1
            if count < self.every:
                self._count = count
                return
            self._count = 0
        if self.every:
            sample_into(rec, transport.get_extra_info("socket") if transport is not None
                        else None)


def read_tcp_info(sock: _socket.socket) -> TcpInfo | None:
    """The kernel's TCP_INFO for `sock`, or None off Linux or if the socket is closed."""
    if not _LINUX:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _SIZE)
    except OSError:
        return None
    if len(raw) < _SIZE:
        return None
    f = struct.unpack(_FORMAT, raw[:_SIZE])
    # Byte fields: state, ca_state, retransmits, probes, backoff, options, wscale, rate flags.
    # Word fields from index 8: rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans,
    # fackets, last_data_sent, last_ack_sent, last_data_recv, last_ack_recv, pmtu,
    # rcv_ssthresh, rtt, rttvar, snd_ssthresh, snd_cwnd, advmss, reordering, rcv_rtt,
    # rcv_space, total_retrans.
    return TcpInfo(state=f[0], retransmits=f[2], probes=f[3], backoff=f[4], unacked=f[12],
                   lost=f[14], last_data_recv_ms=f[19], rtt_ms=f[23] / 1000.0,
                   rttvar_ms=f[24] / 1000.0, total_retrans=f[31])
