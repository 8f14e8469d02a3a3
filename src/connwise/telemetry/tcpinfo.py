"""TCP_INFO samples on Linux: RTT and retransmits for the record, half-open hints for zombies.

`getsockopt(IPPROTO_TCP, TCP_INFO)` costs one system call and returns the kernel's view of a
connection: its state, smoothed RTT, retransmissions and how long since data last moved. The
gateway samples each client connection once, as it ends (`sample_into`: the socket is still
open while the protocol's `connection_lost` runs, and the end is when the retransmission count
is complete), and fills `rtt_ms` and `retransmits` of its record; `core.zombies.looks_half_open`
reads the same fields. On other systems `read_tcp_info` returns None and those columns stay
NULL.
"""

from __future__ import annotations

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


def sample_into(rec: ConnRecord, transport: asyncio.BaseTransport | None) -> None:
    """Fill `rec.rtt_ms` and `rec.retransmits` from the transport's socket, if it can say."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    info = read_tcp_info(sock) if sock is not None else None
    if info is not None:
        rec.rtt_ms = info.rtt_ms
        rec.retransmits = info.total_retrans


def read_tcp_info(sock: socket.socket) -> TcpInfo | None:
    """The kernel's TCP_INFO for `sock`, or None off Linux or if the socket is closed."""
    if not sys.platform.startswith("linux"):
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
