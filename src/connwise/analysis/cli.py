"""`connwise assess`: the baseline of a store as rich tables and a self-contained HTML report.

Mounted by connwise's main CLI as `app.command("assess")(assess_command)`. It lives in the
analysis room rather than in telemetry's CLI because it calls the analysis, and telemetry sits
below analysis in the house (telemetry must not import it). `app` bundles it with the telemetry
and ingest sub-apps for `python -m connwise.analysis`, the assessment toolkit on its own: ingest
logs, assess, export, before anything is deployed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from connwise.analysis.assessment import Assessment, assess
from connwise.analysis.frame import DIMENSIONS, Frame, parse_segments, zone
from connwise.analysis.recommend import recommend
from connwise.analysis.report_html import write_html
from connwise.analysis.report_term import render
from connwise.core.zombies import ZombieRules
from connwise.errors import ConfigError, StoreError
from connwise.telemetry.cli import (
    SinceOption,
    StoreOption,
    UntilOption,
    ingest_app,
    run_or_exit,
    telemetry_app,
    window,
)
from connwise.telemetry.stores import DEFAULT_STORE, StoreSpec

DEFAULT_REPORT = "connwise-assessment.html"


def run_assessment(store: str, *, since: str | None = None, until: str | None = None,
                   segment: str = "region,device,hour", tz: str = "UTC",
                   k: float = 3.0) -> Assessment:
    """Load, assess and recommend: what `assess_command` prints and writes."""
    spec = StoreSpec.parse(store)
    start, end = window(since, until)
    dims = parse_segments(segment)
    zone_info = zone(tz)
    try:
        rules = ZombieRules(k=k).validate()
    except ConfigError as exc:  # named as the user typed it, not as a config file would
        raise ConfigError("--k", k, exc.problem, exc.fix) from None
    frame = Frame.load(spec, since=start, until=end)
    if frame.n == 0:
        span = "" if start is None and end is None else " in the --since/--until window"
        raise StoreError(f"telemetry store {str(spec)!r} holds no records{span}; ingest logs "
                         "(connwise ingest nginx|haproxy FILE...) or widen the window.")
    result = assess(frame, store=str(spec), segments_by=dims, tz=zone_info, rules=rules)
    recommend(result)
    return result


def assess_command(
    store: StoreOption = DEFAULT_STORE,
    since: SinceOption = None,
    until: UntilOption = None,
    segment: Annotated[str, typer.Option(
        help=f"Segment dimensions, comma-separated: {', '.join(DIMENSIONS)}.")]
    = "region,device,hour",
    html: Annotated[Path, typer.Option(help="Where to write the HTML report.")]
    = Path(DEFAULT_REPORT),
    no_html: Annotated[bool, typer.Option("--no-html", help="Only print the tables.")] = False,
    tz: Annotated[str, typer.Option(help="Zone of hours and time-of-week windows.")] = "UTC",
    k: Annotated[float, typer.Option(help="Zombie threshold: k x p99 of healthy idle gaps.")]
    = 3.0,
) -> None:
    """Assess the records of a store: KPIs, segments, zombies and recommendations."""
    def work() -> Path | None:
        result = run_assessment(store, since=since, until=until, segment=segment, tz=tz, k=k)
        render(result, Console())
        return None if no_html else write_html(result, html)

    written = run_or_exit(work)
    if written is not None:
        Console().print(f"report written to {written}", highlight=False)


app = typer.Typer(name="connwise-assess", no_args_is_help=True, add_completion=False,
                  help="Assess connections from records or existing access logs.")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(ingest_app, name="ingest")
app.command("assess")(assess_command)
