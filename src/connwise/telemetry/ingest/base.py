"""The ingest driver: log files in, connection records out, bad lines counted and never fatal.

A parser turns one line into one row (a tuple in its `columns` order), returns None for a line
that does not have the log's shape, or raises ValueError for a line that has it but carries a
bad value. The driver writes rows in batches to the store (one transaction per batch), keeps a
progress bar on stderr, and keeps for each file the count of bad lines by reason and the first
`MAX_LINE_NUMBERS` of their line numbers, which the summary prints. Files ending in `.gz` are
read through gzip. Lines end at `\n` (a `\r` before it is left to the parsers, whose patterns
allow trailing space), so that a line's number is the count of `\n` before it, which is what
lets `connwise.telemetry.ingest.parallel` cut a file into chunks of lines and still number them.
Blank lines are skipped without comment.
"""

from __future__ import annotations

import gzip
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from connwise.errors import IngestError
from connwise.telemetry.record import Row

#: Line numbers of bad lines kept per file for the summary (the count is always exact).
MAX_LINE_NUMBERS = 1000
#: Rows per store transaction.
BATCH = 5000
NO_MATCH = "does not match the log format"
#: Month names of nginx's $time_local and HAProxy's accept date.
MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                      "Sep", "Oct", "Nov", "Dec"), start=1)}
#: HTTP statuses of requests that served nothing over the connection they held: request
#: timeout (408), closed without response (444, nginx), client gone first (499, nginx).
USELESS = frozenset({408, 444, 499})
#: The HTTP statuses a server can send (RFC 9110 defines the classes 1xx to 5xx); a log value
#: outside them is a bad value, not a record.
STATUS_MIN, STATUS_MAX = 100, 599
#: The largest integer a store holds (SQLite INTEGER, PostgreSQL BIGINT); a log value past it
#: is a bad value, not an OverflowError for the whole batch.
INT64_MAX = 2**63 - 1


class LineParser(Protocol):
    """Turns lines of one log format into rows of `columns`."""

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of the rows, in order."""
        ...

    def start_file(self, source: str, first_line: int = 1) -> Callable[[str], Row | None]:
        """The parse function for the lines of file `source` (its name goes in the records),
        called once per line (with or without its newline) from line number `first_line` on
        (a parser may number records by line)."""
        ...


class RowSink(Protocol):
    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None: ...


@dataclass(slots=True)
class FileSummary:
    path: str
    lines: int = 0
    records: int = 0
    malformed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    malformed_lines: list[int] = field(default_factory=list)
    error: str = ""

    def bad(self, lineno: int, reason: str) -> None:
        self.malformed += 1
        self.reasons[reason] += 1
        if len(self.malformed_lines) < MAX_LINE_NUMBERS:
            self.malformed_lines.append(lineno)

    def absorb(self, part: FileSummary) -> None:
        """Add the counts of `part`, the summary of the lines that follow the ones counted so
        far (a chunk parsed by a worker): line numbers stay the first `MAX_LINE_NUMBERS`."""
        self.lines += part.lines
        self.records += part.records
        self.malformed += part.malformed
        self.reasons.update(part.reasons)
        room = MAX_LINE_NUMBERS - len(self.malformed_lines)
        if room > 0:
            self.malformed_lines += part.malformed_lines[:room]

    def describe_lines(self) -> str:
        text = ", ".join(str(n) for n in self.malformed_lines)
        more = self.malformed - len(self.malformed_lines)
        return text + (f" and {more} more" if more > 0 else "")


@dataclass(slots=True)
class IngestSummary:
    files: list[FileSummary] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return sum(f.lines for f in self.files)

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def malformed(self) -> int:
        return sum(f.malformed for f in self.files)


def _open(path: Path) -> tuple[BinaryIO, io.TextIOWrapper]:
    raw = path.open("rb")
    stream: BinaryIO = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw  # type: ignore[assignment]
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="\n")
    return raw, text


def parse_lines(parse: Callable[[str], Row | None], lines: Iterable[str], summary: FileSummary,
                first_line: int = 1) -> Iterator[Row]:
    """The rows of `lines` (numbered from `first_line`); bad ones go to `summary`, and
    `summary.lines` counts the lines read. A read error (a truncated .gz) ends the rows and
    goes to `summary.error`: the rows before it are kept. The one per-line loop of both the
    serial and the parallel ingest, so that they count alike."""
    bad = summary.bad
    lineno = first_line - 1
    try:
        for lineno, line in enumerate(lines, first_line):
            try:
                row = parse(line)
            except (ValueError, KeyError, IndexError) as exc:
                bad(lineno, str(exc) or type(exc).__name__)
                continue
            if row is None:
                if line.strip():
                    bad(lineno, NO_MATCH)
                continue
            yield row
    except (OSError, EOFError) as exc:
        summary.error = f"reading {summary.path!r} stopped at line {lineno}: {exc}"
    finally:
        summary.lines = lineno - first_line + 1


def ingest(parser: LineParser, paths: Sequence[str | Path], sink: RowSink, *,
           progress: bool = True, console: Console | None = None,
           batch: int = BATCH) -> IngestSummary:
    """Parse every line of `paths` with `parser` and write the rows to `sink`.

    A file that cannot be opened is reported in its summary and skipped; the others go on.
    Raises IngestError only when no file at all could be read.
    """
    summary = IngestSummary()
    files = [Path(p) for p in paths]
    sizes = {p: (p.stat().st_size if p.is_file() else 0) for p in files}
    console = console or Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=console,
                   disable=not (progress and console.is_terminal))
    columns = parser.columns
    with bar:
        for path in files:
            result = FileSummary(str(path))
            summary.files.append(result)
            task = bar.add_task(path.name, total=sizes[path] or None)
            try:
                raw, text = _open(path)
            except OSError as exc:
                result.error = f"cannot open {str(path)!r}: {exc.strerror or exc}"
                continue
            rows = parse_lines(parser.start_file(path.name), text, result)
            with raw, text:
                while chunk := list(islice(rows, batch)):
                    sink.write(chunk, columns)
                    result.records += len(chunk)
                    bar.update(task, completed=raw.tell())
            bar.update(task, completed=sizes[path])
    fail_if_nothing_read(summary)
    return summary


def fail_if_nothing_read(summary: IngestSummary) -> None:
    """IngestError when no file gave a single line. A file whose reading stopped midway (a
    truncated .gz) does not count: its records before the break are in the store, so the run
    reports it like any file with an error rather than failing as if nothing was done."""
    if summary.files and all(f.error and not f.lines for f in summary.files):
        raise IngestError("no log file could be read: " + "; ".join(f.error for f in
                                                                   summary.files)
                          + "; check the paths and permissions.")
