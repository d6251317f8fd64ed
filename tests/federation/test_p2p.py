"""topology=p2p: server halves on routes of peers; the same maths as topology=server, other accounting."""

from __future__ import annotations

import json

import pytest

from atlas_pl.parties.link import SERVER

from .test_federation import _cfg

# the smoke mix at 4x its budgets: p2p leaves half of each device for hosting (allocation.host_reserve)
P2P = ("topology=p2p", "devices.scale=0.0022222222", "fed.rounds=2")
# the same allocation under topology=server: the reserve and the split cap p2p implies, spelled out
SERVER_SAME = (
    "devices.scale=0.0022222222",
    "fed.rounds=2",
    "allocation.host_reserve=0.5",
    "allocation.max_split=2",
)
CLIENT_KEYS = (
    "split",
    "ranks",
    "accuracy",
    "primary",
    "loss",
    "train_loss",
    "upload_bytes",
    "download_bytes",
)


def _clients(records: list[dict]) -> list[dict]:
    return [{cid: {k: c.get(k) for k in CLIENT_KEYS} for cid, c in r["clients"].items()} for r in records]


def _assert_p2p_equals_server(smoke_run, ablation: str) -> None:
    p2p = smoke_run(f"ablation={ablation}", *P2P)
    server = smoke_run(f"ablation={ablation}", *SERVER_SAME)
    assert _clients(p2p.records()) == _clients(server.records())  # bitwise: only who computes differs
    assert not (server.dir / "pairing.json").exists()


def test_p2p_without_faults_writes_the_same_metrics_as_server_atlas(smoke_run) -> None:
    _assert_p2p_equals_server(smoke_run, "atlas")


@pytest.mark.integration
@pytest.mark.parametrize(
    "ablation", ["local_only", "fedavg", "fedavg_cluster", "splitlora", "hsplitlora", "hetlora"]
)
def test_p2p_without_faults_writes_the_same_metrics_as_server(smoke_run, ablation) -> None:
    _assert_p2p_equals_server(smoke_run, ablation)


def test_pairing_json_keeps_every_device_within_budget_and_short_of_the_whole_model(smoke_run) -> None:
    run = smoke_run("ablation=atlas", *P2P)
    pairing = json.loads((run.dir / "pairing.json").read_text())
    allocation = json.loads((run.dir / "allocation.json").read_text())
    layers = pairing["num_layers"]
    clusters = {d["client"]: d["cluster"] for d in pairing["devices"]}
    assert pairing["topology"] == "p2p" and len(pairing["routes"]) == len(allocation["clients"])
    for route, entry in zip(pairing["routes"], allocation["clients"]):
        blocks = [tuple(s["blocks"]) for s in route["segments"]]
        assert blocks[0][0] == entry["split"] and blocks[-1][1] == layers
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        hosts = [s["host"] for s in route["segments"]]
        assert route["client"] not in hosts and SERVER not in hosts
        # with 2 server blocks, 3 peers of a cluster cannot each leave one block to others and still
        # cover every route: some routes borrow another cluster's peer, and say so
        off = any(clusters[h] != clusters[route["client"]] for h in hosts)
        assert route["fallback"] == ("other_cluster" if off else None)
    assert sum(r["fallback"] is None for r in pairing["routes"]) >= len(pairing["routes"]) // 2
    for device in pairing["devices"]:
        assert device["total"] <= device["budget_bytes"]
        assert device["blocks_held"] < layers
        assert device["own_half"] + device["hosted"] + device["hosted_base"] == device["total"]


def test_every_hop_of_a_route_carries_the_clients_boundary_tensors(smoke_run) -> None:
    """Peer-to-peer traffic: (hops - 1) further copies of each client's activations and gradients;
    what a client itself sends and receives is what it does under topology=server."""
    run = smoke_run("ablation=atlas", *P2P)
    pairing = json.loads((run.dir / "pairing.json").read_text())
    ledger = run.result.ledger.to_json()
    hops = {r["client"]: len(r["segments"]) for r in pairing["routes"]}
    for kind, direction in (("activations", 1), ("activation_grads", 2)):
        own = {}
        for _, src, dst, k, size in ledger:
            end = (src, dst)[direction - 1]
            if k == kind and end.startswith("client/"):
                own[int(end.split("/")[1])] = own.get(int(end.split("/")[1]), 0) + size
        relayed = sum(
            size
            for _, src, dst, k, size in ledger
            if k == kind and src.startswith("peer/") and dst.startswith("peer/")
        )
        assert relayed == sum((hops[c] - 1) * own[c] for c in own) > 0
    # every byte of every (source, destination) is in the totals: clients' own, relayed between peers, or
    # server-half adapters between hosts and the coordinator at aggregation
    totals = json.loads((run.dir / "summary.json").read_text())["totals"]
    kinds = ("upload_bytes", "download_bytes", "relay_bytes", "server_adapter_bytes", "moved_bytes")
    assert sum(row[-1] for row in ledger) == sum(totals[k] for k in kinds)
    assert totals["server_adapter_bytes"] > 0 and totals["moved_bytes"] == 0


def test_p2p_refusals_name_the_setting(tmp_path) -> None:
    with pytest.raises(
        ValueError, match=r"devices.profiles.cpu_2gb.flops=None is invalid; valid: a positive number"
    ):
        _cfg(tmp_path, "topology=p2p", "devices.profiles.cpu_2gb.flops=null")
    with pytest.raises(ValueError, match="topology.name='mesh' is invalid; valid: server, p2p"):
        _cfg(tmp_path, "topology.name=mesh")
    with pytest.raises(ValueError, match="no halves"):
        _cfg(tmp_path, "topology=p2p", "ablation=centralized")
    with pytest.raises(
        ValueError, match=r"allocation.split=3 is invalid; valid: at most 2 under topology=p2p"
    ):
        _cfg(tmp_path, "topology=p2p", "allocation.split=3")
    with pytest.raises(ValueError, match="allocation.host_reserve"):
        _cfg(tmp_path, "allocation.host_reserve=1.5")


def test_batched_clients_are_refused_under_p2p(tmp_path) -> None:
    with pytest.raises(ValueError, match="false with topology=p2p"):
        _cfg(tmp_path, "topology=p2p", "trainer.batched_clients=true")


@pytest.mark.integration
def test_a_p2p_job_extended_by_resume_keeps_its_routes_and_metrics(smoke_run, tmp_path) -> None:
    from atlas_pl.run import run_job

    one_round = [o for o in P2P if not o.startswith("fed.rounds")]
    run_job(_cfg(tmp_path, "ablation=atlas", *one_round, "fed.rounds=1"))
    routes = json.loads((tmp_path / "pairing.json").read_text())["routes"]
    run_job(_cfg(tmp_path, "ablation=atlas", *one_round, "fed.rounds=2", "resume=true"))
    straight = smoke_run("ablation=atlas", *P2P)
    extended = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert _clients(extended) == _clients(straight.records())
    assert json.loads((tmp_path / "pairing.json").read_text())["routes"] == routes
    assert json.loads((straight.dir / "pairing.json").read_text())["routes"] == routes


def test_both_topologies_record_simulated_time(smoke_run) -> None:
    p2p = smoke_run("ablation=atlas", *P2P).records()
    server = smoke_run("ablation=atlas", *SERVER_SAME).records()
    assert all(r["sim_seconds"] > 0 for r in p2p)
    assert p2p[1]["cumulative_sim_seconds"] == pytest.approx(p2p[0]["sim_seconds"] + p2p[1]["sim_seconds"])
    for record in p2p:
        paths = [c["sim_seconds"] for c in record["clients"].values()]
        assert all(p > 0 for p in paths) and max(paths) <= record["sim_seconds"]
    # the same clients, the same work: under topology=server the server's profile times the top halves
    # (one after another), under p2p the peers do, so the two differ but both are priced
    assert all(r["sim_seconds"] > 0 for r in server)
    assert [r["sim_seconds"] for r in server] != [r["sim_seconds"] for r in p2p]
