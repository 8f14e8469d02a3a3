"""Consistent hashing with bounded loads: stickiness, the bound, stability, weights."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connwise.core.affinity import MAX_RING_POINTS, BoundedLoadRing, ring_hash
from connwise.core.balance import Balancer
from connwise.errors import ConfigError

NODES = [f"10.0.0.{i}:80" for i in range(1, 6)]
KEYS = [f"user-{i}" for i in range(5000)]


def test_ring_positions_are_stable_across_processes() -> None:
    # A different hash function would move every key on a deploy: pin it.
    assert ring_hash("user-42") == ring_hash(b"user-42") == 8043651368623730598


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"balance_factor": 0.9}, "hash.balance_factor"),
    ({"balance_factor": math.nan}, "hash.balance_factor"),
    ({"vnodes": 0}, "hash.vnodes"),
    ({"weights": {NODES[0]: 0.0}}, f"hash.weights.{NODES[0]}"),
    ({"weights": {NODES[0]: math.inf}}, f"hash.weights.{NODES[0]}"),
])
def test_bad_configuration_names_its_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        BoundedLoadRing(NODES, **kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_a_node_needs_a_name() -> None:
    with pytest.raises(ConfigError):
        BoundedLoadRing(["a", ""])


def test_it_is_a_balancer() -> None:
    ring: Balancer = BoundedLoadRing(NODES)
    assert ring.pick("k", {}) in NODES


def test_an_unloaded_key_lands_on_its_owner_every_time() -> None:
    ring = BoundedLoadRing(NODES)
    for key in KEYS[:200]:
        owner = ring.owner(key)
        assert ring.pick(key, {}) == owner
        assert ring.pick(key.encode(), {}) == owner
        assert BoundedLoadRing(list(reversed(NODES))).owner(key) == owner   # order-free


def test_ownership_is_spread_evenly() -> None:
    ring = BoundedLoadRing(NODES)
    owned = Counter(ring.owner(key) for key in KEYS)
    assert set(owned) == set(NODES)
    mean = len(KEYS) / len(NODES)
    assert all(0.7 * mean <= count <= 1.3 * mean for count in owned.values()), owned


def test_a_full_owner_spills_to_the_next_node_along_the_ring_and_stays_sticky() -> None:
    ring = BoundedLoadRing(NODES, balance_factor=1.25)
    key = "hot-document"
    owner = ring.owner(key)
    assert owner is not None
    # 20 requests in flight, 12 on the owner: bound = ceil(1.25 * 21 / 5) = 6.
    loads = dict.fromkeys(NODES, 2)
    loads[owner] = 12
    assert ring.bound(owner, sum(loads.values())) == 6
    spill = ring.pick(key, loads)
    assert spill != owner
    assert spill is not None and loads[spill] < 6
    assert {ring.pick(key, loads) for _ in range(10)} == {spill}   # deterministic
    loads[owner] = 2                        # 10 in flight: bound ceil(1.25 * 11 / 5) = 3
    assert ring.pick(key, loads) == owner


def test_unavailable_nodes_are_skipped_and_the_bound_uses_the_available_ones() -> None:
    ring = BoundedLoadRing(NODES)
    key = "k"
    owner = ring.owner(key)
    assert owner is not None
    others = [n for n in NODES if n != owner]
    picked = ring.pick(key, {}, available=set(others))
    assert picked in others
    assert ring.pick(key, {}, available=set()) is None
    assert ring.pick(key, {}, available={"not-a-node"}) is None
    # Load on a node that is out does not count towards the total.
    assert ring.bound(others[0], 8, available=others[:2]) == math.ceil(1.25 * 9 / 2)


def test_an_empty_ring_picks_nothing() -> None:
    ring = BoundedLoadRing([])
    assert ring.pick("k", {}) is None
    assert ring.owner("k") is None


def test_adding_a_node_moves_about_one_nth_of_the_keys_and_only_to_it() -> None:
    ring = BoundedLoadRing(NODES)
    before = {key: ring.owner(key) for key in KEYS}
    ring.add("10.0.0.6:80")
    moved = {key for key in KEYS if ring.owner(key) != before[key]}
    assert {ring.owner(key) for key in moved} == {"10.0.0.6:80"}
    assert len(moved) / len(KEYS) == pytest.approx(1 / 6, abs=0.06)


def test_removing_a_node_moves_only_its_keys() -> None:
    ring = BoundedLoadRing(NODES)
    before = {key: ring.owner(key) for key in KEYS}
    ring.remove(NODES[2])
    ring.remove("never-there")
    for key in KEYS:
        if before[key] != NODES[2]:
            assert ring.owner(key) == before[key]
        else:
            assert ring.owner(key) != NODES[2]
    assert ring.nodes == [n for n in NODES if n != NODES[2]]


def test_weights_give_a_proportional_share_and_bound() -> None:
    ring = BoundedLoadRing(["a", "b"], weights={"a": 3.0})
    owned = Counter(ring.owner(key) for key in KEYS)
    assert owned["a"] / len(KEYS) == pytest.approx(0.75, abs=0.08)
    assert ring.bound("a", 99) == math.ceil(1.25 * 100 * 0.75)
    assert ring.bound("b", 99) == math.ceil(1.25 * 100 * 0.25)
    ring.add("b", weight=3.0)                                     # change a weight
    owned = Counter(ring.owner(key) for key in KEYS)
    assert owned["b"] / len(KEYS) == pytest.approx(0.5, abs=0.08)


def test_an_infinite_factor_is_plain_consistent_hashing() -> None:
    ring = BoundedLoadRing(NODES, balance_factor=math.inf)
    owner = ring.owner("k")
    assert owner is not None
    assert ring.pick("k", {owner: 10**6}) == owner
    assert ring.bound(owner, 10**6) == math.inf


def test_repr() -> None:
    assert repr(BoundedLoadRing(NODES, vnodes=10)) == \
        "<BoundedLoadRing 5 nodes x 10 vnodes, balance_factor 1.25>"


# -- the bound, as an invariant -----------------------------------------------------------------

events = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from(["hot", "warm", *[f"k{i}" for i in range(30)]])),
    st.tuples(st.just("done"), st.integers(0, 10**6)),
), min_size=1, max_size=150)


@settings(max_examples=200, deadline=None)
@given(events, st.sampled_from([1.0, 1.1, 1.25, 1.5, 2.0]), st.integers(1, 6),
       st.booleans(), st.sampled_from([None, 0.1, 0.55]))
def test_no_node_ever_takes_a_request_over_the_bound(ops: list[tuple[str, object]],
                                                     factor: float, n: int,
                                                     weighted: bool, ramp: float | None
                                                     ) -> None:
    nodes = [f"n{i}" for i in range(n)]
    weights = {node: 1.0 + i for i, node in enumerate(nodes)} if weighted else None
    ring = BoundedLoadRing(nodes, balance_factor=factor, vnodes=20, weights=weights)
    slow_start = {"n0": ramp} if ramp is not None else None   # n0 ramps up (health weight)
    effective = {node: w * (slow_start or {}).get(node, 1.0) for node, w in ring.weights.items()}
    wsum = sum(effective.values())
    loads = dict.fromkeys(nodes, 0)
    placed: list[str] = []
    only_added = True
    for op, arg in ops:
        if op == "add":
            total = sum(loads.values())
            node = ring.pick(str(arg), loads, None, slow_start)
            assert node is not None
            loads[node] += 1
            placed.append(node)
            share = effective[node] / wsum
            assert loads[node] <= math.ceil(round(factor * (total + 1) * share, 9))
            if only_added:   # with arrivals only, every node stays within the current bound
                total += 1
                for other in nodes:
                    share = effective[other] / wsum
                    assert loads[other] <= math.ceil(round(factor * total * share, 9))
        elif placed:
            assert isinstance(arg, int)
            loads[placed.pop(arg % len(placed))] -= 1
            only_added = False


def test_the_ring_size_is_bounded_whatever_the_weights() -> None:
    # A weight of 1e6 placed 1e8 points (gigabytes, minutes); weights are relative, so the
    # ring scales down to MAX_RING_POINTS and keeps their proportions.
    ring = BoundedLoadRing(["a", "b"], weights={"a": 1e6, "b": 2e6})
    owners = Counter(ring._owners)
    assert len(ring._owners) <= MAX_RING_POINTS
    assert 1.9 < owners["b"] / owners["a"] < 2.1
    small = BoundedLoadRing(["a", "b"], weights={"a": 1.0, "b": 2.0})
    assert Counter(small._owners) == {"a": 100, "b": 200}  # under the bound: unchanged


def test_a_backend_in_slow_start_takes_a_bounded_share_of_its_keys() -> None:
    # `weights` is the health's ramp (0.1 at the start of a slow start): the bound of a
    # ramping backend shrinks with its weight, so its keys spill along the ring to the others
    # while it warms up, and come back to it as it ramps.
    ring = BoundedLoadRing(NODES)
    cold = NODES[0]
    keys = [k for k in KEYS if ring.owner(k) == cold][:40]
    loads = dict.fromkeys(NODES, 10)
    ramp = {cold: 0.1}
    # bound(cold) = ceil(1.25 * 51 * 0.1 / 4.1) = 2: at a load of 10 it takes none of its keys.
    assert all(ring.pick(k, loads, None, ramp) != cold for k in keys)
    loads[cold] = 1
    assert all(ring.pick(k, loads, None, ramp) == cold for k in keys)
    loads[cold] = 10
    assert all(ring.pick(k, loads, None, {cold: 1.0}) == cold for k in keys)
