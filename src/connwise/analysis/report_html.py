"""The assessment as one self-contained HTML file: KPIs, recommendations, plots, segments.

Plots are drawn with matplotlib's object API (no pyplot, so no global backend is chosen for the
host program) and inlined as SVG with text kept as text: the file opens offline, prints, and its
numbers can be searched. No script, font or stylesheet is fetched from anywhere.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from connwise.analysis.assessment import WEEKDAYS, Assessment
from connwise.analysis.fmt import count, duration, share, stamp
from connwise.analysis.frame import Floats
from connwise.analysis.report_term import kpi_rows
from connwise.telemetry.export import replace_on_success

#: Segments drawn in the per-segment plots (the table lists them all).
PLOT_SEGMENTS = 10

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1d2430;padding:0 1rem}
h1{margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
.meta{color:#667}.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));
gap:.8rem;margin:1rem 0}.kpi{background:#f4f6fa;border-radius:8px;padding:.8rem 1rem}
.kpi .label{font-size:.85rem;color:#556}.kpi .value{font-size:1.15rem;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{text-align:left;
padding:.35rem .5rem;border-bottom:1px solid #e4e7ee;vertical-align:top}th{background:#f4f6fa}
td.num{text-align:right;font-variant-numeric:tabular-nums}.plot svg{max-width:100%;height:auto}
.action{color:#116329;font-weight:600}
"""


#: matplotlib's SVG metadata, all left out: its RDF block names matplotlib.org, purl.org and
#: creativecommons.org, external addresses in a page that promises none.
_NO_METADATA: dict[str, str | None] = {"Creator": None, "Date": None, "Format": None,
                                       "Type": None}


def _svg(draw: Callable[[Figure], None], size: tuple[float, float] = (10, 3.6)) -> str:
    # Text stays text in the SVG (searchable, small); the browser's own fonts draw it.
    with rc_context({"svg.fonttype": "none"}):
        fig = Figure(figsize=size, layout="constrained")
        draw(fig)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata=_NO_METADATA)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _days(seconds: Floats | float) -> Floats:
    """Unix seconds to matplotlib date numbers (days since its epoch)."""
    base = float(mdates.date2num(datetime.fromtimestamp(0, UTC)))  # type: ignore[no-untyped-call]
    days: Floats = base + np.asarray(seconds, dtype=np.float64) / 86400.0
    return days


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in these records", ha="center", va="center",
            transform=ax.transAxes, color="#667")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_concurrency(result: Assessment) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        series = result.concurrency
        if series.peaks.size == 0:
            _no_data(ax, "connections")
            return
        ax.step(_days(series.times), series.peaks, where="post", color="#2a6fdb", lw=1.2,
                label="open (connections or requests in flight)")
        busy = result.busy
        ax.step(_days(busy.times), busy.peaks, where="post", color="#27ae60", lw=1.0,
                label="busy")
        ax.legend(loc="upper right")
        for start, end, _peak in result.peak_windows:
            ax.axvspan(float(_days(start)), float(_days(end)), color="#f2a33a", alpha=0.3, lw=0)
        ax.xaxis_date(UTC)
        ax.set_ylabel("concurrent (max per bin)")
        ax.set_title(f"Concurrency over time (bins of {duration(series.width)}, UTC; "
                     "peak windows shaded)")
        ax.grid(alpha=0.3)
    return _svg(draw)


def plot_week(result: Assessment) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        data = np.ma.masked_invalid(result.week_p95)
        if data.count() == 0:
            _no_data(ax, "time-of-week data")
            return
        image = ax.imshow(data, aspect="auto", cmap="viridis")
        ax.set_yticks(range(7), WEEKDAYS)
        ax.set_xticks(range(0, 24, 2), [f"{h:02d}" for h in range(0, 24, 2)])
        ax.set_xlabel(f"hour ({result.tz})")
        ax.set_title("Busy concurrency by time of week (p95; blank = no data)")
        fig.colorbar(image, ax=ax)
    return _svg(draw, (10, 3.2))


def plot_establishment(result: Assessment) -> str:
    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        values = result.establish[result.establish > 0]
        zeros = result.establish.size - values.size
        if values.size == 0:
            _no_data(ax, "establishment times" if zeros == 0 else "establishment times above 0 s")
            return
        bins = np.logspace(math.log10(max(values.min(), 1e-5)), math.log10(values.max()) + 1e-9,
                           40)
        ax.hist(values, bins=bins.tolist(), color="#2a6fdb")
        ax.set_xscale("log")
        # The KPIs' percentiles, of every sample: a 0 (an nginx or HAProxy connect of under a
        # millisecond, or none) has no place on the log scale but counts in them.
        k = result.kpis
        for label, value, style in (("p50", k.establish_p50, "-"), ("p95", k.establish_p95, "--"),
                                    ("p99", k.establish_p99, ":")):
            text = f"{label} {duration(value)}"
            if value > 0:
                ax.axvline(value, color="#c0392b", ls=style, label=text)
            else:
                ax.plot([], [], color="#c0392b", ls=style, label=text)
        ax.legend()
        ax.set_xlabel("seconds")
        ax.set_title("Establishment time" if zeros == 0 else
                     f"Establishment time ({zeros} of {count(result.establish.size, 'sample')} "
                     "of 0 s not drawn)")
    return _svg(draw)


def plot_lifespans(result: Assessment) -> str:
    keys = [s.key for s in result.segments[:PLOT_SEGMENTS]]

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        data = [np.maximum(result.lifespans[k], 1e-4) for k in keys]
        if not data:
            _no_data(ax, "segments")
            return
        ax.boxplot(data, orientation="horizontal", showfliers=False)
        ax.set_yticks(range(1, len(keys) + 1), keys)
        ax.set_xscale("log")
        ax.set_xlabel("lifespan, seconds (whiskers 1.5 IQR)")
        ax.set_title("Lifespans by segment")
    return _svg(draw, (10, 0.8 + 0.35 * max(len(keys), 2)))


def plot_rates(result: Assessment) -> str:
    segments = result.segments[:PLOT_SEGMENTS]

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        if not segments:
            _no_data(ax, "segments")
            return
        y = np.arange(len(segments))
        reconnect = [0.0 if math.isnan(s.reconnection_rate) else s.reconnection_rate
                     for s in segments]
        ax.barh(y - 0.2, reconnect, 0.4, label="reconnection rate", color="#2a6fdb")
        ax.barh(y + 0.2, [s.error_rate for s in segments], 0.4, label="error rate",
                color="#c0392b")
        ax.set_yticks(y, [s.key for s in segments])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.legend(loc="lower right")
        ax.set_title("Reconnection and error rates by segment (reconnection 0 = unknown)")
    return _svg(draw, (10, 0.8 + 0.4 * max(len(segments), 2)))


def plot_zombies(result: Assessment) -> str:
    segments = sorted(result.segments, key=lambda s: -s.zombie_seconds)[:PLOT_SEGMENTS]

    def draw(fig: Figure) -> None:
        left, right = fig.subplots(1, 2)
        if not segments or result.kpis.zombies == 0:
            _no_data(left, "zombies")
            _no_data(right, "zombies")
            return
        y = np.arange(len(segments))
        left.barh(y, [s.zombies for s in segments], color="#8e44ad")
        left.set_yticks(y, [s.key for s in segments])
        left.invert_yaxis()
        left.set_title("Zombies: count (share)")
        for i, s in enumerate(segments):
            left.text(s.zombies, i, f" {share(s.zombie_share)}", va="center", fontsize=8)
        right.barh(y, [s.zombie_seconds / 3600 for s in segments], color="#8e44ad")
        right.set_yticks(y, [""] * len(segments))
        right.invert_yaxis()
        right.set_title("Resources held: connection-hours idle")
    return _svg(draw, (10, 0.8 + 0.4 * max(len(segments), 2)))


def _e(value: object) -> str:
    return html.escape(str(value))


def render_html(result: Assessment) -> str:
    kpis = "".join(f'<div class="kpi"><div class="label">{_e(label)}</div>'
                   f'<div class="value">{_e(value)}</div></div>'
                   for label, value in kpi_rows(result))
    advice = "".join(f"<tr><td>{_e(r.topic)}</td><td>{_e(r.scope)}</td>"
                     f'<td class="action">{_e(r.action)}</td><td>{_e(r.reason)}</td></tr>'
                     for r in result.recommendations) or (
        '<tr><td colspan="4">Nothing to change: no finding passed its bar.</td></tr>')
    peaks = "".join(f"<tr><td>{_e(stamp(a))}</td><td>{_e(stamp(b))}</td>"
                    f'<td class="num">{p}</td></tr>' for a, b, p in result.peak_windows)
    segments = "".join(
        f"<tr><td>{_e(s.key)}</td><td class=num>{s.records}</td><td class=num>{s.requests}</td>"
        f"<td class=num>{share(s.error_rate)}</td><td class=num>{duration(s.establish_p50)}</td>"
        f"<td class=num>{duration(s.establish_p95)}</td>"
        f"<td class=num>{duration(s.lifespan_p50)}</td>"
        f"<td class=num>{share(s.reconnection_rate)}</td>"
        f"<td class=num>{s.zombies} ({share(s.zombie_share)})</td>"
        f"<td class=num>{s.zombie_seconds / 3600:.2f}</td></tr>" for s in result.segments)
    learned = result.threshold_samples
    few = result.rules.min_samples
    thresholds = "".join(
        f"<tr><td>{_e(k.replace('|', ' / '))}</td><td class=num>{duration(v)}</td>"
        f"<td class=num>{learned.get(k, 0)}"
        f"{' (too few to learn from)' if learned.get(k, 0) < few else ''}</td></tr>"
        for k, v in sorted(result.thresholds.items()))
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(result.kinds.items()))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>connwise assessment</title><style>{_CSS}</style></head><body>
<h1>Connection assessment</h1>
<p class="meta">{_e(result.store or "records")} &middot; {_e(stamp(result.first))} to
{_e(stamp(result.last))} &middot; {_e(kinds)} &middot; segments by
{_e(", ".join(result.segments_by))} ({_e(result.tz)}) &middot; generated {generated}</p>
<div class="kpis">{kpis}</div>
<h2>Recommendations</h2>
<table><tr><th>topic</th><th>scope</th><th>action</th><th>because</th></tr>{advice}</table>
<h2>Concurrency and peaks</h2>
<div class="plot">{plot_concurrency(result)}</div>
<table><tr><th>peak window from</th><th>to</th><th>peak</th></tr>{peaks}</table>
<div class="plot">{plot_week(result)}</div>
<h2>Establishment</h2>
<div class="plot">{plot_establishment(result)}</div>
<h2>Lifespans, reconnections and errors by segment</h2>
<div class="plot">{plot_lifespans(result)}</div>
<div class="plot">{plot_rates(result)}</div>
<h2>Zombies</h2>
<p>A zombie held its connection idle past its segment's threshold ({result.rules.k:g} x the
p{result.rules.quantile * 100:g} of healthy idle gaps), or was found half-open.</p>
<div class="plot">{plot_zombies(result)}</div>
<table><tr><th>threshold segment (kind / region / device)</th><th>zombie threshold</th>
<th>healthy gaps learned from</th></tr>
{thresholds}</table>
<h2>All segments</h2>
<table><tr><th>segment</th><th>records</th><th>requests</th><th>errors</th><th>establish p50</th>
<th>establish p95</th><th>lifespan p50</th><th>reconnects</th><th>zombies</th>
<th>zombie conn-hours</th></tr>{segments}</table>
</body></html>
"""


def write_html(result: Assessment, path: str | Path) -> Path:
    """Write the report to `path` (complete or not at all: it replaces an older report only
    once written); returns it. ConfigError naming `--html` when it cannot be written."""
    path = Path(path)
    page = render_html(result)
    with replace_on_success(path, "--html") as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path
