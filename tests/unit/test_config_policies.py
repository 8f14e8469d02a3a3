"""`[cqi]`, `[degrade]` (and a group's `degrade`) and the smaller policy keys: defaults that
equal the core's, values that reach the core's configs, and errors that name the key path."""

from __future__ import annotations

from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.core.cqi import CqiConfig, HeaderScore
from connwise.core.degrade import QUEUE, DegradeConfig
from connwise.errors import ConfigError


def config(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "groups": {"app": {"backends": ["127.0.0.1:9"]}},
    }
    data.update(extra)
    return data


def test_defaults_are_the_cores() -> None:
    loaded = load_gateway_config(config())
    assert loaded.cqi_config() == CqiConfig()
    assert loaded.degrade_config("app") == DegradeConfig()


def test_values_reach_the_core_configs() -> None:
    loaded = load_gateway_config(config(
        cqi={"user": [{"header": "x-user-tier", "value": "gold", "score": 1.0}],
             "hysteresis": 0.1, "business": {"critical": 0.9, "interactive": 0.5, "bulk": 0.2}},
        degrade={"shed_backlog": 1, "max_level": {"critical": "queue"},
                 "steps": [{"enter": 0.8, "exit": 0.5}, {"enter": 0.9, "exit": 0.4},
                           {"enter": 1.2, "exit": 0.8}, {"enter": 1.5, "exit": 1.0}]}))
    cqi = loaded.cqi_config()
    assert cqi.user == (HeaderScore("x-user-tier", "gold", 1.0),)
    assert cqi.hysteresis == 0.1 and cqi.business["critical"] == 0.9
    ladder = loaded.degrade_config("app")
    assert ladder.shed_backlog == 1 and ladder.max_level == {"critical": QUEUE}
    assert ladder.steps[0].enter == 0.8


def test_custom_classes_get_calibrated_bands_unless_given() -> None:
    classes = {"gold": {"rank": 2}, "silver": {"rank": 1, "aging_rate": 0.1},
               "lead": {"rank": 0, "aging_rate": 0.1}}
    loaded = load_gateway_config(config(classes=classes, listeners=[
        {"name": "web", "kind": "http", "bind": "127.0.0.1:0", "class": "silver"}]))
    assert [b.class_name for b in loaded.cqi_config().bands] == ["gold", "silver", "lead"]
    given = load_gateway_config(config(classes=classes, listeners=[
        {"name": "web", "kind": "http", "bind": "127.0.0.1:0", "class": "silver"}],
        cqi={"bands": [{"min_score": 0.5, "class": "gold"}, {"min_score": 0, "class": "lead"}]}))
    assert [b.class_name for b in given.cqi_config().bands] == ["gold", "lead"]


@pytest.mark.parametrize(("extra", "key"), [
    ({"degrade": {"max_level": {"gold": 3}}}, "degrade.max_level.gold"),
    ({"degrade": {"max_level": {"critical": 7}}}, "degrade.max_level.critical"),
    ({"degrade": {"max_level": {"critical": "loud"}}}, "degrade.max_level"),
    ({"degrade": {"steps": [{"enter": 1, "exit": 0.5}]}}, "degrade.steps"),
    ({"degrade": {"steps": [{"enter": 1, "exit": 1.5}] * 4}}, "degrade.steps[0]"),
    ({"degrade": {"overrides": {"nope": [{"enter": 1, "exit": 0.5}] * 4}}},
     "degrade.overrides.nope"),
    ({"degrade": {"shed_backlog": -1}}, "degrade.shed_backlog"),
    ({"cqi": {"bands": [{"min_score": 0.5, "class": "gold"}, {"min_score": 0, "class": "bulk"}]}},
     "cqi.bands[0].class"),
    ({"cqi": {"bands": [{"min_score": 0.5, "class": "critical"}]}}, "cqi.bands"),
    ({"cqi": {"weights": {"business": -1}}}, "cqi.weights.business"),
    ({"cqi": {"user": [{"header": "x: y", "value": "a", "score": 1}]}}, "cqi.user[0].header"),
    ({"cqi": {"user": [{"header": "x-tier", "value": "a", "score": 2}]}}, "cqi.user[0].score"),
    ({"cqi": {"history": 0}}, "cqi.history"),
    ({"escalation": {"max_tracked": 0}}, "escalation.max_tracked"),
])
def test_bad_values_name_their_key(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(config(**extra))
    assert caught.value.key == key


def test_a_groups_own_ladder_is_checked_under_its_path() -> None:
    data = config()
    data["groups"]["app"]["degrade"] = {"retry_after": -1}
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(data)
    assert caught.value.key == "groups.app.degrade.retry_after"
    data["groups"]["app"]["vnodes"] = 0
    data["groups"]["app"]["degrade"] = {}
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(data)
    assert caught.value.key == "groups.app.vnodes"
