"""The parallel ingest into SQLite (worker processes parse chunks, this process splices them)
against the serial one, and the new-store build that a crash cannot leave looking complete."""

from __future__ import annotations

import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from connwise.errors import IngestError, StoreError
from connwise.telemetry.clientinfo import RegionTable
from connwise.telemetry.ingest import HaproxyParser, IngestSummary, NginxParser, ingest_sqlite
from connwise.telemetry.ingest.base import MAX_LINE_NUMBERS, LineParser
from connwise.telemetry.record import Row
from connwise.telemetry.store_sqlite import SqliteStore

DATA = Path(__file__).resolve().parents[1] / "data" / "telemetry"
GOOD = ('10.1.{i}.7 - - [12/Mar/2024:08:{m:02d}:01 +0000] "GET /{i} HTTP/1.1" {status} {size} '
        '"-" "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X)" 0.0{r}\n')


def mixed_log(path: Path, lines: int) -> None:
    """Good lines, bad values, junk, blank lines, CRLF endings and no final newline: more than
    MAX_LINE_NUMBERS bad lines, so the cut-off of the line numbers is compared too."""
    out = []
    for i in range(lines):
        kind = i % 7
        if kind == 3:
            out.append(f"junk line {i}\n")
        elif kind == 5:
            out.append(GOOD.format(i=i % 250, m=i % 60, status="2x0", size=1, r=1))
        elif kind == 6 and i % 2:
            out.append("\n" if i % 4 == 1 else "  \r\n")
        else:
            line = GOOD.format(i=i % 250, m=i % 60, status=(200, 499, 502)[i % 3],
                               size=i % 900, r=i % 10)
            out.append(line.replace("\n", "\r\n") if i % 11 == 0 else line)
    path.write_text("".join(out).rstrip("\n"))


def records(path: Path) -> list[Row]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM connections ORDER BY rowid").fetchall()
    finally:
        db.close()


def counts(summary: IngestSummary) -> list[tuple[object, ...]]:
    return [(f.lines, f.records, f.malformed, dict(f.reasons), f.malformed_lines, f.error)
            for f in summary.files]


def serial_and_parallel(tmp_path: Path, parser: LineParser, files: list[Path],
                        chunk_bytes: int) -> tuple[list[Row], IngestSummary, IngestSummary]:
    serial = ingest_sqlite(parser, files, tmp_path / "serial.db", workers=1, progress=False)
    parallel = ingest_sqlite(parser, files, tmp_path / "parallel.db", workers=2, progress=False,
                             chunk_bytes=chunk_bytes, parallel_min_bytes=0)
    rows = records(tmp_path / "serial.db")
    assert records(tmp_path / "parallel.db") == rows
    assert counts(parallel) == counts(serial)
    return rows, serial, parallel


def test_parallel_ingest_gives_the_serial_records_and_accounting(tmp_path: Path) -> None:
    plain, packed = tmp_path / "a.log", tmp_path / "b.log.gz"
    mixed_log(plain, 9000)
    with gzip.open(packed, "wb") as f:
        f.write(plain.read_bytes()[:200_000])
    parser = NginxParser(regions=RegionTable([("10.1.0.0/16", "eu-west")]), node="web1")
    rows, serial, _ = serial_and_parallel(tmp_path, parser, [plain, packed], chunk_bytes=16_384)
    first = serial.files[0]
    assert first.lines == 9000 and first.malformed > MAX_LINE_NUMBERS
    assert len(first.malformed_lines) == MAX_LINE_NUMBERS
    assert first.reasons["$status '2x0' is not a number"] > 0
    assert serial.records == len(rows) > 6000
    # Without $connection the conn_id is the line number: the chunks were numbered right.
    last = [row for row in rows if row[2] == "a.log"][-1]
    assert last[0] == "9000" and last[1:4] == ("web1", "a.log", "request")
    db = sqlite3.connect(tmp_path / "parallel.db")
    try:
        assert db.execute("SELECT DISTINCT region, device FROM connections").fetchall() == [
            ("eu-west", "mobile")]
    finally:
        db.close()


@pytest.mark.parametrize(("name", "make"), [
    ("nginx_combined.log", lambda: NginxParser(regions=RegionTable.from_file(
        DATA / "regions.txt"))),
    ("haproxy.log", lambda: HaproxyParser(regions=RegionTable.from_file(DATA / "regions.txt"))),
])
def test_parallel_ingest_of_the_sample_logs_in_tiny_chunks(
        tmp_path: Path, name: str, make: Callable[[], LineParser]) -> None:
    _, serial, parallel = serial_and_parallel(tmp_path, make(), [DATA / name], chunk_bytes=64)
    assert parallel.malformed == serial.malformed > 0


def test_parallel_ingest_appends_to_an_existing_store(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    mixed_log(log, 3000)
    path = tmp_path / "t.db"
    first = ingest_sqlite(NginxParser(), [log], path, workers=2, progress=False,
                          chunk_bytes=8192, parallel_min_bytes=0)
    again = ingest_sqlite(NginxParser(), [log], path, workers=2, progress=False,
                          chunk_bytes=8192, parallel_min_bytes=0)
    rows = records(path)
    assert len(rows) == first.records + again.records == 2 * first.records
    assert rows[:first.records] == rows[first.records:]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == [
            ("connections_started_idx",)]
    finally:
        db.close()


class Exploding(NginxParser):
    """Fails in a way no bad line does, at line `at`: as a bug or a dying worker would."""

    def __init__(self, at: int, how: Callable[[], None]) -> None:
        super().__init__()
        self.at, self.how = at, how

    def start_file(self, source: str, first_line: int = 1) -> Callable[[str], Row | None]:
        parse = super().start_file(source, first_line)
        lineno = first_line - 1

        def exploding(line: str) -> Row | None:
            nonlocal lineno
            lineno += 1
            if lineno == self.at:
                self.how()
            return parse(line)
        return exploding


def _bug() -> None:
    raise RuntimeError("a bug")


def _die() -> None:
    os._exit(3)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_ingest_leaves_no_new_store(tmp_path: Path, workers: int) -> None:
    log = tmp_path / "a.log"
    mixed_log(log, 3000)
    path = tmp_path / "t.db"
    with pytest.raises(RuntimeError, match="a bug"):
        ingest_sqlite(Exploding(2500, _bug), [log], path, workers=workers, progress=False,
                      chunk_bytes=8192, parallel_min_bytes=0)
    assert os.listdir(tmp_path) == ["a.log"]


def test_a_worker_that_dies_is_an_ingest_error(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    mixed_log(log, 3000)
    with pytest.raises(IngestError, match="parse worker process died"):
        ingest_sqlite(Exploding(2500, _die), [log], tmp_path / "t.db", workers=2,
                      progress=False, chunk_bytes=8192, parallel_min_bytes=0)
    assert os.listdir(tmp_path) == ["a.log"]


def test_a_killed_ingest_leaves_only_a_partial_file(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    mixed_log(log, 400_000)
    path = tmp_path / "t.db"
    command = [sys.executable, "-m", "connwise.analysis", "ingest", "nginx", str(log),
               "--store", str(path), "--no-progress", "--workers", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        if partial and partial[0].stat().st_size > 1_000_000:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the ingest ended before it could be killed"
    assert not path.exists()
    assert [p.name for p in partial] == [p.name for p in tmp_path.glob("t.db.*.partial")]
    with pytest.raises(StoreError, match="does not exist"):
        SqliteStore(path, create=False)
    summary = ingest_sqlite(NginxParser(), [DATA / "nginx_combined.log"], path, progress=False)
    assert len(records(path)) == summary.records == 12


def test_build_makes_new_stores_only(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="already exists"), SqliteStore.build(path):
        pass
    with pytest.raises(StoreError, match="does not exist; create it first"), \
            SqliteStore.build(tmp_path / "no" / "t.db"):
        pass


@pytest.mark.parametrize("workers", [1, 2])
def test_a_truncated_gzip_alone_makes_a_store_of_its_readable_lines(tmp_path: Path,
                                                                   workers: int) -> None:
    """Its read error used to count as 'no log file could be read': the new store was thrown
    away with the records read before the break."""
    plain, packed = tmp_path / "a.log", tmp_path / "a.log.gz"
    mixed_log(plain, 3000)
    whole = gzip.compress(plain.read_bytes())
    packed.write_bytes(whole[:len(whole) * 2 // 3])
    summary = ingest_sqlite(NginxParser(), [packed], tmp_path / "t.db", workers=workers,
                            progress=False, chunk_bytes=16_384, parallel_min_bytes=0)
    [result] = summary.files
    assert "stopped at line" in result.error and 0 < result.lines < 3000
    assert len(records(tmp_path / "t.db")) == result.records > 0
