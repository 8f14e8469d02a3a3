"""What `connwise gateway --check` must refuse because start would: the core policies' own
checks run at validation with errors naming the full key path, ports past 65535, blank admin
tokens; and SNI names are matched case-insensitively."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.core.health import HealthConfig
from connwise.errors import ConfigError
from connwise.gateway.upstreams import Group

BASE: dict[str, Any] = {"listeners": [{"name": "w", "kind": "http", "bind": "127.0.0.1:0"}],
                        "groups": {"app": {"backends": ["127.0.0.1:9001"]}}}


def with_(**sections: Any) -> dict[str, Any]:
    return {**BASE, **sections}


@pytest.mark.parametrize(("config", "message"), [
    (with_(groups={"app": {"backends": ["127.0.0.1:9001"],
                           "health": {"base_ejection_time": 60, "max_ejection_time": 30}}}),
     "groups.app.health.max_ejection_time = 30.0: the cap must be finite and at least "
     "base_ejection_time"),
    (with_(escalation={"activity": [{"name": "busy", "to_class": "vip"}]}),
     "escalation.activity[0].to_class = 'vip': no such priority class"),
    (with_(escalation={"activity": [{"name": "busy", "classes": ["bulk", "gold"]}]}),
     "escalation.activity[0].classes = 'gold': no such priority class"),
    (with_(escalation={"groups": [{"name": "doc", "to_class": "vip"}]}),
     "escalation.groups[0].to_class = 'vip': no such priority class"),
    (with_(groups={"app": {"backends": ["127.0.0.1:9001", "127.0.0.1:99999"]}}),
     "groups.app.backends[1] = '127.0.0.1:99999': the port must be in 0..65535"),
    (with_(listeners=[{"name": "w", "kind": "http", "bind": "0.0.0.0:65536"}]),
     "listeners[0].bind = '0.0.0.0:65536': the port must be in 0..65535"),
    (with_(admin={"bind": "127.0.0.1:70000", "token": "t"}),
     "admin.bind = '127.0.0.1:70000': the port must be in 0..65535"),
    (with_(admin={"token": ""}),
     "admin.token = '': a blank token would mean no token, that is anonymous access; set a "
     "secret"),
    (with_(admin={"bind": "0.0.0.0:9901", "token": "  \t"}),
     "admin.token = '  \\t': a blank token"),
    (with_(telemetry={"store": "t.db", "retention": {"max_age": "soon"}}),
     "telemetry.retention.max_age = 'soon': not a duration"),
    (with_(telemetry={"store": "t.db", "retention": {"max_bytes": "10KB"}}),
     "telemetry.retention.max_bytes = 10000: input should be greater than or equal to 65536"),
    (with_(telemetry={"store": "t.db", "retention": {"max_age": 0}}),
     "telemetry.retention.max_age = 0: input should be greater than 0"),
    (with_(telemetry={"store": "t.db", "retention": {"chunk": 0}}),
     "telemetry.retention.chunk = 0: input should be greater than or equal to 1"),
    # HTTP trims the header value, so such a token never matches; and it is not echoed.
    (with_(admin={"token": "s3cret\n"}),
     "admin.token = '***': the token starts or ends with white space"),
    # A host name that only starts like a loopback address resolves to anything.
    (with_(admin={"bind": "127.attacker.example:9901", "allow_anonymous": True}),
     "admin.bind = '127.attacker.example:9901': anonymous admin access is only allowed on a "
     "loopback address"),
    (with_(admin={"bind": "localhost:9901", "allow_anonymous": True}),
     "admin.bind = 'localhost:9901': anonymous admin access is only allowed on a loopback"),
])
def test_refused_with_the_full_key_path(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(config)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("bind", ["127.0.0.1:9901", "127.1.2.3:0", "[::1]:9901"])
def test_anonymous_admin_access_on_a_loopback_address(bind: str) -> None:
    config = load_gateway_config(with_(admin={"bind": bind, "allow_anonymous": True}))
    assert config.admin is not None and config.admin.token is None


def test_the_highest_port_and_the_classes_of_escalation_rules_pass() -> None:
    config = load_gateway_config(with_(
        groups={"app": {"backends": ["127.0.0.1:65535"]}},
        escalation={"activity": [{"name": "busy", "to_class": "critical",
                                  "classes": ["bulk"]}]}))
    assert config.groups["app"].backends == ["127.0.0.1:65535"]


def test_sni_names_are_lowercased() -> None:
    config = load_gateway_config(with_(listeners=[
        {"name": "t", "kind": "tcp", "bind": "127.0.0.1:0", "sni": {"API.Example.COM": "app"}}]))
    assert config.listeners[0].sni == {"api.example.com": "app"}


def test_a_duplicate_sni_name_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"listed twice \(names are case-insensitive\), keep one"):
        load_gateway_config(with_(listeners=[
            {"name": "t", "kind": "tcp", "bind": "127.0.0.1:0",
             "sni": {"A.example": "app", "a.example": "app"}}]))


def test_the_core_health_error_names_the_group() -> None:
    # A section built without validation (model_construct) still fails in the group with the
    # full key path, not the core's bare `health.`.
    config = load_gateway_config(BASE)
    group = config.groups["app"]
    bad = group.model_copy(update={"health": group.health.model_copy(
        update={"max_ejection_time": 1.0})})
    with pytest.raises(ConfigError, match=r"^groups\.app\.health\.max_ejection_time = 1\.0"):
        Group("app", bad, config.class_table(), lambda: 0.0)


def test_the_health_section_becomes_the_core_config() -> None:
    section = load_gateway_config(BASE).groups["app"].health
    assert section.core("groups.app.health") == HealthConfig(
        rise=2, fall=3, interval=5.0, timeout=2.0, consecutive_failures=5,
        base_ejection_time=30.0, max_ejection_time=300.0, max_ejection_percent=10.0,
        slow_start=10.0)


def test_a_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """TOML is UTF-8: a file in another encoding is refused by name and byte, not with a
    UnicodeDecodeError (a traceback from the command line)."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('node_id = "gw-\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.toml.*not UTF-8 \(byte 0xe9 at offset 14\)"):
        load_gateway_config(path)


def test_telemetry_retention_takes_the_cli_s_units() -> None:
    config = load_gateway_config(with_(telemetry={
        "store": "t.db", "retention": {"max_age": "7d", "max_bytes": "2GiB", "interval": "5m",
                                       "chunk": 500}}))
    retention = config.telemetry.retention.retention()
    assert (retention.max_age, retention.max_bytes, retention.interval, retention.chunk) == (
        7 * 86400, 2 * 1024**3, 300, 500)
    default = load_gateway_config(with_(telemetry={"store": "t.db"})).telemetry.retention
    assert (default.max_age, default.max_bytes, default.chunk) == (30 * 86400, None, 10_000)
    off = load_gateway_config(with_(telemetry={"store": "t.db", "retention": {
        "max_age": "off", "max_bytes": "OFF"}})).telemetry.retention
    assert (off.max_age, off.max_bytes) == (None, None)
