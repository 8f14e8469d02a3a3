"""Client segments: the device from a User-Agent, the region from a CIDR table or a header.

Both are asked once per connection (or per log line), so both are cached: logs and real traffic
repeat a few thousand user agents and addresses over and over. The caches are bounded and simply
start over when full, which costs a few misses and never memory.

`ClientSegments` is the gateway's side: `[telemetry] regions`, `region_header` and
`device_header` say where a client connection's region and device come from, and each record
gets them once, the region from the table as the connection opens and the headers at its first
request. Header values come from clients: they are cut to `MAX_SEGMENT` characters, so a
hostile client cannot make a record carry a large value.

A CIDR table file has one `network region` pair per line (`10.20.0.0/16 eu-west`), `#`
comments and blank lines; the most specific network that holds an address wins.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from connwise.errors import ConfigError

if TYPE_CHECKING:
    from connwise.config import TelemetrySection
    from connwise.telemetry.record import ConnRecord

#: Entries kept per cache before it starts over.
CACHE_LIMIT = 65_536
#: The config key of the gateway's CIDR table, which its errors name.
REGIONS_KEY = "telemetry.regions"
#: Longest User-Agent cached (real ones are 100-300 characters): a client sending long
#: random agents must not fill the cache with kilobytes each.
MAX_CACHED_AGENT = 512
#: Characters kept of a region or device named by a client's header.
MAX_SEGMENT = 64

_BOTS = ("bot", "crawl", "spider", "slurp", "curl/", "wget/", "python-requests", "httpclient",
         "go-http-client", "okhttp/", "java/", "monitor", "probe", "headless")
_TABLETS = ("ipad", "tablet", "kindle", "silk/", "playbook")
_MOBILES = ("mobi", "iphone", "ipod", "android", "blackberry", "opera mini", "windows phone",
            "iemobile")
_DESKTOPS = ("windows nt", "macintosh", "x11", "cros", "linux x86_64")

_device_cache: dict[str, str] = {}


def device_of(user_agent: str) -> str:
    """`bot`, `tablet`, `mobile`, `desktop` or `other` (also for an empty or `-` agent)."""
    device = _device_cache.get(user_agent)
    if device is not None:
        return device
    ua = user_agent.lower()
    if not ua or ua == "-":
        device = "other"
    elif any(s in ua for s in _BOTS):
        device = "bot"
    elif any(s in ua for s in _TABLETS) or ("android" in ua and "mobile" not in ua):
        device = "tablet"
    elif any(s in ua for s in _MOBILES):
        device = "mobile"
    elif any(s in ua for s in _DESKTOPS):
        device = "desktop"
    else:
        device = "other"
    if len(user_agent) <= MAX_CACHED_AGENT:
        if len(_device_cache) >= CACHE_LIMIT:
            _device_cache.clear()
        _device_cache[user_agent] = device
    return device


class RegionTable:
    """CIDR networks to region names; `region_of(address)` is the most specific match."""

    def __init__(self, entries: list[tuple[str, str]] | None = None, *,
                 source: str = "regions") -> None:
        # Per IP version: prefix length -> {network address >> host bits: region}.
        self._nets: dict[int, dict[int, dict[int, str]]] = {4: {}, 6: {}}
        self._cache: dict[str, str] = {}
        for number, (cidr, region) in enumerate(entries or [], start=1):
            self.add(cidr, region, where=f"{source} entry {number}")

    @classmethod
    def from_file(cls, path: str | Path, *, key: str = "regions") -> RegionTable:
        """The table in file `path`; errors name `key` (the option or config key that gave
        the path) and the file's line."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(key, str(path), f"the CIDR table cannot be read "
                              f"({exc.strerror or exc})", "check the path") from exc
        table = cls(source=str(path))
        for number, text_line in enumerate(text.splitlines(), start=1):
            line = text_line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"{key} ({path}:{number})", line, "a line must hold a "
                                  "network and a region", "write e.g. '10.20.0.0/16 eu-west'")
            table.add(parts[0], parts[1], where=f"{path}:{number}", key=key)
        return table

    def add(self, cidr: str, region: str, *, where: str = "regions", key: str = "regions") -> None:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{key} ({where})", cidr, f"not a network ({exc})",
                              "write a CIDR such as '10.20.0.0/16' or '2001:db8::/32'") from exc

        host_bits = net.max_prefixlen - net.prefixlen
        by_len = self._nets[net.version].setdefault(net.prefixlen, {})
        by_len[int(net.network_address) >> host_bits] = region
        self._cache.clear()

    def __len__(self) -> int:
        return sum(len(m) for nets in self._nets.values() for m in nets.values())

    def region_of(self, address: str) -> str:
        """The region of `address`, or "" if no network holds it or it is not an address."""
        region = self._cache.get(address)
        if region is not None:
            return region
        region = ""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is not None:
            value = int(ip)
            bits = ip.max_prefixlen
            nets = self._nets[ip.version]
            for prefix in sorted(nets, reverse=True):
                found = nets[prefix].get(value >> (bits - prefix))
                if found is not None:
                    region = found
                    break
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()
        self._cache[address] = region
        return region


class ClientSegments:
    """Where a gateway client connection's `region` and `device` come from.

    The region: `region_header` when the request carries it (a CDN's or load balancer's viewer
    country, say), else the most specific network of the `regions` table that holds the client's
    address, else "". The device: `device_header`'s value when the request carries it (a client
    hint, an app's own header), else the class of the User-Agent (`device_of`), "other" without
    one. A `tcp` listener has no headers: its records get the table's region only.
    """

    __slots__ = ("_device_header", "_raw_devices", "_region_header", "regions")

    def __init__(self, regions: RegionTable | None = None, *, region_header: str | None = None,
                 device_header: str | None = None) -> None:
        self.regions = regions
        self._region_header = region_header.lower().encode("latin-1") if region_header else None
        self._device_header = device_header.lower().encode("latin-1") if device_header else None
        #: `device_of` by the User-Agent's raw bytes, as the parser hands them over.
        self._raw_devices: dict[bytes, str] = {}

    @classmethod
    def from_config(cls, section: TelemetrySection) -> ClientSegments:
        """From the `[telemetry]` section; reads its table file (ConfigError naming
        `telemetry.regions` and the line if it is bad)."""
        regions = section.regions
        table = RegionTable.from_file(regions, key=REGIONS_KEY) if regions else None
        return cls(table, region_header=section.region_header,
                   device_header=section.device_header)

    def region_of_address(self, address: str) -> str:
        """The table's region of `address`; "" without a table."""
        regions = self.regions
        return regions.region_of(address) if regions is not None else ""

    def fill(self, rec: ConnRecord, headers: Sequence[tuple[bytes, bytes]]) -> None:
        """Set `rec.region` and `rec.device` from the first request's `headers` (raw names
        and values, as parsed); the region from the address stays where no header names one.
        Without region and device headers (the default) only the User-Agent is looked for,
        and its device is cached by the raw value: this runs once per client connection."""
        region_header = self._region_header
        device_header = self._device_header
        if region_header is None and device_header is None:
            for name, value in headers:
                if len(name) == _UA_LENGTH and name.lower() == b"user-agent":
                    # The cache's hit without the call `_device_of_raw` is (~500 instructions).
                    known = self._raw_devices.get(value)
                    rec.device = known if known is not None else self._device_of_raw(value)
                    return
            rec.device = "other"
            return
        user_agent = b""
        device = b""
        for name, value in headers:
            lower = name.lower()
            if lower == b"user-agent":
                user_agent = value
            elif lower == device_header and value:
                device = value
            elif lower == region_header and value:
                rec.region = _segment(value)
        if device:
            rec.device = _segment(device).lower()
        else:
            rec.device = self._device_of_raw(user_agent)

    def _device_of_raw(self, user_agent: bytes) -> str:
        cache = self._raw_devices
        device = cache.get(user_agent)
        if device is None:
            device = device_of(user_agent.decode("latin-1"))
            if len(user_agent) <= MAX_CACHED_AGENT:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[user_agent] = device
        return device


_UA_LENGTH = len(b"user-agent")


def _segment(value: bytes) -> str:
    return value[:MAX_SEGMENT].decode("latin-1").strip()
