"""The `[telemetry]` keys that say where a client record's region and device come from: a bad
header name is refused with the configuration, a bad CIDR table when the gateway reads it,
both naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connwise.config import load_gateway_config
from connwise.errors import ConfigError
from connwise.telemetry.clientinfo import ClientSegments

BASE: dict[str, Any] = {"listeners": [{"name": "w", "kind": "http", "bind": "127.0.0.1:0"}],
                        "groups": {"app": {"backends": ["127.0.0.1:9001"]}}}


def _telemetry(**keys: Any) -> Any:
    return load_gateway_config({**BASE, "telemetry": keys}).telemetry


def test_off_by_default_and_set_from_the_section(tmp_path: Path) -> None:
    section = _telemetry()
    assert (section.regions, section.region_header, section.device_header) == (None, None, None)
    table = tmp_path / "regions.txt"
    table.write_text("10.0.0.0/8 internal\n")
    section = _telemetry(regions=str(table), region_header="CloudFront-Viewer-Country",
                         device_header="Sec-CH-UA-Platform")
    assert section.regions == str(table)
    assert section.region_header == "CloudFront-Viewer-Country"


def test_a_bad_table_is_refused_with_the_key_and_the_line(tmp_path: Path) -> None:
    # The configuration names the file; the gateway (and `--check`) reads it.
    with pytest.raises(ConfigError, match=r"^telemetry\.regions = .*cannot be read"):
        ClientSegments.from_config(_telemetry(regions=str(tmp_path / "missing.txt")))
    table = tmp_path / "regions.txt"
    table.write_text("10.0.0.0/8 internal\n10.0.0.0/40 broken\n")
    with pytest.raises(ConfigError, match=r"^telemetry\.regions \(.*regions\.txt:2\) = "
                                          r"'10\.0\.0\.0/40': not a network"):
        ClientSegments.from_config(_telemetry(regions=str(table)))


@pytest.mark.parametrize("key", ["region_header", "device_header"])
@pytest.mark.parametrize("name", ["", "X Region", "X-Region:", "Ü"])
def test_a_bad_header_name_is_refused(key: str, name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^telemetry\.{key} = .*a header name is"):
        _telemetry(**{key: name})
