"""Peer-to-peer pairing: budgets hold, nobody holds the whole model, same cluster first, clear refusals."""

from __future__ import annotations

import pytest

from atlas_pl.phases.allocation import allocate
from atlas_pl.phases.memory import GIB, MemorySettings, ModelArch, client_memory
from atlas_pl.phases.pairing import (
    SERVER,
    PairingError,
    PeerClient,
    Route,
    block_flops,
    device_memory,
    missing_blocks,
    pair,
    repair,
    segment_bytes,
)

from .test_allocation import _arch

QUICK = MemorySettings(batch_size=16, seq_len=64)
SEED_MIX = {"cpu_2gb": 2.0, "tablet_4gb": 4.0, "laptop_8gb": 8.0, "gpu_16gb": 16.0}
SPEEDS = {"cpu_2gb": 2.0e10, "tablet_4gb": 5.0e10, "laptop_8gb": 2.0e11, "gpu_16gb": 1.0e13}


def _clients(
    arch: ModelArch, devices: list[str], clusters: list[int], budgets: dict[str, int], max_split: int = 3
) -> list[PeerClient]:
    """Phase 2's plan for these devices, the splits capped so that peers have blocks left to host (with
    the default L - 1 every device keeps 5 of 6 blocks and nobody could take a last block)."""
    allocations = allocate(arch, devices, budgets, QUICK, max_split=max_split)
    return [
        PeerClient(
            k, a.device, c, a.split, a.ranks, a.memory.total, head_params=arch.hidden * 2 + 2, steps=25
        )
        for k, (a, c) in enumerate(zip(allocations, clusters))
    ]


def _equal(arch: ModelArch, n: int, split: int, device: str = "peer", cluster: int = 0) -> list[PeerClient]:
    ranks = {b: 8 for b in range(arch.num_layers)}
    own = client_memory(arch, split, ranks, QUICK).total
    return [PeerClient(k, device, cluster, split, ranks, own, 770, 25) for k in range(n)]


def _check(arch: ModelArch, clients: list[PeerClient], routes: list[Route], budgets: dict[str, int]) -> None:
    """Every rule that must hold of any pairing."""
    for client, route in zip(clients, routes):
        assert route.client == client.index
        blocks = [(s.start, s.stop) for s in route.segments]
        assert blocks[0][0] == client.split and blocks[-1][1] == arch.num_layers  # the whole server half
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))  # contiguous, in order
        assert [s.head for s in route.segments] == [False] * (len(blocks) - 1) + [True]
        assert client.index not in route.hosts  # nobody hosts itself
    memory = device_memory(arch, clients, routes, QUICK)
    for client in clients:
        assert memory[client.index]["total"] <= budgets[client.device], (client, memory[client.index])
        assert memory[client.index]["blocks_held"] < arch.num_layers


def test_seed_mix_pairs_within_clusters_and_budgets() -> None:
    arch = _arch("minilm_like")
    budgets = {d: int(gb * GIB) for d, gb in SEED_MIX.items()}
    devices = ["cpu_2gb", "tablet_4gb", "laptop_8gb", "gpu_16gb", "cpu_2gb", "laptop_8gb", "tablet_4gb"]
    devices += ["gpu_16gb", "cpu_2gb"]
    clusters = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    clients = _clients(arch, devices, clusters, budgets)
    routes = pair(arch, clients, budgets, SPEEDS, QUICK).routes
    _check(arch, clients, routes, budgets)
    for client, route in zip(clients, routes):
        assert route.fallback is None
        assert all(clusters[int(h)] == client.cluster for h in route.hosts)


def test_equal_splits_take_two_hops_each_peer_leaving_a_different_block() -> None:
    """A peer keeping [0, 2) cannot also run [2, 6) (it would hold every block): each leaves one block to
    the others (5, 4, 3 in index order), so every route takes two hops."""
    arch = _arch("minilm_like")
    clients = _equal(arch, 3, split=2)
    budgets = {"peer": 8 * GIB}
    routes = pair(arch, clients, budgets, {"peer": 1e10}, QUICK).routes
    _check(arch, clients, routes, budgets)
    assert missing_blocks(arch, clients) == {0: 5, 1: 4, 2: 3}
    # longest piece first, then whoever may end the route
    assert [[(s.host, s.start, s.stop) for s in r.segments] for r in routes] == [
        [(1, 2, 4), (2, 4, 6)],
        [(0, 2, 5), (2, 5, 6)],
        [(0, 2, 5), (1, 5, 6)],
    ]


def test_a_peer_short_of_room_takes_part_of_a_half_and_the_next_peer_the_rest() -> None:
    arch = _arch("minilm_like")
    clients = _equal(arch, 3, split=2, device="small")
    owner = clients[0]
    room = segment_bytes(arch, 2, 4, owner.ranks, QUICK, head_params=0, with_base=True)
    budgets = {"small": owner.own_bytes + room + 1}  # two server blocks beyond its own half, no more
    # the first route placed fills both peers; the others go to the server, allowed here
    routes = pair(arch, clients, budgets, {"small": 1e11}, QUICK, server_fallback=True).routes
    _check(arch, clients, routes, budgets)
    assert [(s.start, s.stop) for s in routes[0].segments] == [(2, 4), (4, 6)]


def test_a_singleton_cluster_falls_back_to_another_clusters_peers_then_the_server() -> None:
    arch = _arch("minilm_like")
    clients = _equal(arch, 4, split=2)
    clients[0] = PeerClient(0, "peer", 1, 2, clients[0].ranks, clients[0].own_bytes, 770, 25)  # alone
    budgets = {"peer": 8 * GIB}
    routes = pair(arch, clients, budgets, {"peer": 1e11}, QUICK).routes
    _check(arch, clients, routes, budgets)
    assert routes[0].fallback == "other_cluster" and set(routes[0].hosts) <= {1, 2, 3}
    assert all(r.fallback is None and 0 not in r.hosts for r in routes[1:])  # cluster 0 suffices
    alone = clients[:1]  # alone in the federation: nobody else to host it
    with pytest.raises(PairingError, match=r"no pairing for cluster 1: no peer can host block 2 of client 0"):
        pair(arch, alone, budgets, {"peer": 1e11}, QUICK)
    (route,) = pair(arch, alone, budgets, {"peer": 1e11}, QUICK, server_fallback=True).routes
    assert route.fallback == "server" and route.hosts == [SERVER] and route.segments[0].head


def test_scaled_budgets_leave_no_room_to_host_and_the_refusal_names_the_shortfall() -> None:
    """seed_mix_scaled fills each device with its own half (Phase 2 spends the whole budget on ranks)."""
    arch = _arch("minilm_like")
    budgets = {d: int(gb * GIB / 28) for d, gb in SEED_MIX.items()}
    clients = _clients(arch, ["cpu_2gb", "tablet_4gb", "laptop_8gb"], [0, 0, 0], budgets, max_split=5)
    with pytest.raises(PairingError) as err:
        pair(arch, clients, budgets, SPEEDS, QUICK)
    message = str(err.value)
    assert "cluster 0" in message and "shortfall" in message and "tablet_4gb" in message
    assert "topology.server_fallback=true" in message


def test_nobody_is_given_every_block() -> None:
    """Peers that keep L - 1 blocks each cannot host anyone's last block: refused, not overloaded."""
    arch = _arch("minilm_like")
    clients = _equal(arch, 3, split=arch.num_layers - 1)
    with pytest.raises(PairingError, match="clients \\[1, 2\\] leave block 5 to others"):
        pair(arch, clients, {"peer": 64 * GIB}, {"peer": 1e12}, QUICK)


def test_segment_prices_add_up() -> None:
    arch = _arch("minilm_like")
    ranks = {b: 8 for b in range(arch.num_layers)}
    wide = {b: 64 for b in range(arch.num_layers)}
    whole = segment_bytes(arch, 2, 6, ranks, QUICK, head_params=0, with_base=False)
    based = segment_bytes(arch, 2, 6, ranks, QUICK, head_params=0, with_base=True)
    assert based - whole == sum(arch.block_params[2:6]) * 4
    assert segment_bytes(arch, 2, 6, wide, QUICK, head_params=0, with_base=False) > whole
    assert segment_bytes(arch, 2, 6, ranks, QUICK, head_params=1000, with_base=False) == whole + 16_000
    assert (
        segment_bytes(arch, 2, 4, ranks, QUICK, head_params=1000, with_base=False) < whole
    )  # no head mid-route
    assert block_flops(arch, QUICK) == pytest.approx(4 * 16 * 64 * arch.block_params[0])
    with pytest.raises(ValueError, match="segment"):
        segment_bytes(arch, 0, 2, ranks, QUICK, head_params=0, with_base=False)


def test_clusters_of_one_pair_across_clusters_instead_of_all_leaving_the_last_block() -> None:
    """local_only puts every client in a cluster of its own: per-cluster spreading would make every
    device leave block L - 1 and nobody could end a route; the global spread pairs them."""
    arch = _arch("minilm_like")
    clients = [
        PeerClient(c.index, c.device, c.index, c.split, c.ranks, c.own_bytes, 770, 25)
        for c in _equal(arch, 4, 2)
    ]
    assert set(missing_blocks(arch, clients, "cluster").values()) == {5}
    pairing = pair(arch, clients, {"peer": 8 * GIB}, {"peer": 1e11}, QUICK)
    assert pairing.strategy == "global"
    assert all(r.fallback == "other_cluster" for r in pairing.routes)  # nobody shares a cluster
    _check(arch, clients, pairing.routes, {"peer": 8 * GIB})


def test_mixed_splits_find_the_pairing_one_fixed_rule_misses() -> None:
    """Splits (2, 2, 4) of 6: spreading per cluster makes clients 0 and 2 both leave block 5, and then
    nobody may end client 1's route; placing with the plain 'not every block' check finds one."""
    arch = _arch("minilm_like")
    ranks = {b: 8 for b in range(arch.num_layers)}
    clients = [
        PeerClient(k, "peer", 0, s, ranks, client_memory(arch, s, ranks, QUICK).total, 770, 25)
        for k, s in enumerate([2, 2, 4])
    ]
    pairing = pair(arch, clients, {"peer": 64 * GIB}, {"peer": 1e11}, QUICK)
    assert pairing.strategy != "cluster" and all(r.fallback is None for r in pairing.routes)
    _check(arch, clients, pairing.routes, {"peer": 64 * GIB})


def test_pairing_is_a_function_of_its_inputs() -> None:
    arch = _arch("minilm_like")
    budgets = {d: int(gb * GIB) for d, gb in SEED_MIX.items()}
    devices = ["cpu_2gb", "tablet_4gb", "laptop_8gb", "gpu_16gb"] * 2
    clients = _clients(arch, devices, [0, 0, 0, 0, 1, 1, 1, 1], budgets)
    first = [r.to_json() for r in pair(arch, clients, budgets, SPEEDS, QUICK).routes]
    again = [r.to_json() for r in pair(arch, list(clients), dict(budgets), dict(SPEEDS), QUICK).routes]
    assert first == again


# -- re-pairing around unavailable devices (faults) ---------------------------------------------------------
def _two_clusters(arch: ModelArch, per_cluster: int) -> list[PeerClient]:
    clients = _equal(arch, 2 * per_cluster, split=2)
    return [
        PeerClient(c.index, c.device, c.index // per_cluster, c.split, c.ranks, c.own_bytes, 770, 25)
        for c in clients
    ]


def _repaired(arch, clients, unavailable, **kw):
    budgets, speeds = {"peer": 8 * GIB}, {"peer": 1e11}
    first = pair(arch, clients, budgets, speeds, QUICK)
    fixed = repair(
        arch,
        clients,
        {r.client: r for r in first.routes},
        first.missing,
        budgets,
        speeds,
        QUICK,
        unavailable=set(unavailable),
        needing=[c.index for c in clients if c.index not in unavailable],  # the unavailable are absent
        server_fallback=kw.get("server_fallback", False),
    )
    return {r.client: r for r in first.routes}, fixed


def test_a_lost_host_s_guests_re_pair_within_their_cluster_and_other_routes_stay() -> None:
    arch = _arch("minilm_like")
    clients = _two_clusters(arch, 4)
    before, fixed = _repaired(arch, clients, {1})
    guests = {k for k, r in before.items() if 1 in r.hosts}
    assert guests and set(fixed.moved) == guests - {1}
    assert 1 not in fixed.routes  # absent: its half waits where it is
    assert all(kind == "cluster" for kind in fixed.moved.values()) and not fixed.unplaced
    for k, route in fixed.routes.items():
        assert 1 not in route.hosts
        if k not in fixed.moved:
            assert route == before[k]  # untouched routes do not move
        else:
            assert {clients[int(h)].cluster for h in route.hosts} == {clients[k].cluster}
    placed = [c for c in clients if c.index in fixed.routes]
    _check(arch, placed, [fixed.routes[c.index] for c in placed], {"peer": 8 * GIB})


def test_a_cluster_without_enough_peers_falls_back_to_another_cluster() -> None:
    arch = _arch("minilm_like")
    clients = _two_clusters(arch, 3)
    _, fixed = _repaired(arch, clients, {1, 2})  # client 0 is alone in cluster 0
    assert fixed.moved[0] == "other_cluster"
    assert {int(h) for h in fixed.routes[0].hosts} <= {3, 4, 5}


def test_a_client_nobody_can_host_sits_out_with_the_reason_or_goes_to_the_server() -> None:
    arch = _arch("minilm_like")
    clients = _two_clusters(arch, 2)
    _, fixed = _repaired(arch, clients, {1, 2, 3})  # client 0 is the only device left
    assert 0 in fixed.unplaced and "no peer can host block 2 of client 0" in fixed.unplaced[0]
    assert 0 not in fixed.routes
    _, served = _repaired(arch, clients, {1, 2, 3}, server_fallback=True)
    assert served.moved[0] == "server" and served.routes[0].hosts == [SERVER]


def test_random_pairing_ignores_clusters_but_keeps_every_rule() -> None:
    arch = _arch("minilm_like")
    clients = _two_clusters(arch, 4)
    budgets, speeds = {"peer": 8 * GIB}, {"peer": 1e11}
    ranked = pair(arch, clients, budgets, speeds, QUICK, policy="random", seed=3)
    _check(arch, clients, ranked.routes, budgets)
    assert any(r.fallback == "other_cluster" for r in ranked.routes)  # clusters are not preferred
    assert pair(arch, clients, budgets, speeds, QUICK, policy="random", seed=3) == ranked
    assert all(r.fallback is None for r in pair(arch, clients, budgets, speeds, QUICK).routes)
    with pytest.raises(ValueError, match="pairing policy 'nearest' unknown"):
        pair(arch, clients, budgets, speeds, QUICK, policy="nearest")
