"""The docs stay true to the code they describe."""

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
