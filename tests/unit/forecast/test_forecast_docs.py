"""docs/forecast.md names every CLI command and option and every configuration key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer.main

from connwise.forecast.cli import DEFAULT_MODEL_TEXT, forecast_app
from connwise.forecast.forecaster import ForecasterConfig
from connwise.forecast.models import DEFAULT_MODELS, MODEL_FACTORIES
from connwise.forecast.planner import PlannerConfig
from connwise.forecast.shadow import ShadowRules

DOC = (Path(__file__).resolve().parents[3] / "docs" / "forecast.md").read_text()


def test_every_command_and_option_is_documented() -> None:
    group: Any = typer.main.get_command(forecast_app)
    assert sorted(group.commands) == ["backtest", "fit", "plan", "predict"]
    missing = []
    for name, command in group.commands.items():
        if f"connwise forecast {name}" not in DOC:
            missing.append(name)
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help" and opt not in DOC:
                    missing.append(f"{name} {opt}")
    assert not missing, f"docs/forecast.md misses {missing}"


def test_every_config_key_and_model_is_documented() -> None:
    for config in (ForecasterConfig, PlannerConfig, ShadowRules):
        for field in dataclasses.fields(config):
            assert f"`{field.name}`" in DOC or f"{field.name}=" in DOC, field.name
    for name in MODEL_FACTORIES:
        assert f"`{name}`" in DOC, name


def test_cli_import_is_light_and_its_default_models_are_the_packages() -> None:
    assert ",".join(DEFAULT_MODELS) == DEFAULT_MODEL_TEXT
    code = ("import sys, connwise.forecast.cli; "
            "print(sorted(m for m in ('pandas', 'statsforecast', 'lightgbm', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
