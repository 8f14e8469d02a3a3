"""The docs cover every `connwise` command and every option of it.

The commands and options come from the typer app itself (`typer.main.get_command`), so a new
command or option is checked without anyone listing it here. Each command is looked up in
docs/cli.md's summary; its options in the section of the doc that describes the command (the
page docs/cli.md points to for it), so that an option named only in another command's section
does not count.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from connwise.cli import app

DOCS = Path(__file__).resolve().parents[2] / "docs"

# Where each command's options are described: (file, heading of the section). A section runs
# from its heading to the next heading of the same or a higher level (a page's title: to its
# first `##` heading).
WHERE: dict[str, tuple[str, str]] = {
    "connwise": ("cli.md", "# The `connwise` command"),
    "connwise demo": ("cli.md", "## `connwise demo gateway` (and plain `connwise demo`)"),
    "connwise demo gateway": ("cli.md", "## `connwise demo gateway` (and plain `connwise demo`)"),
    "connwise demo pool": ("cli.md", "## `connwise demo pool`"),
    "connwise gateway": ("cli.md", "# The `connwise` command"),
    "connwise simulate": ("simulator.md", "## CLI"),
    "connwise assess": ("telemetry.md", "## The assessment"),
    "connwise ingest nginx": ("telemetry.md", "## Ingesting existing logs"),
    "connwise ingest haproxy": ("telemetry.md", "## Ingesting existing logs"),
    "connwise telemetry export": ("telemetry.md", "## Stores"),
    "connwise telemetry retain": ("telemetry.md", "## Stores"),
    "connwise forecast backtest": ("forecast.md", "## CLI"),
    "connwise forecast fit": ("forecast.md", "## CLI"),
    "connwise forecast predict": ("forecast.md", "## CLI"),
    "connwise forecast plan": ("forecast.md", "## CLI"),
}


def section(file: str, heading: str) -> str:
    lines = (DOCS / file).read_text().splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    start = lines.index(heading)  # ValueError: the heading moved; update WHERE
    end = len(lines)
    in_code = False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            in_code = not in_code
        match = re.match(r"(#+) ", lines[i])
        if not in_code and match and len(match.group(1)) <= max(level, 2):
            end = i
            break
    return "\n".join(lines[start:end])


def commands() -> dict[str, Any]:
    """Every command of the app, groups included, by its full name."""
    found: dict[str, Any] = {}
    todo = [("connwise", typer.main.get_command(app))]
    while todo:
        name, command = todo.pop()
        found[name] = command
        for sub_name, sub in (getattr(command, "commands", None) or {}).items():
            todo.append((f"{name} {sub_name}", sub))
    return found


def options(command: Any) -> list[str]:
    return [name for param in command.params if param.param_type_name == "option"
            for name in [*param.opts, *param.secondary_opts]]


def mentioned(option: str, text: str) -> bool:
    # `--k` must not be found in `--keep`, nor `-o` in `--out`
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def summary_commands() -> set[str]:
    """The commands the summary block at the top of docs/cli.md names (`a|b` spelled out)."""
    text = (DOCS / "cli.md").read_text()
    block = text.split("```", 2)[1]
    named: set[str] = set()
    for line in block.splitlines():
        words = line.split()
        if not words or words[0] != "connwise":
            continue
        paths = ["connwise"]
        for word in words[1:3]:
            if not re.fullmatch(r"[a-z]+(\|[a-z]+)*", word):
                break
            paths = [f"{p} {alt}" for p in paths for alt in word.split("|")]
            named.update(paths)
    return named


def test_every_command_is_in_the_cli_summary() -> None:
    found = commands()
    assert set(found) == set(WHERE) | {"connwise telemetry", "connwise ingest",
                                       "connwise forecast"}, "a new command: add it to WHERE"
    missing = sorted(set(found) - summary_commands() - {"connwise"})
    assert not missing, f"docs/cli.md's summary does not name {missing}"


@pytest.mark.parametrize("name", sorted(WHERE))
def test_every_option_is_documented_with_its_command(name: str) -> None:
    command = commands()[name]
    text = section(*WHERE[name])
    missing = [option for option in options(command) if not mentioned(option, text)]
    assert not missing, f"{name}: {missing} not in {WHERE[name][0]} {WHERE[name][1]!r}"
