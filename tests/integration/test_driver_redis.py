"""RedisDriver against the real Redis: connect, check, reset and close; session state a holder
leaves behind (MULTI, SELECT) undone by RESET on the same socket; the error sentences for a bad
URL, a refused port, refused credentials; and a connwise.Pool over the driver while the server
kills its clients or goes away and comes back."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio
import redis.exceptions

import connwise
from connwise.errors import (
    BackendAuthError,
    BackendUnavailable,
    ConfigError,
    ConnectionBroken,
    PoolTimeout,
)
from connwise.pool.drivers.redis import PooledRedis, RedisDriver
from tests.integration.tcp_relay import TcpRelay, free_port, until

services = pytest.mark.services


@pytest.fixture
def client_name() -> str:
    """A unique client name, by which a test finds (and kills) its pool's connections."""
    return f"connwise-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=2)
    yield client
    await client.aclose()


@pytest.fixture
def key() -> str:
    return f"connwise-test:{uuid.uuid4().hex}"


def make_driver(url: str, client_name: str, **kwargs: Any) -> RedisDriver:
    return RedisDriver(url, client_name=client_name, socket_timeout=2, socket_connect_timeout=2,
                       **kwargs)


def with_parts(url: str, *, userinfo: str = "", db: int | None = None) -> str:
    parts = urlsplit(url)
    netloc = f"{userinfo}@{parts.hostname}:{parts.port or 6379}" if userinfo else parts.netloc
    path = f"/{db}" if db is not None else parts.path
    return urlunsplit(parts._replace(netloc=netloc, path=path))


async def client_ids(admin: redis.asyncio.Redis, name: str) -> set[str]:
    return {c["id"] for c in await admin.client_list() if c.get("name") == name}


async def kill(admin: redis.asyncio.Redis, name: str) -> int:
    ids = await client_ids(admin, name)
    for client_id in ids:
        await admin.client_kill_filter(_id=client_id)
    return len(ids)


# -- the driver's operations ------------------------------------------------------------------


@services
async def test_connect_check_reset_close(redis_url: str, client_name: str) -> None:
    driver = make_driver(redis_url, client_name)
    conn = await driver.connect()
    try:
        assert isinstance(conn, PooledRedis)
        await driver.check(conn)
        assert not driver.needs_reset(conn)
        await driver.reset(conn, full=False)
        await driver.reset(conn, full=True)
        info = await conn.client_info()
        assert info["name"] == client_name
        assert not driver.is_broken(conn)
    finally:
        await driver.close(conn)
    assert driver.is_broken(conn)
    await driver.close(conn)  # a second close is quiet
    with pytest.raises(ConnectionBroken, match="is closed"):
        await driver.check(conn)


@services
async def test_ordinary_commands_need_no_reset(redis_url: str, client_name: str,
                                               key: str) -> None:
    driver = make_driver(redis_url, client_name)
    conn = await driver.connect()
    try:
        await conn.set(key, "1")
        await conn.incr(key)
        assert await conn.get(key) == b"2"
        await conn.client_info()
        await conn.delete(key)
        async with conn.pipeline(transaction=True) as pipe:  # MULTI on redis-py's side socket
            pipe.set(key, "x")
            pipe.delete(key)
            await pipe.execute()
        assert not driver.needs_reset(conn)
    finally:
        await driver.close(conn)


@services
async def test_cheap_reset_discards_a_multi_left_open(redis_url: str, client_name: str,
                                                      key: str, admin: redis.asyncio.Redis) -> None:
    driver = make_driver(redis_url, client_name)
    async with connwise.Pool(driver, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            client_id = (await conn.client_info())["id"]
            await conn.execute_command("MULTI")
            assert await conn.execute_command("INCR", key) in (b"QUEUED", "QUEUED")
            assert driver.needs_reset(conn)
        async with pool.acquire() as conn:
            info = await conn.client_info()
            assert info["id"] == client_id  # the same connection, reset in place
            assert info["multi"] == -1
            assert info["name"] == client_name
            assert await conn.get(key) is None  # the queued INCR was discarded, never run
            assert not driver.needs_reset(conn)
        assert pool.stats()["counters"]["broken"] == 0
    await admin.delete(key)


@services
async def test_cheap_reset_undoes_a_select(redis_url: str, client_name: str) -> None:
    driver = make_driver(with_parts(redis_url, db=3), client_name)
    async with connwise.Pool(driver, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute_command("select", 5)  # any spelling counts
            assert (await conn.client_info())["db"] == 5
        async with pool.acquire() as conn:
            assert (await conn.client_info())["db"] == 3  # the URL's database, not 0


@services
@pytest.mark.parametrize("named", [True, False])
async def test_cheap_reset_undoes_a_client_setname(redis_url: str, client_name: str,
                                                   named: bool) -> None:
    """The name is how operators find (and kill) a service's connections: a holder's must not
    stick to the connection. RESET keeps the name, so the driver clears it too."""
    driver = (make_driver(redis_url, client_name) if named
              else RedisDriver(redis_url, socket_timeout=2))
    async with connwise.Pool(driver, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            client_id = (await conn.client_info())["id"]
            await conn.client_setname("borrowed")
        async with pool.acquire() as conn:
            info = await conn.client_info()
            assert info["id"] == client_id
            assert info["name"] == (client_name if named else "")


@services
async def test_full_reset_restores_the_session_of_a_fresh_connection(
        redis_url: str, client_name: str) -> None:
    driver = make_driver(with_parts(redis_url, db=3), client_name)
    async with connwise.Pool(driver, min_size=1, max_size=1, reset="full") as pool:
        async with pool.acquire() as conn:
            client_id = (await conn.client_info())["id"]
            await conn.execute_command("SELECT", 2)
            await conn.execute_command("CLIENT", "TRACKING", "on")
            assert "t" in str((await conn.client_info())["flags"])
        async with pool.acquire() as conn:
            info = await conn.client_info()
            assert info["id"] == client_id
            assert info["db"] == 3
            assert info["name"] == client_name
            assert info["resp"] == "3"  # RESET fell back to RESP2; the handshake restored RESP3
            assert "t" not in str(info["flags"])
            assert await conn.ping()


@services
async def test_check_of_a_killed_connection_raises_connection_broken(
        redis_url: str, client_name: str, admin: redis.asyncio.Redis) -> None:
    driver = make_driver(redis_url, client_name)
    conn = await driver.connect()
    assert await kill(admin, client_name) == 1
    with pytest.raises(ConnectionBroken, match=r"127\.0\.0\.1"):
        await driver.check(conn)
    assert driver.is_broken(conn)
    # No silent reconnect: the connection stays dead for the pool to discard.
    with pytest.raises(ConnectionBroken, match="is closed"):
        await driver.check(conn)
    assert await client_ids(admin, client_name) == set()
    await driver.close(conn)


@services
async def test_connection_errors_told_from_command_errors(redis_url: str, client_name: str,
                                                          key: str,
                                                          admin: redis.asyncio.Redis) -> None:
    driver = make_driver(redis_url, client_name)
    conn = await driver.connect()
    try:
        await conn.set(key, "x")
        with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE") as wrong_type:
            await conn.lpush(key, "y")
        assert not driver.is_connection_error(wrong_type.value)
        assert not driver.is_broken(conn)
        await kill(admin, client_name)
        with pytest.raises(redis.exceptions.ConnectionError) as lost:
            await conn.get(key)
        assert driver.is_connection_error(lost.value)
        assert driver.is_broken(conn)
    finally:
        await driver.close(conn)
        await admin.delete(key)


# -- error sentences --------------------------------------------------------------------------


async def test_bad_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        RedisDriver("http://:hunter2@127.0.0.1:6379/0")
    assert info.value.key == "url"
    assert str(info.value) == ("url = 'http://:***@127.0.0.1:6379/0': the scheme 'http' is not "
                               "one of redis://, rediss://, unix://; use e.g. "
                               "'redis://host:6379/0'.")
    with pytest.raises(ConfigError, match="the database 'abc' is not a number") as info:
        RedisDriver("redis://:hunter2@127.0.0.1:6379/abc")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match=r"the port '70000' is not a TCP port"):
        RedisDriver("redis://127.0.0.1:70000/0")


async def test_refused_port_is_backend_unavailable() -> None:
    port = free_port()
    driver = RedisDriver(f"redis://:hunter2@127.0.0.1:{port}/0", socket_connect_timeout=2)
    with pytest.raises(BackendUnavailable) as info:
        await driver.connect()
    assert str(info.value) == (f"could not connect to redis://:***@127.0.0.1:{port}/0: "
                               "connection refused; is the server running and listening there?")


@services
async def test_unknown_user_is_an_auth_error(redis_url: str) -> None:
    driver = RedisDriver(with_parts(redis_url, userinfo="nosuchuser:hunter2"),
                         socket_timeout=2)
    with pytest.raises(BackendAuthError) as info:
        await driver.connect()
    message = str(info.value)
    assert "nosuchuser:***@" in message
    assert "refused the login (invalid username-password pair" in message
    assert "hunter2" not in message


@services
async def test_wrong_password_under_resp2_is_an_auth_error(redis_url: str) -> None:
    # Under RESP3, redis-py's default, the password goes in HELLO 3 AUTH default <password>,
    # which a server whose default user has no password accepts; plain AUTH <password>, which
    # RESP2 uses, is refused. See docs/drivers.md.
    driver = RedisDriver(with_parts(redis_url, userinfo=":hunter2"), protocol=2,
                         socket_timeout=2)
    with pytest.raises(BackendAuthError) as info:
        await driver.connect()
    message = str(info.value)
    assert "called without any password configured" in message
    assert "hunter2" not in message


# -- the pool over the driver when the server fails -------------------------------------------


@services
async def test_pool_replaces_connections_the_server_killed(redis_url: str, client_name: str,
                                                           admin: redis.asyncio.Redis) -> None:
    driver = make_driver(redis_url, client_name)
    async with connwise.Pool(driver, min_size=2, max_size=2, check_interval=0.1) as pool:
        await until(lambda: pool.policy.idle == 2)
        old = await client_ids(admin, client_name)
        assert len(old) == 2
        assert await kill(admin, client_name) == 2
        await until(lambda: pool.stats()["counters"]["checks_failed"] >= 2)
        await until(lambda: pool.policy.idle == 2)
        async with pool.acquire(timeout=2) as conn:
            assert str((await conn.client_info())["id"]) not in old


@services
async def test_pool_discards_a_connection_that_died_while_held(
        redis_url: str, client_name: str, admin: redis.asyncio.Redis) -> None:
    async with connwise.Pool(make_driver(redis_url, client_name), min_size=1,
                             max_size=1) as pool:
        with pytest.raises(redis.exceptions.ConnectionError):
            async with pool.acquire(timeout=2) as conn:
                await kill(admin, client_name)
                await conn.ping()
        assert pool.stats()["counters"]["broken"] == 1
        async with pool.acquire(timeout=2) as fresh:
            assert fresh is not conn
            assert await fresh.ping()


@services
async def test_pool_discards_an_idle_connection_the_server_closed_at_acquire(
        redis_url: str, client_name: str, admin: redis.asyncio.Redis) -> None:
    """A server that ends idle clients (`timeout`, `CLIENT KILL`) closes the socket; the pool
    sees the EOF when the connection is next taken and opens another, rather than handing the
    holder a connection whose first command fails."""
    async with connwise.Pool(make_driver(redis_url, client_name), min_size=1,
                             max_size=1) as pool:
        async with pool.acquire(timeout=2) as conn:
            before = (await conn.client_info())["id"]
        assert await kill(admin, client_name) == 1
        await until(lambda: conn.connection is not None and conn.connection._reader is not None
                    and conn.connection._reader.at_eof())
        async with pool.acquire(timeout=2) as fresh:
            assert (await fresh.client_info())["id"] != before
        assert pool.stats()["counters"]["broken"] == 1


@services
async def test_a_connect_to_a_server_that_never_answers_ends_at_connect_timeout(
        redis_url: str) -> None:
    """No socket timeout of redis-py's: the pool's connect_timeout ends the connect, its socket
    is closed, and the error names the server, password masked, like any connect error."""
    parts = urlsplit(redis_url)
    relay = await TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    relay.stalled = True
    try:
        driver = RedisDriver(relay.url(with_parts(redis_url, userinfo=":hunter2")))
        async with connwise.Pool(driver, min_size=0, max_size=1, connect_timeout=0.2) as pool:
            with pytest.raises(PoolTimeout) as info:
                async with pool.acquire(timeout=0.5):
                    pass
            message = str(info.value)
            assert (f"last connect error: could not connect to redis://:***@127.0.0.1:"
                    f"{relay.port}/0: timed out after 0.2 s (connect_timeout)" in message)
            assert "hunter2" not in message
            await until(lambda: relay.open == 0)
    finally:
        await relay.stop()


@services
async def test_pool_through_a_server_that_goes_away_and_comes_back(redis_url: str) -> None:
    parts = urlsplit(redis_url)
    relay = await TcpRelay(parts.hostname or "127.0.0.1", parts.port or 6379).start()
    try:
        driver = RedisDriver(relay.url(redis_url), socket_timeout=2, socket_connect_timeout=2)
        async with connwise.Pool(driver, min_size=2, max_size=2, check_interval=0.1) as pool:
            await until(lambda: pool.policy.idle == 2)
            async with pool.acquire(timeout=2) as conn:
                before = (await conn.client_info())["id"]

            await relay.stop()
            await until(lambda: pool.stats()["counters"]["connect_failed"] >= 1)
            with pytest.raises(PoolTimeout) as info:
                async with pool.acquire(timeout=0.3):
                    pass
            message = str(info.value)
            assert (f"last connect error: could not connect to redis://127.0.0.1:{relay.port}"
                    in message)
            assert "connection refused" in message

            await relay.start()
            async with pool.acquire(timeout=5) as conn:
                assert (await conn.client_info())["id"] != before
            counters = pool.stats()["counters"]
            assert counters["checks_failed"] + counters["broken"] >= 2  # both old ones discarded
    finally:
        await relay.stop()
