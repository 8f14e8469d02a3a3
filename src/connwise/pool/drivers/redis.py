"""Redis through redis-py's asyncio client, one server connection per pool connection.

Each pool connection is a `PooledRedis`: a `redis.asyncio.Redis` built with
`single_connection_client=True`, so its commands go over one socket that the pool opens, checks
and closes. redis-py's own retries are off (`Retry(NoBackoff(), 0)` unless you pass `retry=`):
retrying and backing off is the pool's job, and a client that silently reconnects would hide a
dead connection from the pool and stall its holder through an outage.

Redis has no implicit transactions, so there is nothing to roll back after an ordinary holder.
What a holder can leave behind is session state that breaks the next one: a `MULTI` left open
(the next holder's commands are queued, not run), `WATCH`, a `SELECT` of another database (the
next holder writes to the wrong one), subscribe or monitor mode, `CLIENT REPLY OFF`, tracking.
redis-py keeps no local record of these, so `PooledRedis` notes when a command that changes them
goes through it; that flag is `needs_reset`, and costs one set lookup per command.

Redis has no undo finer than `RESET` (Redis >= 6.2), which returns the session to its state
right after connecting, but for the client name: so both resets send it, and `CLIENT SETNAME ""`
with it, the cheap one only when the flag says so. `RESET` also drops authentication, the RESP3
protocol and the URL's database, so the driver then repeats redis-py's connection handshake
(`HELLO`/`AUTH`, `SELECT`, `CLIENT SETNAME`) on the same socket.
On a server older than 6.2 the reset fails and the pool discards the connection instead.

Pipelines, transactions (`client.pipeline()`) and pub/sub (`client.pubsub()`) do not run on
this connection: redis-py takes them from the client's internal pool, which opens a second
socket on first use and closes it with the client. They reset themselves (`UNWATCH`, `DISCARD`)
when used as context managers.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from connwise.errors import BackendAuthError, ConfigError, ConnectionBroken
from connwise.pool.drivers._dsn import check_url, mask, oserror, scrub, unreachable

#: Commands after which the session differs from a fresh one in a way the next holder would
#: notice; `CLIENT` counts only with the subcommands in `_CLIENT_SESSION`.
_SESSION_COMMANDS = frozenset({"MULTI", "WATCH", "SELECT", "SUBSCRIBE", "PSUBSCRIBE",
                               "SSUBSCRIBE", "MONITOR", "HELLO", "AUTH", "READONLY", "ASKING"})
_CLIENT_SESSION = frozenset({"REPLY", "TRACKING", "CACHING", "NO-EVICT", "NO-TOUCH", "SETNAME"})


def _word(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.upper() if isinstance(value, str) else ""


def _changes_session(args: tuple[Any, ...]) -> bool:
    # redis-py sends some commands with their subcommand in the first argument ("CLIENT REPLY").
    words = _word(args[0]).split() if args else []
    if not words:
        return False
    if words[0] in _SESSION_COMMANDS:
        return True
    if words[0] == "CLIENT":
        sub = words[1] if len(words) > 1 else _word(args[1]) if len(args) > 1 else ""
        return sub in _CLIENT_SESSION
    return False


class PooledRedis(redis.asyncio.Redis):
    """A redis-py client on one connection that notes when its holder changed the session."""

    #: Set by a command that changed session state; cleared by the driver's reset.
    session_changed: bool = False

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if not self.session_changed and _changes_session(args):
            self.session_changed = True
        # redis-py leaves execute_command unannotated.
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class RedisDriver:
    """Opens one `PooledRedis` on `url`; `kwargs` go to redis-py's connection
    (`socket_timeout=`, `client_name=`, `decode_responses=`, `protocol=`, ...)."""

    name = "redis"
    settles_interrupts = True

    def __init__(self, url: str, **kwargs: Any) -> None:
        check_url("url", url, ("redis", "rediss", "unix"), "redis://host:6379/0")
        parts = urlsplit(url)
        path = parts.path.strip("/")
        db = parse_qs(parts.query).get("db", [path if parts.scheme != "unix" else ""])[0]
        if db and not db.isdigit():
            raise ConfigError("url", mask(url), f"the database {db!r} is not a number",
                              "name the database by its index, e.g. redis://host:6379/0")
        try:
            parse_url(url)
        except ValueError as exc:
            raise ConfigError("url", mask(url), str(exc).rstrip("."), "fix the URL") from None
        self.url = url
        self.kwargs = kwargs
        #: The URL as it may appear in messages: with the password masked.
        self.address = mask(url)

    async def connect(self) -> PooledRedis:
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), **self.kwargs}
        pool = redis.asyncio.ConnectionPool.from_url(self.url, **options)
        client = PooledRedis(connection_pool=pool, single_connection_client=True)
        client.auto_close_connection_pool = True
        try:
            await client.initialize()  # takes the connection: connects, authenticates, selects
        except (redis.exceptions.RedisError, OSError) as exc:
            with contextlib.suppress(Exception):
                await client.aclose()
            raise self._translate(exc) from None
        return client

    def _translate(self, exc: BaseException) -> Exception:
        detail = scrub(str(exc), self.url).rstrip(".")
        if isinstance(exc, redis.exceptions.AuthenticationError |
                      redis.exceptions.AuthorizationError | redis.exceptions.NoPermissionError):
            # In parentheses: some of Redis's refusals are questions ("... is correct?").
            return BackendAuthError(f"{self.address} refused the login ({detail}); check the user "
                                    "name and password in the URL")
        if isinstance(oserror(exc), socket.gaierror):
            return ConfigError("url", self.address, f"the host name does not resolve ({detail})",
                               "check the host in the URL")
        if isinstance(exc, redis.exceptions.TimeoutError):
            return unreachable(self.address, exc, "timed out")
        return unreachable(self.address, exc, "" if oserror(exc) is not None else detail)

    async def check(self, conn: PooledRedis) -> None:
        # Refuse before PING: redis-py would reconnect a dropped socket on the next command,
        # which would turn a dead connection into a new session behind the pool's back.
        if self.is_broken(conn):
            raise ConnectionBroken(f"connection to {self.address} is closed")
        try:
            await conn.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise ConnectionBroken(f"check of a connection to {self.address} failed: "
                                   f"{scrub(str(exc), self.url)}") from exc

    def needs_reset(self, conn: PooledRedis) -> bool:
        return conn.session_changed

    async def reset(self, conn: PooledRedis, *, full: bool) -> None:
        if not (full or conn.session_changed):
            return
        connection = conn.connection
        if connection is None or not connection.is_connected:
            raise ConnectionBroken(f"connection to {self.address} is closed")
        # RESET keeps the client name: clear it in the same round trip (the handshake below
        # sets the configured one again).
        commands = connection.pack_commands([("RESET",), ("CLIENT", "SETNAME", "")])
        try:
            await connection.send_packed_command(commands, check_health=False)
            reply = await connection.read_response()
            named = await connection.read_response()
        except redis.exceptions.ResponseError as exc:
            raise ConnectionBroken(f"{self.address} refused RESET ({exc}); resetting needs Redis "
                                   "6.2 or later, so the connection is discarded") from exc
        if not isinstance(reply, str | bytes) or _word(reply) != "RESET" or _word(named) != "OK":
            raise ConnectionBroken(f"{self.address} answered RESET and CLIENT SETNAME with "
                                   f"{(reply, named)!r:.80}; the session state is unknown, so "
                                   "the connection is discarded")
        await connection.on_connect()
        conn.session_changed = False

    def is_connection_error(self, exc: BaseException) -> bool:
        return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError |
                          OSError | ConnectionBroken)

    def is_broken(self, conn: PooledRedis) -> bool:
        connection = conn.connection
        if connection is None or not connection.is_connected:
            return True
        # redis-py learns of a close on its next read, but the event loop has fed the EOF to
        # the connection's stream already: a server that ended the idle client (its `timeout`,
        # CLIENT KILL, a restart) shows here, so the pool discards it instead of handing it out.
        reader = getattr(connection, "_reader", None)
        return reader is not None and reader.at_eof()

    async def close(self, conn: PooledRedis) -> None:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await conn.aclose(close_connection_pool=True)
