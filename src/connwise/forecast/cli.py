"""`connwise forecast ...`: backtest, fit, predict and plan from the command line.

The commands are thin: they parse options, call `connwise.forecast`, and show tables (rich),
progress bars while models fit, and an optional plot. Exit codes: 0 on success; 2 on bad input
(a missing or malformed file, an unknown model, an impossible option — the message says which
and what to do, on stderr); 1 on an unexpected failure (a bug: the traceback is printed).
`plan` never touches a pool: the CLI is forecast-only by nature; the `PlanApplier` applies
plans inside a running process.

Mounted by the main CLI as ``connwise forecast``; also runnable as
``python -m connwise.forecast.cli``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from connwise.core.plan import DEFAULT_LEAD
from connwise.errors import ConfigError, ConnwiseError

if TYPE_CHECKING:
    from connwise.forecast.base import Forecast
    from connwise.forecast.events import EventCalendar
    from connwise.forecast.forecaster import Forecaster, ForecasterConfig
    from connwise.forecast.series import DemandSeries

# The commands import pandas, statsforecast, LightGBM and matplotlib when they run, not when
# this module is imported: the main CLI imports it at start-up, for every command, and those
# libraries cost seconds. (Hence the `noqa: PLC0415` on the imports inside functions.)

forecast_app = typer.Typer(
    name="forecast", no_args_is_help=True, add_completion=False,
    help="Forecast connection demand, backtest models, and plan warm connections.")

console = Console()
errors = Console(stderr=True)

History = Annotated[Path | None, typer.Argument(
    help="Demand history CSV (timestamp, value, and optionally segment columns); or use "
    "--store.", show_default=False)]
EventsOpt = Annotated[Path | None, typer.Option("--events", help="Events calendar, .toml or "
                                                ".csv.")]
SegmentOpt = Annotated[list[str] | None, typer.Option("--segment", help="Segment to use "
                                                      "(repeatable; default: all).")]
ModelsOpt = Annotated[str, typer.Option("--models", help="Comma-separated model names.")]
HorizonOpt = Annotated[int | None, typer.Option("--horizon", help="Periods to forecast "
                                                "(default: one day).")]
WindowsOpt = Annotated[int, typer.Option("--windows", help="Rolling-origin backtest windows.")]
TimeCol = Annotated[str, typer.Option("--time-column", help="Timestamp column of the CSV.")]
ValueCol = Annotated[str, typer.Option("--value-column", help="Demand column of the CSV.")]
SegmentCol = Annotated[str, typer.Option("--segment-column", help="Segment column of the "
                                         "CSV.")]
RegistryOpt = Annotated[Path | None, typer.Option("--registry", help="Model registry "
                                                  "directory.")]
NameOpt = Annotated[str, typer.Option("--name", help="Forecaster name in the registry.")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a plot (.png or .html).")]
QuantileOpt = Annotated[float, typer.Option("--quantile", help="Quantile to plan for / show "
                                            "(0.5 = point forecast).")]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Read demand from this telemetry store (SQLite path or PostgreSQL DSN) "
    "instead of a CSV.", rich_help_panel="Telemetry store")]
MetricOpt = Annotated[str, typer.Option(
    "--metric", help="With --store: connections (opened per period), requests (per period) "
    "or concurrency.", rich_help_panel="Telemetry store")]
ResolutionOpt = Annotated[str, typer.Option(
    "--resolution", help="With --store: the period, 1m .. 1h (60, 5m, 1h).",
    rich_help_panel="Telemetry store")]
SegmentByOpt = Annotated[str, typer.Option(
    "--segment-by", help="With --store: what a segment is, comma-separated among group, "
    "source, backend, class_name, region, kind, node, device.",
    rich_help_panel="Telemetry store")]
SinceOpt = Annotated[str | None, typer.Option(
    "--since", help="With --store: window start, ISO 8601 or Unix s (default: first record).",
    rich_help_panel="Telemetry store")]
UntilOpt = Annotated[str | None, typer.Option(
    "--until", help="With --store: window end, exclusive (default: after the last record).",
    rich_help_panel="Telemetry store")]
KindOpt = Annotated[list[str] | None, typer.Option(
    "--record-kind", help="With --store: only records of this kind (repeatable: client, pool, "
    "upstream, request, session).", rich_help_panel="Telemetry store")]
GatewayConfigOpt = Annotated[Path | None, typer.Option(
    "--gateway-config", help="With --segment-by group: the gateway config whose groups the "
    "backends belong to.", rich_help_panel="Telemetry store")]
#: `connwise.forecast.models.DEFAULT_MODELS`, spelled out so that `--help` imports no models.
DEFAULT_MODEL_TEXT = "snaive_daily,snaive_weekly,mstl_ets,auto_arima,lightgbm"


@contextmanager
def _cli_errors() -> Iterator[None]:
    """Bad input ends the command with its message and exit code 2."""
    try:
        yield
    except ConnwiseError as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from None


@contextmanager
def _writing(option: str, path: Path) -> Iterator[None]:
    """An output file that cannot be written is bad input (exit 2), not a crash."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(option, str(path), f"cannot write it ({exc.strerror or exc})",
                          "give a path in an existing, writable directory") from exc


@dataclass(frozen=True)
class _Input:
    """Where the history comes from: a CSV (`history`) or a telemetry store (`store`)."""

    history: Path | None
    store: str | None = None
    metric: str = "connections"
    resolution: str = "1m"
    segment_by: str = "source"
    since: str | None = None
    until: str | None = None
    kinds: tuple[str, ...] = ()
    gateway_config: Path | None = None
    columns: tuple[str, str, str] = ("timestamp", "value", "segment")

    @property
    def given(self) -> bool:
        return self.history is not None or self.store is not None

    def check(self, *, required: bool = True) -> _Input:
        if self.history is not None and self.store is not None:
            raise ConfigError("--store", self.store, f"a history CSV ({self.history}) is given "
                              "too, and demand comes from one source", "drop one of the two")
        if required and not self.given:
            raise ConfigError("history", None, "there is no demand history to forecast from",
                              "give a history CSV, or --store with a telemetry store")
        return self

    def source(self) -> Any:
        if self.store is None:
            from connwise.forecast.series import CsvSource  # noqa: PLC0415

            assert self.history is not None
            time_column, value_column, segment_column = self.columns
            return CsvSource(self.history, time_column=time_column, value_column=value_column,
                             segment_column=segment_column)
        from connwise.config import load_gateway_config  # noqa: PLC0415
        from connwise.forecast.store import (  # noqa: PLC0415
            StoreSource,
            backend_groups,
            parse_resolution,
            parse_time,
        )

        groups = (backend_groups(load_gateway_config(self.gateway_config))
                  if self.gateway_config is not None else None)
        return StoreSource(
            self.store, metric=self.metric, step=parse_resolution(self.resolution),  # type: ignore[arg-type]
            segment_by=self.segment_by, kinds=self.kinds, groups=groups,
            since=None if self.since is None else parse_time(self.since, "--since"),
            until=None if self.until is None else parse_time(self.until, "--until"))


def _input(history: Path | None, store: str | None, metric: str, resolution: str,
           segment_by: str, since: str | None, until: str | None, kind: list[str] | None,
           gateway_config: Path | None, time_column: str, value_column: str,
           segment_column: str) -> _Input:
    return _Input(history, store, metric, resolution, segment_by, since, until,
                  tuple(kind or ()), gateway_config, (time_column, value_column, segment_column))


def _load(inputs: _Input, segments: list[str] | None) -> list[DemandSeries]:
    source = inputs.check().source()
    names = segments or source.segments()
    return [source.series(name) for name in names]


def _events(path: Path | None) -> EventCalendar | None:
    from connwise.forecast.events import EventCalendar  # noqa: PLC0415

    return EventCalendar.load(path) if path is not None else None


@contextmanager
def _progress(label: str) -> Iterator[Any]:
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                        console=errors, transient=True)
    with progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int, what: str) -> None:
            progress.update(task, completed=done, total=total, description=f"{label}: {what}")

        yield update


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _scores_table(title: str, scores: dict[str, Any], weights: dict[str, float],
                  level: int) -> Table:
    table = Table(title=title)
    for column in ("model", "sMAPE", "MASE", "OWA", f"coverage {level}%", "accuracy ±20%",
                   "weight"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name, s in scores.items():
        table.add_row(name, _fmt(s.smape, 2), _fmt(s.mase), _fmt(s.owa), _fmt(s.coverage, 2),
                      _fmt(s.accuracy, 2), _fmt(weights.get(name, math.nan), 2))
    return table


def _fit(panel: list[DemandSeries], events: EventCalendar | None,
         config: ForecasterConfig) -> Forecaster:
    from connwise.forecast.forecaster import Forecaster  # noqa: PLC0415

    forecaster = Forecaster(config)
    with _progress("fitting") as update:
        forecaster.fit(panel, events, progress=update)
    return forecaster


@forecast_app.command()
def backtest(history: History = None, events: EventsOpt = None, segment: SegmentOpt = None,
             models: ModelsOpt = DEFAULT_MODEL_TEXT, horizon: HorizonOpt = None,
             windows: WindowsOpt = 3,
             level: Annotated[int, typer.Option(help="Interval level for coverage.")] = 80,
             json_out: Annotated[Path | None, typer.Option("--json", help="Also write the "
                                                           "scores as JSON.")] = None,
             time_column: TimeCol = "timestamp", value_column: ValueCol = "value",
             segment_column: SegmentCol = "segment", store: StoreOpt = None,
             metric: MetricOpt = "connections",
             resolution: ResolutionOpt = "1m", segment_by: SegmentByOpt = "source",
             since: SinceOpt = None, until: UntilOpt = None, record_kind: KindOpt = None,
             gateway_config: GatewayConfigOpt = None) -> None:
    """Score models and their ensemble by rolling-origin backtest: sMAPE, MASE, OWA vs
    Naive2, interval coverage and accuracy (share of periods within 20% of the actual)."""
    from connwise.forecast.backtest import rolling_origin  # noqa: PLC0415
    from connwise.forecast.models import parse_models  # noqa: PLC0415

    with _cli_errors():
        names = parse_models(models)
        inputs = _input(history, store, metric, resolution, segment_by, since, until,
                        record_kind, gateway_config, time_column, value_column, segment_column)
        panel = _load(inputs, segment)
        calendar = _events(events)
        h = panel[0].daily if horizon is None else horizon
        with _progress("backtest") as update:
            result = rolling_origin(panel, names, h=h, windows=windows, events=calendar,
                                    levels=sorted({level, 80}), progress=update)
        scores = result.scores(level)
        weights = result.weights()
        console.print(_scores_table(f"backtest: {len(panel)} segment(s), {windows} windows "
                                    f"of {h} periods", scores, weights, level))
        if json_out is not None:
            with _writing("--json", json_out):
                json_out.write_text(json.dumps({"horizon": h, "windows": windows,
                                                "level": level,
                                                "scores": {k: v.to_dict() for k, v in
                                                           scores.items()},
                                                "weights": weights}, indent=1))


@forecast_app.command()
def fit(history: History = None, *,
        registry: Annotated[Path, typer.Option("--registry", help="Model registry "
                                               "directory.")],
        name: NameOpt = "default", events: EventsOpt = None, segment: SegmentOpt = None,
        models: ModelsOpt = DEFAULT_MODEL_TEXT, horizon: HorizonOpt = None,
        windows: WindowsOpt = 2,
        promote: Annotated[bool | None, typer.Option(
            "--promote/--no-promote", help="Make this version the champion (default: only "
            "if there is none).")] = None,
        time_column: TimeCol = "timestamp", value_column: ValueCol = "value",
        segment_column: SegmentCol = "segment", store: StoreOpt = None,
        metric: MetricOpt = "connections",
        resolution: ResolutionOpt = "1m", segment_by: SegmentByOpt = "source",
        since: SinceOpt = None, until: UntilOpt = None, record_kind: KindOpt = None,
        gateway_config: GatewayConfigOpt = None) -> None:
    """Fit a forecaster (backtest, weights, intervals, models) and save it in the registry."""
    from connwise.forecast.forecaster import ForecasterConfig  # noqa: PLC0415
    from connwise.forecast.models import parse_models  # noqa: PLC0415
    from connwise.forecast.registry import Registry  # noqa: PLC0415

    with _cli_errors():
        config = ForecasterConfig(models=parse_models(models), horizon=horizon,
                                  windows=windows)
        inputs = _input(history, store, metric, resolution, segment_by, since, until,
                        record_kind, gateway_config, time_column, value_column, segment_column)
        forecaster = _fit(_load(inputs, segment), _events(events), config)
        saved = Registry(registry)
        version = saved.save(name, forecaster, promote=promote)
        console.print(_scores_table(f"{name} v{version}", forecaster.scores,
                                    forecaster.weights, 80))
        champion = saved.champion(name)
        console.print(f"saved [bold]{name} v{version}[/] in {registry}; champion: "
                      f"v{champion}")


def _forecasts(inputs: _Input, registry: Path | None, name: str, version: int | None,
               events: Path | None, segment: list[str] | None, models: str,
               horizon: int | None, windows: int) -> tuple[Forecaster, dict[str, Forecast]]:
    from connwise.forecast.forecaster import ForecasterConfig  # noqa: PLC0415
    from connwise.forecast.models import parse_models  # noqa: PLC0415
    from connwise.forecast.registry import Registry  # noqa: PLC0415

    inputs.check(required=registry is None)
    if registry is not None:
        forecaster = Registry(registry).load(name, version)
        if inputs.given:
            forecaster.update(_load(inputs, segment or [s.segment for s in forecaster.panel]))
    else:
        config = ForecasterConfig(models=parse_models(models), horizon=horizon,
                                  windows=windows)
        forecaster = _fit(_load(inputs, segment), _events(events), config)
    return forecaster, forecaster.predict(horizon)


def _forecast_table(forecast: Forecast, quantile: float) -> Table:
    from connwise.forecast.plot import stamps  # noqa: PLC0415

    table = Table(title=f"forecast {forecast.segment} ({forecast.model})")
    for column in ("period (UTC)", "forecast", f"q{quantile:g}", *(f"{lv}%" for lv in
                                                                   forecast.levels)):
        table.add_column(column, justify="right")
    q = forecast.quantile(quantile)
    for i, when in enumerate(stamps(forecast.times())):
        bands = [f"{forecast.bands[lv][0][i]:.1f}..{forecast.bands[lv][1][i]:.1f}"
                 for lv in forecast.levels]
        table.add_row(when.strftime("%Y-%m-%d %H:%M"), f"{forecast.mean[i]:.1f}",
                      f"{q[i]:.1f}", *bands)
    return table


@forecast_app.command()
def predict(history: Annotated[Path | None, typer.Argument(
                help="Demand history CSV; with --registry, the newest data to forecast "
                "from.", show_default=False)] = None,
            registry: RegistryOpt = None, name: NameOpt = "default",
            version: Annotated[int | None, typer.Option(help="Registry version (default: "
                                                        "the champion).")] = None,
            events: EventsOpt = None, segment: SegmentOpt = None,
            models: ModelsOpt = DEFAULT_MODEL_TEXT, horizon: HorizonOpt = None,
            windows: WindowsOpt = 2, quantile: QuantileOpt = 0.9,
            out: Annotated[Path | None, typer.Option("--out", help="Write the forecast as "
                                                     "CSV.")] = None,
            plot: PlotOpt = None, time_column: TimeCol = "timestamp",
            value_column: ValueCol = "value", segment_column: SegmentCol = "segment",
            store: StoreOpt = None, metric: MetricOpt = "connections",
            resolution: ResolutionOpt = "1m", segment_by: SegmentByOpt = "source",
            since: SinceOpt = None, until: UntilOpt = None, record_kind: KindOpt = None,
            gateway_config: GatewayConfigOpt = None) -> None:
    """Forecast demand with intervals, from the registry's champion or fitted on the fly."""
    with _cli_errors():
        inputs = _input(history, store, metric, resolution, segment_by, since, until,
                        record_kind, gateway_config, time_column, value_column, segment_column)
        forecaster, forecasts = _forecasts(inputs, registry, name, version, events, segment,
                                           models, horizon, windows)
        for forecast in forecasts.values():
            console.print(_forecast_table(forecast, quantile))
        if out is not None:
            with _writing("--out", out):
                _write_forecasts(out, forecasts, quantile)
        if plot is not None:
            _plot(plot, forecaster, forecasts, None)


def _write_forecasts(path: Path, forecasts: dict[str, Forecast], quantile: float) -> None:
    import pandas as pd  # noqa: PLC0415

    from connwise.forecast.plot import stamps  # noqa: PLC0415

    frames = []
    for f in forecasts.values():
        data: dict[str, Any] = {"segment": f.segment,
                                "timestamp": stamps(f.times()).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                "forecast": f.mean, f"q{quantile:g}": f.quantile(quantile)}
        for level in f.levels:
            data[f"lo{level}"], data[f"hi{level}"] = f.bands[level]
        frames.append(pd.DataFrame(data))
    pd.concat(frames).to_csv(path, index=False)


def _plot(path: Path, forecaster: Forecaster, forecasts: dict[str, Forecast],
          plan: Any) -> None:
    from connwise.forecast.plot import write_plot  # noqa: PLC0415

    for series in forecaster.panel:
        target = path if len(forecaster.panel) == 1 else path.with_name(
            f"{path.stem}-{series.segment}{path.suffix}")
        with _writing("--plot", target):
            write_plot(target, series, forecasts[series.segment], plan)
        console.print(f"plot written to {target}")


@forecast_app.command()
def plan(history: Annotated[Path | None, typer.Argument(
             help="Demand history CSV; with --registry, the newest data to forecast from.",
             show_default=False)] = None,
         registry: RegistryOpt = None, name: NameOpt = "default",
         version: Annotated[int | None, typer.Option(help="Registry version.")] = None,
         events: EventsOpt = None, segment: SegmentOpt = None,
         models: ModelsOpt = DEFAULT_MODEL_TEXT, horizon: HorizonOpt = None,
         windows: WindowsOpt = 2, quantile: QuantileOpt = 0.9,
         hold_time: Annotated[float | None, typer.Option(
             help="Mean seconds a connection is held (Little's law W; default: measured in "
             "--store, else 1.0).")] = None,
         kind: Annotated[str | None, typer.Option(
             help="What the series counts: arrivals (per period) or concurrency (default: "
             "from --metric with --store, else arrivals).")] = None,
         lead: Annotated[float, typer.Option(help="Seconds connections must be warm before "
                                             "demand.")] = DEFAULT_LEAD,
         max_ramp: Annotated[float | None, typer.Option(help="Most new connections per "
                                                        "second.")] = None,
         headroom: Annotated[float, typer.Option(help="Multiplier on the need (>= 1).")] = 1.0,
         min_target: Annotated[int, typer.Option(help="Smallest target.")] = 0,
         max_target: Annotated[int | None, typer.Option(help="Largest target (the pool's "
                                                        "max_size).")] = None,
         current: Annotated[int, typer.Option(help="Connections open now (ramp start).")] = 0,
         out: Annotated[Path | None, typer.Option("--out", help="Write the plan as "
                                                  "JSON.")] = None,
         plot: PlotOpt = None, time_column: TimeCol = "timestamp",
         value_column: ValueCol = "value", segment_column: SegmentCol = "segment",
         store: StoreOpt = None, metric: MetricOpt = "connections",
         resolution: ResolutionOpt = "1m", segment_by: SegmentByOpt = "source",
         since: SinceOpt = None, until: UntilOpt = None, record_kind: KindOpt = None,
         gateway_config: GatewayConfigOpt = None) -> None:
    """Turn a forecast quantile into a warm-connection plan per segment (forecast-only:
    the plan is shown and written, never applied)."""
    from connwise.forecast.planner import PlannerConfig  # noqa: PLC0415
    from connwise.forecast.planner import plan as make_plan  # noqa: PLC0415
    from connwise.forecast.plot import stamps  # noqa: PLC0415

    with _cli_errors():
        inputs = _input(history, store, metric, resolution, segment_by, since, until,
                        record_kind, gateway_config, time_column, value_column, segment_column)
        source = inputs.check(required=registry is None).source() if inputs.given else None
        measured = getattr(source, "hold_time", None)
        if hold_time is None and measured is not None:
            hold_time = measured()
            console.print(f"mean hold time from {store}: {hold_time:.3f} s")
        if kind is None:
            kind = getattr(source, "kind", "arrivals")
        config = PlannerConfig(quantile=quantile, hold_time=1.0 if hold_time is None
                               else hold_time, kind=kind,  # type: ignore[arg-type]
                               lead=lead, max_ramp=max_ramp, headroom=headroom,
                               min_target=min_target, max_target=max_target,
                               mode="forecast_only").validate()
        forecaster, forecasts = _forecasts(inputs, registry, name, version, events, segment,
                                           models, horizon, windows)
        warm = make_plan(forecasts, config, current=dict.fromkeys(forecasts, current))
        for group in warm.groups:
            table = Table(title=f"warm plan {group} (q={quantile:g}, lead {lead:g} s, "
                          f"forecast only)")
            for column in ("from (UTC)", f"demand q{quantile:g}", "required", "target",
                           "short"):
                table.add_column(column, justify="right")
            demand = forecasts[group].quantile(quantile)
            for i, step in enumerate(warm.steps[group]):
                when = stamps([step.at])[0].strftime("%Y-%m-%d %H:%M")
                table.add_row(when, f"{demand[i]:.1f}", str(step.required), str(step.target),
                              "yes" if step.short else "")
            console.print(table)
            short = warm.shortfalls(group)
            if short:
                console.print(f"[yellow]{len(short)} step(s) of {group} cannot reach the need "
                              "within --max-ramp; raise it or accept the shortfall.[/]")
        if out is not None:
            with _writing("--out", out):
                out.write_text(json.dumps(warm.to_dict(), indent=1))
            console.print(f"plan written to {out}")
        if plot is not None:
            _plot(plot, forecaster, forecasts, warm)


if __name__ == "__main__":
    forecast_app()
