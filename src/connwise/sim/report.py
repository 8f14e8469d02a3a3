"""The KPI table (rich) and the plots (matplotlib, Agg backend: PNG files, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from connwise.sim.kpi import PolicyResult


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def kpi_table(results: Sequence[PolicyResult]) -> Table:
    """One row per policy: the headline KPIs; then one row per policy and class."""
    table = Table(title=f"scenario {results[0].scenario}" if results else "scenario")
    for col in ("policy", "requests", "served", "shed", "errors", "est. ms", "est. peak ms",
                "conn-s", "reclaimed (prec.)", "cross-inst.", "load max/mean", "wall s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in results:
        k = r.kpis()
        table.add_row(
            r.policy, str(k["requests"]), _pct(k["served_share"]), _pct(k["shed_share"]),
            f"{k['errors']} ({_pct(k['error_share'])})", _ms(k["wait_mean"]),
            _ms(k["peak_wait_mean"]), f"{k['conn_seconds']:.0f}",
            f"{k['reclaimed']} ({_pct(k['reclaim_precision'])})",
            _pct(k["cross_instance_share"]), f"{k['load_max_over_mean']:.2f}",
            f"{r.wall:.2f}")
    return table


def class_table(results: Sequence[PolicyResult]) -> Table:
    table = Table(title="per class")
    for col in ("policy", "class", "requests", "served", "p50 ms", "p99 ms", "mean ms",
                "shed", "timed out", "degraded"):
        table.add_column(col, justify="left" if col in ("policy", "class") else "right")
    for r in results:
        for name, c in r.kpis()["classes"].items():
            table.add_row(r.policy, name, str(c["requests"]), _pct(c["served_share"]),
                          _ms(c["latency_p50"]), _ms(c["latency_p99"]), _ms(c["latency_mean"]),
                          str(c["shed"]), str(c["timed_out"]), str(c["degraded"]))
    return table


def write_plots(results: Sequence[PolicyResult], out_dir: Path, stem: str) -> list[Path]:
    """Time series per policy (offered rate, open pool connections, waiting, ladder level)
    and per-class p99 bars; returns the PNG paths written."""
    # matplotlib costs half a second to import: only when plots are asked for.
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    for r in results:
        s = r.series
        axes[0].plot(s.t, s.open_sessions, label=r.policy)
        axes[1].plot(s.t, s.pool_open, label=r.policy)
        axes[2].plot(s.t, s.waiting, label=r.policy)
        axes[3].step(s.t, s.level, where="post", label=r.policy)
    if results:
        s = results[0].series
        ax = axes[0].twinx()
        ax.plot(s.t, s.rate, color="grey", linestyle=":", label="offered rate")
        ax.set_ylabel("sessions/s")
    for ax, label in zip(axes, ("open client connections", "open pool connections",
                                "waiting requests", "max degrade level"), strict=True):
        ax.set_ylabel(label)
        ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("simulated seconds")
    fig.suptitle(f"scenario {stem}")
    fig.tight_layout()
    path = out_dir / f"{stem}-timeline.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(path)

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [c.name for c in results[0].classes] if results else []
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        p99 = [r.kpis()["classes"][n]["latency_p99"] * 1000 for n in names]
        ax.bar([j + i * width for j in range(len(names))], p99, width, label=r.policy)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set_ylabel("p99 latency, ms")
    ax.legend()
    fig.tight_layout()
    path = out_dir / f"{stem}-p99.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(path)
    return paths
