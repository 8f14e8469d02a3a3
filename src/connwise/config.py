"""The TOML configuration of connwise, as pydantic models: the one place that validates.

Every error names the key path and the bad value (`listeners[1].bind = 'localhost': ...`), so a
reload that is refused says exactly what to fix while the old configuration stays in force.
Defaults work on a laptop; the non-obvious ones carry their precedent in a comment.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connwise.core.affinity import DEFAULT_VNODES
from connwise.core.classes import DEFAULT_CLASSES, ClassTable, PriorityClass
from connwise.core.cqi import Band, CqiConfig, CqiPolicy, HeaderScore, Weights
from connwise.core.degrade import DEFAULT_STEPS, LEVEL_NAMES, DegradeConfig, Step
from connwise.core.escalation import ActivityRule, EscalationConfig, GroupRule
from connwise.core.health import HealthConfig
from connwise.core.zombies import CLIENT_FLOOR, ZombieRules
from connwise.errors import ConfigError
from connwise.telemetry.units import parse_duration, parse_size
from connwise.telemetry.writer import MIN_STORE_BYTES, RETAIN_CHUNK, Retention


def parse_address(value: str, key: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) -> (host, port), or ConfigError naming `key`."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(key, value, "an address is host:port with a port in 0..65535 "
                          "(0: any free port)", "write e.g. '127.0.0.1:8080'")
    return host, int(port)


def _loopback(address: str) -> bool:
    """Whether `address` (host:port) is on a loopback IP address."""
    host, _ = parse_address(address, "admin.bind")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def ip_literal(text: str) -> str | None:
    """An IPv6 address as a route and a request compare it, `[` compressed form `]` (so
    `[0:0::1]` and `[::1]` are one host); None if `text` (without brackets) is none."""
    try:
        return f"[{ipaddress.IPv6Address(text).compressed}]"
    except ValueError:
        return None


#: The core's defaults, which the policy sections' defaults are (one source of truth).
_CQI = CqiConfig()
_WEIGHTS = Weights()
_DEGRADE = DegradeConfig()

#: RFC 9110's token, what a header name is made of.
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _port_in_range(value: str) -> str:
    if int(value.rpartition(":")[2]) > 65535:
        raise ValueError("the port must be in 0..65535 (0: any free port)")
    return value


Address = Annotated[str, Field(pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):[0-9]{1,5}$"),
                    AfterValidator(_port_in_range)]


class ClassConfig(_Model):
    """One priority class; see connwise.core.classes for the meaning of each field."""

    rank: float
    reserved_share: float = 0.0
    max_wait: float = 30.0
    aging_rate: float = 0.0


class HealthCheckConfig(_Model):
    """Active checks plus passive outlier ejection and slow start (connwise.core.health)."""

    kind: Literal["tcp", "http", "none"] = "tcp"
    path: str = "/health"
    expect_status: int = 200
    #: HAProxy's `inter` default is 2 s; 5 s keeps checks cheap for a laptop.
    interval: float = Field(5.0, gt=0)
    timeout: float = Field(2.0, gt=0)
    #: HAProxy's defaults: 2 successes to rise, 3 failures to fall.
    rise: int = Field(2, ge=1)
    fall: int = Field(3, ge=1)
    #: Envoy's outlier detection defaults: 5 consecutive failures eject for 30 s, doubling up to
    #: 300 s, with at most 10% of a group ejected (and at least one backend).
    consecutive_failures: int = Field(5, ge=1)
    base_ejection_time: float = Field(30.0, gt=0)
    max_ejection_time: float = Field(300.0, gt=0)
    max_ejection_percent: float = Field(10.0, ge=0, le=100)
    #: A recovered backend's weight ramps up over this many seconds, from this share of its
    #: weight (Envoy's slow_start_config min_weight_percent default, 10%).
    slow_start: float = Field(10.0, ge=0)
    slow_start_min_weight: float = Field(0.1, gt=0, le=1)

    def core(self, prefix: str) -> HealthConfig:
        """The core health configuration of this section, validated; errors name keys under
        `prefix` (`groups.NAME.health`)."""
        return HealthConfig(
            rise=self.rise, fall=self.fall, interval=self.interval, timeout=self.timeout,
            consecutive_failures=self.consecutive_failures,
            base_ejection_time=self.base_ejection_time,
            max_ejection_time=self.max_ejection_time,
            max_ejection_percent=self.max_ejection_percent, slow_start=self.slow_start,
            slow_start_min_weight=self.slow_start_min_weight,
        ).validate(prefix)


class StepConfig(_Model):
    """One step of the degradation ladder: entered at `enter` pressure, left below `exit`."""

    enter: float
    exit: float


class DegradeSection(_Model):
    """The degradation ladder (connwise.core.degrade, whose docstring justifies each default).
    `[degrade]` applies to every group; a group's own `[groups.NAME.degrade]` replaces it."""

    #: Thresholds of throttle, signal, queue and shed for the lowest-ranked class.
    steps: list[StepConfig] = Field(default_factory=lambda: [
        StepConfig(enter=s.enter, exit=s.exit) for s in DEFAULT_STEPS])
    #: Added to every threshold per rank position above the lowest class.
    class_offset: float = _DEGRADE.class_offset
    #: A class's own four steps, replacing the derived ones.
    overrides: dict[str, list[StepConfig]] = Field(default_factory=dict)
    #: The highest level a class may reach, e.g. `{ critical = "queue" }`: never shed critical.
    max_level: dict[str, int | str] = Field(default_factory=dict)
    dwell_up: float = _DEGRADE.dwell_up
    dwell_down: float = _DEGRADE.dwell_down
    #: Bytes/s per connection at the throttle step (nginx `limit_rate` semantics) and its burst.
    throttle_rate: float = _DEGRADE.throttle_rate
    throttle_burst: float = _DEGRADE.throttle_burst
    #: At the shed step, arrivals still queue while fewer than this many rounds of the
    #: capacity wait (0: refuse whatever finds no free slot).
    shed_backlog: float = _DEGRADE.shed_backlog
    #: Seconds in the `Retry-After` of a shed request.
    retry_after: int = _DEGRADE.retry_after

    @field_validator("max_level")
    @classmethod
    def _levels(cls, value: dict[str, int | str]) -> dict[str, int | str]:
        """A level is a number 0..4 or its name; names become numbers."""
        levels: dict[str, int | str] = {}
        for name, level in value.items():
            if isinstance(level, str) and level not in LEVEL_NAMES:
                raise ValueError(f"max_level.{name} = {level!r} is not a level; use 0..4 "
                                 f"or one of {', '.join(LEVEL_NAMES)}")
            levels[name] = LEVEL_NAMES.index(level) if isinstance(level, str) else level
        return levels

    def build(self, classes: ClassTable, prefix: str = "degrade") -> DegradeConfig:
        """The core's config, validated against `classes` (errors name `prefix`'s keys)."""
        def steps(items: list[StepConfig]) -> tuple[Step, ...]:
            return tuple(Step(item.enter, item.exit) for item in items)

        levels = {name: int(level) for name, level in self.max_level.items()}
        config = DegradeConfig(
            steps=steps(self.steps), class_offset=self.class_offset,
            overrides={name: steps(items) for name, items in self.overrides.items()},
            max_level=levels, dwell_up=self.dwell_up, dwell_down=self.dwell_down,
            throttle_rate=self.throttle_rate, throttle_burst=self.throttle_burst,
            shed_backlog=self.shed_backlog, retry_after=self.retry_after)
        return config.validate(prefix, classes)


class WeightsConfig(_Model):
    """Relative weights of the CQI axes (they need not add up to 1)."""

    business: float = _WEIGHTS.business
    technical: float = _WEIGHTS.technical
    user: float = _WEIGHTS.user
    resource: float = _WEIGHTS.resource


class BandConfig(_Model):
    """Scores of at least `min_score` (below the next band up) pick `class`."""

    min_score: float
    class_name: str = Field(alias="class")


class UserRuleConfig(_Model):
    """A user-context rule: request header `header` equal to `value` scores `score` (0..1).
    Only for headers something in front of the gateway sets: a client could set its own."""

    header: str
    value: str
    score: float


class CqiSection(_Model):
    """The Connection Quality Index (connwise.core.cqi, whose docstring justifies each
    default). `bands` and `business` left out are calibrated to the class table, so that a
    route's class is kept unless evidence moves a connection."""

    weights: WeightsConfig = WeightsConfig()
    bands: list[BandConfig] | None = None
    business: dict[str, float] | None = None
    protocols: dict[str, float] = Field(default_factory=lambda: dict(_CQI.protocols))
    technical_default: float = _CQI.technical_default
    latency_sensitive_bonus: float = _CQI.latency_sensitive_bonus
    websocket_bonus: float = _CQI.websocket_bonus
    user: list[UserRuleConfig] = Field(default_factory=list)
    user_default: float = _CQI.user_default
    rate_half: float = _CQI.rate_half
    duration_half: float = _CQI.duration_half
    duration_weight: float = _CQI.duration_weight
    rate_window: float = _CQI.rate_window
    hysteresis: float = _CQI.hysteresis
    history: int = _CQI.history

    def build(self, classes: ClassTable) -> CqiConfig:
        """The core's config for `classes`, validated (errors name `cqi.*` keys)."""
        w = self.weights
        weights = Weights(w.business, w.technical, w.user, w.resource).validate("cqi.weights")
        base = CqiConfig.for_classes(classes, weights)
        bands = (tuple(Band(b.min_score, b.class_name) for b in self.bands)
                 if self.bands is not None else base.bands)
        config = CqiConfig(
            weights=weights, bands=bands,
            business=self.business if self.business is not None else base.business,
            protocols=self.protocols, technical_default=self.technical_default,
            latency_sensitive_bonus=self.latency_sensitive_bonus,
            websocket_bonus=self.websocket_bonus,
            user=tuple(HeaderScore(r.header, r.value, r.score) for r in self.user),
            user_default=self.user_default, rate_half=self.rate_half,
            duration_half=self.duration_half, duration_weight=self.duration_weight,
            rate_window=self.rate_window, hysteresis=self.hysteresis, history=self.history)
        return config.validate("cqi")


class GroupConfig(_Model):
    """A backend group: where a route's traffic goes, and how it is spread and bounded."""

    backends: list[Address] = Field(min_length=1)
    balance: Literal["p2c", "round_robin", "hash"] = "p2c"
    #: `header:NAME`, `cookie:NAME` or `client_ip`: the affinity key of `balance = "hash"`.
    hash_key: str = "client_ip"
    #: HAProxy's hash-balance-factor / Envoy's hash_balance_factor, as a ratio.
    balance_factor: float = Field(1.25, ge=1.0)
    #: Points per backend on the hash ring (`balance = "hash"`): 100 spread keys within a few
    #: percent of even (HAProxy places 16 per weight unit, Envoy's ring ~1024 in all).
    vnodes: int = Field(DEFAULT_VNODES, ge=1, le=10_000)
    #: Concurrent upstream requests (http) or connections (tcp) for the whole group.
    max_in_flight: int = Field(256, ge=1)
    max_waiters: int = Field(1024, ge=0)
    #: Keep-alive connections kept open per backend.
    warm_target: int = Field(0, ge=0)
    connect_timeout: float = Field(2.0, gt=0)
    #: Seconds from a request's last byte sent to the backend to its response head; past it,
    #: 504 and the backend counts a passive failure (a hung backend no longer holds the slot).
    #: nginx's proxy_read_timeout default, 60 s; HAProxy's `timeout server` has none.
    response_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)
    #: Idempotent requests are retried once on another backend (the same one when no other is
    #: available) when the connect fails or the backend closes before answering.
    retries: int = Field(1, ge=0, le=5)
    health: HealthCheckConfig = HealthCheckConfig()
    #: This group's own degradation ladder; unset, the top-level `[degrade]` applies.
    degrade: DegradeSection | None = None

    @field_validator("hash_key")
    @classmethod
    def _hash_key(cls, value: str) -> str:
        kind, _, name = value.partition(":")
        if value != "client_ip" and (kind not in ("header", "cookie") or not name):
            raise ValueError("use 'header:NAME', 'cookie:NAME' or 'client_ip'")
        return value


class ListenerConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    kind: Literal["tcp", "http"]
    bind: Address
    #: tcp: the group every connection goes to (unless an SNI entry matches).
    group: str | None = None
    #: tcp: TLS server name -> group, read from the ClientHello without terminating TLS.
    sni: dict[str, str] = Field(default_factory=dict)
    #: tcp: the class of this listener's connections.
    class_name: str = Field("interactive", alias="class")

    @field_validator("sni")
    @classmethod
    def _sni_names(cls, value: dict[str, str]) -> dict[str, str]:
        # DNS names are case-insensitive and the ClientHello's name is matched lowercased.
        lowered: dict[str, str] = {}
        for name, group in value.items():
            key = name.lower()
            if key in lowered:
                raise ValueError(f"the server name {name!r} is listed twice (names are "
                                 "case-insensitive), keep one entry")
            lowered[key] = group
        return lowered


class RouteConfig(_Model):
    listener: str
    group: str
    class_name: str = Field("interactive", alias="class")
    host: str | None = None
    path_prefix: str = "/"
    methods: list[str] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    upgrade: Literal["websocket"] | None = None
    latency_sensitive: bool = False

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        """A host name or IP address, lowercased; an IPv6 address in the one form requests are
        compared in (`[::1]`), whether written with brackets or without."""
        if value is None or value == "*":
            return value
        host = value.strip().lower()
        if ":" in host or host.startswith("["):
            literal = ip_literal(host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host)
            if literal is None:
                raise ValueError(f"{value!r} is no host: write a name or an IP address without "
                                 "a port (an IPv6 address as [::1])")
            return literal
        return host


class ActivityRuleConfig(_Model):
    """Raise a connection whose request or message rate reaches `threshold` per `window` s."""

    name: str
    threshold: float = Field(50.0, gt=0)
    window: float = Field(10.0, gt=0)
    raise_by: int = Field(1, ge=1)
    to_class: str | None = None
    hold: float = Field(30.0, ge=0)
    classes: list[str] = Field(default_factory=list)


class GroupRuleConfig(_Model):
    """Raise every connection of a group of at least `min_members` live connections."""

    name: str
    min_members: int = Field(3, ge=2)
    raise_by: int = Field(1, ge=1)
    to_class: str | None = None
    quiet: float = Field(30.0, ge=0)


class EscalationSection(_Model):
    """Dynamic escalation (connwise.core.escalation); no rules by default."""

    activity: list[ActivityRuleConfig] = Field(default_factory=list)
    groups: list[GroupRuleConfig] = Field(default_factory=list)
    #: The group key of a connection: `header:NAME` or `cookie:NAME` (e.g. a document id).
    group_key: str = "header:x-connwise-group"
    #: At most this share of live connections escalated at once (at least one while any is
    #: live; 0: none): lower classes never starve.
    max_escalated_share: float = Field(0.2, ge=0, le=1)
    #: Memory bounds: connections and group keys tracked (the oldest are forgotten past them).
    max_tracked: int = Field(100_000, ge=1)
    max_groups: int = Field(10_000, ge=1)

    def rules(self, classes: ClassTable) -> EscalationConfig:
        """The core rules of this section, validated against `classes` (errors name keys
        under `escalation`)."""
        return EscalationConfig(
            activity=tuple(ActivityRule(r.name, r.threshold, r.window, r.raise_by, r.to_class,
                                        r.hold, tuple(r.classes)) for r in self.activity),
            groups=tuple(GroupRule(r.name, r.min_members, r.raise_by, r.to_class, r.quiet)
                         for r in self.groups),
            max_escalated_share=self.max_escalated_share, max_tracked=self.max_tracked,
            max_groups=self.max_groups).validate("escalation", classes)

    @field_validator("group_key")
    @classmethod
    def _group_key(cls, value: str) -> str:
        kind, _, name = value.partition(":")
        if kind not in ("header", "cookie") or not name:
            raise ValueError("use 'header:NAME' or 'cookie:NAME'")
        return value


def _off(value: object) -> bool:
    """TOML has no null: `"off"` is how a file keeps records of any age or size."""
    return isinstance(value, str) and value.strip().lower() == "off"


def _in_units(value: object, parse: Callable[..., float]) -> object:
    """A string in the units of the command line (`30d`, `2GiB`) as its number; its error as
    pydantic's, which names the key path."""
    if not isinstance(value, str):
        return value
    try:
        return parse(value, key="")
    except ConfigError as exc:
        raise ValueError(f"{exc.problem}: {exc.fix}") from None


class RetentionSection(_Model):
    """`[telemetry.retention]`: what the writer prunes from the store as it goes, so that a
    gateway's store does not grow without bound. Ages take `30d`, `12h`, `15m` or seconds;
    sizes `500MB`, `2GiB` or bytes, as `connwise telemetry retain` does."""

    #: Records that started longer ago are deleted (`"off"`: any age is kept).
    max_age: float | None = Field(30 * 86400.0, gt=0, allow_inf_nan=False)
    #: Past this, the oldest records are deleted until the store is 10% under it.
    max_bytes: int | None = Field(None, ge=MIN_STORE_BYTES)
    #: Seconds between two pruning passes.
    interval: float = Field(60.0, gt=0, allow_inf_nan=False)
    #: Records deleted per step of a pass, each step one transaction with the queued records
    #: written between steps.
    chunk: int = Field(RETAIN_CHUNK, ge=1)

    @field_validator("max_age", "interval", mode="before")
    @classmethod
    def _duration(cls, value: object, info: ValidationInfo) -> object:
        if _off(value) and info.field_name == "max_age":
            return None
        return _in_units(value, parse_duration)

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return None if _off(value) else _in_units(value, parse_size)

    def retention(self) -> Retention:
        return Retention(max_age=self.max_age, max_bytes=self.max_bytes,
                         interval=self.interval, chunk=self.chunk)


class TelemetrySection(_Model):
    """Where connection records go (connwise.telemetry); off when `store` is not set."""

    #: A SQLite path (`telemetry.db`) or a PostgreSQL DSN (`postgresql://...`).
    store: str | None = None
    #: Records queued for the writer thread; when full, records are dropped and counted, the
    #: data plane never waits.
    queue_capacity: int = Field(10_000, ge=1)
    batch_size: int = Field(500, ge=1)
    flush_interval: float = Field(1.0, gt=0)
    #: TCP_INFO (`rtt_ms`, `retransmits`) is read as every connection of 1 s or more ends, and
    #: as every Nth shorter one ends (1: all, 0: none); the system call costs as much as the
    #: rest of a short connection's record.
    tcp_info_every: int = Field(8, ge=0)
    #: Record the gateway's keep-alive connections to its backends too (`kind = upstream`),
    #: not only client connections.
    upstream_records: bool = True
    #: A CIDR table file (`10.20.0.0/16 eu-west` per line) giving each client address its
    #: record's `region`; read (and its lines checked) by the gateway at start, at each reload
    #: and by `connwise gateway --check`, not here: configuration stays free of file I/O.
    regions: str | None = None
    #: A request header naming the client's region (a CDN's viewer country); wins over the
    #: table when a request carries it.
    region_header: str | None = None
    #: A request header naming the client's device; without it (or when a request lacks it) the
    #: User-Agent is classified as desktop, mobile, tablet, bot or other.
    device_header: str | None = None
    retention: RetentionSection = RetentionSection()

    @field_validator("region_header", "device_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not _HTTP_TOKEN.fullmatch(value):
            raise ValueError("a header name is an HTTP token: ASCII letters, digits and "
                             "!#$%&'*+-.^_`|~")
        return value


ZombieSegmentKey = Literal["listener", "kind", "class", "backend"]
_DEFAULT_SEGMENT: list[ZombieSegmentKey] = ["listener", "kind"]


class ZombieSection(_Model):
    """The live zombie watch of client connections (connwise.core.zombies): on, report only.

    A client connection is a zombie when no byte moved either way for longer than `k` times the
    `quantile` of the healthy idle gaps (silences that ended in traffic) of its segment.
    """

    enabled: bool = True
    #: Close zombies `grace` seconds after reporting them. Off by default: report first, then
    #: decide (the assessment's advice: reclaim where 5% or more are zombies).
    reclaim: bool = False
    #: Seconds a reported zombie has to send or receive again before reclaim closes it.
    grace: float = Field(30.0, ge=0)
    #: Seconds between scans, O(client connections) each; also the resolution of learned gaps.
    interval: float = Field(1.0, gt=0)
    k: float = 3.0
    quantile: float = 0.99
    min_samples: int = 30
    #: Threshold (at least) before a segment has `min_samples` gaps: past the 60-75 s
    #: keep-alive timeouts of HAProxy and nginx, and our own `limits.keepalive_timeout`.
    default_threshold: float = 300.0
    #: Never a zombie after less, however fast its segment: `CLIENT_FLOOR` says why (the
    #: core's floor is 1 s; the report judges client records by this one).
    floor: float = CLIENT_FLOOR
    #: What a segment is made of; each segment learns its own threshold (a 600-bucket histogram,
    #: about 5 KiB, so keep the keys of low cardinality).
    segment: list[ZombieSegmentKey] = Field(default_factory=_DEFAULT_SEGMENT.copy)
    #: TCP keep-alive on client connections, so that the kernel finds a peer that vanished
    #: without a FIN or RST (a half-open connection: a phone that lost its network, a crashed
    #: host) and the gateway closes it as `half_open`: seconds of silence before the first probe
    #: (0: off, the kernel default of no probes). Set on the listening sockets, which the
    #: accepted ones inherit: nothing per connection.
    keepalive_idle: int = Field(60, ge=0)
    #: Seconds between unanswered probes, and how many make the peer gone: with the defaults a
    #: vanished peer is found 90 s after its last packet.
    keepalive_interval: int = Field(10, ge=1)
    keepalive_count: int = Field(3, ge=1)

    @field_validator("segment")
    @classmethod
    def _segment(cls, value: list[ZombieSegmentKey]) -> list[ZombieSegmentKey]:
        if len(set(value)) != len(value):
            raise ValueError("name each key once")
        return value

    @model_validator(mode="after")
    def _rules(self) -> ZombieSection:
        self.rules()
        return self

    def rules(self) -> ZombieRules:
        """The core rules of this section, validated; leaks are a pool notion, so none here."""
        return ZombieRules(k=self.k, quantile=self.quantile, min_samples=self.min_samples,
                           default_threshold=self.default_threshold, floor=self.floor,
                           leak_threshold=None).validate("zombies")


class ForecastSection(_Model):
    """Pre-warming the upstream pools from a demand forecast (connwise.forecast); off by
    default. Each period the gateway forecasts each group's demand with a fitted model, plans
    its warm connections (Little's law, lead time, ramp limit) and sets the group's pools'
    warm targets, split across its backends."""

    enabled: bool = False
    #: `forecast_only` computes and shows plans and never sets a target (AWS predictive
    #: scaling's ForecastOnly): the way to watch a model before trusting it.
    mode: Literal["apply", "forecast_only"] = "apply"
    #: The model registry directory (`connwise forecast fit --registry`) and the forecaster's
    #: name in it; its champion is used, and a newly promoted one is picked up at a refresh.
    registry: str | None = None
    model: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    #: A telemetry store (SQLite path or PostgreSQL DSN) the newest history is read from at
    #: every refresh; unset, the model forecasts from the data window it was fitted on.
    store: str | None = None
    #: With `store`: what the model was fitted on (see docs/forecast.md). Requests per period
    #: by default: the upstream pools carry requests, whatever the client connections do.
    metric: Literal["connections", "requests", "concurrency"] = "requests"
    segment_by: list[str] = Field(default_factory=lambda: ["group"], min_length=1)
    #: With `store`: record kinds read (the gateway records its clients as `client`).
    record_kinds: list[str] = Field(default_factory=lambda: ["client"])
    #: Group -> the model's segment for it; a group not named here uses its own name, and a
    #: group the model has no segment for is not planned.
    segments: dict[str, str] = Field(default_factory=dict)
    #: Mean seconds a request (or connection) holds an upstream connection, Little's law W;
    #: unset: measured per group in `store`, else 1 s.
    hold_time: float | None = Field(None, gt=0)
    #: The forecast quantile planned for: 0.9 is the upper edge of the 80% interval.
    quantile: float = Field(0.9, ge=0.5, lt=1)
    #: Warm this many seconds before the demand (the issue's 5 to 10 minutes; AWS's
    #: SchedulingBufferTime default is 5 minutes, we take the safer end).
    lead: float = Field(600.0, ge=0)
    #: Most new warm connections per second per group (unset: no limit): no connection storm.
    max_ramp: float | None = Field(None, gt=0)
    headroom: float = Field(1.0, ge=1.0)
    #: Seconds between forecasts (and model reloads); a forecast costs seconds of CPU in a
    #: worker thread.
    refresh_interval: float = Field(300.0, gt=0)
    #: Seconds between two decisions between plan steps (scale-in follows observed demand).
    tick: float = Field(15.0, gt=0)
    #: Horizons of `connwise_forecast_demand`, seconds ahead.
    horizons: list[float] = Field(default_factory=lambda: [300.0, 600.0, 1800.0, 3600.0],
                                  min_length=1)

    @field_validator("horizons")
    @classmethod
    def _horizons(cls, value: list[float]) -> list[float]:
        if min(value) <= 0:
            raise ValueError("horizons are seconds ahead, all > 0")
        return value

    @field_validator("segment_by")
    @classmethod
    def _segment_by(cls, value: list[str]) -> list[str]:
        known = ("group", "source", "backend", "class_name", "region", "kind", "node",
                 "device")
        for name in value:
            if name not in known:
                raise ValueError(f"unknown segment dimension {name!r}; use {', '.join(known)}")
        return value


class LimitsConfig(_Model):
    """Bounds on clients; over them the client gets 431, 408, 413 or a closed connection."""

    max_connections: int = Field(10_000, ge=1)
    #: Per client IP; HAProxy and nginx have no default; 256 stops one client from hogging.
    max_connections_per_ip: int = Field(256, ge=1)
    #: nginx's large_client_header_buffers is 4 x 8 KiB; one 16 KiB head is HAProxy's tune.bufsize.
    max_header_bytes: int = Field(16_384, ge=1024)
    #: Slowloris guard: the whole request head must arrive within this (nginx: 60 s); on a
    #: tcp listener with `sni`, the ClientHello.
    header_timeout: float = Field(10.0, gt=0)
    #: nginx's client_max_body_size is 1 MiB; APIs need more, 10 MiB is a middle ground.
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    #: Slowloris on the body: seconds a request body may pause between two reads; past it,
    #: 408 (nginx client_body_timeout, 60 s).
    body_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)
    #: Idle keep-alive client connections are closed after this (nginx keepalive_timeout 75 s).
    keepalive_timeout: float = Field(75.0, gt=0)
    #: An http client that takes no byte of what the gateway sends it (an answer, a
    #: WebSocket's frames) for this long is cut off (nginx send_timeout, 60 s): it would hold
    #: its admission slot and upstream connection for as long as it pleases.
    send_timeout: float = Field(60.0, gt=0, allow_inf_nan=False)


class HttpSection(_Model):
    """How http listeners read request targets."""

    #: Route and forward the normalised path (RFC 3986 6.2.2: unreserved escapes decoded, dot
    #: segments removed), so a route and its backend read one path: Envoy's `normalize_path`.
    normalize_path: bool = True
    #: With `normalize_path`, `//` becomes `/` (nginx's `merge_slashes`, on by default).
    merge_slashes: bool = True


class AdminConfig(_Model):
    bind: Address = "127.0.0.1:9901"
    #: A bearer token; required unless `allow_anonymous` (only on a loopback IP address).
    token: str | None = None
    allow_anonymous: bool = False

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ConfigError("admin.token", value, "a blank token would mean no token, that "
                              "is anonymous access", "set a secret (e.g. the output of "
                              "'openssl rand -hex 32'), or remove the key and set "
                              "allow_anonymous = true on a loopback bind")
        if value is not None and value != value.strip():
            raise ConfigError("admin.token", "***", "the token starts or ends with white space, "
                              "which HTTP trims from the Authorization header: no request could "
                              "ever match it", "remove the spaces from the token")
        return value


class GatewayConfig(_Model):
    node_id: str = "gw1"
    #: How long SIGTERM waits for in-flight work before closing what remains.
    drain_timeout: float = Field(30.0, gt=0)
    listeners: list[ListenerConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(default_factory=list)
    groups: dict[str, GroupConfig] = Field(min_length=1)
    classes: dict[str, ClassConfig] = Field(default_factory=lambda: {
        c.name: ClassConfig(rank=c.rank, reserved_share=c.reserved_share,
                            max_wait=c.max_wait, aging_rate=c.aging_rate)
        for c in DEFAULT_CLASSES})
    limits: LimitsConfig = LimitsConfig()
    http: HttpSection = HttpSection()
    escalation: EscalationSection = EscalationSection()
    degrade: DegradeSection = DegradeSection()
    cqi: CqiSection = CqiSection()
    telemetry: TelemetrySection = TelemetrySection()
    forecast: ForecastSection = ForecastSection()
    zombies: ZombieSection = ZombieSection()
    admin: AdminConfig | None = None

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        def bad(key: str, value: object, problem: str, fix: str) -> ConfigError:
            return ConfigError(key, value, problem, fix)

        seen_names: set[str] = set()
        seen_binds: set[str] = set()
        for i, listener in enumerate(self.listeners):
            where = f"listeners[{i}]"
            if listener.name in seen_names:
                raise bad(f"{where}.name", listener.name, "the name is used twice",
                          "give each listener its own name")
            if listener.bind in seen_binds and not listener.bind.endswith(":0"):
                raise bad(f"{where}.bind", listener.bind, "the address is used twice",
                          "give each listener its own address")
            seen_names.add(listener.name)
            seen_binds.add(listener.bind)
            if listener.kind == "tcp" and listener.group is None and not listener.sni:
                raise bad(f"{where}.group", None, "a tcp listener needs a group",
                          "set group (or sni entries)")
            for group in [listener.group, *listener.sni.values()]:
                if group is not None and group not in self.groups:
                    raise bad(f"{where}.group", group, "no such group",
                              f"use one of {sorted(self.groups)}")
            if listener.class_name not in self.classes:
                raise bad(f"{where}.class", listener.class_name, "no such class",
                          f"use one of {sorted(self.classes)}")
        kinds = {listener.name: listener.kind for listener in self.listeners}
        for i, route in enumerate(self.routes):
            where = f"routes[{i}]"
            if kinds.get(route.listener) != "http":
                raise bad(f"{where}.listener", route.listener, "routes apply to http listeners "
                          "and this is not one", f"use one of {sorted(kinds)} of kind http")
            if route.group not in self.groups:
                raise bad(f"{where}.group", route.group, "no such group",
                          f"use one of {sorted(self.groups)}")
            if route.class_name not in self.classes:
                raise bad(f"{where}.class", route.class_name, "no such class",
                          f"use one of {sorted(self.classes)}")
        admin = self.admin
        if admin is not None and admin.token is None and not admin.allow_anonymous:
            raise bad("admin.token", None, "the admin API requires a bearer token",
                      "set a token, or allow_anonymous = true on a loopback bind")
        if admin is not None and admin.allow_anonymous and not _loopback(admin.bind):
            raise bad("admin.bind", admin.bind, "anonymous admin access is only allowed on a "
                      "loopback address (127.0.0.0/8 or [::1]; not a host name, which may "
                      "resolve to any)", "bind to 127.0.0.1 or set a token")
        classes = self.class_table()
        self.cqi_config(classes)
        self.degrade.build(classes)
        for name in self.groups:
            self.degrade_config(name, classes)
        return self

    @model_validator(mode="after")
    def _core_sections(self) -> GatewayConfig:
        """The core policies' own checks, so that `--check` refuses what start would."""
        for name, group in self.groups.items():
            group.health.core(f"groups.{name}.health")
        self.escalation.rules(self.class_table())
        return self

    @model_validator(mode="after")
    def _forecast_references(self) -> GatewayConfig:
        section = self.forecast
        if section.enabled and section.registry is None:
            raise ConfigError("forecast.registry", None, "forecasting needs a fitted model",
                              "set registry to a directory written by 'connwise forecast fit'"
                              ", or enabled = false")
        for group in section.segments:
            if group not in self.groups:
                raise ConfigError(f"forecast.segments.{group}", section.segments[group],
                                  "no such group", f"use one of {sorted(self.groups)}")
        return self

    def class_table(self) -> ClassTable:
        return ClassTable((PriorityClass(name, c.rank, c.reserved_share, c.max_wait,
                                         c.aging_rate) for name, c in self.classes.items()))

    def cqi_config(self, classes: ClassTable | None = None) -> CqiConfig:
        """`[cqi]` as the core's config, bands checked against the class table."""
        classes = classes or self.class_table()
        config = self.cqi.build(classes)
        CqiPolicy(config, classes)  # checks the classes that bands and business name
        return config

    def degrade_config(self, group: str, classes: ClassTable | None = None) -> DegradeConfig:
        """The ladder of `group`: its own `degrade` table, else the top-level one."""
        own = self.groups[group].degrade
        if own is None:
            return self.degrade.build(classes or self.class_table())
        return own.build(classes or self.class_table(), f"groups.{group}.degrade")


def _pydantic_error(exc: ValidationError, source: str) -> ConfigError:
    first = exc.errors()[0]
    original = first.get("ctx", {}).get("error")
    if isinstance(original, ConfigError):
        return original
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
    if first["type"] == "missing":
        return ConfigError(path, "(missing)", "the key is required", f"add it in {source}")
    message = first["msg"].removeprefix("Value error, ")
    return ConfigError(path or source, first.get("input"), message[:1].lower() + message[1:],
                       f"fix it in {source}")


def load_gateway_config(data: dict[str, Any] | str | Path, source: str = "config") -> GatewayConfig:
    """Validate a gateway configuration from a dict, TOML text or a TOML file path."""
    if isinstance(data, Path):
        source = str(data)
        try:
            text = data.read_text(encoding="utf-8")  # TOML is UTF-8, whatever the locale
        except OSError as exc:
            raise ConfigError("config", str(data), f"the file cannot be read ({exc.strerror})",
                              "pass the path of a readable TOML file") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError("config", str(data), f"the file is not UTF-8 (byte "
                              f"0x{exc.object[exc.start]:02x} at offset {exc.start})",
                              "save it as UTF-8, as TOML requires") from None
        data = text
    if isinstance(data, str):
        try:
            data = tomllib.loads(data)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "", f"it is not valid TOML ({exc})",
                              "fix the syntax") from exc
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_error(exc, source) from None
