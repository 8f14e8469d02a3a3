"""nginx access logs -> request records, for any `log_format`.

The `log_format` string is compiled into one regular expression: each `$variable` captures up to
the character that follows it in the format (`"$http_user_agent"` captures up to the closing
quote, `[$time_local]` up to `]`, a variable followed by a space up to the next space), which is
exactly how nginx delimits its own fields, so any format an operator wrote parses without a
hand-made pattern. The default is `combined` plus ` $request_time`.

One line is one request record (kind `request`). What each column gets:

* `started_at` = log time - `$request_time` (nginx logs when the request ends), `ended_at` = log
  time, `active_s` = `$request_time`;
* `bytes_out` from `$bytes_sent` (else `$body_bytes_sent`), `bytes_in` from `$request_length`;
* `conn_id` from `$connection` (else the line number), `conn_seq` from `$connection_requests`;
* `upstream_connect_s` from `$upstream_connect_time`, `first_byte_s` from
  `$upstream_header_time` (summed over the upstreams tried), `backend` from `$upstream_addr`;
* `device` from `$http_user_agent`; `region` from a variable named by `region_var` (a header
  such as `$http_x_region`, or `$geoip_country_code`), else from the CIDR table;
* `errors` = 1 for a 5xx, a 499 (client gone) or 444 (closed without response);
* a request that served nothing (no bytes, or 408/444/499) held its connection for nothing: its
  time goes to `tail_idle_s`; a useful one's to `max_gap_s` (see the zombie rules).

A line with a value nginx cannot have written is a bad line, not a record: a time that does not
exist (31 Feb, hour 25, a zone past +-23:59) or is before 1970, a status outside 100..599, a
negative, infinite or NaN time, size or count.

Speed matters (logs of a busy week hold billions of lines), so the per-line code is one regex
match, a tuple of the groups, a cached timestamp (lines of the same second share it) and a
cached device lookup.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable
from datetime import datetime

from connwise.errors import ConfigError
from connwise.telemetry.clientinfo import RegionTable, device_of
from connwise.telemetry.ingest.base import INT64_MAX, MONTHS, STATUS_MAX, STATUS_MIN, USELESS
from connwise.telemetry.record import Row

PRESETS: dict[str, str] = {
    "combined": '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                '"$http_referer" "$http_user_agent"',
    "main": '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent" "$http_x_forwarded_for"',
}
PRESETS["combined_rt"] = PRESETS["combined"] + " $request_time"
DEFAULT_FORMAT = "combined_rt"

COLUMNS = ("conn_id", "node", "source", "kind", "backend", "started_at", "ended_at", "active_s",
           "bytes_in", "bytes_out", "requests", "conn_seq", "errors", "status",
           "first_byte_s", "upstream_connect_s", "max_gap_s", "tail_idle_s", "client_addr",
           "region", "device")

_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
ERRORS = frozenset({444, 499})
_INF = math.inf


def compile_format(log_format: str) -> tuple[re.Pattern[str], dict[str, int]]:
    """The regex of `log_format` (a preset name or a format string) and each variable's group."""
    fmt = PRESETS.get(log_format, log_format)
    pieces: list[str] = []
    groups: dict[str, int] = {}
    pos = 0
    matches = list(_VARIABLE.finditer(fmt))
    if not matches:
        raise ConfigError("log_format", log_format, "it holds no $variable",
                          f"use a preset ({', '.join(PRESETS)}) or nginx's log_format string")
    for index, m in enumerate(matches, start=1):
        pieces.append(re.escape(fmt[pos:m.start()]))
        name = m.group(1) or m.group(2)
        following = fmt[m.end():m.end() + 1]
        if not following:
            pieces.append("(.*?)")
        elif following == " " and name.startswith("upstream_"):
            # nginx lists one value per upstream tried: "0.120, 0.080" or "a:80 : b:80".
            pieces.append(r"([^ ]*(?:(?:, | : )[^ ]*)*)")
        else:
            pieces.append(f"([^{re.escape(following)}]*)")
        groups.setdefault(name, index - 1)
        pos = m.end()
    pieces.append(re.escape(fmt[pos:]))
    return re.compile("".join(pieces) + r"\s*$"), groups


def _seconds(value: str) -> float | None:
    """`0.012`, or a comma/colon-separated list over several upstreams (summed); `-` is None."""
    if value == "-" or not value:
        return None
    if "," not in value and ":" not in value:
        return _duration(value)
    total = 0.0
    seen = False
    for raw in re.split(r"[,:]", value):
        part = raw.strip()
        if part and part != "-":
            total += _duration(part)
            seen = True
    return total if seen else None


def _duration(text: str) -> float:
    """Seconds from a logged time. float() also takes `nan`, `inf` and negatives, which no
    nginx writes and no record column can hold (active_s is NOT NULL): they raise."""
    seconds = float(text)
    if not 0.0 <= seconds < _INF:
        raise ValueError(f"{text!r} is not a duration")
    return seconds


class _TimeLocal:
    """`10/Oct/2000:13:55:36 -0700` to Unix time; the last stamp and each date+zone are cached
    (busy logs repeat the same second on many lines in a row)."""

    __slots__ = ("_bases", "_last", "_last_value")

    def __init__(self) -> None:
        self._bases: dict[str, int] = {}
        self._last = ""
        self._last_value = 0.0

    def __call__(self, s: str) -> float:
        if s == self._last:
            return self._last_value
        if len(s) != 26 or s[11] != ":" or s[20] != " ":
            raise ValueError(f"time {s!r} is not a $time_local")
        key = s[:11] + s[20:]
        base = self._bases.get(key)
        if base is None:
            try:
                month = MONTHS[s[3:6]]
            except KeyError:
                raise ValueError(f"time {s!r} has no month name") from None
            zone = s[21:26]
            zone_h, zone_m = int(zone[1:3]), int(zone[3:5])
            if zone[0] not in "+-" or not (0 <= zone_h < 24 and 0 <= zone_m < 60):
                raise ValueError(f"time {s!r} has no valid zone")
            offset = zone_h * 3600 + zone_m * 60
            if zone[0] == "-":
                offset = -offset
            # datetime() refuses a day its month does not have (timegm reads 31 Feb as 2 Mar).
            day = datetime(int(s[7:11]), month, int(s[0:2]))
            base = calendar.timegm(day.timetuple()) - offset
            if len(self._bases) > 4096:
                self._bases.clear()
            self._bases[key] = base
        hour, minute, second = int(s[12:14]), int(s[15:17]), int(s[18:20])
        if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 60):
            raise ValueError(f"time {s!r} has no valid time of day")
        value = float(base + hour * 3600 + minute * 60 + second)
        self._last = s
        self._last_value = value
        return value


def _time_iso(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


class NginxParser:
    """Lines of one nginx `log_format` to request rows; see the module docstring."""

    name = "nginx"
    columns = COLUMNS

    def __init__(self, log_format: str = DEFAULT_FORMAT, *, node: str = "ingest",
                 region_var: str | None = None, device_var: str | None = None,
                 regions: RegionTable | None = None) -> None:
        self.log_format = log_format
        self.pattern, self.groups = compile_format(log_format)
        self.node = node
        self.regions = regions
        groups = self.groups
        time_vars = [v for v in ("time_local", "time_iso8601", "msec") if v in groups]
        if not time_vars:
            raise ConfigError("log_format", log_format, "it logs no time",
                              "add $time_local, $time_iso8601 or $msec")
        if "status" not in groups:
            raise ConfigError("log_format", log_format, "it logs no $status", "add $status")
        for key, var in (("region_var", region_var), ("device_var", device_var)):
            if var is not None and var.lstrip("$") not in groups:
                raise ConfigError(key, var, "the log_format has no such variable",
                                  f"use one of {', '.join('$' + g for g in groups)}")
        self.region_var = region_var.lstrip("$") if region_var else None
        self.device_var = device_var.lstrip("$") if device_var else None
        self.time_var = time_vars[0]

    def start_file(self, source: str, first_line: int = 1) -> Callable[[str], Row | None]:
        g = self.groups
        match = self.pattern.match
        node = self.node

        def at(name: str) -> int:
            return g.get(name, -1)

        i_time, i_status = g[self.time_var], g["status"]
        i_rt = at("request_time")
        i_bytes = at("bytes_sent") if "bytes_sent" in g else at("body_bytes_sent")
        i_len, i_addr, i_ua = at("request_length"), at("remote_addr"), at("http_user_agent")
        i_conn, i_seq = at("connection"), at("connection_requests")
        i_uct, i_uht, i_up = (at("upstream_connect_time"), at("upstream_header_time"),
                              at("upstream_addr"))
        i_region = g[self.region_var] if self.region_var else -1
        i_device = g[self.device_var] if self.device_var else -1
        to_time: Callable[[str], float]
        if self.time_var == "time_local":
            to_time = _TimeLocal()
        elif self.time_var == "time_iso8601":
            to_time = _time_iso
        else:
            to_time = float
        regions = self.regions
        region_of = regions.region_of if regions is not None else None
        lineno = first_line - 1
        numbers = [(name, i) for name, i in g.items()
                   if name in ("status", "request_time", "bytes_sent", "body_bytes_sent",
                               "request_length", "connection_requests")]
        upstream_times = [(name, i) for name, i in g.items()
                          if name in ("upstream_connect_time", "upstream_header_time")]

        def diagnose(v: tuple[str, ...], error: ValueError) -> ValueError:
            """Off the fast path: which field of a matching line was bad."""
            try:
                if not 0.0 <= to_time(v[i_time]) < _INF:  # before 1970, or nan, inf
                    raise ValueError(v[i_time])
            except (ValueError, KeyError):
                return ValueError(f"${self.time_var} {v[i_time]!r} is not a valid time")
            for name, i in numbers:  # a negative one too: nginx writes none
                if not v[i].replace(".", "", 1).isdigit() and v[i] != "-":
                    return ValueError(f"${name} {v[i]!r} is not a number")
            for name, i in numbers:
                if v[i] != "-" and abs(float(v[i])) > INT64_MAX:
                    return ValueError(f"${name} {v[i]!r} is out of range")
            if not (v[i_status].isdigit() and STATUS_MIN <= int(v[i_status]) <= STATUS_MAX):
                return ValueError(f"$status {v[i_status]!r} is not an HTTP status "
                                  f"({STATUS_MIN} to {STATUS_MAX})")
            for name, i in upstream_times:
                try:
                    _seconds(v[i])
                except ValueError:
                    return ValueError(f"${name} {v[i]!r} is not a number")
            return ValueError(f"bad value: {error}")

        def parse(line: str) -> Row | None:
            nonlocal lineno
            lineno += 1
            m = match(line)
            if m is None:
                return None
            v = m.groups()
            try:  # free in CPython 3.11+ until something raises
                status = int(v[i_status])
                end = to_time(v[i_time])
                rt = float(v[i_rt]) if i_rt >= 0 and v[i_rt] != "-" else 0.0
                raw_bytes = v[i_bytes] if i_bytes >= 0 else "0"
                bytes_out = int(raw_bytes) if raw_bytes != "-" else 0
                bytes_in = int(v[i_len]) if i_len >= 0 and v[i_len] != "-" else 0
                seq = int(v[i_seq]) if i_seq >= 0 else None
                first_byte = _seconds(v[i_uht]) if i_uht >= 0 else None
                connect = _seconds(v[i_uct]) if i_uct >= 0 else None
                # float() takes nan, inf and negatives, int() negatives and any size, the
                # calendar's own checks are on the cached path: what no nginx logs raises.
                if not (0.0 <= rt < _INF and 0.0 <= end < _INF
                        and STATUS_MIN <= status <= STATUS_MAX
                        and 0 <= bytes_out <= INT64_MAX
                        and 0 <= bytes_in <= INT64_MAX
                        and (seq is None or 0 <= seq <= INT64_MAX)):
                    raise ValueError("out of range")
            except ValueError as exc:
                raise diagnose(v, exc) from None
            addr = v[i_addr] if i_addr >= 0 else ""
            if i_device >= 0:
                device = v[i_device]
            elif i_ua >= 0:
                device = device_of(v[i_ua])
            else:
                device = ""
            if i_region >= 0:
                region = v[i_region]
                if region == "-":
                    region = ""
            else:
                region = region_of(addr) if region_of is not None else ""
            useful = bytes_out > 0 and status not in USELESS
            return (
                v[i_conn] if i_conn >= 0 else str(lineno),
                node, source, "request",
                v[i_up] if i_up >= 0 and v[i_up] != "-" else "",
                end - rt, end, rt, bytes_in, bytes_out, 1, seq,
                1 if status >= 500 or status in ERRORS else 0,
                status, first_byte, connect,
                rt if useful else 0.0, 0.0 if useful else rt,
                addr, region, device,
            )

        return parse
