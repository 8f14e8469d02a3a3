"""Round robin and least-outstanding P2C behind the common `pick` interface."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from connwise.core.balance import Balancer, LeastOutstandingP2C, RoundRobin
from connwise.errors import ConfigError

NODES = ["a", "b", "c", "d"]


@pytest.mark.parametrize("factory", [RoundRobin, LeastOutstandingP2C])
def test_nodes_are_validated(factory: type[RoundRobin] | type[LeastOutstandingP2C]) -> None:
    with pytest.raises(ConfigError):
        factory(["a", "a"])
    with pytest.raises(ConfigError):
        factory(["a", ""])


@pytest.mark.parametrize("balancer", [RoundRobin(NODES), LeastOutstandingP2C(NODES, seed=1)])
def test_common_interface_skips_unavailable_nodes(balancer: Balancer) -> None:
    for _ in range(50):
        assert balancer.pick("k", {}, {"b", "d"}) in {"b", "d"}
    assert balancer.pick("k", {}, {"c"}) == "c"
    assert balancer.pick("k", {}, set()) is None
    assert balancer.pick("k", {}, {"zz"}) is None


@pytest.mark.parametrize("balancer", [RoundRobin([]), LeastOutstandingP2C([])])
def test_no_nodes_no_pick(balancer: Balancer) -> None:
    assert balancer.pick("k", {}) is None


# -- round robin --------------------------------------------------------------------------------


def test_round_robin_takes_each_node_in_turn() -> None:
    rr = RoundRobin(NODES)
    assert [rr.pick("", {}) for _ in range(8)] == NODES * 2


def test_round_robin_goes_on_after_the_node_it_skipped() -> None:
    rr = RoundRobin(NODES)
    available = {"a", "c", "d"}
    assert [rr.pick("", {}, available) for _ in range(6)] == ["a", "c", "d", "a", "c", "d"]
    assert [rr.pick("", {}) for _ in range(2)] == ["a", "b"]


def test_round_robin_ignores_keys_and_loads() -> None:
    rr = RoundRobin(NODES)
    assert [rr.pick(k, {"a": 100}) for k in "xyzw"] == NODES


def test_smooth_weighted_round_robin_interleaves_by_weight() -> None:
    rr = RoundRobin(["a", "b", "c"])
    weights = {"a": 5.0, "b": 1.0, "c": 1.0}
    picks = [rr.pick("", {}, None, weights) for _ in range(7)]
    assert picks == ["a", "a", "b", "a", "c", "a", "a"]     # nginx's example sequence
    assert Counter(rr.pick("", {}, None, weights) for _ in range(700)) == \
        {"a": 500, "b": 100, "c": 100}


def test_weighted_round_robin_skips_zero_weights_and_unavailable_nodes() -> None:
    rr = RoundRobin(["a", "b", "c"])
    picks = {rr.pick("", {}, {"a", "b"}, {"a": 0.0, "b": 1.0}) for _ in range(10)}
    assert picks == {"b"}
    assert rr.pick("", {}, {"a"}, {"a": 0.0}) is None


def test_set_nodes_restarts_the_cycle() -> None:
    rr = RoundRobin(NODES)
    rr.pick("", {})
    rr.set_nodes(["x", "y"])
    assert [rr.pick("", {}) for _ in range(3)] == ["x", "y", "x"]
    assert repr(rr) == "<RoundRobin 2 nodes>"


# -- least outstanding, power of two choices ----------------------------------------------------


def test_p2c_is_reproducible_with_a_seed() -> None:
    first = LeastOutstandingP2C(NODES, seed=7)
    second = LeastOutstandingP2C(NODES, rng=random.Random(7))
    assert [first.pick("", {}) for _ in range(50)] == [second.pick("", {}) for _ in range(50)]


def test_p2c_never_picks_the_most_loaded_node() -> None:
    p2c = LeastOutstandingP2C(NODES, seed=3)
    loads = {"a": 9, "b": 1, "c": 2, "d": 3}
    picks = Counter(p2c.pick("", loads) for _ in range(2000))
    assert picks["a"] == 0
    # b wins every pair it is in: 3 of the 6 pairs.
    assert picks["b"] / 2000 == pytest.approx(0.5, abs=0.05)
    # d wins only against a: 1 pair of 6.
    assert picks["d"] / 2000 == pytest.approx(1 / 6, abs=0.04)


def test_p2c_with_unavailable_nodes_still_compares_two() -> None:
    p2c = LeastOutstandingP2C(NODES, seed=3)
    loads = {"a": 0, "b": 5, "c": 9, "d": 0}
    picks = Counter(p2c.pick("", loads, {"b", "c"}) for _ in range(200))
    assert picks == {"b": 200}


def test_p2c_weights_favour_full_weight_over_slow_start() -> None:
    p2c = LeastOutstandingP2C(["warm", "cold"], seed=1)
    weights = {"cold": 0.1}
    # Equal load: (0 + 1) / 1.0 beats (0 + 1) / 0.1.
    assert {p2c.pick("", {}, None, weights) for _ in range(20)} == {"warm"}
    # The warm one takes about 10x the load before the cold one wins.
    assert p2c.pick("", {"warm": 8, "cold": 0}, None, weights) == "warm"
    assert p2c.pick("", {"warm": 10, "cold": 0}, None, weights) == "cold"
    # Zero weight is out, like unavailable.
    assert {p2c.pick("", {}, None, {"warm": 0.0}) for _ in range(20)} == {"cold"}


def test_p2c_set_nodes_and_repr() -> None:
    p2c = LeastOutstandingP2C(NODES, seed=1)
    p2c.set_nodes(["x"])
    assert p2c.pick("", {}) == "x"
    assert repr(p2c) == "<LeastOutstandingP2C 1 nodes>"


def _spread(seed: int, choose: str) -> int:
    nodes = [f"n{i}" for i in range(5)]
    p2c = LeastOutstandingP2C(nodes, seed=seed)
    rng = random.Random(seed)
    loads = dict.fromkeys(nodes, 0)
    in_flight: list[str] = []
    for _ in range(400):
        node = p2c.pick("", loads) if choose == "p2c" else rng.choice(nodes)
        assert node is not None
        loads[node] += 1
        in_flight.append(node)
        if rng.random() < 0.45:                 # a random request in flight finishes
            loads[in_flight.pop(rng.randrange(len(in_flight)))] -= 1
    return max(loads.values()) - min(loads.values())


def test_p2c_keeps_the_load_spread_far_tighter_than_random_choice() -> None:
    p2c = [_spread(seed, "p2c") for seed in range(30)]
    blind = [_spread(seed, "random") for seed in range(30)]
    assert sum(p2c) * 3 < sum(blind)
    assert max(p2c) <= 15
