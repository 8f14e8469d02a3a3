"""Ingest of nginx and HAProxy logs: the sample logs of tests/data/telemetry (malformed lines
included), custom log formats, and the driver's counting of bad lines."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from connwise.errors import ConfigError, IngestError
from connwise.telemetry.clientinfo import RegionTable
from connwise.telemetry.ingest import FileSummary, HaproxyParser, NginxParser, ingest
from connwise.telemetry.ingest.base import MAX_LINE_NUMBERS, NO_MATCH
from connwise.telemetry.ingest.nginx import compile_format
from connwise.telemetry.record import Row

DATA = Path(__file__).resolve().parents[2] / "data" / "telemetry"
CUSTOM = ('$remote_addr [$time_iso8601] "$request" $status $bytes_sent $request_time '
          'uct=$upstream_connect_time uht=$upstream_header_time conn=$connection '
          'req=$connection_requests region=$http_x_region ua="$http_user_agent"')


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []
        self.writes = 0

    def write(self, rows: Sequence[Row], columns: Sequence[str] | None = None) -> None:
        assert columns is not None
        self.writes += 1
        self.rows += [dict(zip(columns, row, strict=True)) for row in rows]


def run(parser: NginxParser | HaproxyParser, *paths: Path, batch: int = 5000
        ) -> tuple[Rows, list[FileSummary]]:
    sink = Rows()
    summary = ingest(parser, list(paths), sink, progress=False, batch=batch)
    return sink, summary.files


def test_nginx_combined_sample_with_malformed_lines() -> None:
    regions = RegionTable.from_file(DATA / "regions.txt")
    sink, [summary] = run(NginxParser(regions=regions, node="web1"),
                          DATA / "nginx_combined.log", batch=5)
    assert (summary.lines, summary.records, summary.malformed) == (16, 12, 3)
    assert summary.malformed_lines == [4, 11, 13]  # line 14 is blank: skipped silently
    assert summary.reasons[NO_MATCH] == 1
    assert summary.reasons["$time_local '12/Mar/2024:08:02:xx +0000' is not a valid time"] == 1
    assert summary.reasons["$status 'abc' is not a number"] == 1
    assert sink.writes == 3  # batches of 5
    first = sink.rows[0]
    assert first["conn_id"] == "1" and first["node"] == "web1"
    assert first["source"] == "nginx_combined.log" and first["kind"] == "request"
    assert first["ended_at"] == 1710230401.0  # 2024-03-12 08:00:01 UTC
    assert first["started_at"] == pytest.approx(1710230401.0 - 0.012)
    assert first["status"] == 200 and first["bytes_out"] == 5120 and first["errors"] == 0
    assert (first["region"], first["device"]) == ("eu-west", "desktop")
    assert first["max_gap_s"] == pytest.approx(0.012) and first["tail_idle_s"] == 0.0
    by_status = {r["status"]: r for r in sink.rows}
    assert by_status[502]["errors"] == 1 and by_status[502]["region"] == "ap-south"
    assert by_status[408]["tail_idle_s"] == 60.0 and by_status[408]["max_gap_s"] == 0.0
    assert by_status[408]["region"] == "us-east" and by_status[408]["device"] == "other"
    assert by_status[499]["errors"] == 1 and by_status[499]["device"] == "tablet"
    assert {r["device"] for r in sink.rows} >= {"desktop", "mobile", "bot", "tablet"}


def test_nginx_custom_log_format_with_connections_and_upstream_lists() -> None:
    sink, [summary] = run(NginxParser(CUSTOM, region_var="http_x_region"),
                          DATA / "nginx_custom.log")
    assert (summary.records, summary.malformed_lines) == (5, [5])
    assert list(summary.reasons) == ["$time_iso8601 'not-a-time' is not a valid time"]
    rows = sink.rows
    assert [(r["conn_id"], r["conn_seq"]) for r in rows] == [
        ("101", 1), ("101", 2), ("101", 3), ("102", 1), ("103", 1)]
    assert rows[0]["ended_at"] == 1710230400.0  # 09:00+01:00
    assert rows[0]["upstream_connect_s"] == 0.002 and rows[1]["upstream_connect_s"] is None
    assert rows[3]["upstream_connect_s"] == pytest.approx(0.2)  # "0.120, 0.080": two tries
    assert rows[3]["region"] == "us-east" and rows[3]["device"] == "mobile"
    assert rows[4]["errors"] == 1 and rows[4]["first_byte_s"] is None
    assert rows[0]["bytes_out"] == 1000


def test_nginx_msec_time_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "access.log.gz"
    with gzip.open(path, "wt") as f:
        f.write("1710230401.250 10.0.0.1 200 512 0.030\n1710230402.5 10.0.0.2 - 0 0.1\n")
    sink, [summary] = run(NginxParser("$msec $remote_addr $status $body_bytes_sent "
                                      "$request_time"), path)
    assert summary.records == 1 and summary.malformed_lines == [2]
    assert sink.rows[0]["ended_at"] == 1710230401.25


@pytest.mark.parametrize(("fmt", "problem"), [
    ("no variables at all", "holds no $variable"),
    ("$remote_addr $status", "logs no time"),
    ("$remote_addr [$time_local]", "logs no $status"),
])
def test_nginx_log_formats_that_cannot_work_are_refused(fmt: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        NginxParser(fmt)
    assert info.value.key == "log_format"


def test_nginx_region_var_must_exist_in_the_format() -> None:
    with pytest.raises(ConfigError, match="has no such variable") as info:
        NginxParser("combined", region_var="http_x_region")
    assert info.value.key == "region_var"


def test_format_compiler_delimits_like_nginx() -> None:
    pattern, groups = compile_format('$a "$b" [$c] $d')
    m = pattern.match('x "two words" [a b c] tail end\n')
    assert m is not None
    assert [m.group(groups[n] + 1) for n in "abcd"] == ["x", "two words", "a b c", "tail end"]


def test_haproxy_httplog_and_tcplog_sample() -> None:
    regions = RegionTable.from_file(DATA / "regions.txt")
    sink, [summary] = run(HaproxyParser(regions=regions), DATA / "haproxy.log")
    assert (summary.lines, summary.records, summary.malformed_lines) == (9, 7, [4, 9])
    rows = {r["conn_id"]: r for r in sink.rows}
    ok = rows["1"]
    assert (ok["kind"], ok["node"], ok["source"], ok["backend"]) == (
        "request", "lb1", "http-in", "static/srv1")
    assert ok["started_at"] == pytest.approx(1710230401.655)
    assert ok["ended_at"] == pytest.approx(1710230401.655 + 0.109)
    assert ok["queued_s"] == 0.0 and ok["upstream_connect_s"] == 0.03
    assert ok["first_byte_s"] == 0.069 and ok["bytes_out"] == 2750
    assert (ok["status"], ok["errors"], ok["close_reason"]) == (200, 0, "----")
    assert ok["region"] == "internal"
    assert rows["2"]["queued_s"] == 0.012
    failed = rows["3"]
    assert (failed["errors"], failed["close_reason"], failed["upstream_connect_s"]) == (
        1, "SC--", None)
    timeout = rows["5"]
    assert (timeout["status"], timeout["tail_idle_s"], timeout["max_gap_s"]) == (408, 30.0, 0.0)
    session = rows["6"]
    assert (session["kind"], session["source"], session["backend"]) == ("session", "pg-in",
                                                                        "pg/db1")
    assert session["status"] is None and session["active_s"] == 5.007
    assert session["region"] == "internal-db"  # the more specific network wins
    idle = rows["7"]
    assert (idle["bytes_out"], idle["tail_idle_s"], idle["errors"]) == (0, 60.0, 1)
    no_prefix = rows["8"]
    assert no_prefix["node"] == "ingest" and no_prefix["source"] == "redis-in"


def test_haproxy_mode_and_zone() -> None:
    sink, [summary] = run(HaproxyParser(mode="tcplog", tz="Europe/Paris"),
                          DATA / "haproxy.log")
    assert summary.records == 3  # the tcplog lines only
    assert sink.rows[0]["started_at"] == pytest.approx(1710230401.443 - 3600)
    with pytest.raises(ConfigError, match="unknown HAProxy log mode"):
        HaproxyParser(mode="jsonlog")
    with pytest.raises(ConfigError, match="unknown time zone"):
        HaproxyParser(tz="Mars/Olympus")


def test_bad_lines_never_abort_and_line_numbers_are_bounded(tmp_path: Path) -> None:
    good = ('1.2.3.4 - - [12/Mar/2024:08:00:01 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8" '
            '0.001\n')
    path = tmp_path / "mixed.log"
    path.write_text((good + "junk\n") * (MAX_LINE_NUMBERS + 10))
    _, [summary] = run(NginxParser(), path)
    assert summary.records == MAX_LINE_NUMBERS + 10
    assert summary.malformed == MAX_LINE_NUMBERS + 10
    assert len(summary.malformed_lines) == MAX_LINE_NUMBERS
    assert summary.malformed_lines[:2] == [2, 4]
    assert summary.describe_lines().endswith("and 10 more")


def test_an_unreadable_file_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    _, files = run(NginxParser(), tmp_path / "missing.log", DATA / "nginx_combined.log")
    assert "cannot open" in files[0].error and files[1].records == 12
    with pytest.raises(IngestError, match="no log file could be read"):
        ingest(NginxParser(), [tmp_path / "missing.log"], Rows(), progress=False)


@pytest.mark.parametrize(("fmt", "line", "reason"), [
    ("combined_rt", '1.2.3.4 - - [12/Mar/2024:08:00:01 +0000] "GET / HTTP/1.1" 200 5 "-" "c" nan',
     "$request_time 'nan' is not a number"),
    ("combined_rt", '1.2.3.4 - - [12/Mar/2024:08:00:01 +0000] "GET / HTTP/1.1" 200 5 "-" "c" inf',
     "$request_time 'inf' is not a number"),
    ("combined_rt", '1.2.3.4 - - [12/Mar/2024:08:00:01 +0000] "GET / HTTP/1.1" 200 5 "-" "c" -2',
     "$request_time '-2' is not a number"),
    ("$msec $status $request_time", "nan 200 0.1", "$msec 'nan' is not a valid time"),
    ("$msec $status $request_time", "-inf 200 0.1", "$msec '-inf' is not a valid time"),
    ("$msec $status $upstream_connect_time", "1710230401.2 200 infinity",
     "$upstream_connect_time 'infinity' is not a number"),
])
def test_nginx_numbers_that_are_not_finite_are_bad_lines(tmp_path: Path, fmt: str, line: str,
                                                         reason: str) -> None:
    """float() takes 'nan', 'inf' and negatives; a NaN request time once reached the store's
    NOT NULL active_s and the IntegrityError aborted the whole ingest with a traceback."""
    from connwise.telemetry.store_sqlite import SqliteStore

    path = tmp_path / "odd.log"
    path.write_text(line + "\n")
    store = SqliteStore(tmp_path / "s.db")
    try:
        [summary] = ingest(NginxParser(fmt), [path], store, progress=False).files
        assert (summary.records, summary.malformed) == (0, 1)
        assert summary.reasons == {reason: 1}
    finally:
        store.close()


def test_a_truncated_gzip_keeps_its_records_and_is_not_called_unreadable(tmp_path: Path) -> None:
    """A read error after some lines (a .gz cut short) was counted as a file that could not be
    read: with it the only file, the run raised 'no log file could be read' although its
    records were already in the store (appended, and then not reported)."""
    good = ('1.2.3.4 - - [12/Mar/2024:08:00:01 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8" '
            '0.001\n')
    whole = gzip.compress((good * 2000).encode())
    path = tmp_path / "cut.log.gz"
    path.write_bytes(whole[:len(whole) // 2])
    sink, [summary] = run(NginxParser(), path, batch=100)
    assert summary.records > 0 and len(sink.rows) == summary.records
    assert "stopped at line" in summary.error


HUGE = "99999999999999999999"  # past int64: sqlite3 raised OverflowError for the whole batch


@pytest.mark.parametrize(("parser", "line", "reason"), [
    (NginxParser, f'1.2.3.4 - - [12/Mar/2024:08:00:01 +0000] "GET / HTTP/1.1" 200 {HUGE} "-" '
     '"c" 0.1', f"$body_bytes_sent '{HUGE}' is out of range"),
    (NginxParser, f'1.2.3.4 - - [12/Mar/2024:08:00:01 +0000] "GET / HTTP/1.1" {HUGE} 5 "-" '
     '"c" 0.1', f"$status '{HUGE}' is out of range"),
    (HaproxyParser, f"10.0.1.2:33317 [12/Mar/2024:08:00:01.655] http-in static/srv1 "
     f'10/0/30/69/109 200 {HUGE} - - ---- 1/1/1/1/0 0/0 "GET / HTTP/1.1"',
     f"bytes read {HUGE} is out of range"),
    (HaproxyParser, f"10.0.1.2:33317 [12/Mar/2024:08:00:01.655] http-in static/srv1 "
     f'10/0/30/69/109 {HUGE} 5 - - ---- 1/1/1/1/0 0/0 "GET / HTTP/1.1"',
     f"status {HUGE} is not an HTTP status (100 to 599, or -1 for none)"),
    (HaproxyParser, f"10.0.1.2:33317 [12/Mar/2024:08:00:01.655] http-in static/srv1 "
     f'10/0/30/69/{"9" * 400} 200 5 - - ---- 1/1/1/1/0 0/0 "GET / HTTP/1.1"',
     f"timer {'9' * 400} is out of range"),  # was an OverflowError: int / 1000
])
def test_integers_past_64_bits_are_bad_lines(tmp_path: Path, parser: type, line: str,
                                             reason: str) -> None:
    from connwise.telemetry.store_sqlite import SqliteStore

    path = tmp_path / "big.log"
    path.write_text(line + "\n")
    store = SqliteStore(tmp_path / "s.db")
    try:
        [summary] = ingest(parser(), [path], store, progress=False).files
        assert (summary.records, summary.reasons) == (0, {reason: 1})
    finally:
        store.close()


NGINX_OK = '1.2.3.4 - - [12/Mar/2024:08:00:01 +0000] "GET / HTTP/1.1" 200 5 "-" "c" 0.1'
HAPROXY_OK = ('10.0.1.2:33317 [12/Mar/2024:08:00:01.655] http-in static/srv1 '
              '10/0/30/69/109 200 5 - - ---- 1/1/1/1/0 0/0 "GET / HTTP/1.1"')
TCPLOG_OK = ("10.0.3.1:52000 [12/Mar/2024:08:00:08.250] redis-in redis/r1 0/0/1200 88 -- "
             "2/2/1/1/0 0/0")
PER_REQUEST = '$msec $status $bytes_sent $request_length $connection_requests $request_time'


@pytest.mark.parametrize(("parser", "line", "reason"), [
    (NginxParser, NGINX_OK.replace("12/Mar", "31/Feb"),
     "$time_local '31/Feb/2024:08:00:01 +0000' is not a valid time"),
    (NginxParser, NGINX_OK.replace("12/Mar", "00/Mar"),
     "$time_local '00/Mar/2024:08:00:01 +0000' is not a valid time"),
    (NginxParser, NGINX_OK.replace("08:00:01", "25:00:01"),
     "$time_local '12/Mar/2024:25:00:01 +0000' is not a valid time"),
    (NginxParser, NGINX_OK.replace("08:00:01", "08:61:01"),
     "$time_local '12/Mar/2024:08:61:01 +0000' is not a valid time"),
    (NginxParser, NGINX_OK.replace("08:00:01", "08:00:60"),
     "$time_local '12/Mar/2024:08:00:60 +0000' is not a valid time"),
    (NginxParser, NGINX_OK.replace("08:00:01", "08:-1:01"),
     "$time_local '12/Mar/2024:08:-1:01 +0000' is not a valid time"),
    (NginxParser, NGINX_OK.replace("2024", "1969"),
     "$time_local '12/Mar/1969:08:00:01 +0000' is not a valid time"),
    (NginxParser, NGINX_OK.replace("+0000", "+2500"),
     "$time_local '12/Mar/2024:08:00:01 +2500' is not a valid time"),
    (NginxParser, NGINX_OK.replace("+0000", "x0100"),
     "$time_local '12/Mar/2024:08:00:01 x0100' is not a valid time"),
    (NginxParser, NGINX_OK.replace(" 200 ", " 600 "),
     "$status '600' is not an HTTP status (100 to 599)"),
    (NginxParser, NGINX_OK.replace(" 200 ", " 99 "),
     "$status '99' is not an HTTP status (100 to 599)"),
    (NginxParser, NGINX_OK.replace(" 200 ", " 000 "),
     "$status '000' is not an HTTP status (100 to 599)"),
    (NginxParser, NGINX_OK.replace(" 200 ", " -200 "), "$status '-200' is not a number"),
    (NginxParser, NGINX_OK.replace(" 200 5 ", " 200 -5 "),
     "$body_bytes_sent '-5' is not a number"),
    (lambda: NginxParser(PER_REQUEST), "-1710230401.5 200 5 10 1 0.1",
     "$msec '-1710230401.5' is not a valid time"),
    (lambda: NginxParser(PER_REQUEST), "1710230401.5 200 -5 10 1 0.1",
     "$bytes_sent '-5' is not a number"),
    (lambda: NginxParser(PER_REQUEST), "1710230401.5 200 5 -10 1 0.1",
     "$request_length '-10' is not a number"),
    (lambda: NginxParser(PER_REQUEST), "1710230401.5 200 5 10 -1 0.1",
     "$connection_requests '-1' is not a number"),
    (HaproxyParser, HAPROXY_OK.replace("12/Mar", "30/Feb"),
     "accept date '30/Feb/2024:08:00:01.655' is not a valid time"),
    (HaproxyParser, HAPROXY_OK.replace("2024", "1969"),
     "accept date '12/Mar/1969:08:00:01.655' is not a valid time"),
    (HaproxyParser, HAPROXY_OK.replace("08:00:01", "24:00:01"),
     "accept date '12/Mar/2024:24:00:01.655' is not a valid time"),
    (HaproxyParser, HAPROXY_OK.replace("08:00:01", "08:60:01"),
     "accept date '12/Mar/2024:08:60:01.655' is not a valid time"),
    (HaproxyParser, HAPROXY_OK.replace("08:00:01", "08:00:61"),
     "accept date '12/Mar/2024:08:00:61.655' is not a valid time"),
    (HaproxyParser, TCPLOG_OK.replace("12/Mar", "31/Apr"),
     "accept date '31/Apr/2024:08:00:08.250' is not a valid time"),
    (HaproxyParser, HAPROXY_OK.replace(" 200 ", " 600 "),
     "status 600 is not an HTTP status (100 to 599, or -1 for none)"),
    (HaproxyParser, HAPROXY_OK.replace(" 200 ", " 0 "),
     "status 0 is not an HTTP status (100 to 599, or -1 for none)"),
    (HaproxyParser, HAPROXY_OK.replace(" 200 ", " -2 "),
     "status -2 is not an HTTP status (100 to 599, or -1 for none)"),
    (HaproxyParser, HAPROXY_OK.replace("10/0/30/69/109", "10/-5/30/69/109"),
     "timer -5 is negative (only -1, for a step that never happened, is)"),
    (HaproxyParser, HAPROXY_OK.replace("10/0/30/69/109", "10/0/30/69/-109"),
     "timer -109 is negative (only -1, for a step that never happened, is)"),
    (HaproxyParser, TCPLOG_OK.replace("0/0/1200", "0/-3/1200"),
     "timer -3 is negative (only -1, for a step that never happened, is)"),
])
def test_impossible_values_are_bad_lines_and_never_stored(
        tmp_path: Path, parser: Callable[[], NginxParser | HaproxyParser], line: str,
        reason: str) -> None:
    """Dates that do not exist (31 Feb, hour 25), statuses no HTTP server sends and negative
    times, sizes or counts were stored as if they were true (31 Feb read as 2 Mar)."""
    from connwise.telemetry.store_sqlite import SqliteStore

    path = tmp_path / "odd.log"
    path.write_text(f"{line}\n{line}\n")
    store = SqliteStore(tmp_path / "s.db")
    try:
        [summary] = ingest(parser(), [path], store, progress=False).files
        assert (summary.records, summary.malformed_lines, summary.reasons) == (
            0, [1, 2], {reason: 2})
        assert store.count() == 0
    finally:
        store.close()


@pytest.mark.parametrize(("parser", "line", "status"), [
    (NginxParser, NGINX_OK.replace("12/Mar", "29/Feb"), 200),  # 2024 is a leap year
    (NginxParser, NGINX_OK.replace("08:00:01", "23:59:59").replace(" 200 ", " 100 "), 100),
    (NginxParser, NGINX_OK.replace(" 200 ", " 599 ").replace("+0000", "-1200"), 599),
    (HaproxyParser, HAPROXY_OK.replace("12/Mar", "29/Feb"), 200),
    (HaproxyParser, HAPROXY_OK.replace("08:00:01", "23:59:59").replace(" 200 ", " -1 "),
     None),  # HAProxy's -1: no response
])
def test_the_edges_of_what_is_possible_are_records(tmp_path: Path,
                                                   parser: Callable[[], NginxParser |
                                                                    HaproxyParser],
                                                   line: str, status: int | None) -> None:
    path = tmp_path / "edge.log"
    path.write_text(line + "\n")
    sink, [summary] = run(parser(), path)
    assert (summary.records, summary.malformed) == (1, 0)
    assert sink.rows[0]["status"] == status
