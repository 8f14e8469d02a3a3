"""`connwise demo pool`: one spiky workload, a FIFO pool and a connwise pool, side by side.

Theory of the demo
------------------
Priority classes and warm targets change nothing while demand is flat; they matter when demand
jumps and the backend's handshake is slow (PostgreSQL with TLS and authentication costs tens to
hundreds of milliseconds), because a pool that grows only once callers queue makes every caller,
critical or not, wait for connects. So the demo starts a backend whose handshake costs
`handshake_ms`, and drives a baseline, a spike and a return to baseline against two pools in turn:

* *traditional*: one class served first come, first served, `min_size` open, growth on demand;
* *connwise*: the default classes (critical ahead of bulk, reserved shares), and
  `set_target(n, at=spike)` called at the start, as a forecast that knows the spike would.

Everything else is equal: sizes, connect concurrency, per-class timeouts, a fresh backend, and the
schedule (the same seed gives the same arrivals, classes and query times). Arrivals are open-loop:
a request comes at its time whether or not earlier ones were served, as users do; a closed loop
would let a slow pool slow the load down and so hide its queue.

Waits are measured by the caller around `acquire`, so both pools are judged by one clock and by
the caller's class (the FIFO pool does not know classes). A request that times out counts in the
percentiles with the time it waited, and in the timeouts. The closing sentences are computed from
the figures and say so when connwise did not improve something.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

import connwise
from connwise.core.classes import DEFAULT_CLASSES, ClassTable, PriorityClass
from connwise.core.lifecycle import LeakEvent, LifecycleEvent, Trigger
from connwise.demo.figures import fmt_ms as _fmt
from connwise.demo.figures import percentile
from connwise.demo.figures import to_ms as _ms
from connwise.errors import ConfigError, ConnwiseError, PoolTimeout, TooManyWaiters
from connwise.pool.drivers.tcp import TcpConnection, TcpDriver
from connwise.pool.pool import Pool

#: The callers' classes, in the order they are shown.
CLASSES = ("critical", "bulk")
POLICIES = ("traditional", "connwise")
DESCRIPTIONS = {
    "traditional": "one FIFO class, grows when callers queue",
    "connwise": "critical ahead of bulk (default classes), warm target set ahead of the spike",
}
#: The FIFO pool's only class; it waits as long as the longest default class (bulk, 30 s), and
#: callers pass their own class's bound as the acquire timeout, so timeouts compare fairly.
FIFO_CLASS = PriorityClass("fifo", rank=0, max_wait=max(c.max_wait for c in DEFAULT_CLASSES))
_MAX_WAITS = {c.name: c.max_wait for c in ClassTable(DEFAULT_CLASSES)}
DEFAULT_DURATION = 6.0
QUICK_DURATION = 3.0
GREETING = b"HELLO"


# -- the scenario and its schedule ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """The workload and the settings both pools share; seconds unless a name ends in `_ms`."""

    #: Seconds of workload per pool; the demo runs two pools, so it takes about twice this.
    duration: float = DEFAULT_DURATION
    handshake_ms: float = 200.0
    seed: int = 7
    #: Offered concurrency (arrival rate x mean hold time) before, during and after the spike.
    baseline_concurrency: float = 5.0
    spike_concurrency: float = 40.0
    critical_share: float = 0.1
    #: The spike covers [spike_from, spike_to) of the duration: a baseline long enough for the
    #: warm target to be met before it, and a tail after it in which queues drain.
    spike_from: float = 0.4
    spike_to: float = 0.8
    #: Sized for the baseline with headroom, as pools usually are: the spike is the story.
    min_size: int = 8
    #: Room for the spike plus the 30% the default classes keep for critical and interactive
    #: work, so that the reserved shares do not starve bulk of capacity it needs.
    max_size: int = 60
    #: Both pools open up to 8 at a time (psycopg_pool uses 3 workers, HikariCP 1 thread): enough
    #: for the warm target to be met within the quick run's baseline at the default handshake.
    max_connecting: int = 8
    #: Queries per request and the backend's service time of each, in ms (uniform).
    critical_queries: int = 2
    critical_query_ms: tuple[float, float] = (2.0, 6.0)
    bulk_queries: int = 3
    bulk_query_ms: tuple[float, float] = (20.0, 50.0)

    @classmethod
    def from_options(cls, *, duration: float | None = None, handshake_ms: float = 200.0,
                     seed: int = 7, quick: bool = False) -> Scenario:
        """The scenario of the CLI options; `duration` defaults to 6 s, or 3 s with `quick`.
        Raises `ConfigError` whose key is the option's name."""
        if duration is None:
            duration = QUICK_DURATION if quick else DEFAULT_DURATION
        return cls(duration=duration, handshake_ms=handshake_ms, seed=seed).validate()

    def validate(self) -> Scenario:
        if not 1.0 <= self.duration <= 3600.0:
            raise ConfigError("duration", self.duration, "the workload needs between 1 and 3600 "
                              "seconds per pool (a baseline, a spike and a tail)",
                              "use e.g. 6, or --quick for 3")
        if not 0.0 <= self.handshake_ms <= 5000.0:
            raise ConfigError("handshake_ms", self.handshake_ms, "the handshake must take between "
                              "0 and 5000 ms (the pools give up on a connect after 10 s)",
                              "use e.g. 200")
        if not 0.0 < self.baseline_concurrency <= self.spike_concurrency:
            raise ConfigError("baseline_concurrency", self.baseline_concurrency, "the baseline "
                              "must be positive and at most the spike", "lower it")
        if not 0.0 <= self.critical_share <= 1.0:
            raise ConfigError("critical_share", self.critical_share, "a share lies in 0..1",
                              "use e.g. 0.1")
        if not 0.0 < self.spike_from < self.spike_to <= 1.0:
            raise ConfigError("spike_from", self.spike_from, "the spike must lie inside the "
                              "duration", "use fractions with 0 < spike_from < spike_to <= 1")
        return self

    @property
    def spike_start(self) -> float:
        return self.duration * self.spike_from

    @property
    def spike_end(self) -> float:
        return self.duration * self.spike_to

    @property
    def warm_target(self) -> int:
        """What a forecast of the spike asks for: its concurrency plus 25% headroom."""
        return min(self.max_size, math.ceil(self.spike_concurrency * 1.25))

    def mean_hold(self) -> float:
        """Expected seconds a request holds its connection (query service times only)."""
        critical = self.critical_queries * sum(self.critical_query_ms) / 2
        bulk = self.bulk_queries * sum(self.bulk_query_ms) / 2
        return (self.critical_share * critical + (1 - self.critical_share) * bulk) / 1000

    def phases(self) -> list[tuple[str, float, float, float]]:
        """(name, start, end, offered concurrency) of each phase, in order."""
        return [("baseline", 0.0, self.spike_start, self.baseline_concurrency),
                ("spike", self.spike_start, self.spike_end, self.spike_concurrency),
                ("after", self.spike_end, self.duration, self.baseline_concurrency)]

    def phase_at(self, t: float) -> tuple[str, float]:
        for name, start, end, concurrency in self.phases():
            if start <= t < end:
                return name, concurrency
        return "finishing", 0.0

    def timeout(self, class_name: str) -> float:
        """The acquire timeout of a caller of `class_name`: its default class's max wait."""
        return _MAX_WAITS[class_name]


@dataclass(frozen=True, slots=True)
class Request:
    """One caller: when it arrives (s after the start), its class, and its queries' ms."""

    at: float
    class_name: str
    queries_ms: tuple[float, ...]


def build_schedule(scenario: Scenario) -> list[Request]:
    """The workload, a pure function of the scenario and its seed.

    Arrivals are Poisson within each phase, at the rate that offers the phase's concurrency
    (Little's law: rate = concurrency / mean hold time), so the spike is a burst of arrivals,
    not a step of a fixed number of clients.
    """
    rng = random.Random(scenario.seed)
    hold = scenario.mean_hold()
    requests: list[Request] = []
    for _, start, end, concurrency in scenario.phases():
        rate = concurrency / hold
        t = start
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            if rng.random() < scenario.critical_share:
                name, count, (lo, hi) = ("critical", scenario.critical_queries,
                                         scenario.critical_query_ms)
            else:
                name, count, (lo, hi) = "bulk", scenario.bulk_queries, scenario.bulk_query_ms
            queries = tuple(round(rng.uniform(lo, hi), 1) for _ in range(count))
            requests.append(Request(round(t, 6), name, queries))
    return requests




# -- the backend --------------------------------------------------------------------------------


class DemoBackend:
    """The service behind the pools: greets after `handshake` seconds, then answers each line
    `Q <ms>` with `OK` after that many milliseconds."""

    def __init__(self, handshake: float) -> None:
        self.handshake = handshake
        self.port = 0
        self.handshakes = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> DemoBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await asyncio.sleep(self.handshake)
            self.handshakes += 1
            writer.write(GREETING + b"\n")
            while line := await reader.readline():
                try:
                    service = float(line.split()[1]) / 1000
                except (IndexError, ValueError):
                    writer.write(b"ERR expected 'Q <ms>'\n")
                    continue
                await asyncio.sleep(service)
                writer.write(b"OK\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


# -- one run ------------------------------------------------------------------------------------


class Tally:
    """What the callers of one class saw."""

    __slots__ = ("acquired", "errors", "refused", "requests", "timeouts", "waiting", "waits")

    def __init__(self) -> None:
        self.requests = 0
        self.waiting = 0
        self.acquired = 0
        self.timeouts = 0
        self.refused = 0
        self.errors = 0
        #: Kept sorted as they come, so the live view's percentiles cost no sort per redraw.
        self.waits: list[float] = []

    def observe(self, seconds: float) -> None:
        bisect.insort(self.waits, seconds)

    def percentile_ms(self, q: float) -> float | None:
        return _ms(percentile(self.waits, q, presorted=True))

    def figures(self) -> dict[str, Any]:
        waits = self.waits
        ms = {f"p{q}": self.percentile_ms(q) for q in (50, 95, 99)}
        ms["max"] = _ms(waits[-1] if waits else None)
        ms["mean"] = _ms(sum(waits) / len(waits) if waits else None)
        return {"requests": self.requests, "acquired": self.acquired, "timeouts": self.timeouts,
                "refused": self.refused, "errors": self.errors, "wait_ms": ms}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the live view shows of a run at one moment."""

    policy: str
    elapsed: float
    duration: float
    phase: str
    concurrency: float
    connecting: int
    idle: int
    in_use: int
    max_size: int
    waiting: dict[str, int]
    served: dict[str, int]
    timeouts: dict[str, int]
    p50_ms: dict[str, float | None]
    p99_ms: dict[str, float | None]


class Run:
    """One pool under the schedule: the callers' tallies and the pool's figures."""

    def __init__(self, policy: str, scenario: Scenario, pool: Pool[TcpConnection]) -> None:
        self.policy = policy
        self.scenario = scenario
        self.pool = pool
        self.tallies = {name: Tally() for name in CLASSES}
        self.t0 = 0.0
        self.waiting = 0
        self.peak_waiting = 0
        self.ready_at_spike = 0
        self.connecting_at_spike = 0
        self.connected_at: list[float] = []

    def on_event(self, event: LifecycleEvent | LeakEvent) -> None:
        """Subscriber: keep the pool-clock times connections became usable (cheap, never
        raises; it runs inside the pool's bookkeeping)."""
        if isinstance(event, LifecycleEvent) and event.trigger is Trigger.CONNECTED:
            self.connected_at.append(event.at)

    def mark_spike(self) -> None:
        counts = self.pool.stats()["connections"]
        self.ready_at_spike = counts["idle"] + counts["in_use"] + counts["checking"]
        self.connecting_at_spike = counts["connecting"]

    async def serve(self, request: Request) -> None:
        """One caller: acquire with its class's timeout, run its queries, give back."""
        pool = self.pool
        tally = self.tallies[request.class_name]
        pool_class = "fifo" if self.policy == "traditional" else request.class_name
        tally.requests += 1
        tally.waiting += 1
        self.waiting += 1
        self.peak_waiting = max(self.peak_waiting, self.waiting)
        waiting = True
        start = pool.now()
        try:
            async with pool.acquire(pool_class,
                                    timeout=self.scenario.timeout(request.class_name)) as conn:
                tally.observe(pool.now() - start)
                tally.acquired += 1
                tally.waiting -= 1
                self.waiting -= 1
                waiting = False
                for ms in request.queries_ms:
                    await conn.send(b"Q %.1f\n" % ms)
                    await conn.readline()
        except PoolTimeout:
            tally.timeouts += 1
            tally.observe(pool.now() - start)
        except TooManyWaiters:
            tally.refused += 1
        except (ConnwiseError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            tally.errors += 1
        finally:
            if waiting:
                tally.waiting -= 1
                self.waiting -= 1

    def snapshot(self) -> Snapshot:
        stats = self.pool.stats()
        counts = stats["connections"]
        elapsed = self.pool.now() - self.t0
        phase, concurrency = self.scenario.phase_at(elapsed)
        tallies = self.tallies
        return Snapshot(
            policy=self.policy, elapsed=elapsed, duration=self.scenario.duration, phase=phase,
            concurrency=concurrency, connecting=counts["connecting"],
            idle=counts["idle"] + counts["checking"], in_use=counts["in_use"],
            max_size=stats["max_size"],
            waiting={n: t.waiting for n, t in tallies.items()},
            served={n: t.acquired for n, t in tallies.items()},
            timeouts={n: t.timeouts for n, t in tallies.items()},
            p50_ms={n: t.percentile_ms(50) for n, t in tallies.items()},
            p99_ms={n: t.percentile_ms(99) for n, t in tallies.items()},
        )

    def figures(self, elapsed: float) -> dict[str, Any]:
        stats = self.pool.stats()
        spike = (self.t0 + self.scenario.spike_start, self.t0 + self.scenario.spike_end)
        return {
            "policy": self.policy,
            "description": DESCRIPTIONS[self.policy],
            "classes": {name: t.figures() for name, t in self.tallies.items()},
            "connections_created": stats["counters"]["created"],
            "ready_at_spike": self.ready_at_spike,
            "connecting_at_spike": self.connecting_at_spike,
            "opened_during_spike": sum(spike[0] <= t < spike[1] for t in self.connected_at),
            "peak_waiting": self.peak_waiting,
            "warm_target": self.scenario.warm_target if self.policy == "connwise" else None,
            "elapsed_s": round(elapsed, 3),
            "pool_counters": stats["counters"],
        }


def _make_pool(policy: str, scenario: Scenario, port: int) -> Pool[TcpConnection]:
    driver = TcpDriver("127.0.0.1", port, greeting=GREETING)
    rng = random.Random(scenario.seed)
    if policy == "traditional":
        return Pool(driver, name=policy, min_size=scenario.min_size, max_size=scenario.max_size,
                    max_connecting=scenario.max_connecting, classes=[FIFO_CLASS],
                    default_class=FIFO_CLASS.name, rng=rng)
    return Pool(driver, name=policy, min_size=scenario.min_size, max_size=scenario.max_size,
                max_connecting=scenario.max_connecting, classes=DEFAULT_CLASSES,
                default_class="bulk", rng=rng)


async def run_policy(policy: str, scenario: Scenario, schedule: Sequence[Request],
                     view: View) -> dict[str, Any]:
    """Drive `schedule` against a fresh backend and a fresh pool of `policy`; its figures."""
    backend = await DemoBackend(scenario.handshake_ms / 1000).start()
    pool = _make_pool(policy, scenario, backend.port)
    run = Run(policy, scenario, pool)
    pool.subscribe(run.on_event)
    tasks: list[asyncio.Task[None]] = []
    monitor: asyncio.Task[None] | None = None
    spike: asyncio.TimerHandle | None = None
    view.begin(policy, DESCRIPTIONS[policy])
    try:
        # min_size is open before the clock starts: the FIFO pool's baseline, not its handicap.
        await pool.open(wait=True, timeout=10 + 2 * scenario.handshake_ms / 1000)
        run.t0 = t0 = pool.now()
        if policy == "connwise":
            pool.set_target(scenario.warm_target, at=t0 + scenario.spike_start)
        spike = asyncio.get_running_loop().call_later(scenario.spike_start, run.mark_spike)
        monitor = asyncio.create_task(_monitor(run, view))
        for request in schedule:
            delay = t0 + request.at - pool.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(run.serve(request)))
        await asyncio.gather(*tasks)
        elapsed = pool.now() - t0
    finally:
        if spike is not None:
            spike.cancel()
        if monitor is not None:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            view.end(run.snapshot())
        await pool.close(timeout=5.0)
        await backend.stop()
    figures = run.figures(elapsed)
    figures["backend_handshakes"] = backend.handshakes
    return figures


async def _monitor(run: Run, view: View) -> None:
    while True:
        view.show(run.snapshot())
        await asyncio.sleep(view.interval)


# -- what the figures say -----------------------------------------------------------------------


def compare(traditional: float | None, connwise: float | None) -> tuple[int, str]:
    """-1 if connwise's figure is lower (better), +1 if higher, 0 if about the same, with words.

    "About the same" is within 1 ms or 10%, whichever is larger: loop jitter, not a policy.
    """
    if traditional is None or connwise is None:
        return 0, "not comparable: a pool served no such request"
    diff = connwise - traditional
    if abs(diff) < max(1.0, 0.1 * max(traditional, connwise)):
        return 0, "about the same, so connwise did not improve it"
    low, high = sorted((traditional, connwise))
    # Below 1 ms a wait is the loop's jitter: a ratio against it would overstate the change.
    ratio = high / max(low, 1.0)
    amount = (f"over {ratio:.0f}x" if low < 1.0 else f"{ratio:.0f}x" if ratio >= 10
              else f"{ratio:.1f}x" if ratio >= 2 else f"{100 * (high - low) / high:.0f}%")
    if diff < 0:
        return -1, f"{amount} lower"
    return 1, f"{amount} higher, so connwise did not improve it"


def findings(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Sentences of what priority and pre-warming changed, computed from the two runs' figures."""
    tr, cw = runs["traditional"], runs["connwise"]
    out: list[str] = []
    for name, role in (("critical", "served first by connwise"),
                       ("bulk", "served after critical by connwise")):
        a, b = tr["classes"][name], cw["classes"][name]
        p99a, p99b = a["wait_ms"]["p99"], b["wait_ms"]["p99"]
        _, words = compare(p99a, p99b)
        sentence = (f"{name.capitalize()} requests ({role}) waited {_fmt(p99b)} ms at p99 with "
                    f"connwise against {_fmt(p99a)} ms with the FIFO pool: {words}.")
        if a["timeouts"] or b["timeouts"]:
            sentence += (f" Timeouts: {a['timeouts']} with the FIFO pool, {b['timeouts']} with "
                         "connwise.")
        out.append(sentence)
    ready_tr, ready_cw = tr["ready_at_spike"], cw["ready_at_spike"]
    if ready_cw > ready_tr:
        warm = (f"Pre-warming had {ready_cw} connections ready when the spike began (target "
                f"{cw['warm_target']}) against {ready_tr} for the FIFO pool")
    else:
        warm = (f"Pre-warming did not give connwise more ready connections when the spike began "
                f"({ready_cw} against {ready_tr} for the FIFO pool)")
    opened = tr["opened_during_spike"]
    out.append(f"{warm}; during the spike the FIFO pool finished {opened} "
               f"handshake{'' if opened == 1 else 's'} while callers queued, connwise "
               f"{cw['opened_during_spike']}.")
    return out


# -- views --------------------------------------------------------------------------------------


class View(Protocol):
    """Where a run shows itself while it runs."""

    interval: float

    def begin(self, policy: str, description: str) -> None: ...

    def show(self, snap: Snapshot) -> None: ...

    def end(self, snap: Snapshot) -> None: ...


def render_live(snap: Snapshot) -> RenderableType:
    """The live panel: connections by state as a bar, then waiters and waits by class."""
    header = Text.assemble((snap.policy, "bold"), f"   t = {snap.elapsed:4.1f} / "
                           f"{snap.duration:.1f} s   ", (snap.phase, "bold magenta"),
                           f" ({snap.concurrency:g} concurrent offered)")
    width = snap.max_size
    in_use, idle = min(snap.in_use, width), min(snap.idle, width - min(snap.in_use, width))
    connecting = min(snap.connecting, width - in_use - idle)
    bar = Text()
    bar.append("█" * in_use, "green")
    bar.append("█" * idle, "cyan")
    bar.append("░" * connecting, "yellow")
    bar.append("·" * (width - in_use - idle - connecting), "dim")
    legend = Text.assemble("connections: ", ("in use", "green"), f" {snap.in_use}  ",
                           ("idle", "cyan"), f" {snap.idle}  ", ("connecting", "yellow"),
                           f" {snap.connecting}  max {snap.max_size}")
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1))
    for column in ("class", "waiting", "served", "timeouts", "wait p50 ms", "wait p99 ms"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name in CLASSES:
        table.add_row(name, str(snap.waiting[name]), str(snap.served[name]),
                      str(snap.timeouts[name]), _fmt(snap.p50_ms[name]), _fmt(snap.p99_ms[name]))
    return Panel(Group(header, bar, legend, table), expand=False)


def render_line(snap: Snapshot) -> str:
    """The live view as one plain line, for logs and pipes."""
    waits = ", ".join(f"{n} {_fmt(snap.p50_ms[n])}/{_fmt(snap.p99_ms[n])}" for n in CLASSES)
    waiting = ", ".join(f"{n} {snap.waiting[n]}" for n in CLASSES)
    return (f"{snap.policy:<11} t={snap.elapsed:5.1f}s {snap.phase:<8} | connections: "
            f"connecting {snap.connecting}, idle {snap.idle}, in use {snap.in_use} | "
            f"waiting: {waiting} | wait p50/p99 ms: {waits}")


class LiveView:
    """A rich.live panel, redrawn from the event loop (not rich's thread: the pool's state is
    read only between its bookkeeping steps)."""

    def __init__(self, console: Console, interval: float = 0.25) -> None:
        self.console = console
        self.interval = interval
        self._live: Live | None = None

    def begin(self, policy: str, description: str) -> None:
        self.console.print(Text.assemble("\n", (policy, "bold"), f": {description}"))
        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._live.start()

    def show(self, snap: Snapshot) -> None:
        if self._live is not None:
            self._live.update(render_live(snap), refresh=True)

    def end(self, snap: Snapshot) -> None:
        if self._live is not None:
            self.show(snap)
            self._live.stop()
            self._live = None


class PlainView:
    """Periodic plain lines, for when stdout is not a terminal."""

    def __init__(self, console: Console, interval: float = 1.0) -> None:
        self.console = console
        self.interval = interval

    def begin(self, policy: str, description: str) -> None:
        self.console.print(f"\n{policy}: {description}", markup=False, highlight=False)

    def show(self, snap: Snapshot) -> None:
        self.console.print(render_line(snap), markup=False, highlight=False, soft_wrap=True)

    def end(self, snap: Snapshot) -> None:
        self.show(snap)


def render_summary(result: dict[str, Any]) -> RenderableType:
    """The closing tables: waits by class and pool, then the pools' connection figures."""
    runs = result["runs"]
    waits = Table(title="Acquire wait by class, in ms (lower is better)", box=box.SIMPLE_HEAD)
    for column in ("class", "pool", "requests", "served", "timeouts", "p50", "p95", "p99",
                   "max"):
        waits.add_column(column, justify="left" if column in ("class", "pool") else "right")
    for name in CLASSES:
        for policy in POLICIES:
            c = runs[policy]["classes"][name]
            w = c["wait_ms"]
            waits.add_row(name if policy == POLICIES[0] else "", policy, str(c["requests"]),
                          str(c["acquired"]), str(c["timeouts"]), _fmt(w["p50"]),
                          _fmt(w["p95"]), _fmt(w["p99"]), _fmt(w["max"]),
                          end_section=policy == POLICIES[-1])
    pools = Table(title="Connections", box=box.SIMPLE_HEAD)
    for column in ("pool", "created", "ready at spike", "opened during spike", "peak waiting"):
        pools.add_column(column, justify="left" if column == "pool" else "right")
    for policy in POLICIES:
        r = runs[policy]
        pools.add_row(policy, str(r["connections_created"]), str(r["ready_at_spike"]),
                      str(r["opened_during_spike"]), str(r["peak_waiting"]))
    return Group(waits, pools)


# -- the demo -----------------------------------------------------------------------------------


def describe(scenario: Scenario, schedule: Sequence[Request]) -> str:
    """The scenario in plain words, printed before the runs."""
    critical = sum(r.class_name == "critical" for r in schedule)
    phases = ", then ".join(f"{c:g} concurrent for {end - start:.1f} s"
                            for _, start, end, c in scenario.phases())
    return (f"connwise demo pool (seed {scenario.seed}): a backend on 127.0.0.1 whose handshake "
            f"takes {scenario.handshake_ms:g} ms; {phases} "
            f"({100 * scenario.critical_share:g}% critical): {len(schedule)} requests, "
            f"{critical} critical, the same for both pools. Both pools: min {scenario.min_size}, "
            f"max {scenario.max_size}, up to {scenario.max_connecting} connects at a time.")


async def run_both(scenario: Scenario, schedule: Sequence[Request],
                   view: View) -> dict[str, Any]:
    """Both runs, one after the other, and what they show."""
    runs = {policy: await run_policy(policy, scenario, schedule, view) for policy in POLICIES}
    scenario_figures = {
        "duration_s": scenario.duration, "handshake_ms": scenario.handshake_ms,
        "seed": scenario.seed, "baseline_concurrency": scenario.baseline_concurrency,
        "spike_concurrency": scenario.spike_concurrency,
        "spike_s": [round(scenario.spike_start, 3), round(scenario.spike_end, 3)],
        "critical_share": scenario.critical_share, "min_size": scenario.min_size,
        "max_size": scenario.max_size, "max_connecting": scenario.max_connecting,
        "warm_target": scenario.warm_target, "requests": len(schedule),
    }
    return {"version": connwise.__version__, "scenario": scenario_figures, "runs": runs,
            "findings": findings(runs)}


def run_pool_demo(scenario: Scenario, *, console: Console, json_path: Path | None = None,
                  live: bool | None = None) -> dict[str, Any]:
    """Run the demo, print it to `console` and return its figures (also written to `json_path`).

    `live` chooses the rich live panel over plain lines; by default, live when the console is a
    terminal, because a pipe or a test wants lines it can read afterwards.
    """
    schedule = build_schedule(scenario)
    console.print(describe(scenario, schedule), highlight=False)
    use_live = console.is_terminal if live is None else live
    view: View = LiveView(console) if use_live else PlainView(
        console, interval=min(1.0, max(0.5, scenario.duration / 6)))
    result = asyncio.run(run_both(scenario, schedule, view))
    console.print()
    console.print(render_summary(result))
    console.print("What priority and pre-warming changed:", style="bold")
    for sentence in result["findings"]:
        console.print(f"- {sentence}", highlight=False)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"Figures written to {json_path}", highlight=False)
    return result
