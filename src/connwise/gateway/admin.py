"""The admin API: its own listener, loopback and a bearer token by default.

Endpoints (JSON unless noted):

* `GET /stats` — node counters, per-class steps, groups.
* `GET /connections` — live client connections: kind, class, age, bytes, backend, and why the
  connection has its class.
* `GET /backends` — groups and backends: health, load, warm target.
* `POST /backends/{group}/{backend}/drain` and `/undrain` — stop or resume sending new work.
* `POST /backends/{group}/{backend}/warm_target` with body `{"n": 8, "in": 600}` — keep n
  keep-alive connections open, ready `in` seconds from now (default now).
* `GET /forecast` — with `[forecast]` enabled: the model in use, the last refresh (or its
  error), and per group the warm plan, the target decided now and whether it was applied
  (forecast-only mode shows plans it never applies).
* `GET /metrics` — Prometheus text format, from a collector that reads the same state at scrape
  time (nothing is added to the data plane): gateway counters, the zombie watch's
  `connwise_zombies_total{owner, verdict}` and gauges; with `[forecast]`, also
  `connwise_forecast_demand{segment, horizon}` and `connwise_forecast_warm_target{group}`.

The admin listener is not on the hot path, so it uses asyncio streams and parses with httptools.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from connwise.config import parse_address
from connwise.core.health import IllegalBackendTransition
from connwise.errors import ConfigError
from connwise.gateway.accept import bind_failed

if TYPE_CHECKING:
    from connwise.gateway.runtime import Gateway

log = logging.getLogger("connwise.gateway.admin")
MAX_ADMIN_REQUEST = 64 * 1024


class GatewayCollector(Collector):
    """Prometheus metrics read from the gateway's own counters at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        events = CounterMetricFamily("connwise_gateway_events", "Gateway events by kind",
                                     labels=["event"])
        for name, value in sorted(gw.counters.items()):
            events.add_metric([name], value)
        yield events
        steps = CounterMetricFamily("connwise_degradation_steps",
                                    "Admission and degradation steps applied, by class",
                                    labels=["step", "class"])
        for (step, cls), value in sorted(gw.class_counters.items()):
            steps.add_metric([step, cls], value)
        yield steps
        clients = GaugeMetricFamily("connwise_client_connections", "Open client connections")
        clients.add_metric([], len(gw.clients))
        yield clients
        in_flight = GaugeMetricFamily("connwise_group_in_flight",
                                      "Admitted requests or connections, by group and class",
                                      labels=["group", "class"])
        waiting = GaugeMetricFamily("connwise_group_waiting", "Queued callers by group and class",
                                    labels=["group", "class"])
        outstanding = GaugeMetricFamily("connwise_backend_outstanding",
                                        "Requests in flight per backend",
                                        labels=["group", "backend"])
        warm = GaugeMetricFamily("connwise_warm_target", "Warm keep-alive target per backend",
                                 labels=["group", "backend"])
        for name, group in gw.groups.items():
            for cls, n in group.scheduler.in_use_by_class().items():
                in_flight.add_metric([name, cls], n)
            for cls, n in group.scheduler.waiting_by_class().items():
                waiting.add_metric([name, cls], n)
            for backend in group.backends:
                outstanding.add_metric([name, backend.name], backend.outstanding)
                warm.add_metric([name, backend.name], backend.warm_target)
        yield from (in_flight, waiting, outstanding, warm)
        yield from gw.zombies.collect()
        if gw.forecast is not None:
            yield from gw.forecast.registry.collect()


class AdminServer:
    """Serves the admin API for one gateway."""

    def __init__(self, gateway: Gateway, bind: str, token: str | None) -> None:
        self.gateway = gateway
        self.bind = bind
        self.host, self.port = parse_address(bind, "admin.bind")
        self.token = token.encode() if token else None
        self.registry = CollectorRegistry()
        self.registry.register(GatewayCollector(gateway))
        self.registry.register(gateway.metrics)
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self.server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            raise bind_failed("admin.bind", self.bind, "the admin API", exc) from None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), 10.0)
            if request is None:
                return
            status, content_type, body = self.dispatch(*request)
        except (TimeoutError, ConnectionError, httptools.HttpParserError):
            status, content_type, body = 400, "text/plain", b"bad request\n"
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        try:
            writer.write(head + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def dispatch(self, method: str, path: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, str, bytes]:
        if self.token is not None:
            given = headers.get("authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(given, self.token):
                return _json(401, {"error": "missing or wrong bearer token; send "
                                            "'Authorization: Bearer <admin.token>'"})
        gw = self.gateway
        parts = [p for p in path.split("?", maxsplit=1)[0].split("/") if p]
        if method == "GET" and parts == ["metrics"]:
            return 200, "text/plain; version=0.0.4", generate_latest(self.registry)
        if method == "GET" and parts == ["stats"]:
            return _json(200, gw.stats())
        if method == "GET" and parts == ["connections"]:
            return _json(200, {"connections": gw.connections()})
        if method == "GET" and parts == ["backends"]:
            return _json(200, {name: g.snapshot() for name, g in gw.groups.items()})
        if method == "GET" and parts == ["forecast"]:
            if gw.forecast is None:
                return _json(404, {"error": "forecasting is off; enable it in the [forecast] "
                                            "section of the configuration"})
            return _json(200, gw.forecast.snapshot())
        if method == "POST" and len(parts) == 4 and parts[0] == "backends":
            return self._backend_action(parts[1], parts[2], parts[3], body)
        return _json(404, {"error": f"no admin endpoint {method} {path}"})

    def _backend_action(self, group_name: str, backend_name: str, action: str,
                        body: bytes) -> tuple[int, str, bytes]:
        group = self.gateway.groups.get(group_name)
        if group is None:
            known = sorted(self.gateway.groups)
            return _json(404, {"error": f"no group {group_name!r}; have {known}"})
        backend = next((b for b in group.backends if b.name == backend_name), None)
        if backend is None:
            names = [b.name for b in group.backends]
            return _json(404, {"error": f"no backend {backend_name!r} in {group_name!r}; "
                                        f"have {names}"})
        now = self.gateway.clock.now()
        if action in ("drain", "undrain"):
            change = backend.health.drain if action == "drain" else backend.health.undrain
            try:
                change(now)
            except IllegalBackendTransition as exc:
                # An operator's repeated or misplaced command, not a bookkeeping bug.
                return _json(409, {"error": f"backend {backend_name!r} of {group_name!r} is "
                                            f"{exc.state}: it cannot {action}"})
            return _json(200, backend.snapshot(now))
        if action == "warm_target":
            try:
                n, ahead = _warm_target_body(body, group.config.max_in_flight)
                group.set_warm_target(backend, n, at=now + ahead if ahead else None)
            except (ValueError, ConfigError) as exc:
                return _json(400, {"error": f"{exc}; send {{\"n\": <connections>, \"in\": "
                                            "<seconds>}"})
            return _json(200, backend.snapshot(now))
        return _json(404, {"error": f"unknown action {action!r}; use drain, undrain or "
                                    "warm_target"})


def _warm_target_body(body: bytes, limit: int) -> tuple[int, float]:
    """(n, in) of a warm_target request, or ValueError naming the field and the bad value: a
    target is a whole number of connections in 0..`limit` (the group's `max_in_flight`, the
    most its pools may hold), `in` a finite number of seconds >= 0."""
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError(f"the body is {type(payload).__name__}, not a JSON object")
    unknown = sorted(set(payload) - {"n", "in"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    if "n" not in payload:
        raise ValueError("'n' is missing")
    n = payload["n"]
    whole = isinstance(n, int) or (isinstance(n, float) and n.is_integer())
    if isinstance(n, bool) or not whole or not 0 <= n <= limit:
        raise ValueError(f"'n' = {n!r}: the target is a whole number of connections in "
                         f"0..{limit} (the group's max_in_flight)")
    ahead = payload.get("in", 0)
    if isinstance(ahead, bool) or not isinstance(ahead, int | float) or \
            not 0 <= ahead < math.inf:
        raise ValueError(f"'in' = {ahead!r}: seconds from now, a finite number >= 0")
    return int(n), float(ahead)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


def _json(status: int, payload: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(payload, default=str).encode()


async def _read_request(reader: asyncio.StreamReader
                        ) -> tuple[str, str, dict[str, str], bytes] | None:
    state: dict[str, Any] = {"url": b"", "headers": {}, "body": b"", "done": False}

    class _Callbacks:
        def on_url(self, url: bytes) -> None:
            state["url"] += url

        def on_header(self, name: bytes, value: bytes) -> None:
            state["headers"][name.decode("latin-1").lower()] = value.decode("latin-1")

        def on_body(self, body: bytes) -> None:
            state["body"] += body

        def on_message_complete(self) -> None:
            state["done"] = True

    parser = httptools.HttpRequestParser(_Callbacks())
    size = 0
    while not state["done"]:
        data = await reader.read(65536)
        if not data:
            return None
        size += len(data)
        if size > MAX_ADMIN_REQUEST:
            raise httptools.HttpParserError("admin request too large")
        parser.feed_data(data)
    method = parser.get_method().decode()
    return method, state["url"].decode("latin-1"), state["headers"], state["body"]
