"""Load balancers behind one small interface: round robin and least outstanding with P2C.

Every balancer answers `pick(key, loads, available, weights=None) -> node | None`:

* `key` — the affinity key (used by `BoundedLoadRing` only; the others ignore it);
* `loads` — outstanding requests (or connections) per node; a missing node has 0;
* `available` — the nodes that may take work now (None: all of them); the others are skipped;
* `weights` — optional relative weights per node, e.g. a backend's slow-start ramp from
  `health.BackendHealth.weight`; a missing node has 1.0, a node of weight <= 0 is skipped.

None means no node is available. Nodes are names (strings); the balancers keep no reference to
the shell's backend objects.

`LeastOutstandingP2C` (the default) is the "power of two choices" of Mitzenmacher, as Envoy's
LEAST_REQUEST with its default choice_count of 2: draw two distinct available nodes at random
and take the one with fewer outstanding requests per unit of weight. It avoids both the herd of
plain least-loaded (every proxy picks the same idle node) and the blindness of round robin,
with O(1) work per pick. The random source is an explicit, seedable `random.Random`, so tests
and the simulator are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

from connwise.errors import ConfigError


class Balancer(Protocol):
    """What the gateway calls to choose a backend."""

    def pick(self, key: str | bytes, loads: Mapping[str, int],
             available: Collection[str] | None = None,
             weights: Mapping[str, float] | None = None) -> str | None: ...


def _nodes(nodes: Iterable[str], prefix: str) -> list[str]:
    result = list(nodes)
    for node in result:
        if not isinstance(node, str) or not node:
            raise ConfigError(f"{prefix}.nodes", node, "a node is a non-empty name",
                              "name each backend, e.g. '10.0.0.1:8080'")
    if len(set(result)) != len(result):
        raise ConfigError(f"{prefix}.nodes", result, "a node is listed twice",
                          "list each backend once")
    return result


class RoundRobin:
    """Each available node in turn; with weights, nginx's smooth weighted round robin."""

    __slots__ = ("_current", "_cursor", "nodes")

    def __init__(self, nodes: Iterable[str], *, prefix: str = "round_robin") -> None:
        self.nodes = _nodes(nodes, prefix)
        self._cursor = 0
        self._current: dict[str, float] = {}

    def set_nodes(self, nodes: Iterable[str]) -> None:
        self.nodes = _nodes(nodes, "round_robin")
        self._cursor = 0
        self._current.clear()

    def pick(self, key: str | bytes, loads: Mapping[str, int],
             available: Collection[str] | None = None,
             weights: Mapping[str, float] | None = None) -> str | None:
        nodes = self.nodes
        if weights is not None:
            return self._weighted(nodes, available, weights)
        size = len(nodes)
        cursor = self._cursor
        for step in range(size):
            node = nodes[(cursor + step) % size]
            if available is None or node in available:
                self._cursor = (cursor + step + 1) % size
                return node
        return None

    def _weighted(self, nodes: list[str], available: Collection[str] | None,
                  weights: Mapping[str, float]) -> str | None:
        # Smooth weighted round robin (nginx): every pick adds each weight to its node's
        # current value, takes the largest, and takes the total off it. Over a cycle each node
        # is picked in proportion to its weight, interleaved rather than in runs.
        current = self._current
        best: str | None = None
        best_value = 0.0
        total = 0.0
        for node in nodes:
            weight = weights.get(node, 1.0)
            if weight <= 0 or (available is not None and node not in available):
                continue
            value = current.get(node, 0.0) + weight
            current[node] = value
            total += weight
            if best is None or value > best_value:
                best, best_value = node, value
        if best is not None:
            current[best] = best_value - total
        return best

    def __repr__(self) -> str:
        return f"<RoundRobin {len(self.nodes)} nodes>"


class LeastOutstandingP2C:
    """Power of two choices on outstanding requests per unit of weight; see the module doc."""

    __slots__ = ("nodes", "rng")

    def __init__(self, nodes: Iterable[str], *, rng: random.Random | None = None,
                 seed: int | None = None, prefix: str = "p2c") -> None:
        self.nodes = _nodes(nodes, prefix)
        self.rng = rng if rng is not None else random.Random(seed)

    def set_nodes(self, nodes: Iterable[str]) -> None:
        self.nodes = _nodes(nodes, "p2c")

    def pick(self, key: str | bytes, loads: Mapping[str, int],
             available: Collection[str] | None = None,
             weights: Mapping[str, float] | None = None) -> str | None:
        nodes = self.nodes
        size = len(nodes)
        if size == 0:
            return None
        rng = self.rng
        if size >= 2:
            # Fast path, no allocation: two distinct nodes drawn from all; used when both may
            # take work (so the pair is uniform over the available pairs).
            i = rng.randrange(size)
            j = rng.randrange(size - 1)
            if j >= i:
                j += 1
            a, b = nodes[i], nodes[j]
            if available is None or (a in available and b in available):
                if weights is None:
                    return a if loads.get(a, 0) <= loads.get(b, 0) else b
                wa, wb = weights.get(a, 1.0), weights.get(b, 1.0)
                if wa > 0 and wb > 0:
                    return a if (loads.get(a, 0) + 1) * wb <= (loads.get(b, 0) + 1) * wa else b
        # Slow path: some nodes are out; choose among those that are in.
        candidates = [n for n in nodes if (available is None or n in available)
                      and (weights is None or weights.get(n, 1.0) > 0)]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        a, b = rng.sample(candidates, 2)
        if weights is None:
            return a if loads.get(a, 0) <= loads.get(b, 0) else b
        wa, wb = weights.get(a, 1.0), weights.get(b, 1.0)
        return a if (loads.get(a, 0) + 1) * wb <= (loads.get(b, 0) + 1) * wa else b

    def __repr__(self) -> str:
        return f"<LeastOutstandingP2C {len(self.nodes)} nodes>"
