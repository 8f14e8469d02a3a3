"""Connection strings in error messages: named, so a log line says which service failed, and
masked, so that no password ever reaches a log.

Drivers name their DSN or URL in every error they raise. Client libraries sometimes echo the
connection string in their own messages (libpq does for a malformed conninfo), so a driver also
runs library text through `scrub` before quoting it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

from connwise.errors import BackendUnavailable, ConfigError

MASK = "***"

#: `password=...` in a libpq key=value string (quoted or bare) or in a URL query.
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)")


def _authority(dsn: str) -> tuple[str, str, str] | None:
    """Split a URL into (scheme://, authority, rest), or None for a non-URL string.

    The authority ends at the first '/', '?' or '#' *after the last '@'*, so that a password
    holding an unescaped '/' or '@' is still recognised as part of the user info.
    """
    scheme, sep, rest = dsn.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return None
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    at = head.rfind("@")
    match = re.search(r"[/?#]", rest[at + 1:])
    end = at + 1 + match.start() if match else len(rest)
    return scheme + sep, rest[:end], rest[end:]


def _passwords(dsn: str) -> Iterator[str]:
    parts = _authority(dsn)
    if parts is not None:
        userinfo, at, _ = parts[1].rpartition("@")
        if at and ":" in userinfo:
            secret = userinfo.split(":", 1)[1]
            yield secret
            yield unquote(secret)
    for match in _KV_PASSWORD.finditer(dsn):
        value = match.group(2)
        yield value
        yield value.strip("'")
        yield unquote(value)


def mask(dsn: str) -> str:
    """`dsn` with every password replaced by `***`: URL user info, URL query, key=value pairs."""
    parts = _authority(dsn)
    if parts is not None:
        scheme, authority, rest = parts
        userinfo, at, hosts = authority.rpartition("@")
        if at and ":" in userinfo:
            authority = f"{userinfo.split(':', 1)[0]}:{MASK}@{hosts}"
        dsn = scheme + authority + rest
    return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, dsn)


def scrub(text: str, dsn: str) -> str:
    """Library `text` about `dsn`, with the DSN's passwords masked wherever they appear."""
    for secret in sorted(set(_passwords(dsn)), key=len, reverse=True):
        if len(secret) >= 2 and secret != MASK:
            text = text.replace(secret, MASK)
    return _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, text)


def check_url(key: str, dsn: str, schemes: tuple[str, ...], example: str) -> None:
    """Reject a URL whose scheme is not one of `schemes` or whose port is not a TCP port.

    Checked when a driver is built, so that a typo fails at start-up with the key and the value
    instead of as a stream of failed connects. Anything subtler is left to the client library,
    whose complaint at connect time is translated too.
    """
    parts = _authority(dsn)
    if parts is None:
        raise ConfigError(key, mask(dsn), "it is not a URL",
                          f"use the form {example!r}")
    scheme = parts[0][:-3].lower()
    if scheme not in schemes:
        raise ConfigError(key, mask(dsn), f"the scheme {scheme!r} is not one of "
                          f"{', '.join(s + '://' for s in schemes)}", f"use e.g. {example!r}")
    hosts = parts[1].rpartition("@")[2]
    for host in hosts.split(","):
        _, bracket, tail = host.rpartition("]")  # an IPv6 literal: the port follows the ']'
        tail = tail if bracket else host
        port = tail.rpartition(":")[2] if ":" in tail else ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(key, mask(dsn), f"the port {port!r} is not a TCP port (1..65535)",
                              "fix the port")


def oserror(exc: BaseException) -> OSError | None:
    """The first `OSError` in the chain of `exc`, or None.

    Client libraries wrap the socket error in their own class (redis-py) or raise it bare
    (asyncpg); either way a refusal means "nothing listens there", which deserves its own
    sentence, and any other socket error its own strerror.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def unreachable(address: str, exc: BaseException, detail: str = "") -> BackendUnavailable:
    """The sentence for a connect to `address` that failed with `exc` before any credentials
    were looked at. `detail` is the library's own (already scrubbed) explanation, if any."""
    err = oserror(exc)
    if isinstance(err, ConnectionRefusedError) or "connection refused" in detail.lower():
        return BackendUnavailable(f"could not connect to {address}: connection refused; is the "
                                  "server running and listening there?")
    if isinstance(exc, TimeoutError) and not detail:
        return BackendUnavailable(f"could not connect to {address}: timed out; is the host "
                                  "reachable and the server not overloaded?")
    reason = detail or (err.strerror if err is not None and err.strerror else "") or str(exc)
    reason = " ".join((reason or type(exc).__name__).split()).rstrip(".")
    return BackendUnavailable(f"could not connect to {address}: {reason}; is the server running "
                              "and reachable?")
