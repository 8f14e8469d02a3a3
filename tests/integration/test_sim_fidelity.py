"""Fidelity: one scaled-down scenario in the simulator and against the real gateway.

The gateway runs in-process with one real HTTP origin on loopback; an open-loop Poisson load
generator offers 60 sessions/s for 8 s (about 160% of what 4 in-flight slots serve) of three
classes routed by an `x-class` header (critical 40 ms, interactive 40 ms, bulk 200 ms of origin
time), each session one connection with one GET, as the simulator models it. Latency counts
from the intended send time, so a generator that falls behind shows it. The simulator runs the
same scenario with the `connwise` policy: one backend, 4 warm connections (the group's
`max_in_flight`), constant service time = origin time + 2 ms of loopback and proxy overhead
(the same under the degrade signal, which the origin ignores), the same class table and the
same `DegradeLadder` defaults, moved every 0.25 s and on admission events as the gateway's.

Tolerance (stated and tested): the share of requests refused with 503 (shed or timed out
waiting) agrees within 10 percentage points, and both runs do refuse (> 2%). Per class, p99
latency agrees within 50% of the real value or 60 ms, whichever is larger.

Outside load. The simulator does not model a gateway process that waits for a CPU held by other
processes; on 2 shared cores that wait reached 45-65% of the run, and every request in flight
absorbs it (critical p99 300-450 ms against 70). The run measures it (the thread's run-queue
wait from /proc/thread-self/schedstat); a run starved more than `MAX_STARVED` is repeated, and
if every attempt is starved the p99 comparison is skipped with the measured figures rather than
passed or failed on the machine's load. (The earlier ~5 s critical stalls were the load
generator's: httpx, sharing the loop, spent it in its pool's O(n^2) bookkeeping while no new
connection reached the gateway.)
"""

from __future__ import annotations

import asyncio
import random

import pytest

from connwise.config import load_gateway_config
from connwise.gateway.runtime import Gateway
from connwise.sim import load_scenario, simulate
from tests.integration.http_origin import HttpOrigin

RATE = 60.0
DURATION = 8.0
SLOTS = 4
CLASSES = {"critical": ("/c", 40, 0.1), "interactive": ("/i", 40, 0.5),
           "bulk": ("/b", 200, 0.4)}
#: (rank, reserved_share, max_wait, aging_rate): the defaults with max waits short enough
#: that the ladder reaches its shed step within the run.
KNOBS = {"critical": (2, 0.2, 1.0, 0.0), "interactive": (1, 0.1, 2.0, 0.2),
         "bulk": (0, 0.0, 2.0, 0.1)}
OVERHEAD_MS = 2.0
#: A run whose thread waited for a CPU longer than this share of its time measured the
#: machine's other load, not the gateway (quiet runs here: 1-10%; with two busy loops
#: beside it on 2 cores: 45-65%).
MAX_STARVED = 0.10
ATTEMPTS = 3


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))] if values else 0.0


def runqueue_wait() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux schedstat)."""
    with open("/proc/thread-self/schedstat", encoding="ascii") as f:
        return int(f.read().split()[1]) / 1e9


class RealRun:
    """What the load generator saw, per class: latencies of answered requests (seconds from
    the *intended* send time, so a late generator shows as latency instead of hiding it),
    requests sent and requests refused with 503; and how late the generator itself ran."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {n: [] for n in CLASSES}
        self.total = dict.fromkeys(CLASSES, 0)
        self.refused = dict.fromkeys(CLASSES, 0)
        self.failed: list[str] = []
        self.send_lag: list[float] = []
        #: Share of the run's wall time this thread waited runnable for a CPU that other
        #: processes held: outside load, which the simulator does not model.
        self.starved = 0.0


async def _request(host: str, port: int, name: str) -> int:
    """One session, as the simulator models it: connect, one GET, read to EOF; the status.

    Raw asyncio streams rather than an HTTP client library: httpx's pool re-scans every
    pending request and connection on each event (O(n^2), with a poll per idle connection),
    and in this in-process run its CPU time starved the gateway's own loop."""
    _, ms, _ = CLASSES[name]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /slow?ms=%d HTTP/1.1\r\nHost: fidelity\r\nx-class: %s\r\n"
                     b"Connection: close\r\n\r\n" % (ms, name.encode()))
        answer = await reader.read()
    finally:
        writer.close()
    head = answer.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else 0


async def real_run() -> RealRun:
    origin = await HttpOrigin("o").start()
    config = {
        "listeners": [{"name": "web", "kind": "http", "bind": "127.0.0.1:0"}],
        "routes": [{"listener": "web", "group": "app", "path_prefix": "/",
                    "headers": {"x-class": name}, "class": name} for name in CLASSES],
        "groups": {"app": {"backends": [origin.address], "health": {"kind": "none"},
                           "max_in_flight": SLOTS, "warm_target": SLOTS}},
        "classes": {n: {"rank": r, "reserved_share": s, "max_wait": w, "aging_rate": a}
                    for n, (r, s, w, a) in KNOBS.items()},
        "limits": {"max_connections_per_ip": 10_000},
    }
    gateway = Gateway(load_gateway_config(config))
    await gateway.start()
    host, port = gateway.listeners["web"].address
    run = RealRun()
    rng = random.Random(7)
    names = list(CLASSES)
    weights = [CLASSES[n][2] for n in names]
    loop = asyncio.get_running_loop()

    async def one(name: str, intended: float) -> None:
        run.send_lag.append(loop.time() - intended)
        run.total[name] += 1
        try:
            status = await _request(host, port, name)
        except OSError as exc:
            run.failed.append(f"{name}: {exc!r}")
            return
        if status == 503:
            run.refused[name] += 1
        elif status == 200:
            run.latencies[name].append(loop.time() - intended)
        else:
            run.failed.append(f"{name}: status {status}")

    try:
        await asyncio.sleep(0.5)  # let the upstream pool warm
        tasks = []
        waited = runqueue_wait()
        start = loop.time()
        at = 0.0
        while True:
            at += rng.expovariate(RATE)
            if at > DURATION:
                break
            delay = start + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(rng.choices(names, weights)[0], start + at)))
        await asyncio.gather(*tasks)
        run.starved = (runqueue_wait() - waited) / (loop.time() - start)
    finally:
        await gateway.drain(1.0)
        await origin.stop()
    return run


def sim_run() -> dict[str, tuple[float, int, int]]:
    scenario = load_scenario({
        "run": {"name": "fidelity", "duration": DURATION, "seed": 3, "tick": 0.25},
        "arrivals": {"rate": RATE},
        "classes": {name: {"share": share, "service_ms": ms + OVERHEAD_MS, "service_sigma": 0,
                           "deadline": 60.0, "rank": KNOBS[name][0],
                           "reserved_share": KNOBS[name][1], "max_wait": KNOBS[name][2],
                           "aging_rate": KNOBS[name][3]}
                    for name, (_, ms, share) in CLASSES.items()},
        # The origin ignores Connwise-Degrade: a signalled request costs what any other does.
        "backends": {"count": 1, "pool_size": SLOTS, "capacity": 1000, "connect_ms": 0,
                     "degraded_cost": 1.0},
        "policies": {"gateway": {"base": "connwise", "pool_min": SLOTS, "warm": False,
                                 "zombies": "timeout", "balance": "round_robin"}},
    })
    k = simulate(scenario, "gateway").kpis()
    # The gateway answers 503 for a shed request and for one whose wait timed out alike.
    return {n: (c["latency_p99"], c["requests"], c["shed"] + c["timed_out"] + c["rejected"])
            for n, c in k["classes"].items()}


_CACHE: dict[str, object] = {}


async def both() -> tuple[RealRun, dict[str, tuple[float, int, int]]]:
    """The real run (repeated, up to `ATTEMPTS`, while outside load starves it) and the
    simulated one, computed once for both tests."""
    if "real" not in _CACHE:
        for _ in range(ATTEMPTS):
            real = await real_run()
            if real.starved <= MAX_STARVED:
                break
        _CACHE["real"] = real
        _CACHE["sim"] = sim_run()
    return _CACHE["real"], _CACHE["sim"]  # type: ignore[return-value]


def describe(real: RealRun, sim: dict[str, tuple[float, int, int]]) -> str:
    """Both runs side by side, for the assertion messages."""
    report = {n: (round(p99(real.latencies[n]) * 1000), round(sim[n][0] * 1000)) for n in CLASSES}
    return (f"p99 ms real vs sim {report}; 503 share real {share_refused_real(real):.3f} "
            f"sim {share_refused_sim(sim):.3f}; generator send lag max "
            f"{max(real.send_lag) * 1000:.0f} ms; waited for a CPU {real.starved:.0%} of the run")


def share_refused_real(real: RealRun) -> float:
    return sum(real.refused.values()) / sum(real.total.values())


def share_refused_sim(sim: dict[str, tuple[float, int, int]]) -> float:
    return sum(s for _, _, s in sim.values()) / sum(t for _, t, _ in sim.values())


@pytest.mark.timeout(150)
async def test_share_refused_agrees() -> None:
    real, sim = await both()
    print(describe(real, sim))
    assert not real.failed, real.failed[:5]
    real_shed, sim_shed = share_refused_real(real), share_refused_sim(sim)
    assert real_shed > 0.02 and sim_shed > 0.02, describe(real, sim)
    assert abs(real_shed - sim_shed) <= 0.10, describe(real, sim)


@pytest.mark.timeout(150)
async def test_per_class_p99_agrees() -> None:
    real, sim = await both()
    if real.starved > MAX_STARVED:
        pytest.skip(f"outside load: in each of {ATTEMPTS} runs this process waited for a CPU "
                    f"more than {MAX_STARVED:.0%} of the time; {describe(real, sim)}")
    for name in CLASSES:
        r, s = p99(real.latencies[name]), sim[name][0]
        assert abs(r - s) <= max(0.5 * r, 0.060), (name, describe(real, sim))
