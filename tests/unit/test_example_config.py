"""examples/gateway.toml is valid as shipped and with every commented-out block switched on, so
an operator who uncomments a block gets a working configuration (the blocks' keys and values
are checked, not only the live part)."""

from __future__ import annotations

import re
from pathlib import Path

from connwise.config import load_gateway_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
#: A commented-out table header or `key = value` line (prose comments have no ` = ` after a key).
_COMMENTED = re.compile(r"^# (\[.*\]|[a-z_]+ = .*)$")


def test_the_example_loads_as_shipped() -> None:
    config = load_gateway_config(EXAMPLE)
    assert config.admin is not None and config.groups


def test_the_example_loads_with_every_block_uncommented() -> None:
    lines = [line[2:] if _COMMENTED.match(line) else line
             for line in EXAMPLE.read_text().splitlines()]
    config = load_gateway_config("\n".join(lines), "examples/gateway.toml, uncommented")
    assert config.cqi.user and config.cqi.user[0].header == "x-user-tier"
    assert config.degrade.max_level == {"critical": 3}
    assert config.telemetry.store is not None
    assert config.telemetry.retention.max_bytes == 2 * 1024**3
    assert config.forecast.enabled and config.forecast.mode == "forecast_only"
