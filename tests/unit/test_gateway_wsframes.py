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
