"""Phase 1 wired into the job: fingerprints are sent and counted, clusters drive fedavg_cluster."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from atlas_pl.config_validation import ConfigError, validate_config
from atlas_pl.parties.planning import runs_phase1
from atlas_pl.phases.clustering import cluster_quality, select_k
from atlas_pl.run import run_job
from atlas_pl.settings import build_settings, settings_from_dict

from .test_federation import _cfg, _records

K_SEARCH_KEYS = {"k", "silhouette", "davies_bouldin", "calinski_harabasz", "singletons", "combined"}


def test_fedavg_cluster_discovers_the_synthetic_tasks_and_aggregates_within_them(
    tmp_path, capture_models
) -> None:
    # equal ranks everywhere, so clients of one cluster hold bitwise the same adapter afterwards
    run_job(_cfg(tmp_path, "ablation=fedavg_cluster", "fed.rounds=1", "allocation.mode=fixed"))
    clustering = json.loads((tmp_path / "clustering.json").read_text())
    assert clustering["fingerprint_dim"] == 256 and clustering["compression"] == "sketch"
    assert clustering["k"] == 3 and clustering["purity"] == 1.0 and clustering["ari"] == 1.0
    assert clustering["true_tasks"] == ["synthetic0"] * 3 + ["synthetic1"] * 3 + ["synthetic2"] * 3
    assert clustering["labels"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(set(row) == K_SEARCH_KEYS for row in clustering["k_search"])
    assert [row["k"] for row in clustering["k_search"]] == [2, 3, 4, 5]
    importance = clustering["importance"]
    assert len(importance) == 9 and all(abs(sum(row) - 1.0) < 1e-9 for row in importance)
    assert set(clustering["cluster_importance"]) == {"0", "1", "2"}

    record = _records(tmp_path)[0]
    assert [c["cluster"] for c in record["clients"].values()] == clustering["labels"]
    result = capture_models["result"]
    for k in range(9):  # Phase 1 uploads the 256-float sketch and one importance float per block (4)
        assert result.ledger.by_kind(1, k)["upload"]["fingerprint"] == 256 * 4
        assert result.ledger.by_kind(1, k)["upload"]["importance"] == 4 * 4

    models = capture_models["fed"].models
    deltas = [m.deltas() for m in models]
    for cluster in ([0, 1, 2], [3, 4, 5], [6, 7, 8]):
        head = list(models[cluster[0]].server.head.parameters())
        for k in cluster[1:]:
            assert all(torch.equal(deltas[k][key], deltas[cluster[0]][key]) for key in deltas[k])
            assert all(torch.equal(p, q) for p, q in zip(models[k].server.head.parameters(), head))
    # different clusters were aggregated apart
    assert any(not torch.equal(deltas[0][key], deltas[3][key]) for key in deltas[0])


def test_raw_pca_sends_the_whole_gradient_and_agrees_with_the_sketch(tmp_path) -> None:
    run_job(
        _cfg(tmp_path / "raw", "ablation=fedavg_cluster", "fed.rounds=1", "fingerprint.compression=raw_pca")
    )
    raw = json.loads((tmp_path / "raw" / "clustering.json").read_text())
    assert raw["leaks_raw_gradients"] is True and raw["fingerprint_dim"] > 10 * 256
    assert raw["labels"] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.integration  # ~5 s of jobs: the fast tier keeps under its 3 minutes
def test_dp_noise_is_reported_with_its_epsilon(tmp_path, smoke_run) -> None:
    plain_run = smoke_run("ablation=fedavg_cluster", "fed.rounds=1")
    run_job(
        _cfg(
            tmp_path,
            "ablation=fedavg_cluster",
            "fed.rounds=1",
            "fingerprint.dp.enabled=true",
            "fingerprint.dp.noise_multiplier=2.0",
        )
    )
    clustering = json.loads((tmp_path / "clustering.json").read_text())
    assert clustering["dp"]["enabled"] is True
    assert clustering["dp"]["epsilon"] == pytest.approx(
        (2 * torch.log(torch.tensor(1.25 / 1e-5))).sqrt() / 2.0
    )
    plain = json.loads((plain_run.dir / "clustering.json").read_text())
    assert plain["dp"]["epsilon"] is None
    assert clustering["coords"] != plain["coords"]  # the noise reached what the server clusters


def test_fingerprinting_does_not_change_the_training_order(tmp_path) -> None:
    """Phase 1 draws from private RNGs only: with LoRA dropout drawing from the global RNG during
    training, round-1 training losses still match a run without Phase 1."""
    # fixed ranks: local_only then needs no Phase 1 at all, and both runs train the same models
    fixed = ("fed.rounds=1", "lora.dropout=0.1", "allocation.mode=fixed")
    run_job(_cfg(tmp_path / "cluster", "ablation=fedavg_cluster", *fixed))
    run_job(_cfg(tmp_path / "local", "ablation=local_only", *fixed))
    assert not (tmp_path / "local" / "clustering.json").exists()
    clustered, local = _records(tmp_path / "cluster")[0], _records(tmp_path / "local")[0]
    assert [c["train_loss"] for c in clustered["clients"].values()] == [
        c["train_loss"] for c in local["clients"].values()
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("clustering.k_min=1", "clustering.k_min=1 is invalid"),
        ("clustering.k_max=2", "clustering.k_max=2 is invalid"),
        ("fingerprint.compression=pca", "fingerprint.compression='pca' is invalid"),
        ("fingerprint.dp.clip=0", "fingerprint.dp.clip=0.0 is invalid"),  # a float in the schema
        ("clustering.weights.silhouette=-1", "clustering.weights.silhouette=-1.0 is invalid"),
        ("fed.balanced_tasks=[colaa]", "fed.balanced_tasks=['colaa'] is invalid"),
    ],
)
def test_bad_phase1_config_is_named(tmp_path, override, message) -> None:
    # wrong types (clustering.weights=0.5, fed.balanced_tasks=3, fingerprint.dp.enabled=maybe) are refused
    # while composing, by the schema: tests/test_conf_schema.py::test_wrong_types_are_refused_while_composing
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg = _cfg(tmp_path, "clustering.k_min=3" if override == "clustering.k_max=2" else "seed=0", override)
        validate_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("fingerprint.dp.enabled=true", "fingerprint.compression=raw_pca"), "fingerprint.dp.enabled=True"),
        (("fingerprint.dp.enabled=true", "fingerprint.dp.delta=1.0"), "fingerprint.dp.delta=1.0 is invalid"),
        (
            ("fingerprint.dp.enabled=true", "fingerprint.dp.noise_multiplier=0"),
            "noise_multiplier=0.0 is invalid",
        ),
    ],
)
def test_bad_dp_combinations_are_named(tmp_path, overrides, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _cfg(tmp_path, *overrides)


def test_balanced_tasks_outside_the_run_are_ignored(tmp_path) -> None:
    validate_config(_cfg(tmp_path, "fed.balanced_tasks=[cola]"))  # smoke runs synthetic tasks only


def test_known_tasks_as_clusters_replace_a_discovery_that_failed(tmp_path, capture_models) -> None:
    """clustering.by_task (the oracle Phase 1) groups by task even where the fingerprints say nothing:
    the record, the aggregation groups and Phase 4's graph all follow the tasks."""
    noisy = ("fed.rounds=1", "allocation.mode=fixed", "fingerprint.dp.enabled=true")
    noisy += ("fingerprint.dp.noise_multiplier=1000",)  # the sketches drown in noise
    run_job(_cfg(tmp_path / "known", "ablation=fedavg_cluster", *noisy, "clustering.by_task=true"))
    known = json.loads((tmp_path / "known" / "clustering.json").read_text())
    # discovery on these very fingerprints (the coordinates the job kept) mixes the tasks...
    found = select_k(np.array(known["coords"]), seed=0).labels
    assert cluster_quality(found, known["true_tasks"])["purity"] < 1.0
    assert known["labels"] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and known["purity"] == 1.0  # ...the oracle does not
    assert known["k_search"] == []  # no k is searched
    record = _records(tmp_path / "known")[0]
    assert [c["cluster"] for c in record["clients"].values()] == known["labels"]
    deltas = [m.deltas() for m in capture_models["fed"].models]
    for first, *rest in ([0, 1, 2], [3, 4, 5], [6, 7, 8]):  # averaged within each task, apart across them
        assert all(torch.equal(deltas[k][key], deltas[first][key]) for k in rest for key in deltas[k])
    assert any(not torch.equal(deltas[0][key], deltas[3][key]) for key in deltas[0])

    run_job(_cfg(tmp_path / "graph", "ablation=atlas", *noisy, "clustering.by_task=true"))
    adjacency = json.loads((tmp_path / "graph" / "clustering.json").read_text())["adjacency"]
    tasks = [k // 3 for k in range(9)]
    assert all(w == 0 for i, row in enumerate(adjacency) for j, w in enumerate(row) if tasks[i] != tasks[j])
    assert all(sum(row) > 0 for row in adjacency)  # each client has neighbours within its task


@pytest.mark.parametrize("ablation", ["fedavg", "centralized", "hetlora"])
def test_known_task_clusters_are_refused_where_no_phase1_runs(tmp_path, ablation) -> None:
    """The refusal and the orchestrator read one rule (planning.runs_phase1), so they cannot drift."""
    cfg = _cfg(tmp_path, f"ablation={ablation}", "clustering.by_task=true")
    with pytest.raises(ConfigError, match=r"clustering.by_task=True is invalid.*runs no Phase 1"):
        build_settings(cfg)
    assert not runs_phase1(settings_from_dict(OmegaConf.to_container(cfg, resolve=True)))


def test_known_task_clusters_are_accepted_where_phase1_runs(tmp_path) -> None:
    for ablation in ("atlas", "fedavg_cluster", "local_only"):  # local_only: ranks from cluster importance
        assert runs_phase1(build_settings(_cfg(tmp_path, f"ablation={ablation}", "clustering.by_task=true")))
