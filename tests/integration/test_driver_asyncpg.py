"""AsyncpgDriver against the real PostgreSQL: connect, check, reset and close; the error sentences
for a bad DSN, a refused port, an unknown role; and a connwise.Pool over the driver while the
server kills its sessions or goes away and comes back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

import connwise
from connwise.errors import (
    BackendAuthError,
    BackendUnavailable,
    ConfigError,
    ConnectionBroken,
    PoolTimeout,
)
from connwise.pool.drivers.asyncpg import AsyncpgDriver
from tests.integration.tcp_relay import TcpRelay, free_port, until

services = pytest.mark.services


@pytest.fixture
def app_name() -> str:
    """A unique application_name, by which a test finds (and kills) its pool's sessions."""
    return f"connwise-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(postgres_dsn, timeout=2)
    yield conn
    await conn.close()


def make_driver(dsn: str, app_name: str) -> AsyncpgDriver:
    return AsyncpgDriver(dsn, timeout=2, server_settings={"application_name": app_name})


def with_netloc(dsn: str, userinfo: str = "", port: int | None = None,
                path: str | None = None) -> str:
    parts = urlsplit(dsn)
    host = f"{parts.hostname}:{port or parts.port or 5432}"
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit(parts._replace(netloc=netloc, path=path or parts.path))


async def terminate(admin: Any, app_name: str) -> int:
    killed: int = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1", app_name)
    return killed


# -- the driver's operations ------------------------------------------------------------------


@services
async def test_connect_check_reset_close(postgres_dsn: str, app_name: str) -> None:
    driver = make_driver(postgres_dsn, app_name)
    conn = await driver.connect()
    try:
        await driver.check(conn)
        assert not driver.needs_reset(conn)
        await driver.reset(conn, full=False)
        await driver.reset(conn, full=True)
        assert await conn.fetchval("SELECT current_setting('application_name')") == app_name
        assert not driver.is_broken(conn)
    finally:
        await driver.close(conn)
    assert driver.is_broken(conn)
    await driver.close(conn)  # a second close is quiet
    with pytest.raises(ConnectionBroken, match="is closed"):
        await driver.check(conn)


@services
async def test_cheap_reset_rolls_back_what_the_holder_left_open(postgres_dsn: str,
                                                                app_name: str) -> None:
    async with connwise.Pool(make_driver(postgres_dsn, app_name), min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("CREATE TEMP TABLE t (x int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO t VALUES (1)")
            assert pool.driver.needs_reset(conn)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
        assert pool.stats()["counters"]["broken"] == 0


@services
async def test_cheap_reset_ends_an_asyncpg_transaction_started_by_hand(postgres_dsn: str,
                                                                       app_name: str) -> None:
    async with connwise.Pool(make_driver(postgres_dsn, app_name), min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE t (x int)")
            tx = conn.transaction()
            await tx.start()
            await conn.execute("INSERT INTO t VALUES (1)")
        async with pool.acquire() as conn:
            # Were asyncpg still counting the abandoned transaction, this would become a
            # SAVEPOINT outside any transaction and fail.
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (2)")
            assert await conn.fetchval("SELECT array_agg(x) FROM t") == [2]


@services
async def test_cheap_reset_keeps_session_settings(postgres_dsn: str, app_name: str) -> None:
    async with connwise.Pool(make_driver(postgres_dsn, app_name), min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("SET statement_timeout = '1234ms'")
            assert not pool.driver.needs_reset(conn)  # no transaction open: nothing to do
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "1234ms"


@services
async def test_full_reset_discards_session_state_but_not_connect_settings(
        postgres_dsn: str, app_name: str) -> None:
    driver = make_driver(postgres_dsn, app_name)
    async with connwise.Pool(driver, min_size=1, max_size=1, reset="full") as pool:
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("SET statement_timeout = '1234ms'")
            await conn.execute("SET application_name = 'changed'")
            await conn.execute("SELECT pg_advisory_lock(4242)")
            await conn.execute("LISTEN connwise_test")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert await conn.fetchval("SHOW statement_timeout") == "0"
            assert await conn.fetchval("SHOW application_name") == app_name
            assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                       "AND pid = pg_backend_pid()") == 0
            assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0


@services
async def test_check_of_a_terminated_backend_raises_connection_broken(
        postgres_dsn: str, app_name: str, admin: Any) -> None:
    driver = make_driver(postgres_dsn, app_name)
    conn = await driver.connect()
    assert await terminate(admin, app_name) == 1
    with pytest.raises(ConnectionBroken, match=r"127\.0\.0\.1"):
        await driver.check(conn)
    assert driver.is_broken(conn)
    await driver.close(conn)


@services
async def test_connection_errors_told_from_sql_errors(postgres_dsn: str, app_name: str,
                                                      admin: Any) -> None:
    driver = make_driver(postgres_dsn, app_name)
    conn = await driver.connect()
    try:
        with pytest.raises(asyncpg.UndefinedTableError) as sql_error:
            await conn.execute("SELECT * FROM connwise_no_such_table")
        assert not driver.is_connection_error(sql_error.value)
        await conn.execute("SET statement_timeout = '20ms'")
        with pytest.raises(asyncpg.QueryCanceledError) as cancelled:  # SQLSTATE 57014
            await conn.execute("SELECT pg_sleep(1)")
        assert not driver.is_connection_error(cancelled.value)
        assert not driver.is_broken(conn)
        await terminate(admin, app_name)
        with pytest.raises(Exception) as lost:  # asyncpg raises one of several
            await conn.execute("SELECT 1")
        assert driver.is_connection_error(lost.value), repr(lost.value)
        with pytest.raises(asyncpg.InterfaceError) as closed:
            await conn.execute("SELECT 1")
        assert driver.is_connection_error(closed.value)
    finally:
        await driver.close(conn)


# -- error sentences --------------------------------------------------------------------------


async def test_bad_dsn_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        AsyncpgDriver("mysql://root:hunter2@db/app")
    assert info.value.key == "dsn"
    assert "hunter2" not in str(info.value)
    assert str(info.value) == ("dsn = 'mysql://root:***@db/app': the scheme 'mysql' is not one "
                               "of postgresql://, postgres://; use e.g. "
                               "'postgresql://user@host:5432/dbname'.")
    with pytest.raises(ConfigError, match=r"the port '70000' is not a TCP port") as info:
        AsyncpgDriver("postgresql://app:hunter2@127.0.0.1:70000/test")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match="connect_kwargs") as info:
        AsyncpgDriver("postgresql://127.0.0.1/test", no_such_option=1)


async def test_refused_port_is_backend_unavailable() -> None:
    port = free_port()
    driver = AsyncpgDriver(f"postgresql://postgres:hunter2@127.0.0.1:{port}/test", timeout=2)
    with pytest.raises(BackendUnavailable) as info:
        await driver.connect()
    assert str(info.value) == (f"could not connect to postgresql://postgres:***@127.0.0.1:{port}"
                               "/test: connection refused; is the server running and listening "
                               "there?")


@services
async def test_unknown_role_is_an_auth_error(postgres_dsn: str) -> None:
    dsn = with_netloc(postgres_dsn, "nosuchuser:hunter2")
    with pytest.raises(BackendAuthError) as info:
        await AsyncpgDriver(dsn, timeout=2).connect()
    message = str(info.value)
    assert 'refused the login: role "nosuchuser" does not exist' in message
    assert "nosuchuser:***@" in message
    assert "hunter2" not in message


@services
async def test_missing_database_is_a_config_error(postgres_dsn: str) -> None:
    dsn = with_netloc(postgres_dsn, urlsplit(postgres_dsn).username or "postgres",
                      path="/connwise_no_such_db")
    with pytest.raises(ConfigError, match='database "connwise_no_such_db" does not exist'):
        await AsyncpgDriver(dsn, timeout=2).connect()


# -- the pool over the driver when the server fails -------------------------------------------


@services
async def test_pool_replaces_sessions_the_server_terminated(postgres_dsn: str, app_name: str,
                                                            admin: Any) -> None:
    driver = make_driver(postgres_dsn, app_name)
    async with connwise.Pool(driver, min_size=2, max_size=2, check_interval=0.1) as pool:
        await until(lambda: pool.policy.idle == 2)
        old = {r["pid"] for r in await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1", app_name)}
        assert len(old) == 2
        assert await terminate(admin, app_name) == 2
        await until(lambda: pool.stats()["counters"]["checks_failed"] >= 2)
        await until(lambda: pool.policy.idle == 2)
        async with pool.acquire(timeout=2) as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") not in old


@services
async def test_pool_discards_a_connection_that_died_while_held(postgres_dsn: str, app_name: str,
                                                               admin: Any) -> None:
    async with connwise.Pool(make_driver(postgres_dsn, app_name), min_size=1, max_size=1) as pool:
        with pytest.raises(Exception) as lost:  # asyncpg raises one of several
            async with pool.acquire(timeout=2) as conn:
                await terminate(admin, app_name)
                await conn.execute("SELECT 1")
        assert pool.driver.is_connection_error(lost.value)
        assert pool.stats()["counters"]["broken"] == 1
        async with pool.acquire(timeout=2) as fresh:
            assert fresh is not conn
            assert await fresh.fetchval("SELECT 1") == 1


@services
async def test_pool_through_a_server_that_goes_away_and_comes_back(postgres_dsn: str) -> None:
    parts = urlsplit(postgres_dsn)
    relay = await TcpRelay(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        driver = AsyncpgDriver(relay.url(postgres_dsn), timeout=2)
        async with connwise.Pool(driver, min_size=2, max_size=2, check_interval=0.1) as pool:
            await until(lambda: pool.policy.idle == 2)
            async with pool.acquire(timeout=2) as conn:
                before = await conn.fetchval("SELECT pg_backend_pid()")

            await relay.stop()
            await until(lambda: pool.stats()["counters"]["connect_failed"] >= 1)
            with pytest.raises(PoolTimeout) as info:
                async with pool.acquire(timeout=0.3):
                    pass
            message = str(info.value)
            assert "last connect error: could not connect to postgresql://" in message
            assert f"127.0.0.1:{relay.port}/" in message
            assert "connection refused" in message

            await relay.start()
            async with pool.acquire(timeout=5) as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") != before
            counters = pool.stats()["counters"]
            assert counters["checks_failed"] + counters["broken"] >= 2  # both old ones discarded
    finally:
        await relay.stop()


@services
async def test_a_query_cut_by_a_timeout_leaves_a_connection_the_next_holder_can_use(
        postgres_dsn: str, app_name: str) -> None:
    """asyncpg cancels the query itself (`settles_interrupts`): the pool keeps the connection
    rather than opening a new one, and the next holder gets its own answer."""
    async with connwise.Pool(make_driver(postgres_dsn, app_name), min_size=0, max_size=1,
                             name="cut") as pool:
        with pytest.raises(TimeoutError):
            async with pool.acquire() as conn:
                await asyncio.wait_for(conn.fetchval("SELECT 1 FROM pg_sleep(2)"), 0.05)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 42") == 42
        assert pool.stats()["counters"]["broken"] == 0
        assert pool.stats()["counters"]["created"] == 1


@services
async def test_cheap_reset_removes_a_holder_s_listeners(postgres_dsn: str, app_name: str,
                                                        admin: Any) -> None:
    """A holder's `add_listener` callback stayed on the connection: it got the notifications
    sent while the next holder had the connection, and LISTEN stayed registered."""
    heard: list[str] = []
    async with connwise.Pool(make_driver(postgres_dsn, app_name), min_size=0, max_size=1,
                             name="listen") as pool:
        async with pool.acquire() as conn:
            await conn.add_listener("connwise_test", lambda *args: heard.append(args[3]))
            conn.add_log_listener(lambda *args: heard.append("log"))
        async with pool.acquire() as conn:
            await admin.execute("NOTIFY connwise_test, 'for nobody'")
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_listening_channels()") == 0
            await conn.execute("DO $$ BEGIN RAISE NOTICE 'for the next holder'; END $$")
        assert pool.stats()["counters"]["created"] == 1  # the same connection, kept
    assert heard == []
