"""Client segments: the device from a User-Agent, the region from a CIDR table or a header.

Both are asked once per connection (or per log line), so both are cached: logs and real traffic
repeat a few thousand user agents and addresses over and over. The caches are bounded and simply
start over when full, which costs a few misses and never memory.

A CIDR table file has one `network region` pair per line (`10.20.0.0/16 eu-west`), `#`
comments and blank lines; the most specific network that holds an address wins.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from connwise.errors import ConfigError

#: Entries kept per cache before it starts over.
CACHE_LIMIT = 65_536

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
    def from_file(cls, path: str | Path) -> RegionTable:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("regions", str(path), f"the CIDR table cannot be read "
                              f"({exc.strerror or exc})", "check the path") from exc
        table = cls(source=str(path))
        for number, text_line in enumerate(text.splitlines(), start=1):
            line = text_line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ConfigError(f"regions ({path}:{number})", line, "a line must hold a "
                                  "network and a region", "write e.g. '10.20.0.0/16 eu-west'")
            table.add(parts[0], parts[1], where=f"{path}:{number}")
        return table

    def add(self, cidr: str, region: str, *, where: str = "regions") -> None:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"regions ({where})", cidr, f"not a network ({exc})",
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
