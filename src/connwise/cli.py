"""The `connwise` command: thin, it parses arguments and calls the rooms that do the work.

Each group is a typer sub-app (`connwise demo pool`, `connwise demo gateway` and the
gateway's own commands), so a room adds its commands without touching the others'. Bad input is
a usage error (exit code 2) naming the option, never a traceback.
"""

from __future__ import annotations

import enum
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

import connwise
from connwise.analysis.cli import assess_command
from connwise.config import load_gateway_config
from connwise.demo import gateway_demo
from connwise.demo.console import demo_console
from connwise.demo.pool_demo import Scenario, run_pool_demo
from connwise.errors import ConfigError
from connwise.forecast.cli import forecast_app
from connwise.gateway.serve import check_workers, run
from connwise.pool.drivers._dsn import mask as mask_dsn
from connwise.sim.cli import simulate_command
from connwise.telemetry.cli import ingest_app, telemetry_app
from connwise.telemetry.clientinfo import ClientSegments

app = typer.Typer(
    name="connwise",
    help="Connection management that predicts demand, puts critical traffic first and degrades "
         "gracefully instead of collapsing.",
    no_args_is_help=True,
    add_completion=False,
)
demo_app = typer.Typer()
app.add_typer(demo_app, name="demo")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(ingest_app, name="ingest")
app.command("assess")(assess_command)
app.command("simulate")(simulate_command)
app.add_typer(forecast_app, name="forecast")


class LogLevel(enum.StrEnum):
    """`--log-level` of `connwise gateway`."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command("gateway", help=(
    "Run the reverse proxy described by a TOML file (see examples/gateway.toml).\n\n"
    "SIGTERM drains and exits; SIGHUP reloads the file (a bad file is refused and the running "
    "configuration stays). With --check, validate the file and print the resolved "
    "configuration instead."))
def gateway(
    config: Annotated[Path, typer.Option("--config", "-c", metavar="FILE",
                                         help="The gateway's TOML configuration.")],
    check: Annotated[bool, typer.Option(
        "--check", help="Validate FILE, print the resolved configuration and exit.")] = False,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="Processes sharing the listening sockets (SO_REUSEPORT).")] = 1,
    log_level: Annotated[LogLevel, typer.Option(
        "--log-level", help="Least severe log lines written to stderr.")] = LogLevel.info,
) -> None:
    try:
        resolved = load_gateway_config(config)
        ClientSegments.from_config(resolved.telemetry)  # the files the configuration names
        check_workers(resolved, workers)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if check:
        typer.echo(json.dumps(redacted(resolved.model_dump(mode="json", by_alias=True)),
                              indent=2, ensure_ascii=False))
        typer.echo(f"{config}: configuration is valid", err=True)
        return
    _log_to_stderr(log_level)
    raise typer.Exit(run(resolved, config, workers))  # a start-up error is said by `run`


def _log_to_stderr(level: LogLevel) -> None:
    """The gateway's log lines (listeners, reloads, drains, zombies, backends ejected, at
    `info`; refusals and failures at `warning` and `error`) to stderr, stamped with the time,
    level and process (workers share stderr): without a handler, Python drops `info` lines
    and writes the rest bare. Only connwise's loggers: libraries keep their own defaults."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    logger = logging.getLogger("connwise")
    logger.addHandler(handler)
    logger.setLevel(level.value.upper())


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved configuration with its secrets hidden: the admin token and the password
    of any DSN (telemetry.store, forecast.store). The output of `--check` ends up in CI logs
    and tickets."""
    admin = config.get("admin")
    if admin is not None and admin.get("token") is not None:
        admin["token"] = "***"
    for section in ("telemetry", "forecast"):
        store = config.get(section, {}).get("store")
        if store is not None:
            config[section]["store"] = mask_dsn(store)
    return config


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"connwise {connwise.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Connection management that predicts demand, puts critical traffic first and degrades
    gracefully instead of collapsing."""


# The options of the gateway demo, shared by `connwise demo gateway` and plain `connwise demo`.
GatewayDuration = Annotated[float | None, typer.Option(
    help="Seconds of load (3-600): a baseline, a spike, an overload and a recovery "
         "(default 15, or 5 with --quick).", show_default=False)]
GatewaySeed = Annotated[int, typer.Option(
    help="Seed of the load: the same seed gives the same requests.")]
GatewayQuick = Annotated[bool, typer.Option(
    "--quick", help="A short run (5 s of load), as the tests use.")]
GatewayJson = Annotated[Path | None, typer.Option(
    "--json", metavar="PATH", dir_okay=False, help="Also write the figures to this JSON file.")]


@demo_app.callback(invoke_without_command=True, help=(
    "Self-contained demonstrations: each starts its own backends on 127.0.0.1 and needs nothing "
    "else.\n\nWithout a command, runs the gateway demo (`connwise demo gateway`) with the "
    "options given here."))
def demo(
    ctx: typer.Context,
    duration: GatewayDuration = None,
    seed: GatewaySeed = 7,
    quick: GatewayQuick = False,
    json_path: GatewayJson = None,
) -> None:
    """`connwise demo` is the README's first command, so without a command it runs the main
    demonstration; with one, options before the command would be silently lost, so they are a
    usage error that says where they go."""
    if ctx.invoked_subcommand is None:
        _run_gateway_demo(duration, seed, quick, json_path)
        return
    given = [name for name, value, default in (("--duration", duration, None),
                                                ("--seed", seed, 7), ("--quick", quick, False),
                                                ("--json", json_path, None))
             if value != default]
    if given:
        raise typer.BadParameter(
            f"the options of `connwise demo` apply to the gateway demo it runs without a "
            f"command; put them after the command: `connwise demo {ctx.invoked_subcommand} "
            f"{given[0]} ...`", param_hint=f"'{given[0]}'")


@demo_app.command("gateway", help=(
    "Run the gateway in front of an application through a baseline, a spike and an overload, "
    "and show what it serves, degrades and sheds by class.\n\nAn HTTP application (fast "
    "/checkout and /api, slow /reports that answers faster when the gateway signals "
    "Connwise-Degrade) and a WebSocket echo run on 127.0.0.1, behind the gateway: /checkout is "
    "critical, /api interactive, /reports bulk, at most 10 requests in flight. The load rises "
    "to 6x that capacity. Prints a live view (latency, queues and the degradation ladder by "
    "class, backends), then a summary and findings. Plain `connwise demo` runs this."))
def demo_gateway(
    duration: GatewayDuration = None,
    seed: GatewaySeed = 7,
    quick: GatewayQuick = False,
    json_path: GatewayJson = None,
) -> None:
    _run_gateway_demo(duration, seed, quick, json_path)


def _run_gateway_demo(duration: float | None, seed: int, quick: bool,
                      json_path: Path | None) -> None:
    """Validation lives in `gateway_demo.Scenario`; its `ConfigError` becomes a usage error
    naming the option."""
    try:
        scenario = gateway_demo.Scenario.from_options(duration=duration, seed=seed, quick=quick)
    except ConfigError as exc:
        raise typer.BadParameter(_reason(exc),
                                 param_hint=f"'--{exc.key.replace('_', '-')}'") from None
    _check_json_path(json_path)
    console = demo_console()
    gateway_demo.run_gateway_demo(scenario, console=console, json_path=json_path)
    if console.broken_pipe:  # the reader went away (`| head`): the output was cut short
        raise typer.Exit(1)


def _check_json_path(json_path: Path | None) -> None:
    """Refuse a path the figures cannot be written to before the run, not after it (with a
    traceback): opened for appending, and removed again if this made it."""
    if json_path is None:
        return
    if not json_path.parent.is_dir():
        raise typer.BadParameter(f"the directory {str(json_path.parent)!r} does not exist; "
                                 "create it or name another path", param_hint="'--json'")
    existed = json_path.exists()
    try:
        with json_path.open("a"):
            pass
    except OSError as exc:
        raise typer.BadParameter(f"{str(json_path)!r} cannot be written ({exc.strerror}); "
                                 "name another path", param_hint="'--json'") from None
    if not existed:
        json_path.unlink()




@demo_app.command("pool", help=(
    "Run one spiky workload against a FIFO pool and a connwise pool, and compare their waits."
    "\n\nA backend with a slow handshake runs on 127.0.0.1; a baseline of 5 concurrent requests "
    "jumps to 40 (10% critical) and back. The FIFO pool grows when callers queue; the connwise "
    "pool serves critical before bulk and warms connections ahead of the spike, as a forecast "
    "would. Prints a live view, then a summary of acquire waits by class."))
def demo_pool(
    duration: Annotated[float | None, typer.Option(
        help="Seconds of workload per pool (1-3600); the demo runs two pools, so it takes about "
             "twice this (default 6, or 3 with --quick).",
        show_default=False)] = None,
    handshake_ms: Annotated[float, typer.Option(
        "--handshake-ms", help="Milliseconds the backend takes to accept a connection (0-5000).",
    )] = 200.0,
    seed: Annotated[int, typer.Option(
        help="Seed of the workload: the same seed gives the same requests.")] = 7,
    quick: Annotated[bool, typer.Option(
        "--quick", help="A short run (3 s per pool), as the tests use.")] = False,
    json_path: Annotated[Path | None, typer.Option(
        "--json", metavar="PATH", dir_okay=False,
        help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Validation lives in `Scenario` (one place, reused by library callers); here its
    `ConfigError` becomes a usage error naming the option."""
    try:
        scenario = Scenario.from_options(duration=duration, handshake_ms=handshake_ms,
                                         seed=seed, quick=quick)
    except ConfigError as exc:
        raise typer.BadParameter(_reason(exc),
                                 param_hint=f"'--{exc.key.replace('_', '-')}'") from None
    _check_json_path(json_path)
    console = demo_console()
    run_pool_demo(scenario, console=console, json_path=json_path)
    if console.broken_pipe:  # the reader went away (`| head`): the output was cut short
        raise typer.Exit(1)


def _reason(exc: ConfigError) -> str:
    """A ConfigError's sentence without its `key = value:` prefix, which the option hint and
    `got ...` say better on a command line."""
    text = str(exc)
    prefix = f"{exc.key} = {exc.value!r}: "
    if text.startswith(prefix):
        text = f"got {exc.value!r}; {text[len(prefix):]}"
    return text


if __name__ == "__main__":
    app()
