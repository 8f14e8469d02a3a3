"""docs/gateway.md documents every configuration key."""

from pathlib import Path

from pydantic import BaseModel

from connwise import config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()


def keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def test_every_config_key_is_documented() -> None:
    models: list[type[BaseModel]] = [
        config.GatewayConfig, config.ListenerConfig, config.RouteConfig, config.GroupConfig,
        config.HealthCheckConfig, config.LimitsConfig, config.AdminConfig, config.ClassConfig,
        config.EscalationSection, config.ActivityRuleConfig, config.GroupRuleConfig,
        config.TelemetrySection, config.ForecastSection, config.ZombieSection,
        config.CqiSection, config.WeightsConfig, config.BandConfig, config.UserRuleConfig,
        config.DegradeSection, config.StepConfig]
    missing = [f"{m.__name__}.{k}" for m in models for k in keys(m) if f"`{k}`" not in DOC]
    assert not missing, f"docs/gateway.md misses {missing}"
