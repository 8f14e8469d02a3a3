"""The exit code the `--workers` master reports for its workers."""

from __future__ import annotations

import signal

from connwise.gateway.serve import exit_code


def test_a_worker_killed_by_a_signal_is_128_plus_its_number() -> None:
    """`waitstatus_to_exitcode` gives -N for a death by signal N, which `sys.exit` turned into
    256 - N (247 for SIGKILL): neither the shell's 137 nor anything documented."""
    assert exit_code(-signal.SIGKILL) == 137
    assert exit_code(-signal.SIGTERM) == 143
    assert exit_code(2) == 2 and exit_code(0) == 0
