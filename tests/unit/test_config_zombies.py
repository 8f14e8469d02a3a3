"""The `[zombies]` section of the gateway configuration: on and report-only by default, the core
rules validated with errors that name the key path and the bad value."""

from __future__ import annotations

from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.core.zombies import ZombieRules
from connwise.errors import ConfigError

BASE: dict[str, Any] = {"listeners": [{"name": "w", "kind": "http", "bind": "127.0.0.1:0"}],
                        "groups": {"app": {"backends": ["127.0.0.1:9001"]}}}


def test_on_and_report_only_by_default() -> None:
    section = load_gateway_config(BASE).zombies
    assert section.enabled and not section.reclaim
    assert (section.grace, section.interval, section.floor) == (30.0, 1.0, 10.0)
    assert section.segment == ["listener", "kind"]
    assert section.rules() == ZombieRules(floor=10.0, leak_threshold=None)


def test_a_section_from_toml() -> None:
    config = load_gateway_config('''
        [[listeners]]
        name = "w"
        kind = "http"
        bind = "127.0.0.1:0"
        [groups.app]
        backends = ["127.0.0.1:9001"]
        [zombies]
        reclaim = true
        grace = 60
        k = 4
        segment = ["listener", "class"]
    ''')
    assert config.zombies.reclaim and config.zombies.grace == 60.0
    assert config.zombies.rules().k == 4.0 and config.zombies.segment == ["listener", "class"]


@pytest.mark.parametrize(("zombies", "message"), [
    ({"k": 0.5}, "zombies.k = 0.5: a multiple below 1"),
    ({"quantile": 1.0}, "zombies.quantile = 1.0: the quantile must lie in [0.5, 1)"),
    ({"floor": 500.0}, "zombies.floor = 500.0: the floor must be positive and at most "
                       "default_threshold (300.0)"),
    ({"min_samples": 0}, "zombies.min_samples = 0"),
    ({"grace": -1}, "zombies.grace = -1"),
    ({"interval": 0}, "zombies.interval = 0"),
    ({"segment": ["region"]}, "zombies.segment[0] = 'region'"),
    ({"segment": ["kind", "kind"]}, "zombies.segment = ['kind', 'kind']: name each key once"),
    ({"reclaim_after": 3}, "zombies.reclaim_after = 3: extra inputs are not permitted"),
])
def test_bad_values_name_their_key(zombies: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_gateway_config({**BASE, "zombies": zombies})
    assert str(caught.value).startswith(message), str(caught.value)
