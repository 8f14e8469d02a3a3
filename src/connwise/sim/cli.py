"""`connwise simulate SCENARIO.toml --policies static,reactive,connwise`: the KPI table, plots.

The command is `simulate_command`; the lead mounts it on the main app. `python -m connwise.sim`
runs it alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from connwise.errors import ConfigError, TelemetryError
from connwise.sim.report import class_table, kpi_table, write_plots
from connwise.sim.run import compare
from connwise.sim.scenario import load_scenario, override_run


def _check_outputs(out: Path | None, json_out: Path | None) -> None:
    """Refuse outputs that cannot be written before the run, not after it."""
    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "it is a file, and the plots go into a directory",
                          "name a directory (it is created if missing)")
    if json_out is not None and str(json_out) != "-":
        if json_out.is_dir():
            raise ConfigError("--json", str(json_out), "it is a directory",
                              "name a file, or '-' for stdout")
        if not json_out.parent.is_dir():
            raise ConfigError("--json", str(json_out), "its directory does not exist",
                              "create the directory or name a file in an existing one")


def simulate_command(
    scenario: Annotated[Path, typer.Argument(help="The scenario TOML file.", exists=True,
                                             dir_okay=False)],
    policies: Annotated[str | None, typer.Option(
        "--policies", "-p", help="Comma-separated policies of the scenario to run "
        "(default: all it defines).")] = None,
    out: Annotated[Path, typer.Option(help="Directory for the plots.")] = Path("sim-out"),
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the KPIs as JSON "
                                                  "to this file ('-' for stdout).")] = None,
    duration: Annotated[float | None, typer.Option(help="Override run.duration, seconds.")
                        ] = None,
    seed: Annotated[int | None, typer.Option(help="Override run.seed.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Simulate SCENARIO under each policy and print a KPI table per policy."""
    console = Console(width=max(140, Console().width))
    try:
        loaded = load_scenario(scenario)
        overrides: dict[str, float | int] = {}
        if duration is not None:
            overrides["duration"] = duration
        if seed is not None:
            overrides["seed"] = seed
        if overrides:
            loaded = override_run(loaded, **overrides)
        names = [p.strip() for p in policies.split(",") if p.strip()] if policies else None
        for name in names or []:
            loaded.resolve(name)
        _check_outputs(out if plots else None, json_out)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=quiet, transient=True)
    tasks: dict[str, int] = {}
    with progress:
        def update(name: str, fraction: float) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(f"simulating {name}", total=1.0)
            progress.update(tasks[name], completed=fraction)  # type: ignore[arg-type]
        try:  # a replay source is read when its run starts
            results = compare(loaded, names, progress=update)
        except (ConfigError, TelemetryError) as exc:
            progress.stop()
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    console.print(kpi_table(results))
    console.print(class_table(results))
    if plots:
        for path in write_plots(results, out, loaded.run.name):
            console.print(f"plot: {path}")
    if json_out is not None:
        data = json.dumps([r.kpis() for r in results], indent=2, default=str)
        if str(json_out) == "-":
            print(data)
        else:
            json_out.write_text(data + "\n", encoding="utf-8")


def main() -> None:
    app = typer.Typer(add_completion=False)
    app.command()(simulate_command)
    app()
