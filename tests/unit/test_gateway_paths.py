"""Path normalisation of the http listener (RFC 3986 6.2.2 and 5.2.4), without sockets."""

from __future__ import annotations

import pytest

from connwise.gateway.paths import BadPath, normalise


@pytest.mark.parametrize(("path", "merged", "kept"), [
    (b"/", b"/", b"/"),
    (b"/a/b", b"/a/b", b"/a/b"),
    (b"/a/b/", b"/a/b/", b"/a/b/"),
    (b"/public/../admin", b"/admin", b"/admin"),
    (b"/a/./b", b"/a/b", b"/a/b"),
    (b"/a/.", b"/a/", b"/a/"),
    (b"/a/..", b"/", b"/"),
    (b"/..", b"/", b"/"),
    (b"/../../etc/passwd", b"/etc/passwd", b"/etc/passwd"),
    (b"/a/b/../../../c", b"/c", b"/c"),
    (b"/.hidden/..x/x..", b"/.hidden/..x/x..", b"/.hidden/..x/x.."),  # not dot segments
    (b"//admin", b"/admin", b"//admin"),
    (b"/a//b///c", b"/a/b/c", b"/a//b///c"),
    (b"/a//", b"/a/", b"/a//"),
    (b"/%61dmin", b"/admin", b"/admin"),                     # unreserved: decoded
    (b"/%2e%2e/admin", b"/admin", b"/admin"),                # an escaped dot segment
    (b"/public/.%2E/admin", b"/admin", b"/admin"),
    (b"/%7euser/%41%5a%30%2D%5F", b"/~user/AZ0-_", b"/~user/AZ0-_"),
    (b"/a%2fb/%2F..", b"/a%2Fb/%2F..", b"/a%2Fb/%2F.."),      # an escaped slash stays data
    (b"/caf%c3%a9", b"/caf%C3%A9", b"/caf%C3%A9"),            # other escapes: uppercased
    (b"/%25", b"/%25", b"/%25"),
])
def test_normal_forms(path: bytes, merged: bytes, kept: bytes) -> None:
    assert normalise(path, merge_slashes=True) == merged
    assert normalise(path, merge_slashes=False) == kept


@pytest.mark.parametrize("path", [b"/100%", b"/a%2", b"/%zz", b"/%g0/x", b"/a%%41"])
def test_a_malformed_escape_is_refused_and_named(path: bytes) -> None:
    with pytest.raises(BadPath, match="malformed percent-escape in path"):
        normalise(path, merge_slashes=True)


def test_normalising_twice_changes_nothing() -> None:
    for path in (b"/a/../b/./c//d%2e%2e/", b"/x/%2e/%2E%2e/y", b"//a/b/.."):
        once = normalise(path, merge_slashes=True)
        assert normalise(once, merge_slashes=True) == once
