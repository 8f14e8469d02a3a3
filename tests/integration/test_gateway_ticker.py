"""The gateway's periodic ticker survives a failing step: the CQI and escalation step raising
is logged, and the groups' ladders and health timers go on being ticked."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.integration.conftest import GatewayFactory
from tests.integration.http_origin import HttpOrigin
from tests.integration.test_gateway import web_config


async def test_a_failing_resource_step_does_not_stop_the_ticker(
        make_gateway: GatewayFactory, origins: list[HttpOrigin],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    gateway = await make_gateway(**web_config(origins[:1]))
    group = gateway.groups["app"]
    ticks: list[float] = []
    real_tick = group.tick

    def counting_tick(now: float) -> None:
        ticks.append(now)
        real_tick(now)

    def broken(now: float) -> None:
        raise RuntimeError("resource step broke")

    monkeypatch.setattr(group, "tick", counting_tick)
    monkeypatch.setattr(gateway, "observe_resources", broken)
    with caplog.at_level(logging.ERROR, logger="connwise.gateway"):
        await asyncio.sleep(2.2)  # the step runs once a second, the groups four times
    assert any("resource step broke" in r.exc_text for r in caplog.records if r.exc_text)
    assert len(ticks) >= 6, ticks
