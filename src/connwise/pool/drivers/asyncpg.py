"""PostgreSQL through asyncpg.

Reset follows asyncpg's own pool: the cheap reset rolls back a transaction the holder left open
(seen locally, so a clean release costs no round trip); the full one is `Connection.reset()`,
which also releases advisory locks, closes cursors, unlistens and runs `RESET ALL`. `RESET ALL`
returns each setting to its value at connect time, so settings given to `connect` (such as
`server_settings={"application_name": ...}`) survive it; `DISCARD ALL` is not used because it
would drop the prepared statements behind asyncpg's statement cache.

Errors are sorted by SQLSTATE, which the server sends with every error, not by message text.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
from typing import Any

import asyncpg

from connwise.errors import BackendAuthError, BackendUnavailable, ConfigError, ConnectionBroken
from connwise.pool.drivers._dsn import check_url, mask, oserror, scrub, unreachable

#: Seconds a graceful close may take before the socket is cut (asyncpg's pool waits as long as
#: it is told; a pool draining a dead server should not wait the 60 s of asyncpg's default).
CLOSE_TIMEOUT = 2.0

#: SQLSTATEs that say the session is gone or going: class 08 (connection exception) and the
#: shutdown codes of class 57 (not all of 57: 57014 is a cancelled query on a live session).
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03", "57P04", "57P05")


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


#: asyncpg's registries of a holder's callbacks: `add_listener`, `add_log_listener`,
#: `add_query_logger`, `add_termination_listener`.
_CALLBACKS = ("_listeners", "_log_listeners", "_query_loggers", "_termination_listeners")


def _has_callbacks(conn: Any) -> bool:
    return any(getattr(conn, callbacks) for callbacks in _CALLBACKS)


class AsyncpgDriver:
    """Opens `asyncpg.connect(dsn, **connect_kwargs)`; the pool hands out `asyncpg.Connection`."""

    name = "asyncpg"
    settles_interrupts = True

    def __init__(self, dsn: str, **connect_kwargs: Any) -> None:
        check_url("dsn", dsn, ("postgresql", "postgres"), "postgresql://user@host:5432/dbname")
        try:
            inspect.signature(asyncpg.connect).bind(dsn, **connect_kwargs)
        except TypeError as exc:
            raise ConfigError("connect_kwargs", sorted(connect_kwargs), f"asyncpg.connect does "
                              f"not take them ({exc})", "pass only asyncpg.connect's keyword "
                              "arguments") from None
        self.dsn = dsn
        self.connect_kwargs = connect_kwargs
        #: The DSN as it may appear in messages: with the password masked.
        self.address = mask(dsn)

    async def connect(self) -> Any:
        try:
            return await asyncpg.connect(self.dsn, **self.connect_kwargs)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError,
                TimeoutError) as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: BaseException) -> Exception:
        """Map a failed connect to the taxonomy; chains are dropped because asyncpg's messages
        about a malformed DSN quote it, password included."""
        detail = scrub(str(exc), self.dsn)
        state = _sqlstate(exc)
        if state.startswith("28") or state == "42501":
            return BackendAuthError(f"{self.address} refused the login: {detail}; check the user "
                                    "name, the password and pg_hba.conf")
        if state == "3D000":
            return ConfigError("dsn", self.address, f"the server says {detail}",
                               "create the database or fix its name")
        if isinstance(exc, ValueError):  # asyncpg.ClientConfigurationError is one too
            return ConfigError("dsn", self.address, f"asyncpg cannot use it ({detail})",
                               "fix the DSN or the connect arguments")
        if isinstance(oserror(exc), socket.gaierror):
            return ConfigError("dsn", self.address, f"the host name does not resolve ({detail})",
                               "check the host in the DSN")
        if isinstance(exc, asyncpg.PostgresError) and not state.startswith("08"):
            return BackendUnavailable(f"could not connect to {self.address}: the server said "
                                      f"{detail} (SQLSTATE {state}); retry when it accepts "
                                      "connections again")
        socket_level = oserror(exc) is not None or isinstance(exc, TimeoutError)
        return unreachable(self.address, exc, "" if socket_level else detail)

    async def check(self, conn: Any) -> None:
        if conn.is_closed():
            raise ConnectionBroken(f"connection to {self.address} is closed")
        try:
            await conn.execute("SELECT 1")
        except Exception as exc:
            raise ConnectionBroken(f"check of a connection to {self.address} failed: "
                                   f"{scrub(str(exc) or type(exc).__name__, self.dsn)}") from exc

    def needs_reset(self, conn: Any) -> bool:
        # asyncpg's own bookkeeping of `conn.transaction()` counts too: a holder that started one
        # by hand and never finished it leaves `_top_xact` set, and the next holder's
        # `transaction()` would then become a SAVEPOINT outside any transaction.
        return bool(conn.is_in_transaction() or conn._top_xact is not None
                    or _has_callbacks(conn))

    async def reset(self, conn: Any, *, full: bool) -> None:
        if conn.is_in_transaction() or conn._top_xact is not None:
            # What asyncpg's Connection.reset() does first, without its warning through the
            # loop's exception handler: a transaction left open is the pool's normal business.
            conn._top_xact = None
            await conn.execute("ROLLBACK")
        if full:
            await conn.reset()
        elif _has_callbacks(conn):
            # A holder's callbacks would get the next holder's notifications, server log
            # messages and queries (asyncpg's reset() clears them too, with UNLISTEN *).
            had_listeners = bool(conn._listeners)
            for callbacks in _CALLBACKS:
                getattr(conn, callbacks).clear()
            if had_listeners:
                await conn.execute("UNLISTEN *")

    def is_connection_error(self, exc: BaseException) -> bool:
        # InternalClientError: asyncpg's protocol state machine lost track (seen when the
        # server's FATAL arrives while a query starts), so the session cannot be trusted.
        if isinstance(exc, OSError | ConnectionBroken | asyncpg.ConnectionDoesNotExistError |
                      asyncpg.InternalClientError):
            return True
        if _sqlstate(exc).startswith(_CONNECTION_STATES):
            return True
        # asyncpg has no subclass for "you used a connection that is already closed".
        return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)

    def is_broken(self, conn: Any) -> bool:
        return bool(conn.is_closed())

    async def close(self, conn: Any) -> None:
        if conn.is_closed():
            return
        try:
            await conn.close(timeout=CLOSE_TIMEOUT)
        except Exception:
            with contextlib.suppress(Exception):
                conn.terminate()
