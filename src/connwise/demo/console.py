"""The demos' console: rich's, but a reader that goes away ends the output, not the run."""

from __future__ import annotations

import os
import sys

from rich.console import Console


class DemoConsole(Console):
    """A `rich.console.Console` that goes quiet when stdout's reader goes away
    (`connwise demo | head`).

    rich's default turns the broken pipe into `SystemExit` where the write happened: inside the
    event loop's tasks it skips their cleanup and asyncio prints a traceback for each of them.
    Here the rest of the output is dropped (stdout now points at /dev/null, so the interpreter's
    last flush does not fail either), the run goes on to its end and writes `--json`, and
    `broken_pipe` tells the caller to exit 1, as the Python docs advise for SIGPIPE.
    """

    broken_pipe = False

    def on_broken_pipe(self) -> None:
        self.quiet = True
        self.broken_pipe = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def demo_console() -> DemoConsole:
    """The console of `connwise demo ...`: a terminal's own width, or 110 columns in a pipe
    (wide enough for the tables)."""
    console = DemoConsole(highlight=False)
    if not console.is_terminal:
        console = DemoConsole(highlight=False, width=110)
    return console
