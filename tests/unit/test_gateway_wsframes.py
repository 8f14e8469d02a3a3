"""The bytes of the gateway's own WebSocket refusal: the accept value, the handshake check and the
close frame, checked against RFC 6455's example and by reading the frame back."""

from __future__ import annotations

import base64
import os

import pytest
from websockets.utils import accept_key

from connwise.core.degrade import WS_TRY_AGAIN_LATER
from connwise.gateway.wsframes import (
    CLOSE_TRY_AGAIN_LATER,
    FrameTracker,
    accept_value,
    close_frame,
    handshake_accept,
    try_again_later,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # the RFC's own answer


def handshake(**override: bytes | None) -> list[tuple[bytes, bytes]]:
    """A browser's handshake headers; `override` replaces one (None drops it)."""
    headers = {b"Host": b"server.example.com", b"Upgrade": b"websocket",
               b"Connection": b"Upgrade", b"Sec-WebSocket-Key": KEY,
               b"Sec-WebSocket-Version": b"13"}
    for name, value in override.items():
        header = name.replace("_", "-").encode()
        if value is None:
            del headers[header]
        else:
            headers[header] = value
    return list(headers.items())


def test_accept_value_is_rfc_6455s_example_and_what_the_websockets_library_computes() -> None:
    assert accept_value(KEY) == ACCEPT
    key = base64.b64encode(os.urandom(16))
    assert accept_value(key).decode() == accept_key(key.decode())


def test_a_valid_handshake_gets_its_accept_value_whatever_the_case_of_names_and_upgrade() -> None:
    assert handshake_accept(b"GET", handshake()) == ACCEPT
    lowered = [(name.lower(), value) for name, value in handshake(Upgrade=b"WebSocket")]
    assert handshake_accept(b"GET", lowered) == ACCEPT
    assert handshake_accept(b"GET", handshake(Upgrade=b"foo, websocket")) == ACCEPT


@pytest.mark.parametrize(("method", "override"), [
    (b"POST", {}),
    (b"GET", {"Upgrade": b"h2c"}),
    (b"GET", {"Upgrade": None}),
    (b"GET", {"Sec_WebSocket_Key": None}),
    (b"GET", {"Sec_WebSocket_Key": b"not base64!"}),
    (b"GET", {"Sec_WebSocket_Key": b"c2hvcnQ="}),  # 5 bytes, not 16
    (b"GET", {"Sec_WebSocket_Version": b"8"}),
    (b"GET", {"Sec_WebSocket_Version": None}),
])
def test_anything_else_is_not_a_handshake_to_complete(
        method: bytes, override: dict[str, bytes | None]) -> None:
    assert handshake_accept(method, handshake(**override)) is None


def test_close_frame_is_unmasked_with_code_and_reason() -> None:
    assert close_frame(1013, "try again later") == b"\x88\x11\x03\xf5try again later"
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    with pytest.raises(ValueError, match="125 bytes"):
        close_frame(1000, "x" * 124)


def test_a_masked_close_frame_is_a_clients_and_reads_back() -> None:
    mask = b"\x01\x02\x03\x04"
    assert close_frame(1001, mask=mask) == b"\x88\x82" + mask + bytes((0x03 ^ 1, 0xE9 ^ 2))
    assert tracked(close_frame(4000, "bye", mask=mask)) == (1, 1, 4000)


def test_refusal_is_a_101_then_one_close_frame_1013() -> None:
    answer = try_again_later(ACCEPT, 5)
    head, frame = answer.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    assert set(lines[1:]) == {b"Upgrade: websocket", b"Connection: Upgrade",
                              b"Sec-WebSocket-Accept: " + ACCEPT, b"Retry-After: 5"}
    assert frame == CLOSE_TRY_AGAIN_LATER
    tracker = FrameTracker()
    tracker.feed(frame)
    assert (tracker.frames, tracker.close_code) == (1, WS_TRY_AGAIN_LATER)


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None,
          wide: bool = False) -> bytes:
    """One frame; `mask` masks it (a client's), `wide` spells a short length in 8 bytes (legal
    to parse; RFC 6455 asks senders for the shortest form, which trackers must not rely on)."""
    size = len(payload)
    first = bytes(((0x80 if fin else 0) | opcode,))
    bit = 0x80 if mask is not None else 0
    if wide or size > 0xFFFF:
        length = bytes((bit | 127,)) + size.to_bytes(8, "big")
    elif size > 125:
        length = bytes((bit | 126,)) + size.to_bytes(2, "big")
    else:
        length = bytes((bit | size,))
    if mask is None:
        return first + length + payload
    return first + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stream(mask: bytes | None) -> bytes:
    """A fragmented text message with a ping between its fragments, a binary message in three
    fragments with a pong among them, lengths in 1, 2 and 8 bytes, then a close with its code."""
    return b"".join((
        frame(0x1, b"hel", fin=False, mask=mask),
        frame(0x9, b"ping", mask=mask),
        frame(0x0, b"lo", mask=mask),
        frame(0x2, b"x" * 200, fin=False, mask=mask),
        frame(0xA, b"", mask=mask),
        frame(0x0, b"y" * 7, fin=False, mask=mask, wide=True),
        frame(0x0, b"", mask=mask),
        frame(0x1, b"", mask=mask),
        frame(0x8, (4001).to_bytes(2, "big") + b"bye", mask=mask),
    ))


def tracked(*chunks: bytes) -> tuple[int, int, int | None]:
    tracker = FrameTracker()
    for chunk in chunks:
        tracker.feed(chunk)
    return tracker.frames, tracker.messages, tracker.close_code


#: Nine frames; four messages (text, binary, an empty text, and the close, which the records
#: count as the peer's last message); close code 4001.
EXPECTED = (9, 4, 4001)


@pytest.mark.parametrize("mask", [None, b"\x12\x34\x56\x78"], ids=["server", "client"])
def test_frames_split_at_every_byte_boundary_read_the_same(mask: bytes | None) -> None:
    data = stream(mask)
    assert tracked(data) == EXPECTED
    for cut in range(1, len(data)):
        assert tracked(data[:cut], data[cut:]) == EXPECTED, f"split at {cut}"
    assert tracked(*(data[i:i + 1] for i in range(len(data)))) == EXPECTED


@pytest.mark.parametrize("mask", [None, b"\x12\x34\x56\x78"], ids=["server", "client"])
def test_a_64_bit_length_is_skipped_whole(mask: bytes | None) -> None:
    data = frame(0x2, bytes(70000), mask=mask) + frame(0x8, (1000).to_bytes(2, "big"), mask=mask)
    assert tracked(data) == (2, 2, 1000)
    assert tracked(*(data[i:i + 4096] for i in range(0, len(data), 4096))) == (2, 2, 1000)


@pytest.mark.parametrize("mask", [None, b"\x12\x34\x56\x78"], ids=["server", "client"])
def test_a_close_without_a_code_reads_none(mask: bytes | None) -> None:
    data = frame(0x8, b"", mask=mask)
    assert tracked(data) == (1, 1, None)
