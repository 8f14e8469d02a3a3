"""The TOML configuration of connwise, as pydantic models: the one place that validates.

Every error names the key path and the bad value (`listeners[1].bind = 'localhost': ...`), so a
reload that is refused says exactly what to fix while the old configuration stays in force.
Defaults work on a laptop; the non-obvious ones carry their precedent in a comment.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connwise.core.classes import DEFAULT_CLASSES, ClassTable, PriorityClass
from connwise.errors import ConfigError


def parse_address(value: str, key: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) -> (host, port), or ConfigError naming `key`."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(key, value, "an address is host:port with a port in 0..65535 "
                          "(0: any free port)", "write e.g. '127.0.0.1:8080'")
    return host, int(port)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Address = Annotated[str, Field(pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.\-]+):[0-9]{1,5}$")]


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
    #: A recovered backend's weight ramps up over this many seconds.
    slow_start: float = Field(10.0, ge=0)


class GroupConfig(_Model):
    """A backend group: where a route's traffic goes, and how it is spread and bounded."""

    backends: list[Address] = Field(min_length=1)
    balance: Literal["p2c", "round_robin", "hash"] = "p2c"
    #: `header:NAME`, `cookie:NAME` or `client_ip`: the affinity key of `balance = "hash"`.
    hash_key: str = "client_ip"
    #: HAProxy's hash-balance-factor / Envoy's hash_balance_factor, as a ratio.
    balance_factor: float = Field(1.25, ge=1.0)
    #: Concurrent upstream requests (http) or connections (tcp) for the whole group.
    max_in_flight: int = Field(256, ge=1)
    max_waiters: int = Field(1024, ge=0)
    #: Keep-alive connections kept open per backend.
    warm_target: int = Field(0, ge=0)
    connect_timeout: float = Field(2.0, gt=0)
    #: Idempotent requests are retried once on another backend when the connect fails or the
    #: backend closes before answering.
    retries: int = Field(1, ge=0, le=5)
    health: HealthCheckConfig = HealthCheckConfig()

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
    #: At most this share of live connections escalated at once: lower classes never starve.
    max_escalated_share: float = Field(0.2, ge=0, le=1)

    @field_validator("group_key")
    @classmethod
    def _group_key(cls, value: str) -> str:
        kind, _, name = value.partition(":")
        if kind not in ("header", "cookie") or not name:
            raise ValueError("use 'header:NAME' or 'cookie:NAME'")
        return value


class TelemetrySection(_Model):
    """Where connection records go (connwise.telemetry); off when `store` is not set."""

    #: A SQLite path (`telemetry.db`) or a PostgreSQL DSN (`postgresql://...`).
    store: str | None = None
    #: Records queued for the writer thread; when full, records are dropped and counted, the
    #: data plane never waits.
    queue_capacity: int = Field(10_000, ge=1)
    batch_size: int = Field(500, ge=1)
    flush_interval: float = Field(1.0, gt=0)


class LimitsConfig(_Model):
    """Bounds on clients; over them the client gets 431, 408, 413 or a closed connection."""

    max_connections: int = Field(10_000, ge=1)
    #: Per client IP; HAProxy and nginx have no default; 256 stops one client from hogging.
    max_connections_per_ip: int = Field(256, ge=1)
    #: nginx's large_client_header_buffers is 4 x 8 KiB; one 16 KiB head is HAProxy's tune.bufsize.
    max_header_bytes: int = Field(16_384, ge=1024)
    #: Slowloris guard: the whole request head must arrive within this (nginx: 60 s).
    header_timeout: float = Field(10.0, gt=0)
    #: nginx's client_max_body_size is 1 MiB; APIs need more, 10 MiB is a middle ground.
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=0)
    #: Idle keep-alive client connections are closed after this (nginx keepalive_timeout 75 s).
    keepalive_timeout: float = Field(75.0, gt=0)


class AdminConfig(_Model):
    bind: Address = "127.0.0.1:9901"
    #: A bearer token; required unless `allow_anonymous` (never on a non-loopback bind).
    token: str | None = None
    allow_anonymous: bool = False


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
    escalation: EscalationSection = EscalationSection()
    telemetry: TelemetrySection = TelemetrySection()
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
        if admin is not None and admin.allow_anonymous and not admin.bind.startswith("127."):
            raise bad("admin.bind", admin.bind, "anonymous admin access is only allowed on "
                      "127.0.0.0/8", "bind to 127.0.0.1 or set a token")
        self.class_table()
        return self

    def class_table(self) -> ClassTable:
        return ClassTable((PriorityClass(name, c.rank, c.reserved_share, c.max_wait,
                                         c.aging_rate) for name, c in self.classes.items()))


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
            text = data.read_text()
        except OSError as exc:
            raise ConfigError("config", str(data), f"the file cannot be read ({exc.strerror})",
                              "pass the path of a readable TOML file") from exc
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
