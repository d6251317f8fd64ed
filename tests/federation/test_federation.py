"""The federation loop: aggregation acts, local training stays local, bytes are exact, outputs complete."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import atlas_pl.__main__  # noqa: F401  (registers the atlas_root resolver)
from atlas_pl.config_validation import validate_config
from atlas_pl.lightning.modules import ServerModule
from atlas_pl.run import run_job

from ..conftest import REPO_ROOT


def _cfg(tmp_path, *overrides: str):
    """The smoke job with these overrides; `fedavg` unless they name an ablation.

    These tests were written against fedavg (smoke's ablation before ATLAS became every job's default), and
    the flagship's Phase 1 and personalization on every one of them would cost the fast tier ~30 s."""
    named = any(o.startswith("ablation=") for o in overrides)
    base = ["+experiment=smoke", "logger=none", *([] if named else ["ablation=fedavg"])]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*base, *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(tmp_path)  # paths.cache_dir: the session's shared cache (tests/conftest.py)
    validate_config(cfg)
    return cfg


def _records(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("heads", ["local", "group"])
def test_fedavg_leaves_equal_rank_clients_with_one_adapter(tmp_path, capture_models, heads) -> None:
    run_job(
        _cfg(
            tmp_path,
            "ablation=fedavg",
            "fed.rounds=1",
            f"ablation.head_aggregation={heads}",
            "allocation.mode=fixed",
        )
    )
    models = capture_models["fed"].models
    reference = models[0].deltas()
    assert any(torch.count_nonzero(d) > 0 for d in reference.values())  # it trained, then aggregated
    for model in models[1:]:
        for key, delta in model.deltas().items():
            assert torch.equal(delta, reference[key]), key
        same_head = all(
            torch.equal(p, q)
            for p, q in zip(model.server.head.parameters(), models[0].server.head.parameters())
        )
        assert same_head == (heads == "group")


def test_local_only_keeps_clients_apart_and_differs_from_fedavg(smoke_run) -> None:
    local_run = smoke_run("ablation=local_only", "fed.rounds=2")
    models = local_run.fed.models
    first = models[0].deltas()
    for model in models[1:]:
        assert any(not torch.equal(d, first[k]) for k, d in model.deltas().items())
    local, fedavg = local_run.records(), smoke_run("ablation=fedavg", "fed.rounds=2", "logger=csv").records()
    # round 1 training is identical (same seed, same batches); aggregation is what separates them
    assert [c["train_loss"] for c in local[0]["clients"].values()] == [
        c["train_loss"] for c in fedavg[0]["clients"].values()
    ]
    assert [c["loss"] for c in local[-1]["clients"].values()] != [
        c["loss"] for c in fedavg[-1]["clients"].values()
    ]
    assert all(c["upload_bytes"] > 0 for c in local[0]["clients"].values())
    # fedavg additionally ships adapters both ways
    assert fedavg[0]["upload_bytes"] > local[0]["upload_bytes"]


def test_bytes_equal_the_tensors_actually_sent(tmp_path, monkeypatch, capture_models) -> None:
    sent: dict[int, int] = {}
    received: dict[int, int] = {}
    real_process = ServerModule.process
    owner: dict[int, int] = {}

    def spy(self, hidden, attention_mask, labels):
        loss, grad = real_process(self, hidden, attention_mask, labels)
        k = owner[id(self)]
        sent[k] = sent.get(k, 0) + sum(t.numel() * t.element_size() for t in (hidden, attention_mask, labels))
        received[k] = received.get(k, 0) + grad.numel() * grad.element_size()
        return loss, grad

    real_init = ServerModule.__init__

    def init_spy(self, half, **kwargs):
        real_init(self, half, **kwargs)
        owner[id(self)] = len(owner)

    monkeypatch.setattr(ServerModule, "process", spy)
    monkeypatch.setattr(ServerModule, "__init__", init_spy)
    cfg = _cfg(tmp_path, "ablation=fedavg", "fed.rounds=1")
    run_job(cfg)
    record = _records(tmp_path)[0]
    fed = capture_models["fed"]
    for k, model in enumerate(fed.models):
        # the client-half adapter goes up and comes back once per aggregation, fp32
        adapter = sum(
            (model.ranks[b] * (h.in_features + h.out_features)) * 4
            for (b, _), h in fed.backbone.hosts.items()
            if b < model.split
        )
        entry = record["clients"][str(k)]
        importance = fed.backbone.num_layers * 4  # Phase 2's input, one fp32 per block, before round 1
        assert entry["upload_bytes"] == sent[k] + adapter + importance
        assert entry["download_bytes"] == received[k] + adapter
    assert record["upload_bytes"] == sum(c["upload_bytes"] for c in record["clients"].values())


def test_round_records_and_summary_have_every_field(smoke_run) -> None:
    run = smoke_run("ablation=fedavg", "fed.rounds=2", "logger=csv")
    value, tmp_path = run.value, run.dir
    records = run.records()
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        for key in (
            "round",
            "clients",
            "mean_accuracy",
            "worst_accuracy",
            "std_accuracy",
            "per_task",
            "round_seconds",
            "orchestration_seconds",
        ):
            assert key in record, key
        assert len(record["clients"]) == 9
        for entry in record["clients"].values():
            for key in (
                "task",
                "cluster",
                "device",
                "split",
                "ranks",
                "accuracy",
                "primary",
                "loss",
                "upload_bytes",
                "download_bytes",
                "dropped",
                "train_seconds",
            ):
                assert key in entry, key
            assert entry["device"] in ("cpu_2gb", "tablet_4gb", "laptop_8gb", "gpu_16gb")
        accs = [c["accuracy"] for c in record["clients"].values()]
        assert record["worst_accuracy"] == min(accs)
        assert record["mean_accuracy"] == pytest.approx(sum(accs) / len(accs))
        assert set(record["per_task"]) == {"synthetic0", "synthetic1", "synthetic2"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["mean_primary"] == pytest.approx(value)
    assert summary["totals"]["upload_bytes"] == sum(r["upload_bytes"] for r in records)
    assert summary["config"]["ablation"]["name"] == "fedavg"
    for key in ("peak_memory", "versions", "overhead", "totals", "final"):
        assert summary[key]
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_runs_are_deterministic_for_a_seed(tmp_path, smoke_run) -> None:
    first = smoke_run("ablation=fedavg", "fed.rounds=1")  # run earlier in the session, or now
    run_job(_cfg(tmp_path / "b", "ablation=fedavg", "fed.rounds=1"))

    def strip(rec: dict) -> dict:
        return {k: {n: v for n, v in c.items() if n != "train_seconds"} for k, c in rec["clients"].items()}

    assert strip(first.records()[0]) == strip(_records(tmp_path / "b")[0])


def test_optimizer_state_and_trainers_persist_across_rounds(smoke_run) -> None:
    run = smoke_run("ablation=local_only", "fed.rounds=2")
    assert run.config()["fed"]["local_epochs"] == 1
    result, fed = run.result, run.fed
    assert len(result.trainers) == len(fed.models)  # one Trainer per client, reused every round
    for module, server, client in zip(
        [p.training.module for p in result.parties], result.host.modules.values(), fed.data.clients
    ):
        batches = -(-client.num_samples // 16)
        for optimizer in (module.optimizer, server.optimizer):
            steps = {int(state["step"]) for state in optimizer.state.values()}
            assert steps == {2 * batches}  # AdamW moments carried over from round 1 into round 2
        assert result.trainers[client.client_id].current_epoch == 2


def test_aggregation_clears_the_state_of_rewritten_factors_only(smoke_run) -> None:
    """After the SVD the factors live in a new basis: their AdamW moments restart; the heads' do not."""
    run = smoke_run("ablation=fedavg", "fed.rounds=2", "logger=csv")
    assert run.config()["fed"]["local_epochs"] == 1
    result = run.result
    modules = [p.training.module for p in result.parties]
    for module, server, client in zip(modules, result.host.modules.values(), run.fed.data.clients):
        batches = -(-client.num_samples // 16)
        adapters = [*module.client_half.adapter.parameters(), *server.server_half.adapter.parameters()]
        heads = list(server.server_half.head.parameters())
        for optimizer in (module.optimizer, server.optimizer):
            for p, state in optimizer.state.items():
                if any(p is q for q in adapters):
                    assert int(state["step"]) == batches  # round 2 only
                else:
                    assert any(p is q for q in heads) and int(state["step"]) == 2 * batches


def test_a_non_finite_client_is_excluded_from_aggregation(tmp_path, capture_models, monkeypatch) -> None:
    from atlas_pl.lightning.orchestrator import FederatedOrchestrator as Orchestrator

    real = Orchestrator.between_rounds

    def poison_then_aggregate(self):
        with torch.no_grad():
            a, _ = self.models[4].client.adapter.pair(self.models[4].client.adapter.keys[0])
            a[0, 0] = float("nan")
        healthy = {k: self.models[k].deltas() for k in range(len(self.models)) if k != 4}
        weights = [self.coordinator.sample_counts[k] for k in healthy]
        real(self)
        # the aggregate is the weighted sum of the 8 healthy clients only (exact before truncation)
        key = self.models[0].client.adapter.keys[0]
        expected = sum(w * d[key] for w, d in zip(weights, healthy.values())) / sum(weights)
        got = self.models[0].deltas()[key]
        assert torch.isfinite(got).all()
        assert torch.linalg.norm(got - expected) <= torch.linalg.norm(expected)  # truncation only

    monkeypatch.setattr(Orchestrator, "between_rounds", poison_then_aggregate)
    run_job(_cfg(tmp_path, "ablation=fedavg", "fed.rounds=1"))
    record = _records(tmp_path)[0]
    assert record["clients"]["4"]["excluded_from_aggregation"] is True
    assert not any(c["excluded_from_aggregation"] for k, c in record["clients"].items() if k != "4")
    assert all(
        torch.isfinite(d).all() for d in capture_models["fed"].models[4].client.adapter.deltas().values()
    )


def test_balanced_class_weights_weigh_each_class_equally() -> None:
    from atlas_pl.lightning.modules import balanced_class_weights

    weights = balanced_class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(weights, torch.tensor([4 / 6, 2.0, 0.0]))
    counts = torch.tensor([3.0, 1.0, 0.0])
    assert torch.allclose(weights[:2] * counts[:2], torch.full((2,), 2.0))  # equal total weight per class


@pytest.mark.integration  # ~5 s of jobs: the fast tier keeps under its 3 minutes
def test_balanced_tasks_change_only_those_clients_losses(tmp_path, smoke_run) -> None:
    run_job(_cfg(tmp_path / "bal", "ablation=local_only", "fed.rounds=1", "fed.balanced_tasks=[synthetic1]"))
    plain = smoke_run("ablation=local_only", "fed.rounds=1").records()[0]["clients"]
    bal = _records(tmp_path / "bal")[0]["clients"]
    for cid, client in plain.items():
        same = client["train_loss"] == bal[cid]["train_loss"]
        assert same == (client["task"] != "synthetic1"), (cid, client["task"])


@pytest.mark.integration  # ~5 s of jobs: the fast tier keeps under its 3 minutes
def test_orchestration_time_is_its_own_and_not_in_any_clients_training_time(tmp_path, monkeypatch) -> None:
    """Phase 4 runs inside the last client's fit (the Callback's on_train_end); its seconds are the round's
    `orchestration_seconds` and are taken out of that client's `train_seconds`."""
    import time

    from atlas_pl.parties.client import ClientParty
    from atlas_pl.parties.coordinator import Coordinator

    fit: dict[tuple[int, int], float] = {}
    real_train, real_aggregate = ClientParty.train_round, Coordinator.aggregate

    def timed_train(self, round_index, local_epochs):
        report = real_train(self, round_index, local_epochs)
        fit[(round_index, self.index)] = report.seconds  # the whole fit, Phase 4 included for the last
        return report

    def slow_aggregate(self, round_index, uploads):
        time.sleep(1.0)
        return real_aggregate(self, round_index, uploads)

    monkeypatch.setattr(ClientParty, "train_round", timed_train)
    monkeypatch.setattr(Coordinator, "aggregate", slow_aggregate)
    run_job(_cfg(tmp_path, "ablation=fedavg", "fed.rounds=2", "logger=csv"))
    records = _records(tmp_path)
    for record in records:
        assert record["orchestration_seconds"] >= 1.0
        last = max(int(k) for k in record["clients"])
        for key, client in record["clients"].items():
            whole = fit[(record["round"], int(key))]
            if int(key) == last:
                assert client["train_seconds"] <= whole - 1.0
            else:
                assert client["train_seconds"] == whole
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["overhead"]["orchestration_seconds"] == sum(r["orchestration_seconds"] for r in records)


@pytest.mark.parametrize("ablation", ["fedavg", pytest.param("centralized", marks=pytest.mark.integration)])
def test_eval_every_skips_scoring_without_changing_training(smoke_run, ablation) -> None:
    """fed.eval_every=5 over 2 rounds scores round 2 only (the last is always scored) and trains exactly
    as scoring every round does: evaluation reads the models and never their training state."""
    runs = (f"ablation={ablation}", "fed.rounds=2", "logger=csv")  # the fedavg one is shared
    every = smoke_run(*runs).records()
    sparse = smoke_run(*runs, "fed.eval_every=5").records()
    assert [r["evaluated"] for r in every] == [True, True]
    assert [r["evaluated"] for r in sparse] == [False, True]
    skipped = sparse[0]
    for key in ("mean_accuracy", "worst_accuracy", "std_accuracy", "mean_primary"):
        assert key not in skipped
    assert skipped["per_task"] == {}
    for entry in skipped["clients"].values():
        assert "accuracy" not in entry and "primary" not in entry and entry["dropped"] is False
        assert entry["split"] > 0 and entry["train_seconds"] > 0
    for a, b in zip(every, sparse):
        assert a["upload_bytes"] == b["upload_bytes"] and a["download_bytes"] == b["download_bytes"]
        for cid, entry in a["clients"].items():
            assert entry["train_loss"] == b["clients"][cid]["train_loss"]
    assert every[1]["per_task"] == sparse[1]["per_task"]
    assert every[1]["mean_primary"] == sparse[1]["mean_primary"]


def test_eval_every_scores_each_nth_round_and_the_last() -> None:
    from atlas_pl.settings import FedSettings

    fed = FedSettings(7, 1, 3, 0.1, 16, 1e-3, 1e-3, 0.0, frozenset(), eval_every=3)
    assert [r for r in range(1, 8) if fed.evaluates(r)] == [3, 6, 7]
    assert all(replace(fed, eval_every=1).evaluates(r) for r in range(1, 8))


def test_eval_every_must_be_a_positive_integer(tmp_path) -> None:
    with pytest.raises(ValueError, match="fed.eval_every"):
        _cfg(tmp_path, "fed.eval_every=0")
