"""Replay: recorded telemetry and an ingested nginx access log as the simulator's arrivals.

The sources are real: a SQLite telemetry store written through `StoreSpec.open_sink()` with
`ConnRecord` rows, and an nginx log ingested by `connwise ingest nginx`. The simulator must open
one session per recorded client connection or request, at its recorded time (rebased, sped up),
of its recorded class and segment, make its recorded requests and hold its connection for its
recorded time; records of connections the gateway opened itself are not arrivals.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from connwise.cli import app
from connwise.sim import Simulation, load_scenario
from connwise.telemetry.record import ConnRecord
from connwise.telemetry.stores import StoreSpec

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_732_870_800.0  # 2024-11-29 09:00 UTC
SEGMENTS = [("eu", "mobile"), ("eu", "desktop"), ("us", "desktop")]
UA = {"mobile": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148",
      "desktop": "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36"}


def recorded(n: int = 300) -> list[ConnRecord]:
    """Client connections of two classes over ~60 s, each with requests and a hold time."""
    rng = random.Random(5)
    records = []
    at = T0
    for i in range(n):
        at += rng.expovariate(5.0)
        region, device = rng.choice(SEGMENTS)
        rec = ConnRecord(f"c{i}", "client", "web", at, class_name=rng.choice(
            ["critical", "interactive"]), region=region, device=device,
            client_addr=f"10.0.0.{rng.randrange(1, 50)}", requests=rng.randint(1, 3))
        rec.ended_at = at + rng.uniform(0.5, 4.0)
        records.append(rec)
    return records


def write_store(path: Path, records: list[ConnRecord]) -> None:
    sink = StoreSpec.parse(str(path)).open_sink()
    try:
        # Connections the gateway opened to its backends: recorded, but not arrivals.
        upstream = [ConnRecord(f"u{i}", "upstream", "app", T0 + i, backend="b:80")
                    for i in range(20)]
        sink.write([r.row() for r in records + upstream])
    finally:
        sink.close()


def replay_scenario(source: dict[str, Any], duration: float) -> dict[str, Any]:
    """Ample capacity and a fast backend, so every recorded session runs as recorded."""
    return {
        "run": {"name": "replay", "duration": duration},
        "arrivals": source,
        "classes": {"critical": {"share": 0.5, "service_ms": 1, "service_sigma": 0,
                                 "think_s": 0.05, "think_sigma": 0},
                    "interactive": {"share": 0.5, "service_ms": 1, "service_sigma": 0,
                                    "think_s": 0.05, "think_sigma": 0}},
        "clients": {"count": 100},
        "backends": {"count": 2, "pool_size": 50, "capacity": 100, "connect_ms": 0},
        "policies": {"connwise": {"base": "connwise"}},
    }


def run(data: dict[str, Any]) -> tuple[Simulation, dict[str, Any]]:
    scenario = load_scenario(data)
    sim = Simulation(scenario, scenario.resolve("connwise"))
    return sim, sim.run().kpis()


def test_store_replay_matches_the_recorded_sessions(tmp_path: Path) -> None:
    records = recorded()
    store = tmp_path / "telemetry.db"
    write_store(store, records)
    speed = 2.0
    span = (records[-1].started_at - T0) / speed
    sim, k = run(replay_scenario({"replay": str(store), "replay_speed": speed}, span + 10))
    assert sim.replay is not None
    first = records[0].started_at
    # Arrivals: one per client record, at its recorded time (rebased, sped up), in order.
    expected = sorted(((r.started_at - first) / speed, r.class_name, r.region, r.device,
                       r.requests, (r.ended_at - r.started_at) / speed) for r in records)
    got = [(a.at, a.class_name, a.region, a.device, a.requests, a.hold) for a in sim.replay]
    assert len(got) == len(expected) == 300
    for g, e in zip(got, expected, strict=True):
        assert abs(g[0] - e[0]) < 1e-6 and g[1:5] == e[1:5] and abs((g[5] or 0.0) - e[5]) < 1e-6
    # The engine opened exactly those sessions, per segment, made their recorded requests
    # per class and held each connection for its recorded time.
    assert k["sessions"] == 300 and k["lifecycles"] == 300
    assert k["sessions_by_segment"] == dict(Counter(f"{r.region}/{r.device}" for r in records))
    for name in ("critical", "interactive"):
        assert k["classes"][name]["requests"] == sum(r.requests for r in records
                                                     if r.class_name == name)
        assert k["classes"][name]["completed"] == k["classes"][name]["requests"]
    holds = sum(r.ended_at - r.started_at for r in records) / speed
    assert abs(k["conn_seconds"] - holds) < 1e-6


def test_store_replay_timing_per_class(tmp_path: Path) -> None:
    """Cut the run at several times: the sessions opened so far are, per class and segment,
    exactly the records that started by then."""
    records = recorded()
    store = tmp_path / "telemetry.db"
    write_store(store, records)
    first = records[0].started_at
    for cut in (5.0, 20.0, 41.3):
        scenario = replay_scenario({"replay": str(store)}, cut)
        scenario["classes"]["critical"]["requests"] = 1
        _, k = run(scenario)
        due = [r for r in records if r.started_at - first <= cut]
        assert k["sessions"] == len(due), cut
        assert k["sessions_by_segment"] == dict(Counter(f"{r.region}/{r.device}" for r in due))
        for name in ("critical", "interactive"):
            # A session's first request is issued when it opens.
            first_requests = sum(1 for r in due if r.class_name == name)
            assert k["classes"][name]["requests"] >= first_requests, (cut, name)
            assert k["classes"][name]["requests"] <= sum(
                r.requests for r in due if r.class_name == name), (cut, name)


def nginx_log(path: Path, n: int = 200) -> list[tuple[float, float, str]]:
    """An access log (combined + $request_time); (start, request time, device) per line."""
    rng = random.Random(9)
    end = T0
    lines, truth = [], []
    for _ in range(n):
        end += float(rng.randint(0, 2))
        rt = round(rng.uniform(0.01, 0.9), 3)
        device = rng.choice(["mobile", "desktop"])
        stamp = datetime.fromtimestamp(end, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000")
        lines.append(f'10.1.0.{rng.randrange(1, 9)} - - [{stamp}] "GET /p HTTP/1.1" 200 512 '
                     f'"-" "{UA[device]}" {rt}')
        truth.append((end - rt, rt, device))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return truth


def test_ingested_nginx_log_and_the_raw_log_replay_alike(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    truth = nginx_log(log)
    store = tmp_path / "ingested.db"
    result = CliRunner().invoke(app, ["ingest", "nginx", str(log), "--store", str(store),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    first = min(t for t, _, _ in truth)
    expected = sorted((round(t - first, 6), round(rt, 6), device) for t, rt, device in truth)
    span = expected[-1][0] + 5
    for source in ({"replay": str(store)}, {"replay_log": str(log)}):
        sim, k = run(replay_scenario(source, span))
        assert sim.replay is not None
        got = sorted((round(a.at, 6), round(a.hold or 0.0, 6), a.device) for a in sim.replay)
        assert got == expected, source
        # No class in an nginx log: the scenario's first class; no region: "local".
        assert {a.class_name for a in sim.replay} == {"critical"}
        assert k["sessions"] == len(truth)
        assert k["classes"]["critical"]["requests"] == len(truth)
        assert k["sessions_by_segment"] == dict(Counter(f"local/{d}" for _, _, d in truth))
        assert abs(k["conn_seconds"] - sum(rt for _, rt, _ in truth)) < 1e-6


def test_connwise_simulate_runs_the_example_replay_scenario(tmp_path: Path) -> None:
    example = ROOT / "examples" / "scenarios" / "replay_access_log.toml"
    lines = sum(1 for line in (example.parent / "replay-access.log").read_text().splitlines()
                if line.strip())
    out = tmp_path / "kpis.json"
    result = CliRunner().invoke(app, ["simulate", str(example), "--policies",
                                      "static,connwise", "--no-plots", "--quiet",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "replay_access_log" in result.output and "connwise" in result.output
    data = json.loads(out.read_text())
    assert [d["policy"] for d in data] == ["static", "connwise"]
    for d in data:
        assert d["sessions"] == lines
        assert d["classes"]["interactive"]["requests"] == lines


def test_a_missing_replay_source_is_a_config_error(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('[arrivals]\nreplay = "nowhere.db"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["simulate", str(scenario), "--no-plots", "--quiet"])
    assert result.exit_code == 2
    assert "arrivals.replay" in result.output and "no such telemetry store" in result.output
