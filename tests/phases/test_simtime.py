"""Simulated time of a p2p round equals the hand computation of its model (DESIGN.md §10)."""

from __future__ import annotations

import pytest

from atlas_pl.phases.memory import MemorySettings
from atlas_pl.phases.pairing import SERVER, PeerClient, Route, Segment, block_flops
from atlas_pl.phases.simtime import round_time

from .test_allocation import _arch

SETTINGS = MemorySettings(batch_size=16, seq_len=64)


def test_two_clients_hosting_each_other_by_hand() -> None:
    arch = _arch("minilm_like")
    per_block = block_flops(arch, SETTINGS)
    ranks = {b: 8 for b in range(arch.num_layers)}
    clients = [PeerClient(0, "slow", 0, 2, ranks, 0, 770, 10), PeerClient(1, "fast", 0, 2, ranks, 0, 770, 10)]
    half = 4 * per_block * 10  # blocks [2, 6) for 10 steps
    routes = [Route(0, [Segment(1, 2, 6, True, 0, half)]), Route(1, [Segment(0, 2, 6, True, 0, half)])]
    speeds, links = {"slow": 1e10, "fast": 1e11}, {"slow": 1e6, "fast": 4e6}
    got = round_time(arch, SETTINGS, clients, routes, speeds, links, {0: 1000, 1: 3000})

    own = {0: 2 * per_block * 10 / 1e10, 1: 2 * per_block * 10 / 1e11}
    path = {0: own[0] + half / 1e11 + 1000 / 1e6, 1: own[1] + half / 1e10 + 3000 / 1e6}
    busy = {0: own[0] + half / 1e10, 1: own[1] + half / 1e11}
    assert got.clients == pytest.approx(path, rel=1e-12)
    assert got.devices == pytest.approx(busy, rel=1e-12)
    assert got.seconds == pytest.approx(max(*path.values(), *busy.values()), rel=1e-12)
    # the slow device, busy with its own half and all of client 1's server half, ends the round
    assert got.seconds == pytest.approx(busy[0], rel=1e-12) and busy[0] > max(path.values())


def test_a_fallback_server_is_not_timed_and_its_link_is_the_owners() -> None:
    arch = _arch("minilm_like")
    per_block = block_flops(arch, SETTINGS)
    ranks = {b: 8 for b in range(arch.num_layers)}
    clients = [PeerClient(0, "slow", 0, 2, ranks, 0, 770, 10)]
    routes = [Route(0, [Segment(SERVER, 2, 6, True, 0, 4 * per_block * 10)], "server")]
    got = round_time(arch, SETTINGS, clients, routes, {"slow": 1e10}, {"slow": 1e6}, {0: 2000})
    assert got.clients[0] == pytest.approx(2 * per_block * 10 / 1e10 + 2000 / 1e6, rel=1e-12)
