"""`connwise telemetry ...` and `connwise ingest ...`: typer sub-apps, thin as the house wants.

Mounted by connwise's main CLI as

    app.add_typer(telemetry_app, name="telemetry")
    app.add_typer(ingest_app, name="ingest")

Each command parses its options, calls the telemetry room and prints what happened. Errors of
the connwise taxonomy print as one red sentence on stderr and exit with status 2; an ingest in
which some file could not be read exits with status 1 after ingesting the others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from connwise.errors import ConfigError, ConnwiseError
from connwise.telemetry.clientinfo import RegionTable
from connwise.telemetry.export import FORMATS, export
from connwise.telemetry.ingest import FileSummary, HaproxyParser, NginxParser, ingest, ingest_sqlite
from connwise.telemetry.ingest.base import NO_MATCH, IngestSummary, LineParser
from connwise.telemetry.ingest.haproxy import MODES
from connwise.telemetry.ingest.nginx import DEFAULT_FORMAT, PRESETS
from connwise.telemetry.stores import DEFAULT_STORE, StoreSpec
from connwise.telemetry.units import parse_duration, parse_size, parse_time
from connwise.telemetry.writer import MIN_STORE_BYTES

T = TypeVar("T")

telemetry_app = typer.Typer(help="Connection records: export and retention.",
                            no_args_is_help=True, add_completion=False)
ingest_app = typer.Typer(help="Turn existing access logs into connection records.",
                         no_args_is_help=True, add_completion=False)

StoreOption = Annotated[str, typer.Option(
    "--store", envvar="CONNWISE_STORE",
    help="SQLite file, or postgresql://... DSN (with ?schema=name for the PostgreSQL schema).")]
SinceOption = Annotated[str | None, typer.Option(
    help="Records started at or after: Unix seconds, ISO time (UTC), or 7d/36h/90m back.")]
UntilOption = Annotated[str | None, typer.Option(help="Records started before (same forms).")]


def run_or_exit(action: Callable[[], T]) -> T:
    """Run `action`; turn a connwise error into one red line and exit status 2."""
    try:
        return action()
    except ConnwiseError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def window(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """`--since` and `--until` as Unix seconds; a window that holds no time is refused rather
    than read as a store without records."""
    start = parse_time(since, key="--since") if since else None
    end = parse_time(until, key="--until") if until else None
    if start is not None and end is not None and start >= end:
        raise ConfigError("--since/--until", f"{since} .. {until}", "--since must be before "
                          "--until", "swap them, or give a later --until")
    return start, end


# -- telemetry ---------------------------------------------------------------------------------


@telemetry_app.command("export")
def export_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet or csv.")] = "parquet",
    store: StoreOption = DEFAULT_STORE,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Write the store's records to a parquet or CSV file, oldest first."""
    def work() -> int:
        if fmt not in FORMATS:
            raise ConfigError("--format", fmt, "unknown export format", "use parquet or csv")
        spec = StoreSpec.parse(store)
        start, end = window(since, until)
        return export(spec.read(since=start, until=end), output, fmt)

    rows = run_or_exit(work)
    Console().print(f"wrote {rows} records to {output} ({fmt})", highlight=False)


@telemetry_app.command("retain")
def retain_command(
    store: StoreOption = DEFAULT_STORE,
    max_age: Annotated[str | None, typer.Option(help="Delete records older: 30d, 12h, ...")]
    = None,
    max_size: Annotated[str | None, typer.Option(help="Keep the store under: 500MB, 2GiB")]
    = None,
) -> None:
    """One retention pass now (the writer thread also runs one every minute)."""
    def work() -> int:
        age = parse_duration(max_age, key="--max-age") if max_age else None
        size = parse_size(max_size, key="--max-size") if max_size else None
        if age is None and size is None:
            raise ConfigError("--max-age/--max-size", None, "nothing to retain by",
                              "give --max-age, --max-size or both")
        # The limits `[telemetry.retention]` has (Retention.validate): past them a pass
        # deletes every record, which a typo should not do.
        if age is not None and age <= 0:
            raise ConfigError("--max-age", max_age, "an age of 0 would delete every record",
                              "use e.g. 30d")
        if size is not None and size < MIN_STORE_BYTES:
            raise ConfigError("--max-size", max_size, "a store smaller than 64 KiB cannot "
                              "hold its own schema, so every record would be deleted",
                              "use at least 64KiB, e.g. 500MB")
        return StoreSpec.parse(store).retain(max_age=age, max_bytes=size)

    deleted = run_or_exit(work)
    Console().print(f"deleted {deleted} records", highlight=False)


# -- ingest ------------------------------------------------------------------------------------


def _print_summary(summary: IngestSummary, spec: StoreSpec, console: Console) -> None:
    table = Table(title=f"Ingested into {spec}")
    for name, justify in (("file", "left"), ("lines", "right"), ("records", "right"),
                          ("malformed", "right"), ("malformed lines", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for f in summary.files:
        table.add_row(Path(f.path).name, str(f.lines), str(f.records), str(f.malformed),
                      f.error or f.describe_lines())
    console.print(table)
    for f in summary.files:
        for reason, count in f.reasons.most_common(5):
            console.print(f"  {Path(f.path).name}: {count} line(s): {reason}", highlight=False)
        if f.lines and f.malformed == f.lines and f.reasons.get(NO_MATCH):
            console.print(f"[yellow]  {Path(f.path).name}: no line matched; is the log format "
                          "right? (--log-format for nginx, --mode for HAProxy)[/yellow]")


def _run_ingest(parser: LineParser, files: list[Path], store: str, progress: bool,
                workers: int | None) -> None:
    console = Console()

    def work() -> tuple[IngestSummary, StoreSpec]:
        spec = StoreSpec.parse(store)
        if spec.kind == "sqlite":
            return ingest_sqlite(parser, files, spec.path, workers=workers,
                                 progress=progress), spec
        sink = spec.open_sink()
        try:
            return ingest(parser, files, sink, progress=progress), spec
        finally:
            sink.close()

    summary, spec = run_or_exit(work)
    _print_summary(summary, spec, console)
    console.print(f"{summary.records} records from {summary.lines} lines; "
                  f"{summary.malformed} malformed lines skipped", highlight=False)
    if any(f.error for f in summary.files):
        raise typer.Exit(1)


def _regions(path: Path | None) -> RegionTable | None:
    return RegionTable.from_file(path, key="--regions") if path is not None else None


FilesArgument = Annotated[list[Path], typer.Argument(help="Log files (.gz too).")]
RegionsOption = Annotated[Path | None, typer.Option(
    help="CIDR-to-region table: one 'network region' pair per line.")]
NodeOption = Annotated[str, typer.Option(help="Node name recorded with the records.")]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress",
                                              help="Show a progress bar on stderr.")]
WorkersOption = Annotated[int | None, typer.Option(
    min=1, help="Processes that parse into a SQLite store (default: one per CPU); 1 parses "
    "in this process. Inputs under 16 MiB and PostgreSQL stores are parsed in this process.")]


@ingest_app.command("nginx")
def ingest_nginx(
    files: FilesArgument,
    store: StoreOption = DEFAULT_STORE,
    log_format: Annotated[str, typer.Option(
        help=f"nginx log_format string, or a preset: {', '.join(PRESETS)}.")] = DEFAULT_FORMAT,
    region_var: Annotated[str | None, typer.Option(
        help="Variable holding the client region, e.g. http_x_region.")] = None,
    device_var: Annotated[str | None, typer.Option(
        help="Variable holding the device (else derived from $http_user_agent).")] = None,
    regions: RegionsOption = None,
    node: NodeOption = "ingest",
    progress: ProgressOption = True,
    workers: WorkersOption = None,
) -> None:
    """Ingest nginx access logs (combined + $request_time by default; any log_format)."""
    parser = run_or_exit(lambda: NginxParser(log_format, node=node, region_var=region_var,
                                             device_var=device_var, regions=_regions(regions)))
    _run_ingest(parser, files, store, progress, workers)


@ingest_app.command("haproxy")
def ingest_haproxy(
    files: FilesArgument,
    store: StoreOption = DEFAULT_STORE,
    mode: Annotated[str, typer.Option(help=f"Log format: {', '.join(MODES)}.")] = "auto",
    tz: Annotated[str, typer.Option(help="Zone HAProxy logged its dates in.")] = "UTC",
    regions: RegionsOption = None,
    node: NodeOption = "ingest",
    progress: ProgressOption = True,
    workers: WorkersOption = None,
) -> None:
    """Ingest HAProxy logs (option httplog and option tcplog)."""
    parser = run_or_exit(lambda: HaproxyParser(mode=mode, node=node, tz=tz,
                                               regions=_regions(regions)))
    _run_ingest(parser, files, store, progress, workers)


__all__ = ["FileSummary", "ingest_app", "run_or_exit", "telemetry_app"]
