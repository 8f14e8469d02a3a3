"""The assessment on frames with a known answer: KPIs, concurrency, zombies, segments,
recommendations and both reports."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from connwise.analysis.assessment import assess, concurrency, sweep, zombie_verdicts
from connwise.analysis.frame import COLUMNS, Frame, parse_segments, zone
from connwise.analysis.recommend import nice, recommend, sizing
from connwise.analysis.report_html import plot_establishment, render_html, write_html
from connwise.analysis.report_term import kpi_rows as render_kpis
from connwise.analysis.report_term import render
from connwise.core.zombies import Verdict, ZombieRules, judge
from connwise.errors import ConfigError
from connwise.telemetry.record import FIELD_BY_NAME

MONDAY = 1710115200.0  # 2024-03-11 00:00 UTC, a Monday


def frame_of(records: list[dict[str, Any]]) -> Frame:
    rows = [tuple(r.get(name, FIELD_BY_NAME[name].default) for name in COLUMNS)
            for r in records]
    return Frame.from_rows([rows])


def pool(start: float, end: float, **values: Any) -> dict[str, Any]:
    return {"kind": "pool", "source": "main", "started_at": start, "ended_at": end,
            "active_s": (end - start) / 2, **values}


def test_kpis_with_a_known_answer() -> None:
    frame = frame_of([
        pool(0, 10, connecting_s=0.1, requests=3),
        pool(5, 15, connecting_s=0.2, requests=1, errors=1),
        pool(10, 20, connecting_s=0.3, requests=0),
        pool(12, 13, connecting_s=0.4, requests=2),
    ])
    k = assess(frame).kpis
    assert k.records == 4 and k.requests == 6
    assert k.establish_p50 == pytest.approx(0.25)
    assert k.establish_p99 == pytest.approx(0.397)
    assert k.establish_samples == 4
    assert k.error_rate == 0.25
    assert k.peak_concurrency == 3  # at t=12; at t=10 one ends as the next starts
    assert k.reuse_ratio == pytest.approx(3 / 6)


def test_upstream_connect_time_is_the_establishment_where_known() -> None:
    frame = frame_of([{"kind": "request", "started_at": 0, "ended_at": 1,
                       "upstream_connect_s": 0.05, "connecting_s": 0.0},
                      {"kind": "request", "started_at": 0, "ended_at": 1}])
    k = assess(frame).kpis
    assert (k.establish_samples, k.establish_p50) == (1, 0.05)
    assert k.reuse_ratio is None  # a log without $connection_requests cannot tell


def test_concurrency_bins_keep_each_bin_s_maximum() -> None:
    rng = random.Random(3)
    starts = np.array([rng.uniform(0, 3000) for _ in range(400)])
    ends = starts + np.array([rng.expovariate(1 / 30) for _ in range(400)])
    series = concurrency(starts, ends)
    times, level = sweep(starts, ends)
    assert series.peaks.max() == level.max()
    for i, peak in enumerate(series.peaks):
        lo, hi = series.start + i * series.width, series.start + (i + 1) * series.width
        inside = level[(times >= lo) & (times < hi)]
        before = level[times < lo]
        expected = max(inside.max() if inside.size else -1, before[-1] if before.size else 0)
        assert peak == expected


def test_report_zombie_rule_is_the_core_rule_record_by_record() -> None:
    rng = random.Random(11)
    rules = ZombieRules(min_samples=20)
    records = []
    for i in range(600):
        segment = rng.choice(["eu", "us"])
        scale = 1.0 if segment == "eu" else 20.0
        records.append(pool(i, i + 100, region=segment, device="desktop",
                            max_gap_s=rng.expovariate(1 / scale) if rng.random() < 0.7 else 0,
                            tail_idle_s=rng.expovariate(1 / (3 * scale)),
                            max_held_s=rng.choice([0.0, 1.0, 45.0]),
                            flag=rng.choice(["", "", "", "", "half_open"])))
    frame = frame_of(records)
    zombie, leak, thresholds = zombie_verdicts(frame, rules)
    for i, r in enumerate(records):
        verdict = judge(idle_for=r["tail_idle_s"],
                        threshold=thresholds[f"pool|{r['region']}|desktop"],
                        half_open=r["flag"] == "half_open", held_for=r["max_held_s"],
                        leak_threshold=rules.leak_threshold)
        assert bool(zombie[i]) == (verdict in (Verdict.ZOMBIE, Verdict.HALF_OPEN)), i
        assert bool(leak[i]) == (verdict is Verdict.LEAK), i
    assert thresholds["pool|us|desktop"] > 5 * thresholds["pool|eu|desktop"]


def warm(action: str) -> int:
    found = re.search(r"warm target (\d+)", action)
    assert found is not None
    return int(found.group(1))


def test_sizes_round_up_to_a_short_series() -> None:
    assert [nice(x) for x in (0.2, 1, 1.2, 2, 2.2, 7, 9, 11, 14, 16, 33, 81, 130)] == [
        1, 1, 2, 2, 3, 8, 10, 15, 15, 20, 40, 100, 150]


def _workload() -> Frame:
    """A week-day morning of requests and pool connections with planted findings."""
    rng = random.Random(5)
    records: list[dict[str, Any]] = []
    # Requests: Monday 08-10 busy (~20 s of work per second: concurrency ~20), 10-12 quiet.
    for hour, rate in ((8, 10.0), (9, 10.0), (10, 1.0), (11, 1.0)):
        t = MONDAY + hour * 3600
        while t < MONDAY + (hour + 1) * 3600:
            t += rng.expovariate(rate)
            mobile = rng.random() < 0.5
            records.append({
                "kind": "request", "source": "access.log", "started_at": t,
                "ended_at": t + rng.expovariate(0.5), "requests": 1,
                "region": "us-east" if mobile else "eu-west",
                "device": "mobile" if mobile else "desktop",
                "upstream_connect_s": rng.uniform(0.3, 0.6) if mobile else rng.uniform(0.02,
                                                                                      0.05),
                "errors": int(rng.random() < 0.01),
            })
    # Pool connections: reused every ~1 s, the idle ones closed by a 600 s idle timeout.
    for i in range(200):
        start = MONDAY + 8 * 3600 + i * 30
        records.append(pool(start, start + 900, requests=50, active_s=30.0,
                            max_gap_s=rng.uniform(0.5, 1.5),
                            tail_idle_s=600.0 if i % 5 == 0 else rng.uniform(0, 1),
                            connecting_s=0.002))
    return frame_of(records)


@pytest.fixture(scope="module")
def workload_result() -> Any:
    result = assess(_workload(), store="test.db", segments_by=("region", "device"))
    recommend(result)
    return result


def test_recommendations_with_reasons(workload_result: Any) -> None:
    result = workload_result
    by_topic: dict[str, list[Any]] = {}
    for r in result.recommendations:
        by_topic.setdefault(r.topic, []).append(r)
    sizes = by_topic["pool size"]
    busy = next(r for r in sizes if r.scope.startswith("Mon 08:00"))
    quiet = next(r for r in sizes if "11:00" in r.scope)
    assert warm(busy.action) > 3 * warm(quiet.action)
    peak = float(re.sub(r".*peak ([\d.]+);.*", r"\1", busy.reason))
    assert busy.action.endswith(f"max_size {nice(peak * 1.25)}")
    assert "p95" in sizes[0].reason and "headroom" in sizes[0].reason
    [idle] = by_topic["idle timeout"]
    assert idle.scope == "pool"
    # k=3 x p99 of gaps uniform in 0.5..1.5 s is 5 s: the pool watch's floor of 30 s holds.
    assert idle.action == "idle_timeout 30 s"
    assert "40 of 200 connections idled past 30 s" in idle.reason
    assert "raised to the live watch's floor of 30 s" in idle.reason
    assert any("log $connection and $connection_requests" in r.action
               for r in by_topic["keep-alive"])
    [zombies] = by_topic["zombies"]
    assert zombies.scope == "pool" and "reclaim" in zombies.action
    assert "40 of 200 pool records (20.0%)" in zombies.reason
    segments = by_topic["segments"]
    assert segments[0].scope == "us-east / mobile"
    assert "p95 establishment time" in segments[0].reason
    assert "eu-west / desktop" in segments[0].reason


def test_keepalive_from_gaps_between_requests_on_a_connection() -> None:
    records = []
    for conn in range(40):
        t = MONDAY + conn
        for seq in range(1, 6):
            records.append({"kind": "request", "conn_id": str(conn), "conn_seq": seq,
                            "started_at": t, "ended_at": t + 0.1, "requests": 1})
            t += 0.1 + 2.0  # 2 s between requests
    result = assess(frame_of(records))
    recommend(result)
    assert result.kpis.reuse_ratio == pytest.approx(4 / 5)
    [advice] = [r for r in result.recommendations if r.topic == "keep-alive"]
    assert advice.action == "keepalive_timeout 5 s"  # 2 s gaps x 1.2, at least 5 s
    assert "2.0 s" in advice.reason


def test_terminal_and_html_reports(workload_result: Any, tmp_path: Path) -> None:
    console = Console(record=True, width=160)
    render(workload_result, console)
    text = console.export_text()
    for needle in ("Baseline", "Establishment time p50 / p95 / p99", "Zombie share",
                   "Peak concurrency", "Connection reuse ratio", "Recommendations",
                   "us-east / mobile"):
        assert needle in text
    path = write_html(workload_result, tmp_path / "report.html")
    page = path.read_text()
    assert page.count("<svg") == 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched
    assert "<script" not in page and "@import" not in page
    assert "Establishment time p50 / p95 / p99" in page and "idle_timeout 30 s" in page
    with pytest.raises(ConfigError, match="does not exist"):
        write_html(workload_result, tmp_path / "missing" / "r.html")


def test_an_empty_frame_renders_without_data() -> None:
    result = assess(frame_of([]))
    recommend(result)
    assert result.kpis.records == 0 and math.isnan(result.kpis.error_rate)
    assert result.recommendations == []
    assert "no connections in these records" in render_html(result)


def test_segments_and_zones_are_validated() -> None:
    assert parse_segments("region, hour") == ("region", "hour")
    with pytest.raises(ConfigError, match="unknown dimension planet"):
        parse_segments("region,planet")
    with pytest.raises(ConfigError, match="unknown time zone"):
        zone("Mars/Olympus")


def test_hours_and_week_windows_follow_the_zone() -> None:
    frame = frame_of([{"kind": "request", "started_at": MONDAY + 7 * 3600 + i,
                       "ended_at": MONDAY + 7 * 3600 + i + 0.5, "requests": 1}
                      for i in range(100)])
    paris = assess(frame, segments_by=("hour",), tz=zone("Europe/Paris"))
    assert [s.key for s in paris.segments] == ["08h"]  # 07:00 UTC is 08:00 in Paris (CET)
    assert np.isfinite(paris.week_max[0, 8]) and np.isnan(paris.week_max[0, 7])


def test_an_html_path_that_cannot_be_written_is_a_config_error(workload_result: Any,
                                                               tmp_path: Path) -> None:
    """A directory, or a path under a file, used to end `connwise assess` in a traceback."""
    (tmp_path / "plain").write_text("")
    for path in (tmp_path, tmp_path / "plain" / "r.html"):
        with pytest.raises(ConfigError, match=r"--html = .*cannot write"):
            write_html(workload_result, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


# -- ground truth, record kinds mixed ------------------------------------------------------------


def test_kpis_of_every_kind_mixed_with_a_known_answer() -> None:
    """A pool, a gateway client and upstream, and log requests with and without
    `$connection_requests`: each KPI by hand."""
    frame = frame_of([
        pool(0, 100, connecting_s=0.1, requests=4, max_gap_s=1.0, tail_idle_s=0.5),
        {"kind": "client", "started_at": 10, "ended_at": 35, "requests": 2, "errors": 1,
         "flag": "half_open", "tail_idle_s": 5.0},  # no upstream connect: found a warm one
        {"kind": "upstream", "started_at": 10, "ended_at": 50, "requests": 1,
         "upstream_connect_s": 0.3, "flag": "zombie", "tail_idle_s": 40.0},
        {"kind": "request", "started_at": 30, "ended_at": 31, "requests": 1, "conn_seq": 1,
         "upstream_connect_s": 0.2},
        {"kind": "request", "started_at": 31, "ended_at": 32, "requests": 1, "conn_seq": 3},
        {"kind": "request", "started_at": 40, "ended_at": 41, "requests": 1},  # no seq logged
    ])
    k = assess(frame).kpis
    assert (k.records, k.requests) == (6, 10)
    # Samples 0.1, 0.2, 0.3 (NULL excluded, not 0), linear interpolation between them.
    assert k.establish_samples == 3
    assert (k.establish_p50, k.establish_p95, k.establish_p99) == pytest.approx((0.2, 0.29,
                                                                                  0.298))
    assert k.error_rate == pytest.approx(1 / 6)
    assert (k.zombies, k.half_open, k.leaks) == (2, 1, 0)
    assert k.zombie_share == pytest.approx(2 / 6) and k.zombie_seconds == pytest.approx(45.0)
    # The client's requests are the upstream's (the gateway records both): counted once.
    assert k.layer.startswith("all records but client connections")
    # At 30: pool, upstream, first request; at 31 one request ends as the next starts.
    assert (k.peak_concurrency, k.peak_at) == (3, 30.0)
    # Uses 4 + 1 of live connections (3 + 0 reused), 2 logged with a seq (1 reused).
    assert k.reuse_ratio == pytest.approx(4 / 7)


def test_a_gateway_s_requests_size_its_pools_once() -> None:
    """Each proxied request is active in its client record and in the upstream record that
    carried it: counted together, every pool size came out twice the backends' load."""
    requests = [(MONDAY + i, MONDAY + i + 0.5) for i in range(0, 60, 2)]
    both = frame_of(
        [{"kind": "client", "started_at": s, "ended_at": e, "active_s": e - s, "requests": 1,
          "upstream_connect_s": 0.01} for s, e in requests]
        + [{"kind": "upstream", "started_at": s, "ended_at": e, "active_s": e - s,
            "requests": 1, "upstream_connect_s": 0.01} for s, e in requests])
    k = assess(both).kpis
    assert (k.peak_concurrency, k.establish_samples) == (1, 30)
    assert float(np.nanmax(assess(both).busy.peaks)) == pytest.approx(1.0)
    clients_only = frame_of([{"kind": "client", "started_at": s, "ended_at": e,
                              "active_s": e - s, "requests": 1} for s, e in requests])
    alone = assess(clients_only).kpis
    assert (alone.peak_concurrency, alone.layer) == (1, "all records")


def test_a_percentile_of_one_or_two_samples() -> None:
    one = assess(frame_of([pool(0, 1, connecting_s=0.4)])).kpis
    assert (one.establish_p50, one.establish_p95, one.establish_p99) == (0.4, 0.4, 0.4)
    two = assess(frame_of([pool(0, 1, connecting_s=0.1), pool(0, 1, connecting_s=0.3)])).kpis
    assert (two.establish_p50, two.establish_p99) == pytest.approx((0.2, 0.298))


def test_peak_at_is_the_moment_of_the_peak_not_its_bin() -> None:
    """Over three days the series has bins of 5 minutes; the peak's time used to be its bin's
    start (here 15 s early), up to an hour early over longer spans."""
    frame = frame_of([pool(MONDAY, MONDAY + 3 * 86400), pool(MONDAY + 1000, MONDAY + 1010),
                      pool(MONDAY + 1005, MONDAY + 1006)])
    result = assess(frame)
    assert result.concurrency.width == 300
    assert (result.kpis.peak_concurrency, result.kpis.peak_at) == (3, MONDAY + 1005)

def test_records_of_no_duration_count_at_their_instant() -> None:
    """nginx logs `$request_time` 0.000 for quick answers: such requests were in flight, yet
    the sweep ended each before it began, and a log of them had a peak concurrency of 0."""
    quick = [{"kind": "request", "started_at": MONDAY + i, "ended_at": MONDAY + i,
              "requests": 1} for i in (0, 5, 5, 5, 9)]
    k = assess(frame_of(quick)).kpis
    assert (k.peak_concurrency, k.peak_at) == (3, MONDAY + 5)
    # Still not concurrent with a record that ends at that instant, as for any other record.
    edge = frame_of([pool(0, 5), {"kind": "request", "started_at": 5, "ended_at": 5},
                     pool(5, 8)])
    assert assess(edge).kpis.peak_concurrency == 2


def test_the_warm_target_is_never_above_the_peak() -> None:
    """Rounding up to the series used to put warm targets above the busiest moment: 1 for
    hours nothing was busy, 10 where the peak was 8.5."""
    result = assess(frame_of([pool(MONDAY, MONDAY + 3600)] * 30))
    result.week_p95[:] = np.nan
    result.week_max[:] = np.nan
    result.week_p95[0, 0:2], result.week_max[0, 0:2] = 0.0, 0.0
    result.week_p95[0, 2], result.week_max[0, 2] = 8.1, 8.5
    plans = {r.scope: r.action for r in sizing(result)}
    assert plans == {"Mon 00:00-02:00": "warm target 0, max_size 1",
                     "Mon 02:00-03:00": "warm target 9, max_size 15"}


def test_html_establishment_plot_shows_the_kpi_percentiles() -> None:
    """The plot drew its p50/p95/p99 lines over the positive samples only, so a log with
    `$upstream_connect_time` 0.000 showed other percentiles than the KPIs above it."""
    frame = frame_of([{"kind": "request", "started_at": MONDAY + i, "ended_at": MONDAY + i + 1,
                       "upstream_connect_s": v} for i, v in enumerate((0, 0, 0, 0.01, 0.02))])
    result = assess(frame)
    legend = re.findall(r"p(?:50|95|99) [\d.]+ ms", plot_establishment(result))
    assert legend == ["p50 0.0 ms", "p95 18.0 ms", "p99 19.6 ms"]
    assert "Establishment time p50 / p95 / p99</div><div class=\"value\">0.0 ms / 18.0 ms / " \
        "19.6 ms" in render_html(result)


def test_the_window_holds_records_that_started_in_since_until(tmp_path: Path) -> None:
    """`--since` inclusive, `--until` exclusive, on the start (an ISO time without a zone is
    UTC); a record that started before `--since` is left out even while it was open."""
    from connwise.analysis.cli import run_assessment
    from connwise.telemetry.store_sqlite import SqliteStore

    store = SqliteStore(tmp_path / "t.db")
    names = ("conn_id", "kind", "started_at", "ended_at", "requests", "errors")
    store.write([(str(i), "pool", MONDAY + start, MONDAY + start + 15, 1, int(start == 20))
                 for i, start in enumerate((0, 10, 20, 30))], names)
    store.close()
    result = run_assessment(str(tmp_path / "t.db"), since=str(MONDAY + 10),
                            until="2024-03-11T00:00:30")
    k = result.kpis
    assert (k.records, k.error_rate, k.peak_concurrency, k.peak_at) == (2, 0.5, 2, MONDAY + 20)
    assert (result.first, result.last) == (MONDAY + 10, MONDAY + 35)


# -- zombies and recommendations against the data ------------------------------------------------


def test_a_thin_segment_keeps_the_default_threshold_not_a_shorter_borrowed_one() -> None:
    """300 client connections in eu come back within 4 s; two in us (WebSockets that speak
    once a minute) have too few gaps to learn from. Borrowing the node's 12 s made both us
    connections zombies after 100 s of a quiet that their own gaps show is routine."""
    records = [{"kind": "client", "started_at": i, "ended_at": i + 60, "region": "eu",
                "max_gap_s": 4.0, "tail_idle_s": 1.0} for i in range(300)]
    records += [{"kind": "client", "started_at": i, "ended_at": i + 3600, "region": "us",
                 "max_gap_s": 60.0, "tail_idle_s": 100.0} for i in range(2)]
    zombie, _, thresholds = zombie_verdicts(frame_of(records), ZombieRules())
    assert thresholds["client|eu|unknown"] == 12.0
    assert thresholds["client|us|unknown"] == 300.0
    assert not zombie.any()
    records.append({"kind": "client", "started_at": 0, "ended_at": 4000, "region": "us",
                    "max_gap_s": 150.0, "tail_idle_s": 400.0})
    zombie, _, thresholds = zombie_verdicts(frame_of(records), ZombieRules())
    assert thresholds["client|us|unknown"] == 450.0  # k x its own longest gap
    assert not zombie.any()


def test_too_few_records_say_the_data_is_insufficient() -> None:
    """One record sized a pool for its hour ("warm target 1, max_size 1") and three idle ones
    called for zombie reclaim at a share of 100%: neither is a finding, both now say so."""
    one = assess(frame_of([pool(MONDAY, MONDAY + 10, tail_idle_s=5.0)]))
    recommend(one)
    [size] = [r for r in one.recommendations if r.topic == "pool size"]
    assert size.scope == "every window" and size.action.startswith("keep the current")
    assert "only 1 record" in size.reason and "30 are needed" in size.reason
    three = assess(frame_of([pool(MONDAY + i, MONDAY + i + 1000, tail_idle_s=900.0)
                             for i in range(3)]))
    recommend(three)
    assert three.kpis.zombies == 3
    [zombies] = [r for r in three.recommendations if r.topic == "zombies"]
    assert "reclaim" not in zombies.action
    assert "3 of 3 pool records" in zombies.reason
    assert "too few records" in zombies.reason and "30 are needed" in zombies.reason


def test_enough_records_still_size_and_call_for_reclaim() -> None:
    records = [pool(MONDAY + i, MONDAY + i + 1000, tail_idle_s=900.0 if i < 10 else 1.0,
                    max_gap_s=1.0) for i in range(30)]
    result = assess(frame_of(records))
    recommend(result)
    sizes = [r for r in result.recommendations if r.topic == "pool size"]
    assert sizes and all(r.action.startswith("warm target") for r in sizes)
    [zombies] = [r for r in result.recommendations if r.topic == "zombies"]
    assert "turn on zombie reclaim" in zombies.action


def test_the_idle_timeout_never_cuts_a_segment_s_own_healthy_gaps() -> None:
    """4000 eu clients come back within 2 s, 30 us clients (0.7% of the gaps) once a minute:
    the kind's p99 is eu's, and the advice was `idle_timeout 6 s`, which would close every us
    connection between two of its uses. The timeout now covers the slowest segment that learned
    its own threshold, and the reason says which."""
    records = [{"kind": "client", "started_at": MONDAY + i, "ended_at": MONDAY + i + 60,
                "region": "eu", "max_gap_s": 2.0, "tail_idle_s": 1.0} for i in range(4000)]
    records += [{"kind": "client", "started_at": MONDAY + i, "ended_at": MONDAY + i + 600,
                 "region": "us", "max_gap_s": 60.0, "tail_idle_s": 1.0} for i in range(30)]
    result = assess(frame_of(records), segments_by=("region",))
    recommend(result)
    assert result.thresholds["client|us|unknown"] == 180.0
    [idle] = [r for r in result.recommendations if r.topic == "idle timeout"]
    assert idle.action == "idle_timeout 180 s"
    assert "us / unknown" in idle.reason and "60.0 s" in idle.reason


@pytest.mark.parametrize("records", [
    [],
    [pool(MONDAY, MONDAY + 10, connecting_s=0.01, tail_idle_s=5.0)],
    [pool(MONDAY + i, MONDAY + i + 100, region="eu", device="desktop", connecting_s=0.01,
          max_gap_s=1.0, tail_idle_s=50.0 if i % 4 == 0 else 0.5) for i in range(40)],
], ids=["no records", "one record", "one segment"])
def test_the_html_report_is_self_contained_whatever_the_records(
        records: list[dict[str, Any]]) -> None:
    """matplotlib's SVG metadata named matplotlib.org, purl.org and creativecommons.org; the
    only URLs left are the SVG and XLink namespace names, which nothing fetches."""
    result = assess(frame_of(records), segments_by=("region", "device"))
    recommend(result)
    page = render_html(result)
    assert page.count("<svg") == 6
    assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= {"http://www.w3.org/2000/svg",
                                                              "http://www.w3.org/1999/xlink"}
    assert "<metadata" not in page and "<script" not in page and "@import" not in page
    assert f"{len(records)} pool" in page or not records


def test_half_open_findings_do_not_ask_for_probes_that_found_them() -> None:
    """`half_open` in a record means the gateway's keep-alive probes found the vanished peer;
    the advice to "turn on TCP keep-alive probes" contradicted the very records it cited."""
    records = [{"kind": "client", "started_at": MONDAY + i, "ended_at": MONDAY + i + 100,
                "flag": "half_open" if i < 3 else "", "tail_idle_s": 90.0 if i < 3 else 1.0}
               for i in range(40)]
    result = assess(frame_of(records))
    recommend(result)
    [probes] = [r for r in result.recommendations if r.topic == "keep-alive"]
    assert probes.scope == "TCP" and not probes.action.startswith("turn on")
    assert "keep TCP keep-alive probes on" in probes.action
    assert "3 connections were half-open" in probes.reason and "found" in probes.reason


def test_a_connection_the_live_watch_reclaimed_is_a_zombie_in_the_report() -> None:
    """A pool's watch reclaims a zombie after its 30 s floor and grace: the record's
    `close_reason` is `zombie`, but a pool record carries no `flag`, and with too few gaps the
    report's own threshold was the 300 s default, so the report called it healthy."""
    records = [pool(MONDAY + i, MONDAY + i + 100, tail_idle_s=60.0,
                    close_reason="zombie" if i < 2 else "idle_timeout") for i in range(5)]
    zombie, _, thresholds = zombie_verdicts(frame_of(records), ZombieRules())
    assert thresholds["pool|unknown|unknown"] == 300.0
    assert zombie.tolist() == [True, True, False, False, False]
    k = assess(frame_of(records)).kpis
    assert (k.zombies, k.zombie_seconds) == (2, 120.0)


def test_the_html_thresholds_say_which_were_learned() -> None:
    """A segment with too few healthy gaps is judged by the default: the table said `5.0 min`
    as if learned; it now gives the gaps behind each threshold and marks the default."""
    records = [pool(MONDAY + i, MONDAY + i + 100, region="eu", max_gap_s=20.0)
               for i in range(30)]
    records += [pool(MONDAY + i, MONDAY + i + 100, region="us", max_gap_s=20.0)
                for i in range(3)]
    page = render_html(assess(frame_of(records)))
    assert re.search(r"pool / eu / unknown</td><td class=num>60\.0 s</td>"
                     r"<td class=num>30</td>", page)
    assert re.search(r"pool / us / unknown</td><td class=num>5\.0 min</td>"
                     r"<td class=num>3 \(too few to learn from\)</td>", page)


def test_the_zombie_advice_names_the_segment_of_its_own_kind() -> None:
    """Segments by hour hold every kind: the advice for pool connections named no segment (no
    hour had a pool majority), and the one for client connections counted the pool's zombies
    in its segment as its own."""
    records = [{"kind": "client", "started_at": MONDAY + 8 * 3600 + i, "region": "eu",
                "ended_at": MONDAY + 8 * 3600 + i + 10, "max_gap_s": 1.0,
                "tail_idle_s": 100.0 if i < 2 else 0.5} for i in range(100)]
    records += [pool(MONDAY + 8 * 3600 + i, MONDAY + 8 * 3600 + i + 1000, max_gap_s=1.0,
                     tail_idle_s=900.0 if i < 10 else 0.5) for i in range(40)]
    result = assess(frame_of(records), segments_by=("hour",))
    recommend(result)
    advice = {r.scope: r for r in result.recommendations if r.topic == "zombies"}
    assert "most in 08h (2)" in advice["client"].reason
    assert "most in 08h (10)" in advice["pool"].reason


def test_the_keepalive_timeout_covers_a_slow_segment_s_follow_ups() -> None:
    """Desktops in eu send their next request within 2 s; phones in us (under 1% of the
    follow-ups) within 40 s. Pooled, the p99 was eu's and `keepalive_timeout 5 s` would make
    every us phone reconnect; it now covers each segment with enough follow-ups."""
    records = []
    for conn in range(1000):
        t = MONDAY + conn
        for seq in range(1, 6):
            records.append({"kind": "request", "conn_id": f"eu{conn}", "conn_seq": seq,
                            "region": "eu", "device": "desktop", "started_at": t,
                            "ended_at": t + 0.1, "requests": 1})
            t += 2.1
    for conn in range(10):
        t = MONDAY + conn
        for seq in range(1, 5):
            records.append({"kind": "request", "conn_id": f"us{conn}", "conn_seq": seq,
                            "region": "us", "device": "mobile", "started_at": t,
                            "ended_at": t + 0.1, "requests": 1})
            t += 40.1
    result = assess(frame_of(records))
    recommend(result)
    [advice] = [r for r in result.recommendations if r.action.startswith("keepalive_timeout")]
    assert advice.action == "keepalive_timeout 48 s"  # 40 s x 1.2
    assert "us / mobile" in advice.reason and "40.0 s" in advice.reason


def test_too_few_follow_ups_say_the_keepalive_data_is_insufficient() -> None:
    """Ten follow-up requests: no keepalive_timeout from them, and no silence either (an idle
    timeout with too few gaps already said so)."""
    records = []
    for conn in range(5):
        t = MONDAY + conn
        for seq in range(1, 4):
            records.append({"kind": "request", "conn_id": str(conn), "conn_seq": seq,
                            "started_at": t, "ended_at": t + 0.1, "requests": 1})
            t += 2.1
    result = assess(frame_of(records))
    recommend(result)
    [advice] = [r for r in result.recommendations if r.topic == "keep-alive"]
    assert advice.action == "keep the current keepalive_timeout"
    assert "only 10 follow-up requests" in advice.reason and "30 are needed" in advice.reason


def test_counts_of_one_read_in_the_singular() -> None:
    """"1 connections were half-open": every sentence of the reports that counts something
    agrees with a count of one."""
    records = [{"kind": "client", "started_at": MONDAY, "ended_at": MONDAY + 100,
                "flag": "half_open", "tail_idle_s": 90.0},
               {"kind": "client", "started_at": MONDAY, "ended_at": MONDAY + 100,
                "max_gap_s": 2.0, "tail_idle_s": 0.5}]
    records += [{"kind": "request", "conn_id": "c", "conn_seq": seq, "started_at": MONDAY + seq,
                 "ended_at": MONDAY + seq + 0.1, "requests": 1} for seq in (1, 2)]
    records[2]["upstream_connect_s"] = 0.05
    result = assess(frame_of(records))
    recommend(result)
    reasons = " | ".join(r.reason for r in result.recommendations)
    assert "1 connection was half-open" in reasons
    assert "only 1 idle gap ended in reuse" in reasons
    assert "only 1 follow-up request on a connection" in reasons
    assert ("1 of 2 client records (50.0%) idled past its segment's threshold or was "
            "half-open") in reasons
    rows = dict(render_kpis(result))
    assert "(1 zombie, " in rows["Zombie share"] and "0 leaks)" in rows["Zombie share"]
    assert "(1 sample)" in rows["Establishment time p50 / p95 / p99"]
    assert not re.search(r"(?<![\d.])1 [a-z-]+s\b", reasons + " ".join(rows.values()))


def live_floors() -> dict[str, float]:
    """The floor each live watch applies by default, read from the watches' own settings."""
    from connwise.config import ZombieSection
    from connwise.telemetry.zombie_watch import ZombieSettings

    return {"pool": ZombieSettings().rules.floor, "client": ZombieSection().floor}


@pytest.mark.parametrize("kind", ["pool", "client"])
@pytest.mark.parametrize("gap", [0.05, 1.0, 3.0, 8.0, 40.0])
def test_the_idle_timeout_never_goes_below_the_live_watch_s_floor(kind: str, gap: float) -> None:
    """The report used the core's 1 s floor for every kind: it recommended `idle_timeout 4 s`
    for a pool whose own live watch treats anything idle under 30 s as warm capacity."""
    floor = live_floors()[kind]
    records = [{"kind": kind, "source": "main", "started_at": MONDAY + i,
                "ended_at": MONDAY + i + 100, "region": "eu", "max_gap_s": gap,
                "tail_idle_s": 0.5} for i in range(40)]
    result = assess(frame_of(records))
    recommend(result)
    [advice] = [r for r in result.recommendations if r.topic == "idle timeout"]
    timeout = int(advice.action.removeprefix("idle_timeout ").removesuffix(" s"))
    assert timeout == max(math.ceil(floor), math.ceil(3 * gap))
    assert all(value >= floor for value in result.thresholds.values())
    if 3 * gap < floor:
        assert f"raised to the live watch's floor of {floor:g} s" in advice.reason
