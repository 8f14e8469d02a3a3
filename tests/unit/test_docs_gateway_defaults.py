"""docs/gateway.md's default column says what the configuration models default to.

Each `### heading` of the configuration reference is mapped to its pydantic model; every row's
key must be a field of that model, and a default written as a TOML value (a number, a quoted
string, `true`/`false`, a list, an inline table) must equal the field's default.
Defaults written in words (`required`, `none`, `calibrated`, ...) are checked where the words
are unambiguous: `required` means no default, `none` means `None`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from connwise import config

DOC = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
REFERENCE = DOC[DOC.index("## Configuration reference"):DOC.index("## Not yet built")]

SECTIONS: dict[str, type[BaseModel]] = {
    "top level": config.GatewayConfig,
    "`[[listeners]]`": config.ListenerConfig,
    "`[[routes]]`": config.RouteConfig,
    "`[groups.NAME]`": config.GroupConfig,
    "`[groups.NAME.health]`": config.HealthCheckConfig,
    "`[limits]`": config.LimitsConfig,
    "`[http]`": config.HttpSection,
    "`[escalation]`": config.EscalationSection,
    "`[cqi]`": config.CqiSection,
    "`[degrade]`": config.DegradeSection,
    "`[telemetry]`": config.TelemetrySection,
    "`[forecast]`": config.ForecastSection,
    "`[zombies]`": config.ZombieSection,
    "`[admin]`": config.AdminConfig,
}
# Tables that follow a section's own table inside the same `###` section.
EXTRA_TABLES: dict[str, type[BaseModel]] = {"`max_age`": config.RetentionSection}


def tables() -> list[tuple[str, type[BaseModel], list[tuple[str, str]]]]:
    """(section, model, [(key cell, default cell)]) per table of the reference."""
    found = []
    parts = re.split(r"^### (.+)$", REFERENCE, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        model = SECTIONS[heading]  # KeyError: a new section; map it above
        for table in re.findall(r"(?:^\|.*\n)+", body, flags=re.MULTILINE):
            rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
                    for line in table.splitlines()[2:]]
            first = rows[0][0] if rows else ""
            found.append((heading, EXTRA_TABLES.get(first, model),
                          [(row[0], row[1]) for row in rows]))
    return found


def fields(model: type[BaseModel]) -> dict[str, Any]:
    return {field.alias or name: field for name, field in model.model_fields.items()}


def field_name(model: type[BaseModel], key: str) -> str:
    return next(n for n, f in model.model_fields.items() if (f.alias or n) == key)


def literal(text: str) -> tuple[bool, Any]:
    """The value a default cell spells as TOML (`"p2c"`, `[300, 600]`, `{http = 0.5}`, 30,
    true), if it spells one."""
    try:
        return True, tomllib.loads(f"value = {text.strip('`')}")["value"]
    except tomllib.TOMLDecodeError:
        return False, None


def comparable(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list | tuple):
        return [comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    return value


CASES = [(heading, model, key, default) for heading, model, rows in tables()
         for keys, default in rows for key in [keys]]


def test_every_section_is_checked() -> None:
    assert {heading for heading, *_ in CASES} == set(SECTIONS)
    assert len(CASES) > 100


@pytest.mark.parametrize(("heading", "model", "keys", "default"), CASES,
                         ids=[f"{h} {k}" for h, _, k, _ in CASES])
def test_documented_default_is_the_models(heading: str, model: type[BaseModel], keys: str,
                                          default: str) -> None:
    names = re.findall(r"`(\w+)`", keys)
    # `a` / `b` with `1 / 2`: one default each
    defaults = default.split(" / ") if len(names) > 1 else [default]
    if len(defaults) != len(names):
        defaults = [default] * len(names)
    known = fields(model)
    for name, written in zip(names, defaults, strict=True):
        assert name in known, f"{heading}: `{name}` is not a key of {model.__name__}"
        field = known[name]
        actual = field.get_default(call_default_factory=True)
        cell = re.sub(r"\s*\(.*\)$", "", written)  # none (off), `"30d"` (2592000 s)
        if cell == "required":
            assert field.is_required(), f"{heading} {name}: documented as required"
            continue
        assert not field.is_required(), f"{heading} {name}: required, documented {cell!r}"
        if cell == "none":
            assert actual is None, f"{heading} {name}: documented none, default {actual!r}"
            continue
        spelled, value = literal(cell)
        if spelled and actual is not PydanticUndefined:
            if comparable(actual) != comparable(value) and not any(
                    f.is_required() for f in known.values()):
                # a value the model parses (`"30d"` -> 2592000.0, `"off"` -> None)
                value = getattr(model.model_validate({name: value}), field_name(model, name))
            assert comparable(actual) == comparable(value), (
                f"{heading} {name}: docs/gateway.md says {cell}, "
                f"{model.__name__} defaults to {actual!r}")
