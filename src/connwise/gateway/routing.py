"""Routes of http listeners: first match by host, path prefix, method, headers and upgrade.

Routes are tried in configuration order, as nginx's and HAProxy's are easiest to reason about
when the most specific comes first. A request that matches none gets 404: the gateway never
proxies to a destination that is not in its configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from connwise.config import GatewayConfig, RouteConfig

if TYPE_CHECKING:
    from connwise.gateway.http import Exchange


@dataclass(frozen=True, slots=True)
class Route:
    group: str
    class_name: str
    host: str | None
    path_prefix: str
    methods: frozenset[bytes]
    headers: tuple[tuple[bytes, bytes], ...]
    upgrade: bool
    latency_sensitive: bool
    #: `path_prefix` is `/`, which every path but `*` (OPTIONS *) has: no `startswith` (~1,000
    #: instructions, as its arguments are parsed from a format string) for catch-all routes.
    any_path: bool

    @classmethod
    def from_config(cls, config: RouteConfig) -> Route:
        return cls(config.group, config.class_name,
                   config.host.lower() if config.host and config.host != "*" else None,
                   config.path_prefix, frozenset(m.upper().encode() for m in config.methods),
                   tuple((k.lower().encode(), v.encode()) for k, v in config.headers.items()),
                   config.upgrade is not None, config.latency_sensitive,
                   config.path_prefix == "/")

    def matches(self, ex: Exchange) -> bool:
        if self.host is not None and ex.host != self.host:
            return False
        if (ex.path == "*" if self.any_path  # every path starts with `/` but OPTIONS *'s
                else not ex.path.startswith(self.path_prefix)):
            return False
        if self.methods and ex.method not in self.methods:
            return False
        if self.upgrade and not ex.upgrade:
            return False
        # A loop, not all() over a generator: this runs for every route tried per request.
        for name, value in self.headers:  # noqa: SIM110 (all() + generator: 1.07 vs 0.43 us)
            if ex.header(name) != value:
                return False
        return True


class Router:
    """The routes of one listener, in order."""

    __slots__ = ("routes",)

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, ex: Exchange) -> Route | None:
        for route in self.routes:
            if route.matches(ex):
                return route
        return None


def build_routers(config: GatewayConfig) -> dict[str, Router]:
    routers = {lc.name: Router([]) for lc in config.listeners}
    for route in config.routes:
        routers[route.listener].routes.append(Route.from_config(route))
    return routers
