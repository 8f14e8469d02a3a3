"""docs/telemetry.md stays true to the code: every field, metric and command is in it."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from connwise.telemetry.metrics import TelemetryMetrics
from connwise.telemetry.record import fields_markdown

DOC = (Path(__file__).resolve().parents[3] / "docs" / "telemetry.md").read_text()


def test_the_field_table_is_the_generated_one() -> None:
    assert fields_markdown() in DOC


def test_every_metric_name_is_documented() -> None:
    names = set(re.findall(r"connwise_\w+", TelemetryMetrics.__doc__ or ""))
    from connwise.telemetry import metrics

    names |= set(re.findall(r"connwise_\w+", metrics.__doc__ or ""))
    registry = CollectorRegistry()
    TelemetryMetrics(registry)
    scraped = {m.name for m in registry.collect()}
    assert scraped <= {n.removesuffix("_total") for n in names}
    missing = [n for n in names if f"`{n}`" not in DOC]
    assert not missing, f"docs/telemetry.md does not mention {missing}"


def test_every_command_and_option_is_documented() -> None:
    for needle in ("connwise ingest nginx", "connwise ingest haproxy", "connwise assess",
                   "telemetry export", "telemetry retain", "--log-format", "--region-var",
                   "--regions", "--mode", "--tz", "--segment", "--since", "--until", "--html",
                   "--no-html", "--format parquet|csv", "--max-age", "--max-size"):
        assert needle in DOC, needle
