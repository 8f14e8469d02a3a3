"""The `[forecast]` section of the gateway configuration: defaults, and errors that name the
key path and the bad value."""

from __future__ import annotations

from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.errors import ConfigError

BASE: dict[str, Any] = {"listeners": [{"name": "w", "kind": "http", "bind": "127.0.0.1:0"}],
                        "groups": {"app": {"backends": ["127.0.0.1:9001"]}}}


def test_off_by_default_with_the_issue_defaults() -> None:
    section = load_gateway_config(BASE).forecast
    assert not section.enabled and section.mode == "apply"
    assert (section.lead, section.quantile, section.max_ramp) == (600.0, 0.9, None)
    assert section.segment_by == ["group"] and section.metric == "requests"
    enabled = load_gateway_config({**BASE, "forecast": {"enabled": True, "registry": "r",
                                                        "segments": {"app": "api"}}})
    assert enabled.forecast.segments == {"app": "api"}


@pytest.mark.parametrize(("forecast", "message"), [
    ({"enabled": True}, "forecast.registry = None: forecasting needs a fitted model"),
    ({"segments": {"db": "x"}}, "forecast.segments.db = 'x': no such group"),
    ({"mode": "dry_run"}, "forecast.mode = 'dry_run'"),
    ({"quantile": 0.2}, "forecast.quantile = 0.2"),
    ({"lead": -1}, "forecast.lead = -1"),
    ({"max_ramp": 0}, "forecast.max_ramp = 0"),
    ({"segment_by": ["colour"]}, "unknown segment dimension 'colour'"),
    ({"horizons": [600, 0]}, "forecast.horizons = [600, 0]"),
    ({"metric": "bytes"}, "forecast.metric = 'bytes'"),
    ({"refresh": 60}, "forecast.refresh"),
])
def test_errors_name_the_key(forecast: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_gateway_config({**BASE, "forecast": forecast})
    assert message in str(caught.value)
