"""PsycopgDriver against the real PostgreSQL: connect, check, reset and close in both autocommit
modes; the error sentences for a bad conninfo, a refused port, an unknown role; and a
connwise.Pool over the driver while the server kills its sessions or goes away and comes back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.pq import TransactionStatus

import connwise
from connwise.errors import (
    BackendAuthError,
    BackendUnavailable,
    ConfigError,
    ConnectionBroken,
    PoolTimeout,
)
from connwise.pool.drivers.psycopg import PsycopgDriver
from tests.integration.tcp_relay import TcpRelay, free_port, until

services = pytest.mark.services
Conn = psycopg.AsyncConnection[Any]


@pytest.fixture
def app_name() -> str:
    """A unique application_name, by which a test finds (and kills) its pool's sessions."""
    return f"connwise-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin(postgres_dsn: str) -> AsyncIterator[Conn]:
    conn = await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True, connect_timeout=2)
    yield conn
    await conn.close()


def make_driver(dsn: str, app_name: str, **kwargs: Any) -> PsycopgDriver:
    return PsycopgDriver(dsn, application_name=app_name, connect_timeout=2, **kwargs)


async def value(conn: Conn, query: str) -> Any:
    cur = await conn.execute(query)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def terminate(admin: Conn, app_name: str) -> int:
    cur = await admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = %s", (app_name,))
    row = await cur.fetchone()
    assert row is not None
    killed: int = row[0]
    return killed


# -- the driver's operations ------------------------------------------------------------------


@services
@pytest.mark.parametrize("autocommit", [True, False])
async def test_connect_check_reset_close(postgres_dsn: str, app_name: str,
                                         autocommit: bool) -> None:
    driver = make_driver(postgres_dsn, app_name, autocommit=autocommit)
    conn = await driver.connect()
    try:
        assert conn.autocommit is autocommit
        await driver.check(conn)
        # The check's query opened no transaction, even outside autocommit.
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.autocommit is autocommit
        assert not driver.needs_reset(conn)
        await driver.reset(conn, full=False)
        await driver.reset(conn, full=True)
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert await value(conn, "SHOW application_name") == app_name
        if not autocommit:
            await conn.rollback()
        assert not driver.is_broken(conn)
    finally:
        await driver.close(conn)
    assert driver.is_broken(conn)
    await driver.close(conn)  # a second close is quiet
    with pytest.raises(ConnectionBroken, match="is closed"):
        await driver.check(conn)


@services
@pytest.mark.parametrize("autocommit", [True, False])
async def test_cheap_reset_rolls_back_what_the_holder_left_open(postgres_dsn: str, app_name: str,
                                                                autocommit: bool) -> None:
    driver = make_driver(postgres_dsn, app_name, autocommit=autocommit)
    async with connwise.Pool(driver, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            pid = conn.info.backend_pid
            await conn.execute("CREATE TEMP TABLE t (x int)")
            await conn.commit()  # a no-op in autocommit
            if autocommit:
                await conn.execute("BEGIN")
            await conn.execute("INSERT INTO t VALUES (1)")  # outside autocommit: opens one
            assert driver.needs_reset(conn)
        async with pool.acquire() as conn:
            assert conn.info.backend_pid == pid  # the same session
            assert conn.info.transaction_status == TransactionStatus.IDLE
            assert await value(conn, "SELECT count(*) FROM t") == 0
            await conn.rollback()
        assert pool.stats()["counters"]["broken"] == 0


@services
@pytest.mark.parametrize("autocommit", [True, False])
async def test_reset_restores_the_autocommit_mode_the_holder_switched(
        postgres_dsn: str, app_name: str, autocommit: bool) -> None:
    driver = make_driver(postgres_dsn, app_name, autocommit=autocommit)
    async with connwise.Pool(driver, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE t (x int)")
            await conn.commit()  # a no-op in autocommit
            await conn.set_autocommit(not autocommit)
            assert driver.needs_reset(conn)
        async with pool.acquire() as conn:
            assert conn.autocommit is autocommit
            await conn.execute("INSERT INTO t VALUES (1)")
            await conn.commit()
        async with pool.acquire() as conn:
            # Had the previous holder worked outside autocommit unknowingly, its insert would
            # have been rolled back when it gave the connection back.
            assert await value(conn, "SELECT count(*) FROM t") == 1
            await conn.rollback()
        assert pool.stats()["counters"]["broken"] == 0


@services
async def test_cheap_reset_rolls_back_a_failed_transaction(postgres_dsn: str,
                                                           app_name: str) -> None:
    driver = make_driver(postgres_dsn, app_name)
    async with connwise.Pool(driver, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            with pytest.raises(psycopg.errors.UndefinedTable):
                await conn.execute("SELECT * FROM connwise_no_such_table")
            assert conn.info.transaction_status == TransactionStatus.INERROR
        async with pool.acquire() as conn:
            assert await value(conn, "SELECT 1") == 1


@services
async def test_full_reset_discards_session_state_and_prepared_statements(
        postgres_dsn: str, app_name: str) -> None:
    driver = make_driver(postgres_dsn, app_name, prepare_threshold=0)  # prepare every query
    async with connwise.Pool(driver, min_size=1, max_size=1, reset="full") as pool:
        async with pool.acquire() as conn:
            pid = conn.info.backend_pid
            await conn.execute("SET statement_timeout = '1234ms'")
            await conn.execute("SET application_name = 'changed'")
            await conn.execute("CREATE TEMP TABLE t (x int)")
            await conn.execute("SELECT 42 WHERE %s", (True,))
            assert await value(conn, "SELECT count(*) FROM pg_prepared_statements") >= 1
        async with pool.acquire() as conn:
            assert conn.info.backend_pid == pid
            assert await value(conn, "SHOW statement_timeout") == "0"
            assert await value(conn, "SHOW application_name") == app_name
            assert await value(conn, "SELECT count(*) FROM pg_tables WHERE tablename = 't' "
                                     "AND schemaname LIKE 'pg_temp%'") == 0
            # psycopg saw DISCARD ALL and forgot its prepared statements, so reusing the same
            # query prepares it anew instead of failing on a statement the server dropped.
            cur = await conn.execute("SELECT 42 WHERE %s", (True,))
            assert await cur.fetchone() == (42,)


@services
async def test_check_of_a_terminated_backend_raises_connection_broken(
        postgres_dsn: str, app_name: str, admin: Conn) -> None:
    driver = make_driver(postgres_dsn, app_name)
    conn = await driver.connect()
    assert await terminate(admin, app_name) == 1
    with pytest.raises(ConnectionBroken, match="terminating connection due to administrator"):
        await driver.check(conn)
    assert driver.is_broken(conn)
    await driver.close(conn)


@services
async def test_connection_errors_told_from_sql_errors(postgres_dsn: str, app_name: str,
                                                      admin: Conn) -> None:
    driver = make_driver(postgres_dsn, app_name)
    conn = await driver.connect()
    try:
        with pytest.raises(psycopg.errors.UndefinedTable) as sql_error:
            await conn.execute("SELECT * FROM connwise_no_such_table")
        assert not driver.is_connection_error(sql_error.value)
        await conn.execute("SET statement_timeout = '20ms'")
        with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:  # an OperationalError
            await conn.execute("SELECT pg_sleep(1)")
        assert not driver.is_connection_error(cancelled.value)
        assert not driver.is_broken(conn)
        await terminate(admin, app_name)
        with pytest.raises(psycopg.errors.AdminShutdown) as lost:
            await conn.execute("SELECT 1")
        assert driver.is_connection_error(lost.value)
        with pytest.raises(psycopg.OperationalError, match="the connection is closed") as closed:
            await conn.execute("SELECT 1")
        assert driver.is_connection_error(closed.value)
    finally:
        await driver.close(conn)


@services
async def test_a_session_the_server_ended_for_idling_in_a_transaction_is_a_connection_error(
        postgres_dsn: str, app_name: str) -> None:
    """The server ends such a session with a FATAL whose SQLSTATE (25P03) is of class 25, an
    InternalError to psycopg: the session is gone all the same."""
    driver = make_driver(postgres_dsn, app_name)
    conn = await driver.connect()
    try:
        await conn.execute("SET idle_in_transaction_session_timeout = '50ms'")
        await conn.execute("BEGIN")
        await asyncio.sleep(0.2)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout) as ended:
            await conn.execute("SELECT 1")
        assert driver.is_connection_error(ended.value)
        assert driver.is_broken(conn)
    finally:
        await driver.close(conn)


# -- error sentences --------------------------------------------------------------------------


async def test_bad_conninfo_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        PsycopgDriver("host=db password=hunter2 dbname")
    assert info.value.key == "dsn"
    message = str(info.value)
    assert message.startswith("dsn = 'host=db password=*** dbname': libpq cannot parse it "
                              '(missing "=" after "dbname" in connection info string)')
    assert "hunter2" not in message
    with pytest.raises(ConfigError, match=r"the port '70000' is not a TCP port") as info:
        PsycopgDriver("postgresql://app:hunter2@127.0.0.1:70000/test")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError, match='invalid connection option "no_such_option"'):
        PsycopgDriver("postgresql://127.0.0.1/test", no_such_option=1)


async def test_refused_port_is_backend_unavailable() -> None:
    port = free_port()
    driver = PsycopgDriver(f"postgresql://postgres:hunter2@127.0.0.1:{port}/test",
                           connect_timeout=2)
    with pytest.raises(BackendUnavailable) as info:
        await driver.connect()
    assert str(info.value) == (f"could not connect to postgresql://postgres:***@127.0.0.1:{port}"
                               "/test: connection refused; is the server running and listening "
                               "there?")


@services
async def test_unknown_role_is_an_auth_error(postgres_dsn: str) -> None:
    parts = urlsplit(postgres_dsn)
    dsn = urlunsplit(parts._replace(
        netloc=f"nosuchuser:hunter2@{parts.hostname}:{parts.port or 5432}"))
    with pytest.raises(BackendAuthError) as info:
        await PsycopgDriver(dsn, connect_timeout=2).connect()
    message = str(info.value)
    assert 'refused the login: role "nosuchuser" does not exist' in message
    assert "nosuchuser:***@" in message
    assert "hunter2" not in message


@services
async def test_missing_database_is_a_config_error(postgres_dsn: str) -> None:
    dsn = urlunsplit(urlsplit(postgres_dsn)._replace(path="/connwise_no_such_db"))
    with pytest.raises(ConfigError, match='database "connwise_no_such_db" does not exist'):
        await PsycopgDriver(dsn, connect_timeout=2).connect()


# -- the pool over the driver when the server fails -------------------------------------------


@services
async def test_pool_replaces_sessions_the_server_terminated(postgres_dsn: str, app_name: str,
                                                            admin: Conn) -> None:
    driver = make_driver(postgres_dsn, app_name)
    async with connwise.Pool(driver, min_size=2, max_size=2, check_interval=0.1) as pool:
        await until(lambda: pool.policy.idle == 2)
        cur = await admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                  (app_name,))
        old = {row[0] for row in await cur.fetchall()}
        assert len(old) == 2
        assert await terminate(admin, app_name) == 2
        await until(lambda: pool.stats()["counters"]["checks_failed"] >= 2)
        await until(lambda: pool.policy.idle == 2)
        async with pool.acquire(timeout=2) as conn:
            assert conn.info.backend_pid not in old


@services
async def test_pool_discards_a_connection_that_died_while_held(postgres_dsn: str, app_name: str,
                                                               admin: Conn) -> None:
    async with connwise.Pool(make_driver(postgres_dsn, app_name), min_size=1, max_size=1) as pool:
        with pytest.raises(psycopg.errors.AdminShutdown):
            async with pool.acquire(timeout=2) as conn:
                await terminate(admin, app_name)
                await conn.execute("SELECT 1")
        assert pool.stats()["counters"]["broken"] == 1
        async with pool.acquire(timeout=2) as fresh:
            assert fresh is not conn
            assert await value(fresh, "SELECT 1") == 1


@services
async def test_pool_through_a_server_that_goes_away_and_comes_back(postgres_dsn: str) -> None:
    parts = urlsplit(postgres_dsn)
    relay = await TcpRelay(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        driver = PsycopgDriver(relay.url(postgres_dsn), connect_timeout=2)
        async with connwise.Pool(driver, min_size=2, max_size=2, check_interval=0.1) as pool:
            await until(lambda: pool.policy.idle == 2)
            async with pool.acquire(timeout=2) as conn:
                before = conn.info.backend_pid

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
                assert conn.info.backend_pid != before
                assert await value(conn, "SELECT 1") == 1
            counters = pool.stats()["counters"]
            assert counters["checks_failed"] + counters["broken"] >= 2  # both old ones discarded
    finally:
        await relay.stop()


@services
async def test_check_and_reset_of_a_server_that_stopped_answering_keep_to_their_timeouts(
        postgres_dsn: str) -> None:
    """psycopg settles an interrupted query by sending the server a cancel request and waiting
    for the query to end, up to 5 s each; against a server that stopped answering, the pool's
    check and reset must still end at their own timeouts and discard the connection."""
    parts = urlsplit(postgres_dsn)
    relay = await TcpRelay(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        driver = PsycopgDriver(relay.url(postgres_dsn), connect_timeout=2)
        async with connwise.Pool(driver, min_size=0, max_size=1, check_interval=0.1,
                                 check_timeout=0.2, reset_timeout=0.2) as pool:
            async with pool.acquire(timeout=2):
                pass
            relay.stalled = True
            await until(lambda: pool.stats()["counters"]["checks_failed"] == 1, timeout=1.5)
            relay.stalled = False
            async with pool.acquire(timeout=2) as conn:
                await conn.execute("BEGIN")
                relay.stalled = True
                loop = asyncio.get_running_loop()
                start = loop.time()
            assert loop.time() - start < 1.0  # the holder waited for reset_timeout, no more
            assert pool.stats()["counters"]["broken"] == 1
    finally:
        await relay.stop()
