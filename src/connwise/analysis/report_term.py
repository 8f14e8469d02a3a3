"""The assessment as rich tables in the terminal: KPIs, peaks, segments, recommendations."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from connwise.analysis.assessment import Assessment
from connwise.analysis.fmt import count, duration, share, stamp

#: Segments shown in the terminal (the HTML report has them all).
TOP_SEGMENTS = 15


def kpi_rows(result: Assessment) -> list[tuple[str, str]]:
    """The KPIs as (label, value) pairs: the same lines in the terminal and the HTML report."""
    k = result.kpis
    return [
        ("Establishment time p50 / p95 / p99",
         f"{duration(k.establish_p50)} / {duration(k.establish_p95)} / "
         f"{duration(k.establish_p99)}  ({count(k.establish_samples, 'sample')})"),
        ("Error rate", share(k.error_rate)),
        ("Zombie share", f"{share(k.zombie_share)}  ({count(k.zombies, 'zombie')}, "
                         f"{k.zombie_seconds / 3600:.1f} connection-hours held; "
                         f"{count(k.leaks, 'leak')})"),
        ("Peak concurrency", f"{k.peak_concurrency}  at {stamp(k.peak_at)}"),
        ("Connection reuse ratio", share(k.reuse_ratio) if k.reuse_ratio is not None
         else "unknown (log $connection_requests)"),
        ("Records / requests", f"{k.records} / {k.requests}"),
        ("Concurrency, establishment and reuse of", k.layer),
    ]


def render(result: Assessment, console: Console) -> None:
    console.print(f"[bold]Assessment[/bold] of {result.store or 'records'}: "
                  f"{stamp(result.first)} to {stamp(result.last)}, segments by "
                  f"{', '.join(result.segments_by)} ({result.tz})")
    kpis = Table(title="Baseline", show_header=False)
    kpis.add_column("KPI", style="bold")
    kpis.add_column("value")
    for label, value in kpi_rows(result):
        kpis.add_row(label, value)
    console.print(kpis)

    if result.peak_windows:
        peaks = Table(title="Peak windows (>= 90% of the peak)")
        peaks.add_column("from")
        peaks.add_column("to")
        peaks.add_column("peak", justify="right")
        for start, end, peak in result.peak_windows:
            peaks.add_row(stamp(start), stamp(end), str(peak))
        console.print(peaks)

    segments = Table(title=f"Segments ({min(TOP_SEGMENTS, len(result.segments))} of "
                     f"{len(result.segments)}, most records first)")
    for name, justify in (("segment", "left"), ("records", "right"), ("errors", "right"),
                          ("establish p95", "right"), ("lifespan p50", "right"),
                          ("reconnects", "right"), ("zombies", "right")):
        segments.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in result.segments[:TOP_SEGMENTS]:
        segments.add_row(s.key, str(s.records), share(s.error_rate), duration(s.establish_p95),
                         duration(s.lifespan_p50), share(s.reconnection_rate),
                         f"{s.zombies} ({share(s.zombie_share)})")
    console.print(segments)

    advice = Table(title="Recommendations", show_lines=True)
    advice.add_column("topic", style="bold")
    advice.add_column("scope")
    advice.add_column("action", style="green")
    advice.add_column("because")
    for r in result.recommendations:
        advice.add_row(r.topic, r.scope, r.action, r.reason)
    if not result.recommendations:
        advice.add_row("-", "-", "nothing to change", "no finding passed its bar")
    console.print(advice)
