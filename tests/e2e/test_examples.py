"""The examples run as people would run them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tcp_priority_example_shows_critical_overtaking_bulk() -> None:
    result = subprocess.run([sys.executable, "examples/pool_tcp_priority.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)
    p99 = {line.split(":")[0].strip(): float(line.split("p99 wait")[1].split("ms")[0])
           for line in result.stdout.splitlines() if "p99 wait" in line}
    assert set(p99) == {"critical", "bulk"}
    assert p99["critical"] < p99["bulk"] / 3, result.stdout
    assert "<Pool example [in use 0" in result.stdout
