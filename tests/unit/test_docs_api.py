"""The docs cover the public API: `connwise.Pool` in docs/pool.md, and what the packages export.

Names come from the code (`vars(Pool)`, a pool's attributes, the constructor's signature,
`__all__`), so a new method, argument or export is checked without anyone listing it here.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

import connwise
from connwise.pool.drivers.tcp import TcpDriver

DOCS = Path(__file__).resolve().parents[2] / "docs"
POOL_DOC = (DOCS / "pool.md").read_text()


def section(text: str, heading: str) -> str:
    """From `heading` to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n")
    rest = text[start + len(heading) + 2:]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def backticked(name: str, text: str) -> bool:
    """`name` at the start of a code span: `name`, `name(...)`, `await name(...)`, `name` in a
    list of names such as `driver`, `name`."""
    return re.search(rf"`(await )?{re.escape(name)}[`( ]", text) is not None


def test_pool_doc_covers_every_public_method_and_property() -> None:
    methods = section(POOL_DOC, "## Methods")
    public = [name for name in vars(connwise.Pool) if not name.startswith("_")]
    assert {"acquire", "set_target", "policy"} <= set(public)
    missing = [name for name in public if not backticked(name, methods)]
    assert not missing, f"docs/pool.md's methods table misses {missing}"


def test_pool_doc_covers_every_public_attribute() -> None:
    pool = connwise.Pool(TcpDriver("127.0.0.1", 9))  # not opened: no connection is made
    public = [name for name in vars(pool) if not name.startswith("_")]
    assert "zombies" in public
    missing = [name for name in public if not backticked(name, section(POOL_DOC, "## Methods"))]
    assert not missing, f"docs/pool.md's methods table misses the attributes {missing}"


def constructor_rows() -> dict[str, str]:
    """`argument` -> the default column of docs/pool.md's constructor table; a row naming
    several arguments (`a` / `b` / `c` with `1 / 2 / 3 s`) gives each its own default."""
    rows: dict[str, str] = {}
    for line in section(POOL_DOC, "## Constructor").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        defaults = cells[1].split(" / ")
        if len(defaults) != len(names):
            defaults = [cells[1]] * len(names)
        rows.update(zip(names, defaults, strict=True))
    return rows


def test_pool_doc_lists_every_constructor_argument() -> None:
    params = list(inspect.signature(connwise.Pool).parameters)[1:]  # after the driver
    missing = [name for name in params if name not in constructor_rows()]
    assert not missing, f"docs/pool.md's constructor table misses {missing}"


def test_pool_doc_constructor_defaults_match_the_signature() -> None:
    """The numbers and strings of the default column are the signature's defaults."""
    rows = constructor_rows()
    checked = 0
    for name, param in inspect.signature(connwise.Pool).parameters.items():
        default, documented = param.default, rows.get(name)
        if documented is None:
            continue
        number = re.fullmatch(r"([\d.]+)( s)?", documented)
        if isinstance(default, int | float) and not isinstance(default, bool) and number:
            assert float(number.group(1)) == default, f"{name}: doc {documented}, code {default}"
            checked += 1
        elif isinstance(default, str):
            assert documented == f'`"{default}"`', f"{name}: doc {documented}, code {default!r}"
            checked += 1
    assert checked >= 12


@pytest.mark.parametrize(("package", "doc"), [
    ("connwise", "pool.md"),
    ("connwise.forecast", "forecast.md"),
    ("connwise.sim", "simulator.md"),
    ("connwise.demo", "cli.md"),
])
def test_every_export_is_documented(package: str, doc: str) -> None:
    text = (DOCS / doc).read_text() + (DOCS / "cli.md").read_text()  # cli.md: __version__
    names = importlib.import_module(package).__all__
    missing = [name for name in names if not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text)]
    assert not missing, f"{package} exports {missing}, which docs/{doc} does not mention"
