"""The command line's times, durations and sizes: `--since 7d`, `--max-age 30d`, `--max-size
500MB`. Errors name the option and show a form that works."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

from connwise.errors import ConfigError

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
               "tb": 1000**4, "tib": 1024**4}


def parse_duration(value: str, *, key: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `36h`, `30d` or `2w`."""
    text = value.strip()
    try:
        if text and text[-1] in _DURATION_UNITS:
            seconds = float(text[:-1]) * _DURATION_UNITS[text[-1]]
        else:
            seconds = float(text)
        if not math.isfinite(seconds):  # float() takes nan, inf and 1e400
            raise ValueError(text)
    except ValueError:
        raise ConfigError(key, value, "not a duration", "use e.g. 30d, 12h, 15m or seconds") \
            from None
    if seconds < 0:
        raise ConfigError(key, value, "a duration cannot be negative", "use e.g. 30d")
    return seconds


def parse_time(value: str, *, key: str, now: float | None = None) -> float:
    """Unix seconds from Unix seconds, an ISO date or datetime (UTC unless it names a zone),
    or a duration back from now (`7d`)."""
    text = value.strip()
    if text and text[-1] in _DURATION_UNITS and text[:-1].replace(".", "", 1).isdigit():
        return (time.time() if now is None else now) - parse_duration(text, key=key)
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):  # float() takes nan and inf, which no window can use
            return seconds
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(key, value, "not a time", "use Unix seconds, an ISO date such as "
                          "2024-05-01T08:00, or a duration back from now such as 7d") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def parse_size(value: str, *, key: str) -> int:
    """Bytes from `1000000`, `500MB`, `2GiB`, ..."""
    m = _SIZE.fullmatch(value.strip())
    unit = (m.group(2) or "").lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ConfigError(key, value, "not a size", "use e.g. 500MB, 2GiB or 1000000")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])
