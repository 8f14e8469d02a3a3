"""What a backend driver must do for the pool: connect, check, reset, close.

A driver wraps one client library (asyncpg, psycopg, redis-py, raw TCP) and translates its
errors into connwise's taxonomy, so that the pool and its users see one set of sentences: a bad
DSN is a `ConfigError` naming the DSN, a refused or unreachable service is `BackendUnavailable`,
rejected credentials are `BackendAuthError`, and a connection that died is `ConnectionBroken`.

`needs_reset` and `is_broken` are local, I/O-free looks at the connection object: the pool calls
them on every release, so they must cost nanoseconds, not a round trip.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

C = TypeVar("C")


class Driver(Protocol[C]):
    """The four operations a pool needs from a backend, plus two cheap local probes."""

    #: A short name for logs and stats: "asyncpg", "psycopg", "redis", "tcp".
    name: str

    #: Whether a connection stays usable when its holder is cancelled or times out in the
    #: middle of an exchange, because the client library settles the exchange itself (asyncpg
    #: and psycopg cancel the query, redis-py disconnects). False: the pool discards such a
    #: connection, since a reply still on its way would reach the next holder.
    settles_interrupts: bool

    async def connect(self) -> C:
        """Open one connection. Raises ConfigError, BackendUnavailable or BackendAuthError."""
        ...

    async def check(self, conn: C) -> None:
        """Round-trip to prove the connection works. Raises ConnectionBroken if it does not."""
        ...

    def needs_reset(self, conn: C) -> bool:
        """Whether the holder left state behind (an open transaction), seen without I/O."""
        ...

    async def reset(self, conn: C, *, full: bool) -> None:
        """Undo the holder's state: cheap (roll back) or full (discard session state too)."""
        ...

    def is_connection_error(self, exc: BaseException) -> bool:
        """Whether `exc`, raised while the connection was held, is the connection's fault."""
        ...

    def is_broken(self, conn: C) -> bool:
        """Whether the connection is known dead without asking the server."""
        ...

    async def close(self, conn: C) -> None:
        """Close the connection; never raises for a connection that is already gone."""
        ...
