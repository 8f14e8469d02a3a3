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
  With `--workers N` (the API runs in worker 0), every worker's, labelled `worker`
  (`worker_metrics`); the other endpoints are worker 0's alone.

The admin listener is not on the hot path, so it uses asyncio streams and parses with httptools.
One request per connection (`Connection: close`): every request read gets an answer, bad input
included (400, 408, 413 and, for a bug, 500, each with `{"error": ...}` saying what to send),
and every connection is closed, by `AdminServer.close` too, so nothing outlives the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from connwise.config import parse_address
from connwise.core.health import HealthState
from connwise.errors import ConfigError
from connwise.gateway.accept import bind_failed
from connwise.gateway.worker_metrics import AllWorkers, WorkerSet

if TYPE_CHECKING:
    from connwise.gateway.runtime import Gateway

log = logging.getLogger("connwise.gateway.admin")
#: What `generate_latest` writes: the text format 0.0.4, in UTF-8 (label values are names from
#: the configuration). prometheus_client's own constant for it is newer than our oldest
#: supported version, and its CONTENT_TYPE_LATEST may name another format.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Bytes of one admin request, head and body: its bodies are small JSON objects.
MAX_ADMIN_REQUEST = 64 * 1024
#: Seconds a whole admin request may take to arrive: a slow or silent client holds a
#: connection no longer than this (the data plane's `header_timeout` default).
ADMIN_REQUEST_TIMEOUT = 10.0
#: Seconds to go on reading (and dropping) what a refused client still sends after its answer:
#: a socket closed with unread bytes sends a reset, which can destroy the answer before the
#: client reads it (nginx's lingering close; its lingering_timeout is 5 s).
ADMIN_LINGER = 2.0


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
                outstanding.add_metric([name, backend.name], backend.load)
                warm.add_metric([name, backend.name], backend.warm_target)
        yield from (in_flight, waiting, outstanding, warm)
        yield from gw.zombies.collect()
        if gw.forecast is not None:
            yield from gw.forecast.registry.collect()


def metrics_registry(gateway: Gateway) -> CollectorRegistry:
    """Everything `/metrics` shows of `gateway`: its counters and groups (`GatewayCollector`),
    its zombie watch and forecast, and its `TelemetryMetrics`."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(gateway))
    registry.register(gateway.metrics)
    return registry


class AdminServer:
    """Serves the admin API for one gateway; with `workers` (worker 0 of `--workers N`),
    `/metrics` covers every worker (`worker_metrics`)."""

    def __init__(self, gateway: Gateway, bind: str, token: str | None, *,
                 workers: WorkerSet | None = None) -> None:
        self.gateway = gateway
        self.bind = bind
        self.host, self.port = parse_address(bind, "admin.bind")
        if token is not None and not token.strip():
            raise ConfigError("admin.token", token, "a blank token would mean no token, that "
                              "is anonymous access", "set a secret, or None for anonymous "
                              "access on a loopback bind")
        #: The token as the bytes a client sends (UTF-8), or None: anonymous access.
        self.token = token.encode() if token is not None else None
        self.registry = metrics_registry(gateway)
        self.workers = None if workers is None else AllWorkers(self.registry, workers)
        self.server: asyncio.Server | None = None
        #: The connections being served, by their handler task (`close` ends them).
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

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
        """Stop listening and end the connections in progress (a request still arriving, an
        answer still being written), and return once their handlers are done: the server's
        `close` alone leaves them to their read timeout, and uvloop's `wait_closed` waits
        for them."""
        if self.server is not None:
            self.server.close()
            for writer in self._handlers.values():
                writer.transport.abort()
            if self._handlers:
                await asyncio.wait(list(self._handlers))
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one request on a new connection, then close it whatever happened."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        unread = True  # what the client sent is not all read: linger after a refusal
        head_only = False
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), ADMIN_REQUEST_TIMEOUT)
            except TimeoutError:
                answer = _json(408, {"error": "the request did not arrive whole within "
                                              f"{ADMIN_REQUEST_TIMEOUT:g} s; send it at once"})
            except _Refused as exc:
                answer = exc.answer
            else:
                if request is None:
                    return  # closed before a byte: nothing to answer
                unread = False
                head_only = request[0] == "HEAD"
                answer = await self._serve(*request)
            writer.write(_response(*answer, head_only=head_only))
            await writer.drain()
            if unread:
                await _linger(reader, writer)
        except ConnectionError:
            pass  # the client went away: nobody to answer
        finally:
            del self._handlers[task]
            writer.close()

    async def _serve(self, method: str, path: str, headers: dict[str, str],
                     body: bytes) -> tuple[int, str, bytes]:
        """`dispatch`, with a 500 (and the traceback in the log) for a bug in it: the
        client gets an answer and the listener goes on. `GET /metrics` of all workers is
        served here: it awaits the other workers."""
        try:
            if (self.workers is not None and method == "GET" and _parts(path) == ["metrics"]
                    and self._allowed(headers)):
                return 200, METRICS_CONTENT_TYPE, await self.workers.scrape()
            return self.dispatch(method, path, headers, body)
        except Exception as exc:
            log.exception("admin API: %s %s failed", method, path)
            return _json(500, {"error": f"{method} {path} failed: {type(exc).__name__}: {exc}; "
                                        "this is a bug: please report it with the gateway's "
                                        "log"})

    def dispatch(self, method: str, path: str, headers: dict[str, str],
                 body: bytes) -> tuple[int, str, bytes]:
        if not self._allowed(headers):
            return _json(401, {"error": "missing or wrong bearer token; send "
                                        "'Authorization: Bearer <admin.token>'"})
        gw = self.gateway
        parts = _parts(path)
        if method == "GET" and parts == ["metrics"]:
            return 200, METRICS_CONTENT_TYPE, generate_latest(self.registry)
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
        return _json(404, {"error": f"no admin endpoint {method} {path}; use GET /stats, "
                                    "/connections, /backends, /forecast or /metrics, or POST "
                                    "/backends/<group>/<backend>/drain, /undrain or "
                                    "/warm_target"})

    def _allowed(self, headers: dict[str, str]) -> bool:
        """Whether the request may be served: anonymous access, or the right token."""
        return self.token is None or self._authorized(headers.get("authorization", ""))

    def _authorized(self, authorization: str) -> bool:
        """Whether `authorization` is `Bearer <token>` (RFC 6750; the scheme in any case),
        compared in constant time. The header was decoded as Latin-1, so encoding it back
        gives the bytes sent, which a UTF-8 token is compared with."""
        assert self.token is not None
        scheme, _, credentials = authorization.strip().partition(" ")
        given = credentials.strip().encode("latin-1")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.token)

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
        # Drain and undrain say the state the operator wants, so a repeated one (a retried
        # script, two operators) changes nothing; the core's table refuses a second drain.
        draining = backend.health.state is HealthState.DRAINING
        if action == "drain":
            if not draining:
                backend.health.drain(now)
            return _json(200, backend.snapshot(now))
        if action == "undrain":
            if draining:
                backend.health.undrain(now)
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


def _parts(path: str) -> list[str]:
    """The path's segments, without the query. Segments are decoded after the split: a group
    or backend name may need escapes (`my%20app`, an IPv6 backend `%5B%3A%3A1%5D%3A80`, as
    clients send brackets)."""
    return [unquote(p) for p in path.split("?", maxsplit=1)[0].split("/") if p]


def _warm_target_body(body: bytes, limit: int) -> tuple[int, float]:
    """(n, in) of a warm_target request, or ValueError naming the field and the bad value: a
    target is a whole number of connections in 0..`limit` (the group's `max_in_flight`, the
    most its pools may hold), `in` a finite number of seconds >= 0."""
    try:
        payload = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
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


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            408: "Request Timeout", 413: "Content Too Large", 500: "Internal Server Error"}


def _json(status: int, payload: Any) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(payload, default=str).encode()


def _response(status: int, content_type: str, body: bytes, *, head_only: bool = False) -> bytes:
    """The answer's bytes; `head_only` for a HEAD request, whose answer has no body."""
    # A 401 names the scheme it wants (RFC 9110 section 11.6.1).
    challenge = "WWW-Authenticate: Bearer\r\n" if status == 401 else ""
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{challenge}"
            "Connection: close\r\n\r\n").encode() + (b"" if head_only else body)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close after an answer to a request not read whole, and drop what still comes, for
    `ADMIN_LINGER` seconds at most or until the client closes (see ADMIN_LINGER)."""
    writer.write_eof()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ADMIN_LINGER):
            while await reader.read(65536):
                pass


class _Refused(Exception):
    """A request that cannot be read, and the answer that says why."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.answer = _json(status, {"error": error})


async def _read_request(reader: asyncio.StreamReader
                        ) -> tuple[str, str, dict[str, str], bytes] | None:
    """The first request on the connection: (method, target, headers by lower-case name,
    body); None if the client closed without sending a byte. `_Refused` for a request that is
    not HTTP/1.x, is over `MAX_ADMIN_REQUEST` or ends early. What follows the first request
    (pipelined ones) is not read: the answer closes the connection. An upgrade (h2c, as
    `curl --http2` asks) is not made: the request is served as it is."""
    state: dict[str, Any] = {"method": "", "url": b"", "headers": {}, "body": b"",
                             "done": False}

    class _Callbacks:
        # httptools goes on parsing the rest of a chunk after the first request: its
        # callbacks then belong to the next request and are ignored.
        def on_url(self, url: bytes) -> None:
            if not state["done"]:
                state["url"] += url

        def on_header(self, name: bytes, value: bytes) -> None:
            if not state["done"]:
                state["headers"][name.decode("latin-1").lower()] = value.decode("latin-1")

        def on_headers_complete(self) -> None:
            if not state["done"]:
                state["method"] = parser.get_method().decode("latin-1")

        def on_body(self, body: bytes) -> None:
            if not state["done"]:
                state["body"] += body

        def on_message_complete(self) -> None:
            state["done"] = True

    parser = httptools.HttpRequestParser(_Callbacks())
    size = 0
    while not state["done"]:
        data = await reader.read(65536)
        if not data:
            if not size:
                return None
            raise _Refused(400, f"the request ended before it was complete ({size} bytes "
                                "came); send the whole request before closing")
        size += len(data)
        if size > MAX_ADMIN_REQUEST:
            raise _Refused(413, f"the request is over {MAX_ADMIN_REQUEST} bytes, the most the "
                                "admin API reads; its bodies are small JSON objects")
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not state["done"]:
                raise _Refused(400, "the admin API does not switch protocols (CONNECT, "
                                    "Upgrade); send a plain HTTP/1.1 request") from None
        except httptools.HttpParserError as exc:
            raise _Refused(400, f"the request is not an HTTP/1.1 request ({exc}); send e.g. "
                                "'GET /stats HTTP/1.1' with 'Authorization: Bearer "
                                "<admin.token>'") from None
    return state["method"], state["url"].decode("latin-1"), state["headers"], state["body"]
