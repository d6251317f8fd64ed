"""DESIGN.md §13: personal test sets scored beside the global ones, and the per-task centralized bound."""

from __future__ import annotations

import statistics

import pytest
import torch

from atlas_pl.data.metrics import confusion_matrix, pooled_metrics
from atlas_pl.engines.records import ClientRound, round_record
from atlas_pl.parties.link import TrafficLedger

PERSONAL = ("fed.rounds=1", "data.personal_share=0.25", "logger=csv")


def test_round_record_summarizes_personal_scores_like_global_ones() -> None:
    """A personal block has the global summary's keys, computed from the clients' personal scores."""
    ledger = TrafficLedger()
    ledger.start_round(1)
    rows = [
        ClientRound(
            k,
            task,
            0,
            "d",
            split=1,
            ranks=[2],
            metrics={"accuracy": 0.5, "primary": 0.5, "loss": 1.0},
            personal={"accuracy": acc, "primary": acc, "loss": 0.3},
        )
        for k, (task, acc) in enumerate([("a", 0.9), ("a", 0.7), ("b", 0.6)])
    ]
    record = round_record(1, rows, ["a", "b"], ledger)
    personal = record["personal"]
    assert personal["mean_accuracy"] == pytest.approx(statistics.fmean([0.9, 0.7, 0.6]))
    assert personal["worst_accuracy"] == 0.6
    assert personal["per_task"]["a"] == pytest.approx({"accuracy": 0.8, "primary": 0.8, "worst_primary": 0.7})
    assert record["mean_accuracy"] == 0.5  # the global figures are the task sets' own
    assert record["clients"]["1"]["personal"]["primary"] == 0.7
    assert record["clients"]["1"]["global"] == {"accuracy": 0.5, "primary": 0.5, "loss": 1.0}
    rows_without = [ClientRound(0, "a", 0, "d", split=1, ranks=[2], metrics=rows[0].metrics)]
    assert "personal" not in round_record(1, rows_without, ["a"], ledger)


@pytest.mark.parametrize(
    "ablation", ["fedavg", pytest.param("centralized_per_task", marks=pytest.mark.integration)]
)
def test_each_client_is_scored_on_its_own_personal_set(smoke_run, ablation) -> None:
    """Every client's `personal` scores are its final model on its own held-out rows (recomputed here),
    next to `global`, the task set's scores; without personal sets a record has no personal block."""
    run = smoke_run(f"ablation={ablation}", *PERSONAL)
    record = run.records()[-1]
    from atlas_pl.parties.evaluation import evaluate

    matrices: dict[str, list[list[list[int]]]] = {}
    for client in run.fed.data.clients:
        entry = record["clients"][str(client.client_id)]
        assert entry["global"]["primary"] == entry["primary"]
        model = run.fed.models[client.client_id]
        model.eval()
        expected = evaluate(
            lambda b, m=model: m(b["input_ids"], b["attention_mask"], b.get("token_type_ids")),
            client.task,
            client.personal,
            batch_size=64,
            device=torch.device("cpu"),
        )
        assert entry["personal"]["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
        assert entry["personal"]["loss"] == pytest.approx(expected["loss"], rel=1e-4)
        assert entry["personal"]["confusion"] == confusion_matrix(expected)
        assert sum(map(sum, entry["personal"]["confusion"])) == len(client.personal)
        matrices.setdefault(client.task, []).append(entry["personal"]["confusion"])
    assert set(record["personal"]["per_task"]) == set(record["per_task"])
    for task, pooled in matrices.items():  # each task's clients' rows scored together
        scores = record["personal"]["per_task"][task]
        assert scores["pooled_primary"] == pooled_metrics(task, pooled)["primary"]
        assert "pooled_primary" not in record["per_task"][task]  # the global set is one set: nothing to pool


@pytest.mark.integration
def test_centralized_per_task_trains_one_adapter_per_task(smoke_run) -> None:
    """One adapter per task (shared by that task's clients, none between tasks), each trained; the
    multi-task bound keeps one adapter for all."""
    per_task = smoke_run("ablation=centralized_per_task", *PERSONAL)
    shared = smoke_run("ablation=centralized", *PERSONAL)
    by_task: dict[str, set[int]] = {}
    for client in per_task.fed.data.clients:
        by_task.setdefault(client.task, set()).add(id(per_task.fed.models[client.client_id].client.adapter))
    assert all(len(ids) == 1 for ids in by_task.values())
    adapters = [next(iter(ids)) for ids in by_task.values()]
    assert len(set(adapters)) == len(by_task) == 3
    firsts = {}
    for client in per_task.fed.data.clients:
        firsts.setdefault(client.task, per_task.fed.models[client.client_id])
    weights = [
        torch.cat([p.detach().flatten() for p in m.client.adapter.parameters()]) for m in firsts.values()
    ]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    assert len({id(m.client.adapter) for m in shared.fed.models}) == 1
    record = per_task.records()[-1]
    clusters = {e["task"]: e["cluster"] for e in record["clients"].values()}
    assert sorted(clusters.values()) == [0, 1, 2]  # who shares a model: the task's clients
    assert per_task.config()["ablation"]["adapters"] == "per_task"
