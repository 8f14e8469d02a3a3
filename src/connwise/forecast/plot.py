"""Pictures of a forecast: history, forecast, intervals and the warm plan, as PNG or HTML.

Matplotlib draws with its Agg backend (no display needed). The HTML form is self-contained:
the same PNG, base64-encoded inside one page with a table of the plan, so it can be mailed or
attached to a ticket without its files.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from connwise.core.plan import WarmPlan
from connwise.errors import ConfigError
from connwise.forecast.base import Forecast
from connwise.forecast.series import DemandSeries


def stamps(seconds: np.ndarray | list[float]) -> pd.DatetimeIndex:
    """Unix seconds as UTC timestamps (naive, as matplotlib and tables want them)."""
    return pd.to_datetime(np.asarray(seconds, dtype=float), unit="s")


def render_png(series: DemandSeries, forecast: Forecast, plan: WarmPlan | None = None, *,
               history_periods: int | None = None) -> bytes:
    """The figure as PNG bytes: the last `history_periods` of history (default: three times
    the horizon), the forecast, its bands (widest lightest), and the plan's targets."""
    keep = history_periods or max(3 * len(forecast), 2 * series.daily)
    shown = series.tail(keep)
    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=100)
    ax.plot(stamps(shown.times()), shown.values, color="#444444", lw=1.1, label="history")
    ft = stamps(forecast.times())
    levels = sorted(forecast.bands, reverse=True)
    for i, level in enumerate(levels):
        lo, hi = forecast.bands[level]
        ax.fill_between(ft, lo, hi, color="#1f77b4", alpha=0.12 + 0.12 * i, lw=0,
                        label=f"{level}% interval")
    ax.plot(ft, forecast.mean, color="#1f77b4", lw=1.6, label=f"forecast ({forecast.model})")
    ax.set_ylabel("demand per period")
    ax.set_title(f"segment {forecast.segment}")
    if plan is not None and forecast.segment in plan.groups:
        steps = plan.steps[forecast.segment]
        ax2 = ax.twinx()
        at = [s.at for s in steps] + [plan.end]
        targets = [s.target for s in steps] + [steps[-1].target]
        ax2.step(stamps(np.asarray(at)), targets, where="post", color="#d62728", lw=1.6,
                 label=f"warm target (q={plan.quantile})")
        ax2.set_ylabel("warm connections", color="#d62728")
        ax2.set_ylim(bottom=0)
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, loc="upper left", fontsize=8)
    else:
        ax.legend(loc="upper left", fontsize=8)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))  # type: ignore[no-untyped-call]
    fig.autofmt_xdate()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_plot(path: str | Path, series: DemandSeries, forecast: Forecast,
               plan: WarmPlan | None = None) -> Path:
    """Write a `.png` or a self-contained `.html`; raises `ConfigError` for other suffixes."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".html"):
        raise ConfigError("plot", str(path), "unknown plot format", "end the name in .png or "
                          ".html")
    png = render_png(series, forecast, plan)
    if suffix == ".png":
        path.write_bytes(png)
        return path
    rows = ""
    if plan is not None and forecast.segment in plan.groups:
        for s in plan.steps[forecast.segment]:
            when = stamps(np.asarray([s.at]))[0].strftime("%Y-%m-%d %H:%M")
            rows += (f"<tr><td>{when}</td><td>{s.required}</td><td>{s.target}</td>"
                     f"<td>{'yes' if s.short else ''}</td></tr>")
    table = (f"<table><tr><th>from (UTC)</th><th>required</th><th>target</th><th>short</th>"
             f"</tr>{rows}</table>") if rows else ""
    title = html.escape(f"connwise forecast: {forecast.segment}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
            "text-align:right}</style></head>"
            f"<body><h1>{title}</h1><img alt='forecast' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode()}'>{table}</body></html>")
    path.write_text(page)
    return path
