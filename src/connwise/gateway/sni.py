"""Read the server name (SNI) from a TLS ClientHello without terminating TLS.

Only the first record is parsed, with bounds checked at every step: a malformed or partial hello
never raises, it answers NEED_MORE (wait for more bytes) or NONE (route by the listener's
default). RFC 8446 section 4.1.2 and RFC 6066 section 3 give the layout.
"""

from __future__ import annotations

import enum


class SniResult(enum.Enum):
    FOUND = "found"
    NONE = "none"
    NEED_MORE = "need_more"


def read_sni(data: bytes) -> tuple[SniResult, str | None]:
    """(FOUND, name), (NONE, None) when there is no SNI or no TLS, or (NEED_MORE, None)."""
    if len(data) < 5:
        return SniResult.NEED_MORE, None
    if data[0] != 0x16 or data[1] != 0x03:
        return SniResult.NONE, None
    record_len = int.from_bytes(data[3:5], "big")
    if len(data) < 5 + record_len:
        return SniResult.NEED_MORE, None
    hello = memoryview(data)[5:5 + record_len]
    if len(hello) < 4 or hello[0] != 0x01:
        return SniResult.NONE, None
    pos = 4 + 2 + 32  # handshake header, client version, random
    try:
        pos += 1 + hello[pos]  # session id
        pos += 2 + int.from_bytes(hello[pos:pos + 2], "big")  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        end = pos + 2 + int.from_bytes(hello[pos:pos + 2], "big")
        pos += 2
        while pos + 4 <= end:
            kind = int.from_bytes(hello[pos:pos + 2], "big")
            size = int.from_bytes(hello[pos + 2:pos + 4], "big")
            pos += 4
            if kind == 0 and size >= 5:  # server_name: list length, type 0, name length
                name_len = int.from_bytes(hello[pos + 3:pos + 5], "big")
                if hello[pos + 2] == 0 and pos + 5 + name_len <= len(hello):
                    name = bytes(hello[pos + 5:pos + 5 + name_len])
                    return SniResult.FOUND, name.decode("ascii", "replace").lower()
            pos += size
    except IndexError:
        return SniResult.NONE, None
    return SniResult.NONE, None
