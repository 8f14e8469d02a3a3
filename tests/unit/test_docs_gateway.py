"""docs/gateway.md documents every configuration key."""

import typing
from pathlib import Path

from pydantic import BaseModel

from connwise import config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()


def keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def models(root: type[BaseModel]) -> set[type[BaseModel]]:
    """`root` and every model its fields hold, however deep (lists, dicts, optionals): a new
    section is checked without anyone listing it here."""
    found: set[type[BaseModel]] = set()
    todo: list[object] = [root]
    while todo:
        kind = todo.pop()
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if kind not in found:
                found.add(kind)
                todo.extend(field.annotation for field in kind.model_fields.values())
        else:
            todo.extend(typing.get_args(kind))
    return found


def test_every_config_key_is_documented() -> None:
    every = models(config.GatewayConfig)
    assert {config.HttpSection, config.StepConfig, config.UserRuleConfig} <= every
    missing = sorted(f"{m.__name__}.{k}" for m in every for k in keys(m) if f"`{k}`" not in DOC)
    assert not missing, f"docs/gateway.md misses {missing}"
