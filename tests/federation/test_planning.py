"""Phase 2 wired into a run: budgets bind, built adapters have the allocated ranks, outputs record it."""

from __future__ import annotations

import json

import pytest
import torch

from atlas_pl.config_validation import ConfigError, validate_config
from atlas_pl.phases.allocation import InfeasibleClientError
from atlas_pl.phases.memory import MemorySettings, ModelArch, client_memory
from atlas_pl.run import run_job

from .test_federation import _cfg, _records


def _allocation(path) -> dict:
    return json.loads((path / "allocation.json").read_text())


def _built(model) -> tuple[int, list[int]]:
    """Split and per-block ranks read from the parameters themselves (A is [rank, in])."""
    ranks: dict[int, int] = {}
    for half in (model.client.adapter, model.server.adapter):
        for key in half.keys:
            a, b = half.pair(key)
            assert a.shape[0] == b.shape[1]
            assert ranks.setdefault(key[0], a.shape[0]) == a.shape[0]  # one rank per block
    blocks = {key[0] for key in model.client.adapter.keys}
    return len(blocks), [ranks[b] for b in sorted(ranks)]


def test_built_adapters_have_the_allocated_ranks_and_budgets_bind(smoke_run) -> None:
    run = smoke_run("ablation=fedavg_cluster", "fed.rounds=1")
    tmp_path, fed = run.dir, run.fed
    allocation = _allocation(tmp_path)
    record = run.records()[0]
    arch = ModelArch.from_backbone(fed.backbone)
    clusters = json.loads((tmp_path / "clustering.json").read_text())["labels"]
    by_device_cluster: dict[tuple[str, int], list[int]] = {}
    for k, (entry, model) in enumerate(zip(allocation["clients"], fed.models)):
        split, ranks = _built(model)
        assert (split, ranks) == (entry["split"], entry["ranks"])
        assert (entry["built_split"], entry["built_ranks"]) == (split, ranks)
        assert (record["clients"][str(k)]["split"], record["clients"][str(k)]["ranks"]) == (split, ranks)
        # the recorded memory is the model's, at what was built, and fits the device
        memory = client_memory(arch, split, dict(enumerate(ranks)), _settings(allocation))
        assert entry["memory"]["total"] == memory.total <= entry["budget_bytes"]
        assert entry["budget_bytes"] == allocation["devices"]["budgets_bytes"][entry["device"]]
        assert entry["adapter_bytes"] == sum(p.numel() * 4 for p in model.client.adapter.parameters())
        by_device_cluster.setdefault((entry["device"], clusters[k]), ranks)
        assert by_device_cluster[(entry["device"], clusters[k])] == ranks  # same device and cluster: same
    # smoke's scaled mix binds: weaker devices keep fewer blocks and lower ranks
    per_device = {e["device"]: (e["split"], e["rank_star"]) for e in allocation["clients"]}
    assert per_device["cpu_2gb"] < per_device["tablet_4gb"] < per_device["laptop_8gb"]
    assert len({e["split"] for e in allocation["clients"]}) == 3
    assert len({tuple(e["ranks"]) for e in allocation["clients"]}) >= 3
    assert allocation["importance_source"] == "cluster" and allocation["mode"] == "importance"


def _settings(allocation: dict) -> MemorySettings:
    return MemorySettings(**allocation["settings"])  # allocation.json records exactly the fields


def test_importance_shapes_ranks_within_a_budget(tmp_path, capture_models, monkeypatch) -> None:
    """A steep importance profile gives the important blocks more rank, on every device."""
    from atlas_pl.lightning.orchestrator import FederatedOrchestrator

    real = FederatedOrchestrator.measure_importance

    def steep(self, round_index):
        imp = real(self, round_index)
        imp[:] = [0.05, 0.15, 0.3, 0.5]  # block 3 matters most, block 0 least
        return imp

    monkeypatch.setattr(FederatedOrchestrator, "measure_importance", steep)
    run_job(_cfg(tmp_path, "ablation=fedavg", "fed.rounds=1", "devices.scale=1.0"))
    for entry in _allocation(tmp_path)["clients"]:
        ranks = entry["ranks"]
        assert ranks == sorted(ranks) and ranks[0] < ranks[-1], ranks
    # global importance: every client has the same profile, and with ample budgets the same ranks
    assert len({tuple(e["ranks"]) for e in _allocation(tmp_path)["clients"]}) == 1


def test_heterogeneous_ranks_in_a_cluster_share_one_dw_up_to_their_rank(smoke_run) -> None:
    """After stack aggregation each client holds the best rank-r_k approximation of the cluster's dW."""
    run = smoke_run("ablation=fedavg_cluster", "fed.rounds=1")
    fed = run.fed
    labels = json.loads((run.dir / "clustering.json").read_text())["labels"]
    members = [k for k in range(len(labels)) if labels[k] == labels[0]]
    ranks = {k: fed.models[k].ranks for k in members}
    assert len({tuple(r.values()) for r in ranks.values()}) > 1  # the cluster really is heterogeneous
    deltas = {k: fed.models[k].deltas() for k in members}
    for key in deltas[members[0]]:
        low = min(ranks[k][key[0]] for k in members)
        reference = None
        for k in members:
            u, s, vh = torch.linalg.svd(deltas[k][key].double())
            truncated = (u[:, :low] * s[:low]) @ vh[:low]
            if reference is None:
                reference = truncated
            scale = reference.norm().clamp_min(1e-12)
            assert float((truncated - reference).norm() / scale) < 1e-4, (key, k)


def test_uniform_mode_gives_one_rank_and_skips_the_importance_pass(tmp_path, capture_models) -> None:
    run_job(_cfg(tmp_path, "ablation=fedavg", "fed.rounds=1", "allocation.mode=uniform"))
    allocation = _allocation(tmp_path)
    ranks = {r for e in allocation["clients"] for r in e["ranks"]}
    assert len(ranks) == 1 and allocation["importance_source"] is None
    # the weakest device sets the rank everyone gets; splits still follow the devices
    assert len({e["split"] for e in allocation["clients"]}) == 3
    result = capture_models["result"]
    assert all("importance" not in result.ledger.by_kind(1, k)["upload"] for k in range(9))
    assert [b for m in capture_models["fed"].models for b in _built(m)[1]] == [ranks.pop()] * 36


def test_fixed_mode_uses_the_configured_split_and_rank(tmp_path, capture_models) -> None:
    run_job(_cfg(tmp_path, "ablation=local_only", "fed.rounds=1", "allocation.mode=fixed", "lora.rank=3"))
    assert all(_built(m) == (2, [3, 3, 3, 3]) for m in capture_models["fed"].models)


def test_infeasible_device_is_named_before_any_fingerprinting(tmp_path, monkeypatch) -> None:
    from atlas_pl.parties.client import ClientParty

    def never(*args, **kwargs):
        raise AssertionError("Phase 1 ran before the infeasible device was reported")

    monkeypatch.setattr(ClientParty, "fingerprint_gradients", never)
    with pytest.raises(InfeasibleClientError) as info:
        run_job(_cfg(tmp_path, "ablation=fedavg_cluster", "devices.profiles.cpu_2gb.memory_gb=1.0"))
    message = str(info.value)
    assert "cpu_2gb" in message and "short by" in message and "drop_infeasible" in message
    assert not (tmp_path / "metrics.jsonl").exists()


def test_drop_infeasible_drops_the_client_and_runs_the_others(tmp_path, capture_models) -> None:
    run_job(
        _cfg(
            tmp_path,
            "ablation=fedavg",
            "fed.rounds=2",
            "devices.profiles.cpu_2gb.memory_gb=1.0",
            "allocation.drop_infeasible=true",
        )
    )
    allocation = _allocation(tmp_path)
    dropped = [e["client"] for e in allocation["clients"] if e["dropped"]]
    assert dropped and all(e["device"] == "cpu_2gb" for e in allocation["clients"] if e["dropped"])
    assert all(e["shortfall_bytes"] > 0 for e in allocation["clients"] if e["dropped"])
    records = _records(tmp_path)
    for record in records:
        for cid in dropped:
            entry = record["clients"][str(cid)]
            assert entry["dropped"] and entry["accuracy"] is None and entry["primary"] is None
            # it sent nothing but what Phase 1 asked of everyone before the drop
            assert entry["upload_bytes"] == (record["round"] == 1) * 4 * 4
        kept = [c for c in record["clients"].values() if not c["dropped"]]
        assert record["upload_bytes"] == sum(c["upload_bytes"] for c in record["clients"].values())
        assert record["mean_accuracy"] == pytest.approx(sum(c["accuracy"] for c in kept) / len(kept))
    trainers = capture_models["result"].trainers
    assert all(trainers[k].current_epoch == 0 for k in dropped)


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ("allocation.mode=exact", "allocation.mode", "importance, uniform, fixed"),
        ("allocation.split=9", "allocation.split", "auto or an integer in 1..3"),
        ("allocation.uniform_rank=0", "allocation.uniform_rank", ">= 1"),
        ("allocation.rank_candidates=[4,-8]", "allocation.rank_candidates", "positive integer"),
        ("ablation.importance=local", "ablation.importance", "cluster, global"),
        ("devices.scale=0", "devices.scale", "> 0"),
        ("devices.mix=[cpu_2gb,phone]", "devices.mix", "cpu_2gb"),
    ],
)
def test_bad_phase2_config_is_named(tmp_path, override, key, valid) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(_cfg_unvalidated(tmp_path, override))
    message = str(info.value)
    assert key in message and valid in message, message


def _cfg_unvalidated(tmp_path, *overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ..conftest import REPO_ROOT

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=smoke", "logger=none", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(tmp_path)
    return cfg
