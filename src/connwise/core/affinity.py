"""Consistent hashing with bounded loads: affinity that never piles onto one backend.

Theory of operation
-------------------
Plain consistent hashing sends every request with the same key (a user, a document, a client IP)
to the same backend, and moves only about 1/n of the keys when a backend joins or leaves. Its
weakness is hot keys: one popular key can overload its backend while others idle. Mirrokni,
Thorup and Zadimoghaddam ("Consistent Hashing with Bounded Loads", 2017) fix it with a cap:
each backend may hold at most

    bound = ceil(balance_factor * (total_load + 1) / n)

where total_load is the load on the n available backends and the +1 counts the request being
placed. A key goes to the first backend clockwise from its hash (its *owner*) that is under the
bound, so it lands on its owner unless the owner is full, and then on the next backends along
the ring — the same ones every time, so the spill-over is itself sticky. Since the bounds add up
to more than the total load whenever balance_factor >= 1, some backend is always under its
bound, and no backend ever takes a request that puts it over `bound` (tested).

HAProxy (`hash-balance-factor`, a percentage; contributed by Vimeo, which described running it
in production) and Envoy (`hash_balance_factor`, also a percentage) implement the same idea;
our `balance_factor` is their value / 100 and defaults to 1.25: no backend more than 25% above
the mean load, while most keys stay on their owner.

Each backend is placed at `vnodes` points on the ring (times its weight, if weights are given),
so ownership is spread evenly; with weights the bound becomes
`ceil(balance_factor * (total_load + 1) * w / W)`. The weights `pick` is given (a backend's
slow-start ramp) scale `w` in the bound only, not the ring, so a ramping backend keeps its keys
on the ring and spills those past its small share to the next backends, the same ones every
time. Ring positions are the first 8 bytes of a BLAKE2b hash, stable across processes and runs
(Python's `hash()` is salted per process).
`math.inf` as the balance factor disables the bound (plain consistent hashing).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Collection, Iterable, Mapping
from hashlib import blake2b

from connwise.errors import ConfigError

#: Points per backend on the ring: enough for an even spread of ownership; 10 backends make a
#: ring of 1000 points (Envoy ring_hash's default minimum_ring_size is 1024).
DEFAULT_VNODES = 100
#: At most this many points on the ring (as Envoy's maximum_ring_size): weights are relative,
#: so a ring of `vnodes x weight` points past it is scaled down, proportions kept. A weight
#: of 1e6 otherwise places 1e8 points (gigabytes); 2**20 points build in about 5 s.
MAX_RING_POINTS = 1 << 20


def ring_hash(data: str | bytes) -> int:
    """A stable 64-bit position on the ring."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return int.from_bytes(blake2b(raw, digest_size=8).digest(), "big")


class BoundedLoadRing:
    """A consistent-hash ring whose `pick` respects the bounded-load cap."""

    __slots__ = ("_hashes", "_owners", "balance_factor", "vnodes", "weights")

    def __init__(self, nodes: Iterable[str], balance_factor: float = 1.25,
                 vnodes: int = DEFAULT_VNODES, weights: Mapping[str, float] | None = None,
                 *, prefix: str = "hash") -> None:
        if not (balance_factor >= 1.0):
            raise ConfigError(f"{prefix}.balance_factor", balance_factor, "the factor must be "
                              "at least 1 (1.25 allows 25% above the mean load)",
                              "use e.g. 1.25, or math.inf for no bound")
        if not isinstance(vnodes, int) or vnodes < 1:
            raise ConfigError(f"{prefix}.vnodes", vnodes, "each backend needs a point on the "
                              "ring", "use e.g. 100")
        self.balance_factor = balance_factor
        self.vnodes = vnodes
        self.weights: dict[str, float] = {}
        weights = weights or {}
        for node in nodes:
            self._check_node(node, weights.get(node, 1.0), prefix)
            self.weights[node] = float(weights.get(node, 1.0))
        self._hashes: list[int] = []
        self._owners: list[str] = []
        self._build()

    @staticmethod
    def _check_node(node: str, weight: float, prefix: str) -> None:
        if not isinstance(node, str) or not node:
            raise ConfigError(f"{prefix}.nodes", node, "a node is a non-empty name",
                              "name each backend, e.g. '10.0.0.1:8080'")
        if not 0 < weight < math.inf:
            raise ConfigError(f"{prefix}.weights.{node}", weight, "a weight is positive and "
                              "finite", "use e.g. 1.0")

    def _build(self) -> None:
        points: list[tuple[int, str]] = []
        per_weight = float(self.vnodes)
        wanted = per_weight * sum(self.weights.values())
        if wanted > MAX_RING_POINTS:
            per_weight *= MAX_RING_POINTS / wanted
        for node, weight in self.weights.items():
            for i in range(max(1, round(per_weight * weight))):
                points.append((ring_hash(f"{node}#{i}"), node))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [n for _, n in points]

    # -- membership ---------------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return list(self.weights)

    def add(self, node: str, weight: float = 1.0) -> None:
        """Add a backend (or change its weight); about 1/n of the keys move to it."""
        self._check_node(node, weight, "hash")
        self.weights[node] = float(weight)
        self._build()

    def remove(self, node: str) -> None:
        """Remove a backend; only the keys it owned move."""
        if self.weights.pop(node, None) is not None:
            self._build()

    # -- lookup -------------------------------------------------------------------------------

    def owner(self, key: str | bytes) -> str | None:
        """The node owning `key` on the ring, ignoring loads and availability."""
        if not self._hashes:
            return None
        i = bisect_right(self._hashes, ring_hash(key))
        return self._owners[i % len(self._owners)]

    def bound(self, node: str, total_load: int, available: Collection[str] | None = None
              ) -> float:
        """The most load `node` may carry after taking one more request."""
        if self.balance_factor == math.inf:
            return math.inf
        nodes = self.weights if available is None else \
            [n for n in self.weights if n in available]
        wsum = sum(self.weights[n] for n in nodes)
        share = self.weights[node] / wsum
        return math.ceil(round(self.balance_factor * (total_load + 1) * share, 9))

    def pick(self, key: str | bytes, loads: Mapping[str, int],
             available: Collection[str] | None = None,
             weights: Mapping[str, float] | None = None) -> str | None:
        """The node for `key`: its owner if under the bound, else the next one along the ring
        that is. Skips nodes not in `available` (None: all are). `weights` scales the ring's
        weights in the bound, not the ring itself (so no key moves for it): a backend in slow
        start (weight 0.1 and up) spills its keys along the ring once it carries its small
        share, and takes them back as it ramps up. A node of weight <= 0 is skipped."""
        hashes = self._hashes
        if not hashes:
            return None
        my_weights = self.weights
        total = 0
        wsum = 0.0
        for node, ring_weight in my_weights.items():
            if available is None or node in available:
                weight = ring_weight if weights is None else ring_weight * weights.get(node, 1.0)
                if weight <= 0:
                    continue
                total += loads.get(node, 0)
                wsum += weight
        if wsum <= 0.0:
            return None
        factor = self.balance_factor
        scale = factor * (total + 1) / wsum
        owners = self._owners
        size = len(owners)
        start = bisect_right(hashes, ring_hash(key))
        for step in range(size):
            node = owners[(start + step) % size]
            if available is not None and node not in available:
                continue
            weight = my_weights[node]
            if weights is not None:
                weight *= weights.get(node, 1.0)
                if weight <= 0:
                    continue
            if factor == math.inf:
                return node
            if loads.get(node, 0) < math.ceil(round(scale * weight, 9)):
                return node
        return None  # unreachable while balance_factor >= 1: some node is under its bound

    def __repr__(self) -> str:
        return (f"<BoundedLoadRing {len(self.weights)} nodes x {self.vnodes} vnodes, "
                f"balance_factor {self.balance_factor:g}>")
