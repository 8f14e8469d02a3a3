"""The docs stay true to the code they describe."""

import re
from pathlib import Path

from connwise.core.lifecycle import state_diagram

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_pool_doc_holds_the_generated_state_diagram() -> None:
    assert state_diagram() in (DOCS / "pool.md").read_text()


def test_pool_doc_lists_every_counter() -> None:
    from connwise.core.pooling import COUNTERS

    text = (DOCS / "pool.md").read_text()
    missing = [name for name in COUNTERS if name not in text]
    assert not missing, f"docs/pool.md does not mention counters {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


def test_relative_links_and_anchors_resolve() -> None:
    root = DOCS.parent
    pages = [root / "README.md", root / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = page.parent / path if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and not file.is_dir():
                headings = [_slug(line.lstrip("#")) for line in
                            _prose(file.read_text()).splitlines() if line.startswith("#")]
                if anchor not in headings:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
