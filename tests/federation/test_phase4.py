"""Phase 4 in a run: atlas (Laplacian personalization), splitlora, hsplitlora, hetlora as real pipelines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from atlas_pl.lightning.orchestrator import FederatedOrchestrator as Orchestrator
from atlas_pl.run import run_job

from .test_federation import _cfg, _records

TIMING = {
    "train_seconds",
    "round_seconds",
    "orchestration_seconds",
    "evaluation_seconds",
    "fingerprint_seconds",
}


def _without_timing(records: list[dict]) -> list[dict]:
    out = []
    for record in records:
        record = {k: v for k, v in record.items() if k not in TIMING}
        record["clients"] = {
            cid: {k: v for k, v in c.items() if k not in TIMING} for cid, c in record["clients"].items()
        }
        out.append(record)
    return out


def test_atlas_with_eta_zero_is_bitwise_local_only(tmp_path, smoke_run) -> None:
    run_job(_cfg(tmp_path / "atlas", "ablation=atlas", "fed.eta=0", "fed.rounds=2"))
    atlas, local = _records(tmp_path / "atlas"), smoke_run("ablation=local_only", "fed.rounds=2").records()
    assert json.dumps(_without_timing(atlas), sort_keys=True) == json.dumps(
        _without_timing(local), sort_keys=True
    )
    # and atlas with eta > 0 really acts
    run_job(_cfg(tmp_path / "mixed", "ablation=atlas", "fed.eta=0.5", "fed.rounds=2"))
    mixed = _records(tmp_path / "mixed")
    assert mixed[-1]["clients"]["0"]["loss"] != local[-1]["clients"]["0"]["loss"]
    assert mixed[0]["upload_bytes"] > local[0]["upload_bytes"]  # adapters went up for the mixing


def test_atlas_eta_one_moves_each_client_onto_its_only_neighbour(
    tmp_path, capture_models, monkeypatch
) -> None:
    before: dict[int, dict] = {}
    heads: dict[int, list[torch.Tensor]] = {}
    real = Orchestrator.between_rounds

    def snapshot(self):
        for k, model in enumerate(self.models):
            before[k] = model.deltas()
            heads[k] = [p.detach().clone() for p in model.server.head.parameters()]
        real(self)

    monkeypatch.setattr(Orchestrator, "between_rounds", snapshot)
    run_job(
        _cfg(
            tmp_path,
            "ablation=atlas",
            "fed.eta=1.0",
            "fed.rounds=1",
            "fed.clients_per_task=2",
            "allocation.mode=fixed",
        )
    )
    clustering = json.loads((tmp_path / "clustering.json").read_text())
    labels = clustering["labels"]
    assert clustering["purity"] == 1.0 and sorted(labels) == [0, 0, 1, 1, 2, 2]
    adjacency = np.array(clustering["adjacency"])
    models = capture_models["fed"].models
    for k in range(6):
        partner = next(j for j in range(6) if j != k and labels[j] == labels[k])
        assert adjacency[k, partner] == 1.0 and adjacency[k].sum() == 1.0
        for key, delta in models[k].deltas().items():  # exact up to the fp32 refactorization
            expected = before[partner][key]
            assert float((delta - expected).norm() / expected.norm().clamp_min(1e-12)) < 1e-5, key
        assert all(torch.equal(p, q) for p, q in zip(models[k].server.head.parameters(), heads[partner]))


def test_atlas_writes_the_adjacency_and_logs_it(tmp_path, monkeypatch) -> None:
    tables: dict[str, list] = {}
    from atlas_pl.tracking.tracker import Tracker

    monkeypatch.setattr(
        Tracker, "log_table", lambda self, name, columns, rows, *, round_index: tables.setdefault(name, rows)
    )
    run_job(_cfg(tmp_path, "ablation=atlas", "fed.rounds=1"))
    clustering = json.loads((tmp_path / "clustering.json").read_text())
    a = np.array(clustering["adjacency"])
    labels = clustering["labels"]
    assert a.shape == (9, 9)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-12)
    assert all(a[i, j] == 0 for i in range(9) for j in range(9) if labels[i] != labels[j])
    assert len(tables["graph/adjacency"]) == 81
    assert {(r[1], r[2]): r[3] for r in tables["graph/adjacency"]}[(0, 1)] == pytest.approx(a[0, 1])


def test_splitlora_gives_every_client_the_same_averaged_factors(tmp_path, capture_models) -> None:
    run_job(_cfg(tmp_path, "ablation=splitlora", "fed.rounds=1"))
    models = capture_models["fed"].models
    allocation = json.loads((tmp_path / "allocation.json").read_text())
    assert (
        allocation["mode"] == "uniform" and len({r for c in allocation["clients"] for r in c["ranks"]}) == 1
    )
    assert len({c["split"] for c in allocation["clients"]}) > 1  # splits still follow the devices

    def factors(model):
        out = {}
        for half in (model.client.adapter, model.server.adapter):
            for key in half.keys:
                out[key] = [t.detach() for t in half.pair(key)]
        return out

    reference = factors(models[0])
    for model in models[1:]:
        for key, (a, b) in factors(model).items():
            assert torch.equal(a, reference[key][0]) and torch.equal(b, reference[key][1]), key


@pytest.mark.integration  # ~5 s of jobs: the fast tier keeps under its 3 minutes
def test_hetlora_and_hsplitlora_differ_from_stack_and_are_recorded(
    tmp_path, capture_models, smoke_run
) -> None:
    run_job(_cfg(tmp_path / "het", "ablation=hetlora", "fed.rounds=1"))
    het = [m.deltas() for m in capture_models["fed"].models]
    fedavg = smoke_run("ablation=fedavg", "fed.rounds=1")
    exact = [m.deltas() for m in fedavg.fed.models]
    # same allocation (global importance) and the same round-1 training; only the aggregation differs
    het_alloc = json.loads((tmp_path / "het" / "allocation.json").read_text())["clients"]
    exact_alloc = json.loads((fedavg.dir / "allocation.json").read_text())["clients"]
    assert [c["ranks"] for c in het_alloc] == [c["ranks"] for c in exact_alloc]
    key = next(iter(het[0]))
    assert not torch.allclose(het[0][key], exact[0][key], rtol=1e-3, atol=1e-6)
    run_job(_cfg(tmp_path / "hsplit", "ablation=hsplitlora", "fed.rounds=1"))
    hsplit = json.loads((tmp_path / "hsplit" / "allocation.json").read_text())
    assert hsplit["importance_source"] == "client"
    summary = json.loads((tmp_path / "hsplit" / "summary.json").read_text())
    assert summary["ablation"] == "hsplitlora" and summary["status"] == "completed"


def test_a_non_finite_client_is_left_out_of_its_neighbours_update(
    tmp_path, capture_models, monkeypatch
) -> None:
    real = Orchestrator.between_rounds

    def poison(self):
        with torch.no_grad():
            a, _ = self.models[1].client.adapter.pair(self.models[1].client.adapter.keys[0])
            a[0, 0] = float("inf")
        real(self)

    monkeypatch.setattr(Orchestrator, "between_rounds", poison)
    run_job(_cfg(tmp_path, "ablation=atlas", "fed.eta=0.5", "fed.rounds=1"))
    record = _records(tmp_path)[0]
    assert record["clients"]["1"]["excluded_from_aggregation"] is True
    for k, model in enumerate(capture_models["fed"].models):
        if k != 1:
            assert all(torch.isfinite(d).all() for d in model.deltas().values()), k


def test_centralized_trains_one_adapter_on_the_union_with_a_head_per_task(tmp_path, capture_models) -> None:
    run_job(_cfg(tmp_path, "ablation=centralized", "fed.rounds=2"))
    fed = capture_models["fed"]
    models = fed.models
    tasks = [c.task for c in fed.data.clients]
    reference = models[0].deltas()
    assert any(torch.count_nonzero(d) > 0 for d in reference.values())  # it trained
    for k, model in enumerate(models):
        assert all(torch.equal(d, reference[key]) for key, d in model.deltas().items())  # one adapter
        same_task = [j for j in range(len(models)) if tasks[j] == tasks[k]]
        assert all(models[j] is model for j in same_task)  # a task's clients hold the task's model
    heads = {t: next(models[k] for k in range(len(models)) if tasks[k] == t).server.head for t in set(tasks)}
    assert len({id(h) for h in heads.values()}) == 3
    records = _records(tmp_path)
    for k, client in enumerate(fed.data.clients):  # the raw data went up once, nothing else moves
        t = client.train
        raw = int(t.attention_mask.sum()) * 4 + t.labels.numel() * t.labels.element_size()
        assert records[0]["clients"][str(k)]["upload_bytes"] == raw
        assert records[1]["clients"][str(k)]["upload_bytes"] == 0
        assert records[0]["clients"][str(k)]["download_bytes"] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ablation"] == "centralized" and summary["final"]["round"] == 2
    # one optimizer for the whole run: after 2 rounds every parameter's AdamW step count is both rounds' steps
    optimizer = capture_models["result"].trainers[0].optimizers[0]
    cfg = _cfg(tmp_path, "ablation=centralized")
    batch = int(cfg.fed.batch_size)
    sizes = {t: sum(c.train.labels.numel() for c in fed.data.clients if c.task == t) for t in set(tasks)}
    per_round = max(math.ceil(n / batch) for n in sizes.values())
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {2 * per_round * int(cfg.fed.local_epochs)}
