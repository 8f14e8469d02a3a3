"""HAProxy logs -> records: `option httplog` lines become request records, `option tcplog`
lines session records (one TCP connection each).

Both formats are HAProxy's defaults (HAProxy 1.9 and later; the older `Tq/Tw/Tc/Tr/Tt` timers
read the same way), with or without the syslog prefix (`Feb  6 12:14:14 lb1 haproxy[14389]: `),
whose host becomes the record's `node`. A line is tried as httplog first, then as tcplog, so a
file that mixes frontends of both modes reads in one pass.

What each column gets (timers are milliseconds in the log, seconds in the record; -1 means the
step never happened and gives NULL or 0):

* `started_at` = accept date (`--tz` names the zone HAProxy logged in; UTC by default);
  `ended_at` = start + `Ta` (httplog) or `Tt` (tcplog);
* `queued_s` = `Tw`, `upstream_connect_s` = `Tc`, `first_byte_s` = `Tr` (httplog);
* `source` = frontend, `backend` = `backend/server`, `bytes_out` = bytes read (to the client);
* `close_reason` = termination state (`----` is a normal end, `cD` a client timeout, ...);
  `errors` = 1 when it is abnormal (first character not `-`) or the status is a 5xx;
* a session or request that moved no bytes, or ended 408/444/499, served nothing: its duration
  goes to `tail_idle_s`; a useful one's to `max_gap_s` (see the zombie rules).

A line with a value HAProxy cannot have written is a bad line, not a record: an accept date that
does not exist (31 Feb, hour 24, second 61) or is before 1970, a status outside 100..599 other
than -1 (no response), a timer below -1.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from connwise.errors import ConfigError
from connwise.telemetry.clientinfo import RegionTable
from connwise.telemetry.ingest.base import INT64_MAX, MONTHS, STATUS_MAX, STATUS_MIN, USELESS
from connwise.telemetry.record import Row

COLUMNS = ("conn_id", "node", "source", "kind", "backend", "started_at", "ended_at", "queued_s",
           "active_s", "bytes_out", "requests", "errors", "status", "first_byte_s",
           "upstream_connect_s", "max_gap_s", "tail_idle_s", "close_reason", "client_addr",
           "region")

_PREFIX = r"^(?:(?:\w{3} +\d+ \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) (\S+) [^:\s]+: )?"
_CLIENT = r"(\S+):(\d+) \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d(?:\.\d+)?)\] (\S+) ([^/\s]+/\S+) "
HTTPLOG = re.compile(
    _PREFIX + _CLIENT
    + r"(-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/\+?(-?\d+) (-?\d+) \+?(\d+) \S+ \S+ (\S{4}) "
    r"\d+/\d+/\d+/\d+/\+?\d+ \d+/\d+(?: \{[^}]*\})*(?: \"([^\"]*)\"?)?\s*$")
TCPLOG = re.compile(
    _PREFIX + _CLIENT
    + r"(-?\d+)/(-?\d+)/\+?(-?\d+) \+?(\d+) (\S{2}) \d+/\d+/\d+/\d+/\+?\d+ \d+/\d+\s*$")

MODES = ("auto", "httplog", "tcplog")


class _AcceptDate:
    """`06/Feb/2009:12:14:14.655` in zone `tz` to Unix time; the date part is cached."""

    __slots__ = ("_bases", "_zone")

    def __init__(self, tz: str) -> None:
        self._zone = None if tz.upper() == "UTC" else ZoneInfo(tz)
        self._bases: dict[str, float] = {}

    def __call__(self, s: str) -> float:
        key = s[:14]
        base = self._bases.get(key)
        if base is None:
            try:
                month = MONTHS[s[3:6]]
            except KeyError:
                raise ValueError(f"accept date {s!r} has no month name") from None
            try:  # datetime() refuses 31 Feb and hour 24, which timegm would roll over
                base = datetime(int(s[7:11]), month, int(s[0:2]), int(s[12:14]),
                                tzinfo=self._zone or UTC).timestamp()
            except ValueError:
                base = -1.0
            if base < 0.0:  # before 1970 too: no HAProxy logged then
                raise ValueError(f"accept date {s!r} is not a valid time")
            if len(self._bases) > 4096:
                self._bases.clear()
            self._bases[key] = base
        minute, second = int(s[15:17]), float(s[18:])
        if minute > 59 or second >= 60.0:  # the pattern has them unsigned
            raise ValueError(f"accept date {s!r} is not a valid time")
        return base + minute * 60 + second


def _ms(value: str) -> float | None:
    n = int(value)
    if n > INT64_MAX:  # n / 1000 of a longer one is an OverflowError, not a bad value
        raise ValueError(f"timer {value} is out of range")
    if n >= 0:
        return n / 1000.0
    if n == -1:
        return None
    raise ValueError(f"timer {value} is negative (only -1, for a step that never happened, is)")


class HaproxyParser:
    """httplog and tcplog lines to rows; `mode` restricts to one format."""

    name = "haproxy"
    columns = COLUMNS

    def __init__(self, *, mode: str = "auto", node: str = "ingest", tz: str = "UTC",
                 regions: RegionTable | None = None) -> None:
        if mode not in MODES:
            raise ConfigError("--mode", mode, "unknown HAProxy log mode",
                              f"use one of {', '.join(MODES)}")
        try:
            self._date = _AcceptDate(tz)
        except (KeyError, ValueError) as exc:
            raise ConfigError("--tz", tz, "unknown time zone",
                              "use an IANA name such as Europe/Paris, or UTC") from exc
        self.mode = mode
        self.node = node
        self.regions = regions

    def start_file(self, source: str, first_line: int = 1) -> Callable[[str], Row | None]:
        http = HTTPLOG.match if self.mode in ("auto", "httplog") else None
        tcp = TCPLOG.match if self.mode in ("auto", "tcplog") else None
        to_time = self._date
        default_node = self.node
        region_of = self.regions.region_of if self.regions is not None else None
        lineno = first_line - 1

        def parse(line: str) -> Row | None:
            nonlocal lineno
            lineno += 1
            m = http(line) if http is not None else None
            if m is not None:
                (host, addr, _port, date, frontend, backend, _t_req, t_wait, t_conn, t_resp,
                 t_total, status_s, bytes_s, term, _request) = m.groups()
                status = int(status_s)
                if not (STATUS_MIN <= status <= STATUS_MAX or status == -1):
                    raise ValueError(f"status {status_s} is not an HTTP status ({STATUS_MIN} "
                                     f"to {STATUS_MAX}, or -1 for none)")
                kind = "request"
                first_byte = _ms(t_resp)
                ok_status = status > 0 and status not in USELESS
            else:
                m = tcp(line) if tcp is not None else None
                if m is None:
                    return None
                (host, addr, _port, date, frontend, backend, t_wait, t_conn, t_total,
                 bytes_s, term) = m.groups()
                status, kind, first_byte, ok_status = None, "session", None, True
            start = to_time(date)
            total = _ms(t_total) or 0.0
            nbytes = int(bytes_s)
            if nbytes > INT64_MAX:
                raise ValueError(f"bytes read {bytes_s} is out of range")
            useful = nbytes > 0 and ok_status
            abnormal = term[0] != "-" or (status is not None and (status >= 500 or status < 0))
            return (
                str(lineno), host or default_node, frontend, kind, backend, start,
                start + total, _ms(t_wait) or 0.0, total, nbytes, 1, 1 if abnormal else 0,
                status if status is None or status >= 0 else None, first_byte, _ms(t_conn),
                total if useful else 0.0, 0.0 if useful else total, term, addr,
                region_of(addr) if region_of is not None else "",
            )

        return parse
