"""Fixtures the gateway integration tests share: a factory of started gateways that drains
them at the end, and two real HTTP origins."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.gateway.runtime import Gateway
from tests.integration.http_origin import HttpOrigin

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway() -> AsyncIterator[GatewayFactory]:
    """`await make_gateway(**config)`: a started gateway, drained when the test ends."""
    running: list[Gateway] = []

    async def make(**config: Any) -> Gateway:
        gateway = Gateway(load_gateway_config(config))
        await gateway.start()
        running.append(gateway)
        return gateway

    yield make
    for gateway in running:
        if not gateway.draining:
            await gateway.drain(1.0)


@pytest.fixture
async def origins() -> AsyncIterator[list[HttpOrigin]]:
    started = [await HttpOrigin(f"o{i}").start() for i in range(2)]
    yield started
    for origin in started:
        await origin.stop()
