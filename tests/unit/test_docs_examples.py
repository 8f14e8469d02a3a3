"""The ```python blocks of README.md and docs/*.md compile and import what exists.

Running them needs services and files of the reader's (a database at `db`, a model registry),
so this checks what can go stale without them: the syntax (top-level `await` and `async with`
allowed, as in a notebook or `python -m asyncio`), every `import` and `from ... import`, and the
blocks that are a bare signature (`TcpDriver(host, port, *, greeting=None, ...)`) against the
signature of the class the page imports under that name.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
            line = text.count("\n", 0, match.start()) + 1
            found.append((page.relative_to(ROOT).as_posix(), line, match.group(1)))
    return found


def signature_block(source: str) -> tuple[str, str] | None:
    """`Name(params)` alone in a block: the name and the parameter list."""
    match = re.fullmatch(r"\s*(\w+)\((.*)\)\s*", source, re.DOTALL)
    return (match.group(1), match.group(2)) if match else None


def imported(page: str) -> dict[str, object]:
    """The names the page's python blocks import, as objects."""
    names: dict[str, object] = {}
    for name, _, source in blocks():
        if name != page or signature_block(source):
            continue
        tree = compile(source, page, "exec",
                       flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                names.update({a.asname or a.name: getattr(module, a.name, None)
                              for a in node.names})
    return names


@pytest.mark.parametrize(("page", "line", "source"), blocks(),
                         ids=[f"{page}:{line}" for page, line, _ in blocks()])
def test_python_block_compiles_and_imports(page: str, line: int, source: str) -> None:
    if (sig := signature_block(source)) is not None and "*" in sig[1]:
        name, params = sig
        documented = ast.parse(f"def {name}({params}): pass").body[0]
        assert isinstance(documented, ast.FunctionDef)
        target = imported(page).get(name)
        assert target is not None, f"{page}:{line}: {name} is not imported by any block of the page"
        actual = inspect.signature(target)  # type: ignore[arg-type]
        shown = inspect.signature(_function(documented))
        assert [(p.name, p.kind, p.default) for p in shown.parameters.values()] == [
            (p.name, p.kind, p.default) for p in actual.parameters.values()
        ], f"{page}:{line}: the doc says {name}{shown}, the code {name}{actual}"
        return
    tree = compile(source, f"{page}:{line}", "exec",
                   flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), (
                    f"{page}:{line}: {node.module} has no {alias.name}")


def _function(node: ast.FunctionDef) -> Callable[..., Any]:
    """The documented signature as a function, its defaults evaluated (None, numbers)."""
    namespace: dict[str, object] = {}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "<doc>", "exec"), namespace)
    function = namespace[node.name]
    assert callable(function)
    return function
