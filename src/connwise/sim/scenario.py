"""Scenario files: the workload, the backends and the policies to compare, validated in one place.

A scenario is TOML (see `docs/simulator.md` for every key). `load_scenario` reads a path, a
TOML string or a dict and returns a `Scenario`; errors are `ConfigError`s naming the key path.
Policies are resolved against one of three bases (`static`, `reactive`, `connwise`); any key of
`PolicyConfig` overrides the base, so a mix ("static, but with hash affinity") is one table.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connwise.core.classes import DEFAULT_CLASSES
from connwise.errors import ConfigError

_DEFAULTS = {c.name: c for c in DEFAULT_CLASSES}

#: A run moves its policies every `run.tick` and samples every `run.sample` (at most once a
#: tick); at ~80 us a tick, 10 million ticks (29 days at the default 0.25 s) take about 15
#: minutes, and a million samples hold about 100 MB. Past these a run is a hang, not a replay.
MAX_TICKS = 10_000_000
MAX_SAMPLES = 1_000_000

#: A multiplier or a share: finite (as every number of a scenario) and not negative.
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    # inf and nan are valid TOML floats; no key of a scenario means anything by them (an
    # infinite rate draws every arrival at t = 0, forever).
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              allow_inf_nan=False)


class ClassLoad(_Model):
    """One priority class: its part of the traffic and how its work behaves."""

    #: Fraction of sessions of this class (normalised over all classes).
    share: float = Field(gt=0)
    #: Mean backend service time of one request, milliseconds (lognormal).
    service_ms: float = Field(20.0, gt=0)
    #: Lognormal sigma of the service time (0: constant).
    service_sigma: float = Field(0.5, ge=0)
    #: Mean response size, KiB (exponential); transfer at the backend bandwidth.
    size_kb: float = Field(0.0, ge=0)
    #: A request is *served* when it completes within this many seconds of its arrival.
    deadline: float = Field(1.0, gt=0)
    #: Mean requests per session (client connection); geometric, at least 1.
    requests: float = Field(1.0, ge=1)
    #: Mean think time between a session's requests, seconds (lognormal).
    think_s: float = Field(1.0, gt=0)
    think_sigma: float = Field(1.0, ge=0)
    #: Priority-class knobs; default to the core's default class of the same name.
    rank: float | None = None
    reserved_share: float | None = None
    max_wait: float | None = None
    aging_rate: float | None = None


class Spike(_Model):
    """A multiplier on the arrival rate over [at, at + duration), with linear ramps."""

    at: float = Field(ge=0)
    duration: float = Field(gt=0)
    factor: float = Field(gt=0)
    ramp: float = Field(0.0, ge=0)
    kind: Literal["spike", "lift"] = "spike"
    #: Whether the forecast knows it ahead (a launch, a sale) or not (viral content).
    predictable: bool = True


class Arrivals(_Model):
    """Sessions per second: `rate` x profile(t) x spikes(t), a non-homogeneous Poisson process."""

    rate: float = Field(10.0, gt=0)
    profile: Literal["flat", "daily", "weekly"] = "flat"
    #: Seconds in a simulated day: 86400 for real time, less to compress a day.
    day_length: float = Field(86400.0, gt=0)
    #: 24 hourly multipliers (default: a web service's day, trough 0.2 at 4h, peak 1.0 at 20h).
    daily: list[NonNegative] | None = Field(None, min_length=24, max_length=24)
    #: 7 daily multipliers, Monday first (default: weekend 0.7).
    weekly: list[NonNegative] | None = Field(None, min_length=7, max_length=7)
    spikes: list[Spike] = Field(default_factory=list)
    #: Replay instead of the model: a telemetry store (a SQLite file, or a postgresql:// DSN
    #: as `--store` takes it; a relative path is relative to the scenario file) ...
    replay: str | None = None
    #: ... or an access log (nginx `combined` + `$request_time`, or haproxy).
    replay_log: str | None = None
    replay_format: Literal["nginx", "haproxy"] = "nginx"
    #: Replay time compression: 10 replays 10 recorded seconds per simulated second.
    replay_speed: float = Field(1.0, gt=0)


class Clients(_Model):
    """The client population: regions and devices by share; think time scaled per device."""

    #: Each client costs ~110 bytes and 1.5 us before the run: 10 million is ~1 GB.
    count: int = Field(10_000, ge=1, le=10_000_000)
    regions: dict[str, Positive] = Field(default_factory=lambda: {"local": 1.0}, min_length=1)
    devices: dict[str, Positive] = Field(default_factory=lambda: {"desktop": 1.0}, min_length=1)
    #: Think-time multiplier per device (a phone on a train comes back more slowly).
    device_gap: dict[str, NonNegative] = Field(default_factory=dict)


class Zombies(_Model):
    """Planted zombies: sessions that go silent and hold their connection."""

    rate: float = Field(0.0, ge=0, le=1)
    #: Requests a zombie makes before it goes silent.
    after_requests: int = Field(1, ge=1)
    #: Seconds a zombie holds its connection if nobody reclaims it.
    hold: float = Field(3600.0, gt=0)


class Backends(_Model):
    """Identical backends, each behind its own connection pool."""

    count: int = Field(2, ge=1)
    #: Requests a backend serves at nominal speed; above, service slows in proportion.
    capacity: int = Field(50, ge=1)
    #: Pool connections per backend (every policy's default maximum: same capacity for all).
    pool_size: int = Field(20, ge=1)
    #: Mean time to open a backend connection, milliseconds (lognormal).
    connect_ms: float = Field(200.0, ge=0)
    connect_sigma: float = Field(0.3, ge=0)
    #: Probability that a connect fails.
    connect_fail: float = Field(0.0, ge=0, lt=1)
    bandwidth_mbps: float = Field(100.0, gt=0)
    #: Service-time multiplier of a request sent with the degrade signal (a lighter answer).
    degraded_cost: float = Field(0.5, gt=0, le=1)
    #: Fraction of a request's service time saved when its session's state is local (affinity).
    affinity_saving: float = Field(0.0, ge=0, lt=1)


class PolicyConfig(_Model):
    """A policy: a base and overrides. None means "the base's value"."""

    base: Literal["static", "reactive", "connwise"] = "static"
    scheduling: Literal["fifo", "priority"] | None = None
    pool_min: int | None = Field(None, ge=0)
    pool_max: int | None = Field(None, ge=1)
    #: Seconds a request waits for a connection before it fails.
    timeout: float | None = Field(None, gt=0)
    #: Pool idle trim (None: keep connections).
    idle_timeout: float | None = Field(None, gt=0)
    max_waiters: int | None = Field(None, ge=0)
    degrade: bool | None = None
    warm: bool | None = None
    warm_headroom: float | None = Field(None, ge=1)
    #: Seconds before a planned step that the plan is applied to the pools.
    warm_lead: float | None = Field(None, ge=0)
    balance: Literal["round_robin", "p2c", "hash"] | None = None
    balance_factor: float | None = Field(None, ge=1)
    zombies: Literal["timeout", "learned"] | None = None
    #: Close a client connection idle this long (the fixed timeout of every policy).
    client_idle_timeout: float | None = Field(None, gt=0)
    zombie_k: float | None = Field(None, ge=1)
    reclaim_grace: float | None = Field(None, ge=0)
    scan_interval: float | None = Field(None, gt=0)
    #: Client connections the front door accepts at once; over it, a connection is refused.
    max_connections: int | None = Field(None, ge=1)


class Resolved(_Model):
    """A policy with every value filled in (what the engine runs)."""

    name: str
    base: str
    scheduling: Literal["fifo", "priority"]
    pool_min: int
    pool_max: int
    timeout: float
    idle_timeout: float | None
    max_waiters: int
    degrade: bool
    warm: bool
    warm_headroom: float
    warm_lead: float
    balance: Literal["round_robin", "p2c", "hash"]
    balance_factor: float
    zombies: Literal["timeout", "learned"]
    client_idle_timeout: float
    zombie_k: float
    reclaim_grace: float
    scan_interval: float
    max_connections: int


class Run(_Model):
    name: str = "scenario"
    description: str = ""
    duration: float = Field(600.0, gt=0)
    seed: int = 1
    #: Seconds between policy ticks (ladder, maintenance): the gateway's 0.25 s.
    tick: float = Field(0.25, gt=0)
    #: Seconds between time-series samples for plots.
    sample: float = Field(1.0, gt=0)
    #: Requests arriving while the rate is at least this fraction of its peak count as "peak".
    peak_fraction: float = Field(0.8, gt=0, le=1)
    #: Results ignore requests arriving before this time (the pools settle).
    warmup: float = Field(0.0, ge=0)


class Scenario(_Model):
    run: Run = Run()
    arrivals: Arrivals = Arrivals()
    classes: dict[str, ClassLoad] = Field(
        default_factory=lambda: {"interactive": ClassLoad(share=1.0)}, min_length=1)
    clients: Clients = Clients()
    zombies: Zombies = Zombies()
    backends: Backends = Backends()
    policies: dict[str, PolicyConfig] = Field(default_factory=lambda: {
        "static": PolicyConfig(base="static"), "reactive": PolicyConfig(base="reactive"),
        "connwise": PolicyConfig(base="connwise")})

    def class_knobs(self, name: str) -> tuple[float, float, float, float]:
        """(rank, reserved_share, max_wait, aging_rate) of a class, defaults filled in."""
        load = self.classes[name]
        base = _DEFAULTS.get(name)
        if base is None and load.rank is None:
            raise ConfigError(f"classes.{name}.rank", None, "a class not among the defaults "
                              f"({', '.join(_DEFAULTS)}) needs a rank", "set rank = 0, 1, ...")
        return (load.rank if load.rank is not None else base.rank if base else 0.0,
                load.reserved_share if load.reserved_share is not None
                else base.reserved_share if base else 0.0,
                load.max_wait if load.max_wait is not None else base.max_wait if base else 30.0,
                load.aging_rate if load.aging_rate is not None
                else base.aging_rate if base else 0.1)

    def resolve(self, name: str) -> Resolved:
        """The policy `name` with its base's values where it sets none."""
        try:
            cfg = self.policies[name]
        except KeyError:
            raise ConfigError("--policies", name, "the scenario defines no such policy",
                              f"use one of {', '.join(self.policies)}") from None
        return resolve_policy(name, cfg, self.backends)


#: The bases. `static` is a traditional setup (fixed pool, FIFO, round robin, fixed timeouts);
#: `reactive` grows on demand and trims idle connections (psycopg_pool, HikariCP); `connwise`
#: adds priority, the degradation ladder, plan-driven warming, bounded-load affinity and learned
#: zombie reclaim. Fixed timeouts: 30 s to get a connection (psycopg_pool's default), 600 s
#: idle for a client connection (HikariCP's idleTimeout), 60 s pool idle trim (reactive).
BASES: dict[str, dict[str, Any]] = {
    "static": dict(scheduling="fifo", timeout=30.0, idle_timeout=None, max_waiters=1024,
                   degrade=False, warm=False, balance="round_robin", zombies="timeout"),
    "reactive": dict(scheduling="fifo", timeout=30.0, idle_timeout=60.0, max_waiters=1024,
                     degrade=False, warm=False, balance="p2c", zombies="timeout"),
    "connwise": dict(scheduling="priority", timeout=30.0, idle_timeout=60.0, max_waiters=1024,
                     degrade=True, warm=True, balance="hash", zombies="learned"),
}


def resolve_policy(name: str, cfg: PolicyConfig, backends: Backends) -> Resolved:
    values: dict[str, Any] = dict(BASES[cfg.base])
    values.update(
        name=name, base=cfg.base,
        pool_min=backends.pool_size if cfg.base == "static" else 1,
        pool_max=backends.pool_size, warm_headroom=1.2, warm_lead=30.0, balance_factor=1.25,
        client_idle_timeout=600.0, zombie_k=3.0, reclaim_grace=5.0, scan_interval=5.0,
        max_connections=100_000)
    for key, value in cfg.model_dump(exclude={"base"}).items():
        if value is not None:
            values[key] = value
    if values["pool_min"] > values["pool_max"]:
        raise ConfigError(f"policies.{name}.pool_min", values["pool_min"],
                          f"it exceeds pool_max ({values['pool_max']})",
                          "lower pool_min or raise pool_max")
    return Resolved(**values)


def _relative_to(scenario: Scenario, base: Path) -> Scenario:
    """Replay sources named by a relative path are found next to the scenario file, so a
    scenario and its recorded traffic move together."""
    arrivals = scenario.arrivals
    update: dict[str, str] = {}
    if arrivals.replay_log is not None and not Path(arrivals.replay_log).is_absolute():
        update["replay_log"] = str(base / arrivals.replay_log)
    replay = arrivals.replay
    if (replay is not None and not replay.startswith(("postgres://", "postgresql://"))
            and not Path(replay).is_absolute()):
        update["replay"] = str(base / replay)
    if not update:
        return scenario
    return scenario.model_copy(update={"arrivals": arrivals.model_copy(update=update)})


def _check_arrivals(arrivals: Arrivals) -> None:
    """A profile whose multipliers are all 0 lets no session arrive (and has no peak rate)."""
    shapes = {"daily": ("daily",), "weekly": ("daily", "weekly")}.get(arrivals.profile, ())
    for key in shapes:
        values = getattr(arrivals, key)
        if values is not None and not any(values):
            raise ConfigError(f"arrivals.{key}", values, "every multiplier is 0, so no session "
                              "would ever arrive", "give some of them a positive multiplier")


def _check_run(run: Run) -> None:
    """What one `[run]` key cannot say alone: the warmup ends before the run does, and the
    ticks and samples of the run stay within `MAX_TICKS` and `MAX_SAMPLES`."""
    if run.warmup >= run.duration:
        raise ConfigError("run.warmup", run.warmup, f"the results ignore everything before it, "
                          f"and the run lasts {run.duration:g} s", "shorten the warmup")
    if run.duration / run.tick > MAX_TICKS:
        raise ConfigError("run.duration", run.duration, f"the run would take "
                          f"{run.duration / run.tick:.3g} ticks of run.tick ({run.tick:g} s), "
                          f"more than {MAX_TICKS:,}", "shorten the run or raise run.tick")
    samples = run.duration / max(run.sample, run.tick)
    if samples > MAX_SAMPLES:
        raise ConfigError("run.sample", run.sample, f"the run would keep {samples:.3g} samples "
                          f"for its plots, more than {MAX_SAMPLES:,}", "raise run.sample")


def override_run(scenario: Scenario, **values: Any) -> Scenario:
    """`scenario` with some `[run]` keys replaced (the CLI's `--duration`, `--seed`), validated
    as the scenario file's are; errors name the option (`--duration`)."""
    try:
        run = Run.model_validate({**scenario.run.model_dump(), **values})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{err['loc'][0]}", err.get("input"), err["msg"],
                          "see docs/simulator.md for the [run] keys") from exc
    _check_run(run)
    return scenario.model_copy(update={"run": run})


def load_scenario(source: str | Path | dict[str, Any]) -> Scenario:
    """A validated `Scenario` from a TOML path, TOML text or a dict."""
    where = "scenario"
    path: Path | None = None
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source) if isinstance(source, Path) or "\n" not in source else None
        try:
            if path is not None:
                where = str(path)
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            else:
                data = tomllib.loads(str(source))
        except OSError as exc:
            raise ConfigError(where, str(source), f"cannot read the scenario ({exc.strerror})",
                              "pass the path of a scenario TOML file") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(where, str(source), f"the scenario is not UTF-8 text ({exc.reason} "
                              f"at byte {exc.start})", "save it as a UTF-8 TOML file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(where, "TOML", f"the scenario is not valid TOML ({exc})",
                              "fix the syntax at the position named") from exc
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "scenario"
        raise ConfigError(key, err.get("input"), f"{err['msg']} (in {where})",
                          "see docs/simulator.md for the scenario keys") from exc
    if path is not None:
        scenario = _relative_to(scenario, path.parent)
    _check_arrivals(scenario.arrivals)
    _check_run(scenario.run)
    for name in scenario.classes:
        scenario.class_knobs(name)
    for name in scenario.policies:
        scenario.resolve(name)
    return scenario
