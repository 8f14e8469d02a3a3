"""Normalised request paths, so that routes and backends read the same path.

A route matches a path prefix; a backend resolves the path it gets. Were the gateway to route the
raw target, `/public/../admin` would match a `/public` route and reach a backend that serves
`/admin`, and `/%61dmin` or `//admin` would pass by an `/admin` route. So the path is normalised
before routing (RFC 3986 6.2.2) and forwarded as routed, as Envoy does with `normalize_path`:
percent-encoded unreserved characters are decoded, the remaining escapes uppercased, `.` and `..`
segments removed (5.2.4) and, with `merge_slashes`, runs of slashes made one (nginx's default).
An escaped slash (`%2F`) stays escaped: it is data, not a separator. The http listener calls
`normalise` only for a path with a `%`, a `/.` or a `//`, which almost no path has.
"""

from __future__ import annotations

#: RFC 3986 2.3: decoding these never changes what a URI means.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class BadPath(ValueError):
    """A path with a `%` that does not start an escape of two hex digits."""


def normalise(path: bytes, merge_slashes: bool) -> bytes:
    """The normal form of an origin-form path (no query), which starts with `/`. Raises
    `BadPath` for a malformed escape, which no backend would read the same way as another."""
    if path.find(b"%") >= 0:
        path = _decode_unreserved(path)
    segments = path.split(b"/")
    out: list[bytes] = []
    for segment in segments[1:-1]:
        if segment == b"..":
            if out:
                out.pop()
        elif segment != b"." and not (merge_slashes and not segment):
            out.append(segment)
    last = segments[-1]
    if last in (b".", b".."):
        if last == b".." and out:
            out.pop()
        out.append(b"")  # `/a/..` is `/`, `/a/.` is `/a/`: a directory, with its slash
    else:
        out.append(last)
    return b"/" + b"/".join(out)


def _decode_unreserved(path: bytes) -> bytes:
    parts = path.split(b"%")
    out = [parts[0]]
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX or part[1] not in _HEX:
            raise BadPath(f"malformed percent-escape in path {path[:200]!r}")
        code = int(part[:2], 16)
        if code in _UNRESERVED:
            out.append(bytes((code,)) + part[2:])
        else:
            out.append(b"%" + part[:2].upper() + part[2:])
    return b"".join(out)
