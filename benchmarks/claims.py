"""The six claims of the essay, each run as one scenario under `static`, `reactive` and
`connwise` in the same program; writes docs/evidence.md and prints JSON.

    .venv/bin/python benchmarks/claims.py [--out docs/evidence.md] [--only 1,3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connwise.sim.run import compare
from connwise.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "examples" / "scenarios"

K = dict[str, Any]


def _red(before: float, after: float) -> float:
    return 1.0 - after / before if before else 0.0


def claim1(r: dict[str, K]) -> K:
    s, c = r["static"]["classes"]["critical"], r["connwise"]["classes"]["critical"]
    cut = _red(s["latency_mean"], c["latency_mean"])
    cut99 = _red(s["latency_p99"], c["latency_p99"])
    return {"claimed": "critical latency -70% to -75% while batch work runs",
            "static": f"critical mean {s['latency_mean'] * 1000:.1f} ms, p99 "
                      f"{s['latency_p99'] * 1000:.0f} ms",
            "connwise": f"critical mean {c['latency_mean'] * 1000:.1f} ms, p99 "
                        f"{c['latency_p99'] * 1000:.0f} ms",
            "ours": f"mean -{cut * 100:.0f}%, p99 -{cut99 * 100:.0f}%",
            "holds": cut >= 0.70,
            "why": "Our cut is larger than claimed because the scenario keeps the pool near "
                   "saturation (about 95% busy with 500 ms batch work): in arrival order a "
                   "critical request waits behind batch work, by priority and with a reserved "
                   "20% share it almost never waits. At lower utilisation the cut shrinks "
                   "towards zero; the claim's 70-75% is one point on that curve."}


def claim2(r: dict[str, K]) -> K:
    s, re, c = r["static"], r["reactive"], r["connwise"]

    def fig(k: K) -> str:
        return (f"mean {k['peak_wait_mean'] * 1000:.1f} ms, p99 "
                f"{k['peak_wait_p99'] * 1000:.0f} ms, waited {k['peak_waited_share'] * 100:.1f}%")
    return {"claimed": "establishment at peaks ~200 ms -> < 50 ms",
            "static": fig(s), "reactive": fig(re), "connwise": fig(c),
            "ours": f"connwise {c['peak_wait_mean'] * 1000:.1f} ms vs static "
                    f"{s['peak_wait_mean'] * 1000:.0f} ms, reactive "
                    f"{re['peak_wait_mean'] * 1000:.1f} ms",
            "holds": c["peak_wait_mean"] < 0.050,
            "why": "connwise is under 50 ms, so the 'after' half holds. The 'before' half "
                   "(~200 ms) is the cost of one connect per request; any pool that keeps "
                   "connections (our reactive policy) already amortises it, so reactive is "
                   "also far below 200 ms on average — pre-warming only removes the waits "
                   "at the onset of a sharp, known spike (see p99 and the share that waited). "
                   "The static pool, sized for the daily peak, queues for free connections "
                   "during the launch, which is a capacity problem, not establishment."}


def claim3(r: dict[str, K]) -> K:
    s, c = r["static"]["served_share"], r["connwise"]["served_share"]
    return {"claimed": "95% served at 300% load vs 70% traditional",
            "static": f"{s * 100:.1f}% served", "connwise": f"{c * 100:.1f}% served",
            "reactive": f"{r['reactive']['served_share'] * 100:.1f}% served",
            "ours": f"connwise {c * 100:.1f}% vs static {s * 100:.1f}%",
            "holds": c >= 0.95,
            "why": "The connwise half is reproduced (the ladder sheds a little bulk and signals "
                   "the rest, whose degraded answers cost half). Our traditional baseline is "
                   "much worse than 70% because at 150% of capacity a FIFO queue grows without "
                   "bound until every request waits past its deadline; the essay's 70% implies "
                   "a baseline that already dropped load somehow, which it does not describe."}


def claim4(r: dict[str, K]) -> K:
    s, c = r["static"], r["connwise"]
    cut = _red(s["conn_seconds"], c["conn_seconds"])
    planted = c["zombies_planted"] / max(1, r["connwise"]["sessions"])
    return {"claimed": "15% of connections zombies; reclaiming them cut resources held "
                       "(the essay: infrastructure cost -25%)",
            "static": f"{s['conn_seconds']:.0f} connection-s held, zombies "
                      f"{s['zombie_seconds'] / s['conn_seconds'] * 100:.0f}% of it",
            "connwise": f"{c['conn_seconds']:.0f} connection-s; reclaimed {c['reclaimed']} "
                        f"(recall {(c['reclaim_recall'] or 0) * 100:.1f}%, precision "
                        f"{(c['reclaim_precision'] or 0) * 100:.1f}%)",
            "ours": f"planted {planted * 100:.0f}%; connection-seconds -{cut * 100:.0f}%",
            "holds": cut > 0 and (c["reclaim_precision"] or 0) >= 0.95,
            "why": "Zombies hold a connection for an hour against a 600 s fixed idle timeout, "
                   "so they dominate the connection-seconds; the learned per-segment threshold "
                   "(3 x p99 of healthy gaps) finds them within seconds. A zombie not yet "
                   "judged (the first ~300 s, before a segment has 30 gaps) is the recall gap. "
                   "The essay's 25% is a cost figure; ours is connection-seconds, which only "
                   "turns into cost where connections are the binding resource."}


def claim5(r: dict[str, K]) -> K:
    s, c = r["static"], r["connwise"]
    cut = _red(s["cross_instance_share"], c["cross_instance_share"])
    return {"claimed": "cross-instance traffic -35%, load max/mean <= 1.25",
            "static": f"cross-instance {s['cross_instance_share'] * 100:.1f}%, load "
                      f"{s['load_max_over_mean']:.2f}",
            "connwise": f"cross-instance {c['cross_instance_share'] * 100:.1f}%, load "
                        f"{c['load_max_over_mean']:.2f}",
            "ours": f"-{cut * 100:.0f}% cross-instance, max/mean {c['load_max_over_mean']:.2f}",
            "holds": cut >= 0.35 and c["load_max_over_mean"] <= 1.25,
            "why": "Round robin sends a returning client to another of 4 backends 75% of the "
                   "time; the bounded-load ring keeps it home unless home is over 1.25x the "
                   "mean, so our cut exceeds 35%. The remaining cross-instance share is the "
                   "spill-over of the bound; a smaller balance factor trades it for balance."}


def claim6(r: dict[str, K]) -> K:
    s, c = r["static"], r["connwise"]
    cut = _red(s["errors"], c["errors"])
    return {"claimed": "connection errors -40% with the strategies together",
            "static": f"{s['errors']} errors ({s['error_share'] * 100:.2f}%)",
            "reactive": f"{r['reactive']['errors']} errors",
            "connwise": f"{c['errors']} errors ({c['error_share'] * 100:.2f}%)",
            "ours": f"-{cut * 100:.0f}%", "holds": cut >= 0.40,
            "why": "Here most errors of static are connections refused at max_connections "
                   "while zombies hold slots during the unforecast spike; reclaiming zombies "
                   "removes nearly all of them, and the ladder sheds (counted as errors) only "
                   "if capacity runs out. How large the cut is depends entirely on which "
                   "failure dominates: a scenario without zombies would show a smaller cut."}


CLAIMS: list[tuple[int, str, Callable[[dict[str, K]], K]]] = [
    (1, "claim1_priority.toml", claim1), (2, "claim2_prewarm.toml", claim2),
    (3, "claim3_overload.toml", claim3), (4, "claim4_zombies.toml", claim4),
    (5, "claim5_affinity.toml", claim5), (6, "claim6_errors.toml", claim6),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evidence.md")
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    only = {int(x) for x in args.only.split(",") if x}
    rows: list[K] = []
    for number, file, judge in CLAIMS:
        if only and number not in only:
            continue
        scenario = load_scenario(SCENARIOS / file)
        started = time.perf_counter()
        results = {r.policy: r.kpis() for r in compare(scenario,
                                                        ["static", "reactive", "connwise"])}
        row = judge(results)
        row.update(claim=number, scenario=f"examples/scenarios/{file}",
                   wall_s=round(time.perf_counter() - started, 1))
        rows.append(row)
    print(json.dumps(rows, indent=2))
    if not only:
        args.out.write_text(render(rows), encoding="utf-8")


def render(rows: list[K]) -> str:
    lines = [
        "# Evidence: the essay's claims, reproduced in the simulator",
        "",
        "Generated by `.venv/bin/python benchmarks/claims.py` (do not edit by hand). Each claim",
        "is one scenario in `examples/scenarios/`, run under `static` (fixed pool, FIFO, round",
        "robin, fixed timeouts), `reactive` (grows on demand, as psycopg_pool or HikariCP) and",
        "`connwise` in the same program, on the same arrivals (same seed). The policies are",
        "the production core objects (`PoolPolicy`, `Scheduler`, `DegradeLadder`,",
        "`BoundedLoadRing`, `ZombieTracker`, `WarmPlan`); the workload is a model, so every",
        "figure is a property of the scenario as much as of the policy: read the 'why'.",
        "Warming uses `connwise.core.plan.build_plan` on the scenario's known (predictable)",
        "demand profile, not the forecasting package.",
        "",
        "| # | claim | static | connwise | our figure | holds? |",
        "|---|-------|--------|----------|------------|--------|",
    ]
    for r in rows:
        lines.append(f"| {r['claim']} | {r['claimed']} | {r['static']} | {r['connwise']} | "
                     f"{r['ours']} | {'yes' if r['holds'] else 'no'} |")
    lines.append("")
    for r in rows:
        lines += [f"## Claim {r['claim']}: {r['claimed']}", "",
                  f"Scenario `{r['scenario']}` ({r['wall_s']} s of wall time for three policies).",
                  "", f"- static: {r['static']}"]
        if "reactive" in r:
            lines.append(f"- reactive: {r['reactive']}")
        lines += [f"- connwise: {r['connwise']}", f"- our figure: {r['ours']}; holds: "
                  f"{'yes' if r['holds'] else 'no'}", "", f"Why it differs: {r['why']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
