"""Count WebSocket messages and read close codes from a relayed byte stream, without buffering;
and the bytes the gateway writes itself: a refusal with close 1013, and the close frames with
1001 that end a relay at the drain timeout.

After an upgrade the gateway relays bytes untouched; this tracker only walks the frame headers
(RFC 6455 section 5.2) as the bytes pass, skipping payloads by length, so it costs a few
operations per frame, keeps at most one partial header (14 bytes), and never copies a payload
except the 2-byte close code. It also says whether the stream stands between frames
(`at_boundary`), where the gateway's own close frame can go without corrupting one.

When admission refuses a WebSocket handshake (the shed step, a queue timeout), a 503 would reach
a browser as a bare error and close code 1006, the same as a broken server; so the gateway
completes the handshake itself and closes at once with 1013 (try again later), which a page's
`onclose` can read. `handshake_accept` says whether a request is a handshake the gateway can
complete, and `try_again_later` is the whole answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable

from connwise.core.degrade import WS_TRY_AGAIN_LATER

OP_CLOSE = 0x8
#: The close code of a WebSocket the gateway ends itself (drain timeout, zombie reclaim).
WS_GOING_AWAY = 1001
#: RFC 6455 section 1.3: appended to the client's key before hashing.
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_value(key: bytes) -> bytes:
    """The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 4.2.2):
    it proves to the client that the server read its handshake."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def handshake_accept(method: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The accept value if `method` and `headers` make a valid WebSocket opening handshake
    (RFC 6455 4.2.1: GET, `Upgrade: websocket`, a key that is 16 base64-encoded bytes,
    version 13), else None: whatever is not a handshake a client could complete is better
    answered in plain HTTP. The `Connection: Upgrade` token is the caller's to check (httptools
    reports it as the request's upgrade flag)."""
    if method != b"GET":
        return None
    upgrade = key = version = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"upgrade":
            upgrade = value
        elif lower == b"sec-websocket-key":
            key = value.strip()
        elif lower == b"sec-websocket-version":
            version = value.strip()
    if (upgrade is None or b"websocket" not in
            (token.strip().lower() for token in upgrade.split(b","))):
        return None
    if version != b"13" or key is None:
        return None
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    return accept_value(key)


def close_frame(code: int, reason: str = "", *, mask: bytes = b"") -> bytes:
    """A close frame (RFC 6455 5.5.1): unmasked, as a server sends it, or masked with the
    4-byte `mask`, as a client must send it (5.3), for the gateway's close toward a backend.
    The reason must fit a control frame's 125 bytes with the code."""
    payload = code.to_bytes(2, "big") + reason.encode()
    if len(payload) > 125:
        raise ValueError(f"close reason of {len(reason)} characters: a control frame's payload "
                         "holds at most 125 bytes; shorten the reason")
    if not mask:
        return bytes((0x80 | OP_CLOSE, len(payload))) + payload
    return (bytes((0x80 | OP_CLOSE, 0x80 | len(payload))) + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


#: The close frame of a refused handshake (precomputed: it never changes).
CLOSE_TRY_AGAIN_LATER = close_frame(WS_TRY_AGAIN_LATER, "try again later")
#: The close frame a WebSocket gets toward its client at the drain timeout (1001, going away).
CLOSE_GOING_AWAY = close_frame(WS_GOING_AWAY)


def try_again_later(accept: bytes, retry_after: int) -> bytes:
    """The answer to a refused WebSocket handshake: `101 Switching Protocols`, then a close
    frame with code 1013. `Retry-After` rides along on the 101 for clients that can read the
    handshake's headers (a browser cannot; it reads the close code)."""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nRetry-After: %d\r\n\r\n%s"
            % (accept, retry_after, CLOSE_TRY_AGAIN_LATER))


class FrameTracker:
    """Feed it every chunk of one direction; read `messages`, `frames` and `close_code`.

    A frame header, and a close frame's code, may arrive split at any byte across chunks: the
    partial header (at most 14 bytes) or code (2) is kept until the rest comes. A client's
    frames are masked (RFC 6455 5.3), so its close code is unmasked with the frame's key."""

    __slots__ = ("_code", "_header", "_mask", "_remaining", "close_code", "frames", "messages")

    def __init__(self) -> None:
        self.frames = 0
        self.messages = 0
        self.close_code: int | None = None
        self._header = b""
        self._remaining = 0
        #: The close code's bytes read so far, while a close frame's first two payload bytes
        #: pass; None otherwise.
        self._code: bytes | None = None
        #: The masking key of that close frame (empty: unmasked).
        self._mask = b""

    @property
    def at_boundary(self) -> bool:
        """Whether the bytes fed so far end a frame: a frame the gateway writes itself into
        this direction now cannot land inside one the relay is forwarding."""
        return not self._remaining and not self._header

    def feed(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            if self._remaining:
                take = min(self._remaining, size - pos)
                if self._code is not None:
                    self._read_code(data[pos:pos + take])
                pos += take
                self._remaining -= take
                continue
            header = self._header + data[pos:pos + 14]
            parsed = _parse_header(header)
            if parsed is None:
                self._header = header
                return
            used, fin, opcode, length, mask = parsed
            pos += used - len(self._header)
            self._header = b""
            self.frames += 1
            if fin and opcode not in {9, 10}:
                self.messages += 1
            self._remaining = length
            if opcode == OP_CLOSE and length >= 2:
                self._code = b""
                self._mask = mask

    def _read_code(self, payload: bytes) -> None:
        """Take the close code's bytes from the start of `payload` (what of the close frame's
        payload this chunk holds); once both came, unmask them and set `close_code`."""
        assert self._code is not None
        code = self._code + payload[:2 - len(self._code)]
        if len(code) < 2:
            self._code = code
            return
        self._code = None
        mask = self._mask
        if mask:
            code = bytes((code[0] ^ mask[0], code[1] ^ mask[1]))
        self.close_code = int.from_bytes(code, "big")


def _parse_header(buf: bytes) -> tuple[int, bool, int, int, bytes] | None:
    """(header length, FIN, opcode, payload length, masking key or b"") of the frame header at
    the start of `buf`, or None if `buf` holds only part of it."""
    if len(buf) < 2:
        return None
    fin = bool(buf[0] & 0x80)
    opcode = buf[0] & 0x0F
    masked = bool(buf[1] & 0x80)
    length = buf[1] & 0x7F
    used = 2
    if length == 126:
        if len(buf) < 4:
            return None
        length = int.from_bytes(buf[2:4], "big")
        used = 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length = int.from_bytes(buf[2:10], "big")
        used = 10
    if not masked:
        return used, fin, opcode, length, b""
    if len(buf) < used + 4:
        return None
    return used + 4, fin, opcode, length, buf[used:used + 4]
