"""Shared fixtures: the real services that integration tests run against.

A service fixture gives the address of a service that answered a TCP connect a moment ago. When
the service is not there, the tests that need it are skipped with the reason, so a laptop without
PostgreSQL still runs everything else. CI sets CONNWISE_REQUIRE_SERVICES=1, and a missing service
then fails those tests instead: a service that did not start must never pass as skipped tests.

Add a service by writing a fixture that calls `require_service` with its name and address.
Addresses can be overridden through the environment (CONNWISE_TEST_POSTGRES_DSN,
CONNWISE_TEST_REDIS_URL).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

#: How long a service may take to accept a TCP connect before it counts as absent (loopback
#: answers in microseconds; this only bounds a filtered port).
PROBE_TIMEOUT = 1.0


def require_service(name: str, url: str, default_port: int) -> str:
    """Return `url` if `name` accepts TCP connects at its host and port; skip or fail if not."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or default_port
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        reason = f"{name} not reachable on {host}:{port}: {exc.strerror or exc}"
        if os.environ.get("CONNWISE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason}; CONNWISE_REQUIRE_SERVICES=1 requires it, so start {name} "
                        "(.ci/run shows how) or unset the variable to skip these tests",
                        pytrace=False)
        pytest.skip(reason)
    return url


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A PostgreSQL DSN with trust auth and a `test` database (superuser `postgres`)."""
    url = os.environ.get("CONNWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    return require_service("PostgreSQL", url, 5432)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis URL (database 0, no password)."""
    url = os.environ.get("CONNWISE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    return require_service("Redis", url, 6379)
