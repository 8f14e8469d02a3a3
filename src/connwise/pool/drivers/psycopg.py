"""PostgreSQL through psycopg 3 (`psycopg.AsyncConnection`).

Connections are in autocommit mode by default, as in psycopg_pool's examples and unlike psycopg's
own default: a pooled connection outside autocommit opens a transaction on its first query and
holds its snapshot until the holder commits, which turns every forgotten commit into a
long-running transaction. With `autocommit=False` the driver still works; the check then switches
autocommit on for its empty query so it never leaves a transaction behind (what psycopg_pool's
`check_connection` does).

The cheap reset rolls back whatever the transaction status says is open and switches autocommit
back to the driver's mode if the holder changed it; the full one adds `DISCARD ALL`, which
psycopg recognises and answers by forgetting its own prepared statements.
A connection returned while a query is still running (status ACTIVE) or whose status is unknown
cannot be reset safely and is reported broken, so the pool discards it.

libpq reports a failed connect as one message without a SQLSTATE, so connect errors are sorted by
the server's and libpq's stable message texts; errors on an open connection carry SQLSTATEs and
are sorted by those.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus

from connwise.errors import BackendAuthError, ConfigError, ConnectionBroken
from connwise.pool.drivers._dsn import mask, scrub, unreachable

Connection = psycopg.AsyncConnection[Any]

#: Keyword arguments of `AsyncConnection.connect` that are not libpq connection parameters.
_CONNECT_ARGS = frozenset({"prepare_threshold", "context", "row_factory", "cursor_factory"})

#: libpq and server texts of a refused login (role unknown, wrong password, no pg_hba entry,
#: no CONNECT privilege, password required but not given).
_AUTH_FAILED = re.compile(r"password authentication failed|authentication failed|role \".*\" "
                          r"does not exist|no pg_hba\.conf entry|permission denied for database|"
                          r"no password supplied|password is required|not permitted to log in",
                          re.IGNORECASE)
_NO_DATABASE = re.compile(r"database \".*\" does not exist", re.IGNORECASE)
_BAD_HOST = re.compile(r"failed to resolve host|could not translate host name", re.IGNORECASE)

#: SQLSTATEs that say the session is gone or going; see the asyncpg driver.
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03", "57P04", "57P05")


def _detail(text: str) -> str:
    """The part of a libpq message that explains: after the last "FATAL:" or "failed:"."""
    for marker in ("FATAL:", "failed:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    text = text.removeprefix("connection failed:")
    return " ".join(text.split()).rstrip(".")


class PsycopgDriver:
    """Opens `psycopg.AsyncConnection.connect(conninfo, autocommit=..., **kwargs)`.

    `conninfo` is a URL or a libpq key=value string; `kwargs` are libpq parameters
    (`application_name=`, `connect_timeout=`) or `connect`'s own (`prepare_threshold=`,
    `row_factory=`).
    """

    name = "psycopg"
    settles_interrupts = True

    def __init__(self, conninfo: str, *, autocommit: bool = True, **kwargs: Any) -> None:
        self.address = mask(conninfo) or "the libpq default server"
        params = {k: v for k, v in kwargs.items() if k not in _CONNECT_ARGS}
        try:
            merged = conninfo_to_dict(make_conninfo(conninfo, **params))
        except psycopg.ProgrammingError as exc:
            raise ConfigError("dsn", mask(conninfo), f"libpq cannot parse it "
                              f"({_detail(scrub(str(exc), conninfo))})",
                              "use a URL such as 'postgresql://user@host:5432/dbname' or "
                              "key=value pairs, and only libpq parameters as keyword "
                              "arguments") from None
        for port in str(merged.get("port", "")).split(","):
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ConfigError("dsn", mask(conninfo), f"the port {port!r} is not a TCP port "
                                  "(1..65535)", "fix the port")
        self.conninfo = conninfo
        self.autocommit = autocommit
        self.kwargs = kwargs

    async def connect(self) -> Connection:
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=self.autocommit,
                                                         **self.kwargs)
        except psycopg.Error as exc:
            raise self._translate(exc) from None
        except OSError as exc:
            raise unreachable(self.address, exc) from None

    def _translate(self, exc: psycopg.Error) -> Exception:
        """Map a failed connect to the taxonomy; chains are dropped because libpq's messages
        about a malformed conninfo quote it, password included."""
        text = scrub(str(exc), self.conninfo)
        detail = _detail(text)
        if isinstance(exc, psycopg.ProgrammingError):
            return ConfigError("dsn", self.address, f"libpq cannot use it ({detail})",
                               "fix the connection string or the connect arguments")
        if _AUTH_FAILED.search(text):
            return BackendAuthError(f"{self.address} refused the login: {detail}; check the user "
                                    "name, the password and pg_hba.conf")
        if _NO_DATABASE.search(text):
            return ConfigError("dsn", self.address, f"the server says {detail}",
                               "create the database or fix its name")
        if _BAD_HOST.search(text):
            return ConfigError("dsn", self.address, f"the host name does not resolve ({detail})",
                               "check the host in the connection string")
        return unreachable(self.address, exc, detail)

    async def check(self, conn: Connection) -> None:
        if self.is_broken(conn):
            raise ConnectionBroken(f"connection to {self.address} is closed")
        try:
            if conn.autocommit:
                await conn.execute("")
            else:
                await conn.set_autocommit(True)
                try:
                    await conn.execute("")
                finally:
                    await conn.set_autocommit(False)
        except psycopg.Error as exc:
            raise ConnectionBroken(f"check of a connection to {self.address} failed: "
                                   f"{scrub(str(exc), self.conninfo)}") from exc

    def needs_reset(self, conn: Connection) -> bool:
        # A holder that switched autocommit would hand its mode to the next one: outside
        # autocommit unknowingly, whose writes the release would then roll back.
        return (conn.info.transaction_status != TransactionStatus.IDLE
                or conn.autocommit != self.autocommit)

    async def reset(self, conn: Connection, *, full: bool) -> None:
        status = conn.info.transaction_status
        if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            await conn.rollback()
        elif status != TransactionStatus.IDLE:
            raise ConnectionBroken(f"a connection to {self.address} came back with its "
                                   f"transaction status {status.name} (a query still running, "
                                   "or the connection lost); it cannot be reset and is discarded")
        if conn.autocommit != self.autocommit:
            await conn.set_autocommit(self.autocommit)  # after the rollback: refused inside one
        if full:
            # DISCARD ALL cannot run inside a transaction block, which psycopg would open for it
            # outside autocommit.
            autocommit = conn.autocommit
            if not autocommit:
                await conn.set_autocommit(True)
            try:
                await conn.execute("DISCARD ALL")
            finally:
                if not autocommit:
                    await conn.set_autocommit(False)

    def is_connection_error(self, exc: BaseException) -> bool:
        if isinstance(exc, OSError | ConnectionBroken):
            return True
        if not isinstance(exc, psycopg.Error):
            return False
        # A FATAL ends the session whatever its SQLSTATE: an idle-in-transaction timeout's
        # 25P03 is an InternalError to psycopg, not an OperationalError.
        if (exc.diag.severity_nonlocalized or exc.diag.severity) in ("FATAL", "PANIC"):
            return True
        if not isinstance(exc, psycopg.OperationalError):
            return False
        # A client-side failure ("server closed the connection unexpectedly", "the connection
        # is closed") has no SQLSTATE; an OperationalError with one (a cancelled query, a lock
        # timeout, a full disk) happened on a session that still works.
        sqlstate = exc.sqlstate or ""
        return not sqlstate or sqlstate.startswith(_CONNECTION_STATES)

    def is_broken(self, conn: Connection) -> bool:
        return conn.closed or conn.broken

    async def close(self, conn: Connection) -> None:
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.close()
