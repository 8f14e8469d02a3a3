"""The gateway process: listeners, groups, client limits, drain and reload.

`Gateway` is the asyncio shell of the gateway. It opens one accept loop per listener
(`accept.py`: many connections per wake-up; SO_REUSEPORT, so `--workers N` processes share the
address), keeps the groups that admit and balance traffic, counts what happens, and carries out
drain (SIGTERM) and reload (SIGHUP).

Reload builds the new listeners' routing and groups from the new configuration and swaps them in
whole for new requests; established connections keep the objects they started with, and the
groups they leave behind retire once their work is done (`Group.retire`). A configuration refused
anywhere on the way (validation, the core, opening a group's pools) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from connwise.config import GatewayConfig, HttpSection, LimitsConfig, ListenerConfig, parse_address
from connwise.core.classes import ClassTable
from connwise.core.clock import Clock, MonotonicClock
from connwise.core.cqi import ClassChange, ClassState, CqiPolicy
from connwise.core.escalation import EscalationConfig, EscalationEngine
from connwise.errors import ConfigError
from connwise.gateway.accept import AcceptLoop, Keepalive, ProtocolFactory, bind_failed
from connwise.gateway.health_check import check_backend
from connwise.gateway.http import HttpClient
from connwise.gateway.routing import Route, build_routers
from connwise.gateway.tcp import TcpClient
from connwise.gateway.upstreams import Backend, Group
from connwise.gateway.zombies import GatewayZombieWatch
from connwise.telemetry.clientinfo import ClientSegments
from connwise.telemetry.metrics import ConnectionLabels, TelemetryMetrics
from connwise.telemetry.recorder import Recorder
from connwise.telemetry.stores import StoreSpec
from connwise.telemetry.tcpinfo import TcpInfoSampler
from connwise.telemetry.writer import RecordWriter

if TYPE_CHECKING:
    from connwise.gateway.forecasting import GatewayForecast
    from connwise.gateway.http import Exchange
    from connwise.telemetry.record import ConnRecord

log = logging.getLogger("connwise.gateway")


class Client(Protocol):
    """What the gateway tracks of any client connection (tcp or http)."""

    client_ip: str
    conn_id: int
    listener: Listener
    #: Its telemetry record, with `[telemetry]` on.
    record: ConnRecord | None

    def describe(self, now: float) -> dict[str, Any]: ...

    def metric_labels(self) -> ConnectionLabels: ...

    def bytes_total(self) -> int: ...

    def cqi_to_feed(self, now: float) -> ClassState | None:
        """The CQI state to feed its byte count at `now` (None: nothing to feed)."""

    def idle_since(self) -> float | None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def reclaim(self) -> None: ...

    def follow_class(self, class_name: str) -> None: ...


class Listener:
    """One configured listener and its server."""

    def __init__(self, config: ListenerConfig, gateway: Gateway) -> None:
        self.config = config
        #: The gateway it belongs to (its tcp connections reach it through their listener).
        self.gateway = gateway
        #: `config.name`, read per request (a reload keeps listeners' names).
        self.name = config.name
        self.server: AcceptLoop | None = None
        self.host, self.port = parse_address(config.bind, f"listeners.{config.name}.bind")

    @property
    def address(self) -> tuple[str, int]:
        if self.server is not None and self.server.sockets:
            host, port = self.server.sockets[0].getsockname()[:2]
            return host, port
        return self.host, self.port


class HotLimits:
    """`[limits]` and `[http]` as plain slots, for the data plane, which reads them per request
    and per header: an attribute of a pydantic model is read through its `__getattr__` hook,
    ~1,800 instructions a request at the 18 reads a keep-alive request made (callgrind)."""

    __slots__ = ("body_timeout", "header_timeout", "keepalive_timeout", "max_body_bytes",
                 "max_connections", "max_connections_per_ip", "max_header_bytes",
                 "merge_slashes", "normalize_path", "send_timeout")

    def __init__(self, limits: LimitsConfig, http: HttpSection) -> None:
        self.normalize_path = http.normalize_path
        self.merge_slashes = http.merge_slashes
        self.max_connections = limits.max_connections
        self.max_connections_per_ip = limits.max_connections_per_ip
        self.max_header_bytes = limits.max_header_bytes
        self.header_timeout = limits.header_timeout
        self.max_body_bytes = limits.max_body_bytes
        self.body_timeout = limits.body_timeout
        self.keepalive_timeout = limits.keepalive_timeout
        self.send_timeout = limits.send_timeout


class Gateway:
    """A running gateway node; see the module docstring."""

    def __init__(self, config: GatewayConfig, *, clock: Clock | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        """`wall_clock` gives Unix time (forecasts are on it); `sleep` waits seconds of `clock`
        for the forecast task (tests pair a VirtualClock with a sleep that advances it)."""
        self.wall_clock = wall_clock
        self.sleep = sleep
        #: The `[forecast]` task (None when disabled).
        self.forecast: GatewayForecast | None = None
        self.clock: Clock = clock or MonotonicClock()
        self.config = config
        #: `config.limits` for the data plane (see HotLimits).
        self.limits = HotLimits(config.limits, config.http)
        self.classes = config.class_table()
        self.groups = self._build_groups(config, self.classes)
        #: Groups a reload replaced, while their established work finishes (`Group.retire`).
        self.retired: set[Group] = set()
        self.routers = build_routers(config)
        self.listeners = {lc.name: Listener(lc, self) for lc in config.listeners}
        self.via = f"connwise-{config.node_id}".encode()
        self.cqi = CqiPolicy(config.cqi_config(self.classes), self.classes)
        self.escalation = build_escalation(config, self.classes)
        self._tasks: set[asyncio.Task[None]] = set()
        #: The live zombie watch of client connections (`[zombies]`).
        self.zombies = GatewayZombieWatch(self, config.zombies)
        #: Connection records (None when `[telemetry] store` is not configured).
        self.recorder: Recorder | None = None
        #: Which ending client connections read TCP_INFO into their record.
        self.tcp_info = TcpInfoSampler(config.telemetry.tcp_info_every)
        #: Where a client record's region and device come from.
        self.segments = ClientSegments.from_config(config.telemetry)
        self._writer: RecordWriter | None = None
        #: Metrics read at scrape time (the admin API's /metrics adds them to its own): client
        #: connections by state, class and backend, the upstream pools, admission waits by
        #: class, the telemetry writer's written and dropped records.
        self.metrics = TelemetryMetrics(CollectorRegistry())
        self.metrics.watch_connections(self.connection_labels)
        self.counters: Counter[str] = Counter()
        self.class_counters: Counter[tuple[str, str]] = Counter()
        self.clients: dict[int, Client] = {}
        #: When `observe_resources` last fed the connections' byte counts to their CQI states.
        self.cqi_fed_at = self.clock.now()
        self.per_ip: Counter[str] = Counter()
        self.draining = False
        self._next_id = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: Set by `cut_drain`: a drain closes its clients now rather than at its timeout.
        self._cut = asyncio.Event()

    def _watch(self, group: Group) -> None:
        self.metrics.watch_scheduler(group.name, group.scheduler)
        for backend in group.backends:
            if backend.pool is not None:
                self.metrics.watch_pool(backend.pool, backend=backend.name)

    def connection_labels(self) -> Iterator[ConnectionLabels]:
        """Each client connection's metric labels, for a scrape."""
        for client in list(self.clients.values()):
            yield client.metric_labels()

    def _build_groups(self, config: GatewayConfig, classes: ClassTable) -> dict[str, Group]:
        return {name: Group(name, group, classes, self.clock.now,
                            degrade=config.degrade_config(name, classes))
                for name, group in config.groups.items()}

    # -- per-request decisions ----------------------------------------------------------------

    def classify(self, route: Route, ex: Exchange, client: HttpClient) -> str:
        """The class of a request: the CQI of its route's base class, protocol, latency flag and
        user headers. The connection keeps the state, so the admin API can say why.

        A keep-alive connection keeps its state while those inputs stay the same (the common
        case: the same route class and headers request after request), so a request costs no
        scoring and the state goes on following the connection's resource use. Other inputs,
        or a reload (a new `CqiPolicy`), open a new state, which continues the old one's byte
        count, rate, age and history."""
        cqi = self.cqi
        state = client.class_state
        matches = cqi.user_matches(ex.headers) if cqi.config.user else []
        if state is None or not _same_inputs(state, cqi, route, ex.upgrade, matches):
            state = cqi.open(client.conn_id, self.clock.now(), base_class=route.class_name,
                             protocol="websocket" if ex.upgrade else "http",
                             latency_sensitive=route.latency_sensitive, websocket=ex.upgrade,
                             headers=ex.headers, previous=state)
            client.class_state = state
        engine = self.escalation
        if engine is None:
            if state.class_name == state.cqi_class:
                return state.class_name
            return _follow_cqi(client.conn_id, state, state.cqi_class, "", self.clock.now())
        now = self.clock.now()
        base = state.cqi_class
        if engine.class_of(client.conn_id) is None:
            self.apply_changes(engine.open(client.conn_id, base, now,
                                           group_key=self.group_key(ex)))
        else:
            change = engine.set_base(client.conn_id, base, now, "new request")
            if change is not None:
                self.apply_changes([change])
            # A keep-alive connection's later request may name a group its first did not (a
            # page, then the document's requests): it joins it (or moves to it) then.
            key = self.group_key(ex) if engine.config.groups else None
            if key is not None:
                self.apply_changes(engine.on_join(client.conn_id, key, now))
        self.apply_changes(engine.on_activity(client.conn_id, now))
        effective = engine.class_of(client.conn_id) or state.cqi_class
        return _follow_cqi(client.conn_id, state, effective, engine.reason_of(client.conn_id),
                           now)

    def group_key(self, ex: Exchange) -> str | None:
        """The escalation group `ex` names: `<group_key>=<value>` (e.g.
        `header:x-doc=doc-7`), None when it carries no value for `[escalation] group_key`.

        The source is part of the key: after a reload that changes `group_key`, a request read
        by the new key never joins a group read by the old one (the same value may mean
        something else), while the connections of the old groups stay in them."""
        spec = self.config.escalation.group_key
        kind, _, name = spec.partition(":")
        if kind == "header":
            value = ex.header(name.lower().encode())
            return f"{spec}={value.decode('latin-1')}" if value else None
        for part in (ex.header(b"cookie") or b"").split(b";"):
            key, _, value = part.strip().partition(b"=")
            if key.decode("latin-1") == name:
                return f"{spec}={value.decode('latin-1')}"
        return None

    def apply_changes(self, changes: Any) -> None:
        """Apply escalation changes to the connections: their class states (admin API,
        history) and a WebSocket relay's throttle, which follows its connection's class."""
        for change in changes:
            client = self.clients.get(change.conn_id)
            state = getattr(client, "class_state", None)
            if client is not None and state is not None and isinstance(change, ClassChange):
                _set_class(client, state, change)
                self.count_class("escalated" if _raised(self, change) else "deescalated",
                                 change.to_class)

    def observe_resources(self, now: float) -> None:
        """Feed every live connection's byte count to its CQI state (the resource axis), so
        that a heavy connection's class follows what it really costs. A quiet tcp relay has
        nothing to feed until it moves bytes or its age moves its class
        (`TcpClient.cqi_to_feed`)."""
        engine = self.escalation
        for client in list(self.clients.values()):
            state = client.cqi_to_feed(now)
            if state is None:
                continue
            change = state.observe(client.bytes_total(), now)
            if change is None:
                continue
            self.count_class("reclassified", change.to_class)
            if engine is None or engine.class_of(client.conn_id) is None:
                # Not escalated (no rules; a tcp connection, which escalation does not track;
                # one the engine forgot): the class is the CQI's.
                _set_class(client, state, change)
                continue
            follow = engine.set_base(client.conn_id, change.to_class, now, change.reason)
            if follow is not None:
                self.apply_changes([follow])
        self.cqi_fed_at = now

    def connections(self) -> list[dict[str, Any]]:
        """Live client connections with their class and why they have it (admin API)."""
        now = self.clock.now()
        zombies = self.zombies
        return [client.describe(now) | zombies.describe(client, now)
                for client in self.clients.values()]

    def affinity_key(self, group: Group, ex: Exchange, client: HttpClient) -> str:
        """The key a `hash` group balances on: a header (its first line), a cookie (the first
        of that name, in any Cookie line: an HTTP/2 front end may pass one line per cookie,
        RFC 9113 8.2.3) or the client IP, which is also the key of a request without the
        header or cookie (or with it empty)."""
        kind, _, name = group.config.hash_key.partition(":")
        if kind == "header":
            value = ex.header(name.lower().encode())
            return value.decode("latin-1") if value else client.client_ip
        if kind == "cookie":
            wanted = name.encode("latin-1")
            for header, cookies in ex.headers:
                if header.lower() != b"cookie":
                    continue
                for part in cookies.split(b";"):
                    key, _, value = part.strip().partition(b"=")
                    if key == wanted:
                        return value.decode("latin-1")
        return client.client_ip

    # -- serving ------------------------------------------------------------------------------

    async def start(self) -> None:
        telemetry = self.config.telemetry
        if telemetry.store is not None:
            self._writer = StoreSpec.parse(telemetry.store).writer(
                capacity=telemetry.queue_capacity, batch_size=telemetry.batch_size,
                flush_interval=telemetry.flush_interval,
                retention=telemetry.retention.retention())
            self.recorder = Recorder.for_clock(self.clock, self._writer.submit,
                                               node=self.config.node_id)
            self.metrics.watch_writer(self._writer)
        for group in self.groups.values():
            await group.open(self.recorder, self.clock,
                             records=self.config.telemetry.upstream_records)
            self._watch(group)
        self.spawn(self._ticker())
        self._start_health_checks()
        self.zombies.start()
        self._start_forecast()
        for i, listener in enumerate(self.listeners.values()):
            try:
                listener.server = await AcceptLoop.listen(
                    listener.host, listener.port, self._factory(listener),
                    on_error=self._accept_error, keepalive=self.keepalive())
            except OSError as exc:
                raise bind_failed(f"listeners[{i}].bind", listener.config.bind,
                                  f"listener {listener.config.name!r}", exc) from None
            log.info("listener %s (%s) on %s:%d", listener.config.name, listener.config.kind,
                     *listener.address)

    def keepalive(self) -> Keepalive:
        """TCP keep-alive of client connections, from `[zombies]`: how half-open ones are found."""
        z = self.config.zombies
        if not z.keepalive_idle:
            return None
        return z.keepalive_idle, z.keepalive_interval, z.keepalive_count

    def _accept_error(self, exc: OSError) -> None:
        self.count("accept_errors")

    def _factory(self, listener: Listener) -> ProtocolFactory:
        if listener.config.kind == "tcp":
            return partial(TcpClient, listener)
        return partial(HttpClient, self, listener)

    # -- client accounting --------------------------------------------------------------------

    def client_opened(self, client: Client) -> bool:
        """Register a new client; False (and counted) when a limit refuses it."""
        limits = self.limits
        if self.draining:
            self.count("refused_draining")
            return False
        if len(self.clients) >= limits.max_connections:
            self.count("refused_max_connections")
            return False
        if self.per_ip[client.client_ip] >= limits.max_connections_per_ip:
            self.count("refused_per_ip")
            return False
        self._next_id += 1
        client.conn_id = self._next_id
        self.clients[client.conn_id] = client
        self.per_ip[client.client_ip] += 1
        self._idle.clear()
        self.count("accepted")
        return True

    def client_closed(self, client: Client) -> None:
        if self.clients.pop(client.conn_id, None) is None:
            return
        self.zombies.forget(client)
        if self.escalation is not None:
            self.apply_changes(self.escalation.close(client.conn_id, self.clock.now()))
        ip = client.client_ip
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]
        if not self.clients:
            self._idle.set()

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _start_forecast(self) -> None:
        """Start the `[forecast]` task if enabled (its modules load only then: pandas and
        NumPy cost a second to import)."""
        if self.forecast is not None:
            self.forecast.stop()
            self.forecast = None
        if self.config.forecast.enabled:
            from connwise.gateway.forecasting import GatewayForecast  # noqa: PLC0415

            self.forecast = GatewayForecast(self, self.config.forecast,
                                            wall_clock=self.wall_clock, sleep=self.sleep)
            self.forecast.start()

    async def _ticker(self) -> None:
        """Four times a second: move every group's degradation ladder and health timers."""
        while True:
            now = self.clock.now()
            try:  # a failing step is logged, and the ladders and health timers still move
                if self.escalation is not None:
                    self.apply_changes(self.escalation.tick(now))
                if int(now * 4) % 4 == 0:  # once a second
                    self.observe_resources(now)
            except Exception:
                log.exception("escalation or CQI tick failed; continuing")
            for group in list(self.groups.values()):
                try:
                    group.tick(now)
                except Exception:
                    log.exception("group %s: tick failed; continuing", group.name)
            await asyncio.sleep(0.25)

    def _start_health_checks(self) -> None:
        """Active checks: one loop per group that has them, at the group's own interval. At
        start, and at a reload for the new groups (a retired group's loop ends by itself)."""
        for group in self.groups.values():
            if group.config.health.kind != "none":
                self.spawn(self._health_loop(group))

    async def _health_loop(self, group: Group) -> None:
        """Every `health.interval` seconds, a TCP connect or an HTTP GET to each backend of
        `group`, as long as it is the group in force. A backend whose last probe is still
        running (its `timeout` is longer than the interval) is skipped this round: probes of
        one backend never overlap, so a slow backend is not probed ever harder."""
        interval = group.config.health.interval
        probing: set[str] = set()

        async def check(backend: Backend) -> None:
            try:
                await check_backend(group, backend)
            finally:
                probing.discard(backend.name)

        while self.groups.get(group.name) is group:
            for backend in group.backends:
                if backend.name not in probing:
                    probing.add(backend.name)
                    self.spawn(check(backend))
            await asyncio.sleep(interval)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def count_class(self, step: str, class_name: str) -> None:
        self.class_counters[step, class_name] += 1

    # -- drain and reload ---------------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> dict[str, int]:
        """Stop accepting, let clients finish, close the rest after `timeout` (drain_timeout),
        or once `cut_drain` is called, whichever comes first."""
        timeout = self.config.drain_timeout if timeout is None else timeout
        self.draining = True
        for listener in self.listeners.values():
            if listener.server is not None:
                listener.server.close()
        now = self.clock.now()
        for client in list(self.clients.values()):
            if client.record is not None:
                client.record.start_draining(now)
            drain_client = getattr(client, "drain", None)
            if drain_client is not None:
                drain_client()
        before = len(self.clients)
        forced = 0
        idle = asyncio.ensure_future(self._idle.wait())
        cut = asyncio.ensure_future(self._cut.wait())
        await asyncio.wait((idle, cut), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        idle.cancel()
        cut.cancel()
        if not self._idle.is_set():
            forced = len(self.clients)
            for client in list(self.clients.values()):
                going_away = getattr(client, "going_away", None)
                if going_away is not None:
                    going_away()
                else:
                    client.abort()
        for listener in self.listeners.values():
            if listener.server is not None:
                await listener.server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for group in [*self.groups.values(), *self.retired]:
            await group.close()
        self.retired.clear()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.close)
            self.count("telemetry_dropped", self._writer.dropped)
        return {"finished": before - forced, "forced": forced}

    def cut_drain(self) -> None:
        """End the drain now (a second SIGTERM): the clients still open are closed as at the
        drain timeout, and the drain goes on to close the groups and flush the records. Called
        before the drain, it makes that drain end at once."""
        self._cut.set()

    async def reload(self, config: GatewayConfig) -> None:
        """Apply a validated configuration to new connections; listeners must keep their binds.

        Everything new is built and opened first, into locals: a configuration refused on the
        way (a bad value only the core sees, a region table gone) leaves the running one whole,
        the very same objects. Then it is swapped in at once, without an await. Established
        connections keep the groups they started with: a replaced group retires
        (`Group.retire`: idle upstream connections close now, requests in flight finish,
        WebSockets go on); a backend kept in a group of the same name keeps its health
        (`Group.take_over_health`). Escalation state is kept: see `_next_escalation`.

        Refused while the gateway drains: it takes no new connection for a configuration to
        apply to, and what a reload opens after the drain closed its groups would outlive it."""
        if self.draining:
            raise ConfigError("reload", config.node_id, "the gateway is draining and takes no "
                              "new connection", "start a new gateway with the new "
                              "configuration")
        old = {lc.name: (lc.bind, lc.kind) for lc in self.config.listeners}
        new = {lc.name: (lc.bind, lc.kind) for lc in config.listeners}
        if old != new:
            raise ConfigError("listeners", sorted(new.items()), "a reload cannot add, remove or "
                              "move listeners", "restart the gateway to change listeners")
        segments = ClientSegments.from_config(config.telemetry)  # reads the table: may refuse
        tcp_info = TcpInfoSampler(config.telemetry.tcp_info_every)
        classes = config.class_table()
        cqi = CqiPolicy(config.cqi_config(classes), classes)
        escalation = self._next_escalation(config, classes)
        groups = self._build_groups(config, classes)
        routers = build_routers(config)
        opened: list[Group] = []
        try:
            for group in groups.values():
                opened.append(group)
                await group.open(self.recorder, self.clock,
                                 records=config.telemetry.upstream_records)
        except BaseException:
            for group in opened:
                self.spawn(group.close())
            raise
        # Nothing below fails or awaits: the new configuration goes in whole.
        for name, group in groups.items():
            previous = self.groups.get(name)
            if previous is not None:
                group.take_over_health(previous)
            self._watch(group)
        carried = self._carry_escalation(escalation, classes, self.clock.now())
        self.classes, self.cqi, self.escalation = classes, cqi, escalation
        self.apply_changes(carried)
        self.segments, self.tcp_info = segments, tcp_info
        retired, self.groups = self.groups, groups
        self.routers = routers
        for group in retired.values():
            self.retired.add(group)
            self.spawn(self._retire(group))
        self._start_health_checks()
        for listener in self.listeners.values():
            listener.config = next(lc for lc in config.listeners if lc.name == listener.config.name)
        forecast_changed = config.forecast != self.config.forecast
        self.config = config
        self.limits = HotLimits(config.limits, config.http)
        self.zombies.configure(config.zombies)
        for listener in self.listeners.values():
            if listener.server is not None:
                listener.server.set_keepalive(self.keepalive())
        if forecast_changed:
            self._start_forecast()
        self.count("reloads")

    async def _retire(self, group: Group) -> None:
        """Let a replaced group's established work finish, then forget it, its pools' metrics
        too. Cancelled by a drain, it stays in `retired`, and the drain closes it."""
        await group.retire()
        self.retired.discard(group)
        for backend in group.backends:
            if backend.pool is not None:
                self.metrics.unwatch_pool(backend.pool)

    def _next_escalation(self, config: GatewayConfig,
                         classes: ClassTable) -> EscalationEngine | None:
        """The escalation engine of a reloaded configuration. The running one stays when its
        rules and the classes are unchanged, with every live connection's escalation, activity
        window and group; `group_key` is not a rule (the groups' keys name their source, see
        `group_key`, so the old groups and the new key's never mix). Otherwise a new engine
        (it may refuse the configuration, before anything changed), which `_carry_escalation`
        fills."""
        rules = escalation_rules(config, classes)
        if rules is None:
            return None
        engine = self.escalation
        if (engine is not None and engine.config == rules
                and list(engine.classes) == list(classes)):
            return engine
        return EscalationEngine(rules, classes, prefix="escalation")

    def _carry_escalation(self, engine: EscalationEngine | None, classes: ClassTable,
                          now: float) -> list[ClassChange]:
        """Move the connections the running engine tracks into `engine`, a new one (new rules
        or classes), and return their class changes for `apply_changes`.

        What carries over is what the core exposes: each connection's base (CQI) class and its
        group key, so groups re-form at once and the new group rules judge them. What resets:
        activity rates (the new rules count from zero), hold and quiet periods in progress,
        the order of escalations under the cap. A connection escalated under the old rules
        but not the new ones goes back to its base class now; one whose base class the new
        classes lack (or whose class they lack) is no longer tracked (an HTTP connection is
        again at its next request).
        With no engine before, nothing is carried: HTTP connections join at their next request,
        WebSockets opened before stay outside escalation. Without an engine now, escalated
        connections go back to their base class."""
        old = self.escalation
        if old is None or engine is old:
            return []
        carried: list[tuple[int, ClassState, str]] = []
        for conn_id, client in self.clients.items():
            base = old.base_of(conn_id)
            state: ClassState | None = getattr(client, "class_state", None)
            if base is None or state is None:
                continue
            if base not in classes or state.class_name not in classes:
                continue  # the new classes lack its class: classified afresh, if ever
            carried.append((conn_id, state, base))
            if engine is not None:
                engine.open(conn_id, base, now, group_key=old.group_of(conn_id))
        # Read after every connection is in: a group that re-formed raised all its members.
        changes: list[ClassChange] = []
        for conn_id, state, base in carried:
            to_class = (engine.class_of(conn_id) if engine is not None else None) or base
            if to_class != state.class_name:
                changes.append(ClassChange(conn_id, state.class_name, to_class,
                                           "reload: the escalation rules changed", now))
        return changes

    def stats(self) -> dict[str, Any]:
        return {"node_id": self.config.node_id, "draining": self.draining,
                "clients": len(self.clients), "counters": dict(self.counters),
                "classes": {f"{step}:{cls}": n for (step, cls), n in self.class_counters.items()},
                "groups": {name: g.snapshot() for name, g in self.groups.items()},
                "zombies": self.zombies.stats()}



def build_escalation(config: GatewayConfig, classes: ClassTable) -> EscalationEngine | None:
    """The escalation engine of a configuration, or None when it has no rules."""
    rules = escalation_rules(config, classes)
    return None if rules is None else EscalationEngine(rules, classes, prefix="escalation")


def escalation_rules(config: GatewayConfig, classes: ClassTable) -> EscalationConfig | None:
    """The `[escalation]` rules as the core takes them (validated against `classes`), or None
    when there are none."""
    section = config.escalation
    if not section.activity and not section.groups:
        return None
    return section.rules(classes)


def _same_inputs(state: ClassState, cqi: CqiPolicy, route: Route, websocket: bool,
                 matches: list[tuple[str, str, float]]) -> bool:
    """Whether `state` was opened by `cqi` from what this request would open it with."""
    inputs = state.inputs
    return (state.policy is cqi and inputs.base_class == route.class_name
            and inputs.websocket is websocket
            and inputs.latency_sensitive is route.latency_sensitive and inputs.criticality is None
            and (inputs.user_headers == tuple(matches) if matches else not inputs.user_headers))


def _follow_cqi(conn_id: int, state: ClassState, effective: str, escalation: str,
                now: float) -> str:
    """Apply `effective` to a state that does not have it yet (a state scored afresh keeps the
    class in force until told, see `CqiPolicy.open`), giving the escalation rule that lifts it,
    if any, else the new score, as the reason. Returns `effective`."""
    if effective != state.class_name:
        why = escalation or f"inputs changed: {state.band_reason()}"
        state.apply(ClassChange(conn_id, state.class_name, effective, why, now))
    return effective


def _set_class(client: Client, state: ClassState, change: ClassChange) -> None:
    """The connection's effective class changes: its state records it, and its relay's
    throttle (a WebSocket's, a tcp relay's) follows it."""
    state.apply(change)
    client.follow_class(change.to_class)


def _raised(gateway: Gateway, change: ClassChange) -> bool:
    if change.from_class is None:
        return False
    classes = gateway.classes
    return classes[change.to_class].rank > classes[change.from_class].rank
