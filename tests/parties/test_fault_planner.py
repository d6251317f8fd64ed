"""The coordinator's round plans under faults (parties/faults.py), on constructed clients: who re-pairs,
who sits out and comes back, what moves and what is lost."""

from __future__ import annotations

from dataclasses import replace

from atlas_pl.parties.faults import FaultPlanner, TimeModel
from atlas_pl.parties.link import COORDINATOR
from atlas_pl.phases.memory import GIB
from atlas_pl.phases.pairing import pair
from atlas_pl.settings import FaultSettings, TopologySettings

from ..federation.test_federation import _cfg
from ..phases.test_pairing import QUICK, _arch, _two_clusters


def _planner(tmp_path, drop: float) -> tuple[FaultPlanner, list[int]]:
    from atlas_pl.settings import build_settings

    settings = build_settings(_cfg(tmp_path))
    settings = replace(settings, topology=TopologySettings(name="p2p"), faults=FaultSettings(drop=drop))
    arch = _arch("minilm_like")
    clients = _two_clusters(arch, 3)
    budgets, speeds = {"peer": 8 * GIB}, {"peer": 1e11}
    first = pair(arch, clients, budgets, speeds, QUICK)
    time = TimeModel(arch, QUICK, clients, speeds, {"peer": 1e7})
    planner = FaultPlanner(settings, time, {r.client: r for r in first.routes}, first.missing, budgets)
    return planner, [c.index for c in clients]


def test_clients_sit_out_come_back_and_only_absent_hosts_lose_blocks(tmp_path) -> None:
    planner, clients = _planner(tmp_path, drop=0.6)
    sat_out = rejoined = 0
    for round_index in range(1, 16):
        keepers = {k: dict(h) for k, h in planner.holders.items()}
        plan = planner.plan(round_index, clients)
        absent = set(plan.faults.absent)
        assert set(plan.routes) == set(plan.training)  # routes for those who train, nobody else
        assert not set(plan.unplaced) & absent  # an absent client is never placed (nor "sits out")
        for t in plan.transfers:
            if t.lost:  # only blocks an absent host kept are lost, and they go back to the coordinator
                assert t.destination == COORDINATOR
                assert all(keepers[t.client][b] in absent for b in t.blocks)
            else:
                assert t.client in plan.routes
        for k, route in plan.routes.items():  # after the moves, each block is kept by its host
            assert all(
                planner.holders[k][b] == s.host for s in route.segments for b in range(s.start, s.stop)
            )
            assert not absent & {h for h in route.hosts if isinstance(h, int)}
        sat_out += len(plan.unplaced)
        rejoined += sum(k in plan.training for k in clients if k in planner.routes)
    assert (
        sat_out > 0 and rejoined > 0
    )  # the case the planner once crashed on: a client back after sitting out


def test_without_faults_nothing_moves(tmp_path) -> None:
    planner, clients = _planner(tmp_path, drop=0.0)
    before = dict(planner.routes)
    for round_index in range(1, 4):
        plan = planner.plan(round_index, clients)
        assert plan.transfers == [] and plan.moved == {} and plan.routes == before
