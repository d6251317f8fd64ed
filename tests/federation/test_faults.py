"""Faults (conf/faults): absent clients keep their state, lost hosts are re-paired, deadlines bite, and a
job under faults is as deterministic and resumable as one without."""

from __future__ import annotations

import json

import pytest
import torch

from atlas_pl.tracking.checkpoint import load_checkpoint, round_dir

from .test_federation import _cfg
from .test_p2p import P2P
from .test_resume import KILLER as KILL_IN_ROUND_2
from .test_resume import _cli, _metrics

FLAKY = (*[o for o in P2P if not o.startswith("fed.rounds")], "fed.rounds=5", "faults.drop=0.3")


def _tensors(run_dir, round_index: int, prefix: str) -> dict[str, torch.Tensor]:
    state = load_checkpoint(round_dir(run_dir / "checkpoints", round_index)).tensors
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration
def test_absent_clients_keep_everything_they_hold_and_rejoin(smoke_run) -> None:
    run = smoke_run("ablation=fedavg_cluster", *FLAKY, "checkpoint.keep=0")
    records = run.records()
    assert [r["round"] for r in records] == [1, 2, 3, 4, 5]
    absent = {r["round"]: r["faults"]["absent_clients"] for r in records}
    assert sum(map(len, absent.values())) >= 5  # 9 clients x 5 rounds at 0.3
    checked = 0
    for r in range(2, 6):
        for k in absent[r]:
            entry = records[r - 1]["clients"][str(k)]
            assert entry["absent"] and entry["train_seconds"] == 0.0 and entry["upload_bytes"] == 0
            # its client half and the client half's optimizer moments: exactly as after the round before
            # (nothing was sent to it while away, and nothing was reset)
            for prefix in (f"model/{k}/client.", f"optim/{k}/0/"):
                assert _equal(_tensors(run.dir, r, prefix), _tensors(run.dir, r - 1, prefix)), (r, k, prefix)
            checked += 1
        for k in absent[r - 1]:
            entry = records[r - 1]["clients"][str(k)]
            if k not in absent[r]:  # back: it trained again, unless no device could host it (the reason said)
                assert entry["train_seconds"] > 0 or "no peer can host" in entry["sat_out"]
    assert checked >= 3
    # a lost host's guests moved; their bytes are counted, and every byte is in the totals
    moves = [t for r in records for t in r["faults"]["moved"].values()]
    assert moves and set(moves) <= {"cluster", "other_cluster", "server"}
    ledger = run.result.ledger.to_json()
    totals = json.loads((run.dir / "summary.json").read_text())["totals"]
    kinds = ("upload_bytes", "download_bytes", "relay_bytes", "server_adapter_bytes", "moved_bytes")
    assert sum(row[-1] for row in ledger) == sum(totals[k] for k in kinds)
    assert totals["moved_bytes"] > 0
    # every device within its budget on every round's routes, none holding all blocks: pairing.json is
    # Phase 2's; the rounds' routes are recorded per client as hosts
    for record in records:
        for cid, entry in record["clients"].items():
            if not entry.get("absent") and not entry.get("sat_out"):
                assert entry["hosts"] and f"peer/{cid}" not in entry["hosts"]


def test_bad_fault_settings_are_refused_before_anything_loads(tmp_path) -> None:
    bad = {
        "faults.drop=1.0": r"faults.drop=1.0 is invalid; valid: a number in \[0, 1\)",
        "faults.drop=-0.2": "faults.drop=-0.2 is invalid",
        "faults.deadline=0": "faults.deadline=0 is invalid; valid: null, a number of simulated seconds > 0",
        "faults.deadline=soon": "faults.deadline='soon' is invalid",
        "faults.deadline=-2x": "faults.deadline='-2x' is invalid",
        "faults.late=never": "faults.late='never' is invalid; valid: leave_out, partial",
        "faults.slowdown=[0.5,2]": r"faults.slowdown=\[0.5, 2.0\] is invalid",
        "pairing.name=nearest": "pairing.name='nearest' is invalid; valid: cluster, random",
    }
    for override, message in bad.items():
        with pytest.raises(ValueError, match=message):
            _cfg(tmp_path, override)
    with pytest.raises(ValueError, match=r"devices.profiles.cpu_2gb.flops=None is invalid.*under faults"):
        _cfg(tmp_path, "faults.straggle=0.2", "devices.profiles.cpu_2gb.flops=null")
    with pytest.raises(ValueError, match="topology.server.flops=None is invalid"):
        _cfg(tmp_path, "faults.deadline=2x", "topology.server.flops=null")
    with pytest.raises(ValueError, match="no clients to lose"):
        _cfg(tmp_path, "faults.drop=0.1", "ablation=centralized")


def test_a_mix_where_no_pairing_exists_is_refused_before_anything_loads(tmp_path) -> None:
    """Phones only: each holds its own block but none has room for a peer's next block."""
    from atlas_pl.phases.pairing import PairingError
    from atlas_pl.preflight import preflight
    from atlas_pl.settings import build_settings

    cfg = _cfg(tmp_path, "topology=p2p", "devices.mix=[cpu_2gb]", "devices.scale=0.0011")
    with pytest.raises(PairingError, match=r"no pairing for cluster 0: no peer can host block 1 of client 0"):
        preflight(build_settings(cfg))
    preflight(build_settings(_cfg(tmp_path, *P2P)))  # the smoke p2p mix pairs


@pytest.mark.integration
def test_late_clients_are_left_out_of_the_aggregation_or_train_what_fits(smoke_run) -> None:
    timed = (*P2P, "faults.straggle=0.5", "faults.deadline=1.0x")
    left = smoke_run("ablation=fedavg_cluster", *timed)
    last = left.records()[-1]
    late = set(last["faults"]["late_clients"])
    assert late and all(last["clients"][str(k)]["late"] for k in late)
    assert last["sim_seconds"] == pytest.approx(last["faults"]["deadline_seconds"])
    # cluster averaging gives every on-time member the same adapter; a late member keeps its own
    parties = left.result.parties
    for k in late:
        mates = [
            p
            for p in parties
            if p.index != k
            and p.index not in late
            and last["clients"][str(p.index)]["cluster"] == last["clients"][str(k)]["cluster"]
            and not last["clients"][str(p.index)].get("absent")
        ]
        if not mates:
            continue
        mine = [t.detach() for t in parties[k].half.adapter.parameters()]
        theirs = [t.detach() for t in mates[0].half.adapter.parameters()]
        assert not all(torch.equal(a, b) for a, b in zip(mine, theirs))
    partial = smoke_run("ablation=fedavg_cluster", *timed, "faults.late=partial").records()
    steps = {k: n for r in partial for k, n in r["faults"]["partial_steps"].items()}
    assert steps and all(0 < n < 13 for n in steps.values())  # 200 examples / batch 16 = 13 steps


# the resume tests' killer, at the second step of whichever client trains first in round 3 (a fixed client
# may be absent then)
KILLER = KILL_IN_ROUND_2.replace(
    "self.trainer.current_epoch == 1 and self.client_id == 1 and batch_idx == 1",
    "self.trainer.current_epoch == 2 and batch_idx == 1",
)


@pytest.mark.integration
def test_kill_9_mid_run_under_faults_then_resume_gives_identical_metrics(tmp_path) -> None:
    assert KILLER != KILL_IN_ROUND_2
    overrides = ["+experiment=smoke", "ablation=atlas", "logger=csv", *FLAKY, "fed.rounds=4"]
    overrides += ["faults.straggle=0.3", "faults.deadline=1.5x"]
    straight = _cli(tmp_path, tmp_path / "straight", *overrides)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _cli(tmp_path, tmp_path / "killed", *overrides, script=KILLER)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _cli(tmp_path, tmp_path / "killed", *overrides, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "continuing at round 3" in resumed.stdout + resumed.stderr
    ours = _metrics(tmp_path / "killed")
    assert ours == _metrics(tmp_path / "straight")
    assert any(r["faults"]["absent_clients"] for r in ours) and any(r["faults"]["moved"] for r in ours)


@pytest.mark.integration
def test_faults_act_under_topology_server_too_and_random_pairing_runs(smoke_run) -> None:
    server = smoke_run("ablation=fedavg_cluster", "fed.rounds=3", "faults.drop=0.3").records()
    assert any(r["faults"]["absent_clients"] for r in server)
    assert all("hosts" not in c for r in server for c in r["clients"].values())
    random = smoke_run("ablation=fedavg_cluster", *P2P, "pairing=random")
    cluster = smoke_run("ablation=fedavg_cluster", *P2P)
    routes = [json.loads((r.dir / "pairing.json").read_text())["routes"] for r in (random, cluster)]
    assert routes[0] != routes[1]
    assert any(r["fallback"] == "other_cluster" for r in routes[0])
