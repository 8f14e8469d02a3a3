"""Count WebSocket messages and read close codes from a relayed byte stream, without buffering.

After an upgrade the gateway relays bytes untouched; this tracker only walks the frame headers
(RFC 6455 section 5.2) as the bytes pass, skipping payloads by length, so it costs a few
operations per frame, keeps at most one partial header (14 bytes), and never copies a payload
except the 2-byte close code.
"""

from __future__ import annotations

OP_CLOSE = 0x8


class FrameTracker:
    """Feed it every chunk of one direction; read `messages`, `frames` and `close_code`."""

    __slots__ = ("_header", "_opcode", "_remaining", "_want_close_code", "close_code", "frames",
                 "messages")

    def __init__(self) -> None:
        self.frames = 0
        self.messages = 0
        self.close_code: int | None = None
        self._header = b""
        self._remaining = 0
        self._opcode = 0
        self._want_close_code = False

    def feed(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            if self._remaining:
                take = min(self._remaining, size - pos)
                if self._want_close_code:
                    self._header += data[pos:pos + min(take, 2 - len(self._header))]
                    if len(self._header) >= 2:
                        self.close_code = int.from_bytes(self._header[:2], "big")
                        self._want_close_code = False
                        self._header = b""
                pos += take
                self._remaining -= take
                continue
            header = self._header + data[pos:pos + 14]
            parsed = _parse_header(header)
            if parsed is None:
                self._header = header
                return
            used, fin, opcode, length, masked = parsed
            pos += used - len(self._header)
            self._header = b""
            self.frames += 1
            if opcode:
                self._opcode = opcode
            if fin and opcode not in {9, 10}:
                self.messages += 1
            self._remaining = length
            if opcode == OP_CLOSE and length >= 2 and not masked:
                self._want_close_code = True
            elif opcode == OP_CLOSE and length >= 2:
                # A client's close frame is masked: the code is XOR-ed, read it with the key.
                mask = header[used - 4:used]
                code = data[pos:pos + 2] if pos + 2 <= size else b""
                if len(code) == 2:
                    self.close_code = ((code[0] ^ mask[0]) << 8) | (code[1] ^ mask[1])


def _parse_header(buf: bytes) -> tuple[int, bool, int, int, bool] | None:
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
    if masked:
        if len(buf) < used + 4:
            return None
        used += 4
    return used, fin, opcode, length, masked
