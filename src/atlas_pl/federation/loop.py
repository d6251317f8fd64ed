"""The federation round loop: local split training per client, between-round work, evaluation.

Each client has one persistent Trainer and one Client/Server LightningModule pair built before round 1.
A round raises each Trainer's `max_epochs` by `fed.local_epochs` and calls `fit` again, so Lightning
resumes the same loop with the same optimizers instead of being rebuilt every round.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig
from tqdm.auto import tqdm

from atlas_pl.data import shuffled_loader
from atlas_pl.federation.centralized import run_centralized
from atlas_pl.federation.comm import CommMeter
from atlas_pl.federation.discovery import (
    K_SEARCH_COLUMNS,
    Discovery,
    clustering_record,
    discover,
    k_search_rows,
    measure_importance,
    write_clustering,
)
from atlas_pl.federation.evaluation import evaluate
from atlas_pl.federation.modules import ClientModule, ServerModule, balanced_class_weights
from atlas_pl.federation.orchestrator import Orchestrator
from atlas_pl.federation.planning import (
    RANK_COLUMNS,
    allocation_record,
    apply_allocation,
    importance_source,
    plan,
    rank_rows,
    write_allocation,
)
from atlas_pl.federation.resume import RoundCheckpointer, mixing_from_state
from atlas_pl.federation.setup import Federation
from atlas_pl.federation.trainers import make_trainer, server_grad_scaler, set_completed_epochs
from atlas_pl.phases.allocation import ClientAllocation
from atlas_pl.phases.personalization import mixing_matrix, rbf_adjacency
from atlas_pl.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def aggregation_mode(cfg: DictConfig) -> str:
    """What the orchestrator does between rounds: laplacian, stack, fedavg, zeropad or none."""
    if str(cfg.ablation.get("personalization", "none")) == "laplacian":
        return "laplacian"
    return str(cfg.ablation.aggregation)


def clustered(cfg: DictConfig) -> bool:
    """Whether aggregation follows the clusters Phase 1 discovers (re-discovered every recluster_every)."""
    return bool(cfg.ablation.get("clustering", False))


@dataclass
class FederationResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    comm: CommMeter = field(default_factory=CommMeter)
    overhead: dict[str, float] = field(default_factory=dict)
    discoveries: list[Discovery] = field(default_factory=list)
    allocations: list[ClientAllocation] = field(default_factory=list)
    client_modules: list[ClientModule] = field(default_factory=list)
    server_modules: list[ServerModule] = field(default_factory=list)
    trainers: list[pl.Trainer] = field(default_factory=list)
    # JSON views of the discoveries, kept so a resumed job can rewrite clustering.json and summary.json
    clustering_records: list[dict[str, Any]] = field(default_factory=list)
    clustering_summaries: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds spent by earlier processes of a resumed job


def _groups(cfg: DictConfig, n_clients: int) -> list[list[int]]:
    return [list(range(n_clients))] if aggregation_mode(cfg) != "none" else []


def _without(groups: list[list[int]], dropped: list[bool]) -> list[list[int]]:
    """Aggregation groups without the clients Phase 2 dropped (they never train)."""
    kept = [[k for k in g if not dropped[k]] for g in groups]
    return [g for g in kept if g]


def _clusters_now(cfg: DictConfig, round_index: int) -> bool:
    """Phase 1 runs before round 1, then every `fingerprint.recluster_every` rounds if that is > 0."""
    if not clustered(cfg):
        return False
    every = int(cfg.fingerprint.get("recluster_every") or 0)
    return round_index == 1 or (every > 0 and (round_index - 1) % every == 0)


def graph_adjacency(cfg: DictConfig, discovery: Discovery) -> Any:
    """Phase 4's graph over the clients, from the coordinates and clusters Phase 1 found."""
    graph = cfg.get("graph") or {}
    alpha = graph.get("alpha")
    return rbf_adjacency(
        discovery.coords,
        discovery.labels,
        alpha=None if alpha is None else float(alpha),
        ensure_connectivity=bool(graph.get("ensure_connectivity", True)),
        knn=int(graph.get("knn", 2)),
    )


def adjacency_rows(discovery: Discovery) -> list[list[Any]]:
    """Long-format rows (round, from, to, weight) that W&B turns into an adjacency heatmap."""
    a = discovery.adjacency
    return [[discovery.round, i, j, float(a[i, j])] for i in range(a.shape[0]) for j in range(a.shape[1])]


def _phase1(
    cfg: DictConfig, fed: Federation, tracker: Tracker, result: FederationResult, round_index: int
) -> Discovery:
    """Fingerprint and cluster; record the outcome (clustering.json, W&B k-search table)."""
    discovery = discover(cfg, fed, result.comm, round_index)
    if aggregation_mode(cfg) == "laplacian":
        discovery.adjacency = graph_adjacency(cfg, discovery)
        tracker.log_table(
            "graph/adjacency",
            ["round", "from", "to", "weight"],
            adjacency_rows(discovery),
            round_index=round_index,
        )
    result.discoveries.append(discovery)
    result.clustering_records.append(clustering_record(cfg, fed, discovery))
    result.clustering_summaries.append(
        {
            "round": discovery.round,
            "k": discovery.k,
            "labels": discovery.labels,
            **discovery.quality,
            "seconds": discovery.seconds,
        }
    )
    fed.meta["clusters"] = list(discovery.labels)
    write_clustering(tracker.out_dir, result.clustering_records)
    tracker.log_table(
        "clustering/k_search",
        ["round", *K_SEARCH_COLUMNS],
        k_search_rows(discovery),
        round_index=round_index,
    )
    return discovery


def _phase2(cfg: DictConfig, fed: Federation, tracker: Tracker, result: FederationResult) -> None:
    """Before round 1: Phase 1 where needed, then each client's split and ranks; models rebuilt to match.

    Feasibility does not depend on importance, so an impossible device mix is refused before the
    fingerprinting passes, not after.
    """
    devices = fed.meta["devices"]
    if not bool(cfg.allocation.drop_infeasible):
        plan(cfg, fed, devices)
    source = importance_source(cfg)
    importance, labels = None, None
    if source == "cluster" or clustered(cfg):
        discovery = _phase1(cfg, fed, tracker, result, 1)
        importance, labels = discovery.importance, list(discovery.labels)
    elif source in ("global", "client"):
        importance = measure_importance(cfg, fed, result.comm, 1)
    allocations = plan(cfg, fed, devices, importance, labels)
    apply_allocation(cfg, fed, allocations)
    result.allocations = allocations
    write_allocation(tracker.out_dir, allocation_record(cfg, fed, allocations))
    tracker.log_table("allocation/ranks", RANK_COLUMNS, rank_rows(fed, allocations), round_index=1)


def _restore_phase2(
    fed: Federation, result: FederationResult, state: dict[str, Any], cfg: DictConfig
) -> None:
    """A resumed job re-applies the allocation it started with instead of re-running Phases 1 and 2."""
    result.allocations = [ClientAllocation.from_json(a) for a in state["allocations"]]
    apply_allocation(cfg, fed, result.allocations)
    result.clustering_records = list(state["clustering_records"])
    result.clustering_summaries = list(state["clustering_summaries"])
    fed.meta["clusters"] = list(state["meta"]["clusters"])
    fed.meta["dropped"] = list(state["meta"]["dropped"])


def _json_state(
    result: FederationResult,
    fed: Federation,
    orchestrator: Orchestrator | None,
    cumulative: dict[str, int],
    fit_seconds: float,
) -> dict[str, Any]:
    """Everything but tensors that the rounds after this one depend on (checkpoint.py adds RNGs, config)."""
    return {
        "records": result.records,
        "comm": result.comm.to_json(),
        "cumulative": dict(cumulative),
        "fit_seconds": fit_seconds,
        "meta": {"clusters": fed.meta["clusters"], "dropped": fed.meta["dropped"]},
        "allocations": [a.to_json() for a in result.allocations],
        "clustering_records": result.clustering_records,
        "clustering_summaries": result.clustering_summaries,
        "orchestrator": None
        if orchestrator is None
        else {
            "groups": orchestrator.groups,
            "mixing": orchestrator.mixing,
            "aggregated_rounds": orchestrator.aggregated_rounds,
        },
    }


def run_federation(
    cfg: DictConfig, fed: Federation, tracker: Tracker, checkpointer: RoundCheckpointer | None = None
) -> FederationResult:
    """Run `fed.rounds` rounds; every round is logged through `tracker` as one metrics.jsonl record.

    With a checkpointer, a checkpoint is written after every round, and a checkpointer that holds a
    checkpoint (resume=true) makes the job continue after that checkpoint's round.
    """
    n_clients = len(fed.models)
    result = FederationResult()
    comm = result.comm
    resuming = checkpointer is not None and checkpointer.resume is not None
    start_round = checkpointer.start_round if checkpointer is not None else 1
    state = checkpointer.state if resuming else {}
    mode = aggregation_mode(cfg)
    # the "cluster" of metrics.jsonl: the Phase 1 label where Phase 1 ran, else the aggregation group
    one_group = mode != "none" and not clustered(cfg)
    fed.meta["clusters"] = [0] * n_clients if one_group else list(range(n_clients))
    comm.start_round(1)
    centralized = str(cfg.ablation.get("pipeline", "split")) == "centralized"
    if centralized:  # one unsplit model, no devices: neither Phase 1 nor Phase 2 applies
        fed.meta["dropped"] = [False] * n_clients
        fed.meta["clusters"] = [0] * n_clients
        groups: list[list[int]] = []
    elif resuming:
        _restore_phase2(fed, result, state, cfg)
        groups = state["orchestrator"]["groups"]
    else:
        _phase2(cfg, fed, tracker, result)
        groups = result.discoveries[-1].groups() if clustered(cfg) else _groups(cfg, n_clients)
    dropped = fed.meta["dropped"]
    orchestrator = Orchestrator(
        fed.models,
        [c.num_samples for c in fed.data.clients],
        comm,
        aggregation="none" if centralized else mode,
        groups=_without(groups, dropped),
        head_aggregation=str(cfg.ablation.get("head_aggregation", "local")),
    )
    orchestrator.seed = int(cfg.seed)
    if resuming and not centralized:
        orchestrator.mixing = mixing_from_state(state["orchestrator"]["mixing"])
        orchestrator.aggregated_rounds = list(state["orchestrator"]["aggregated_rounds"])
    elif mode == "laplacian" and not centralized:
        orchestrator.mixing = mixing_matrix(result.discoveries[-1].adjacency, float(cfg.fed.eta))
    rounds = int(cfg.fed.rounds)
    cumulative = {"upload": 0, "download": 0}
    fit_seconds = 0.0
    if resuming:
        result.records = list(state["records"])
        comm.load_json(state["comm"])
        cumulative.update(state["cumulative"])
        fit_seconds = float(state["fit_seconds"])
        result.elapsed_before = checkpointer.elapsed_before
        tracker.restore(result.records)

    def finish_round(
        round_index: int,
        evals: dict[int, dict[str, float]],
        train_loss: dict[int, float],
        train_seconds: dict[int, float],
        round_start: float,
    ) -> None:
        record = _round_record(round_index, fed, evals, train_loss, train_seconds, comm, orchestrator)
        for key in ("upload", "download"):
            cumulative[key] += record[f"{key}_bytes"]
            record[f"cumulative_{key}_bytes"] = cumulative[key]
        record["round_seconds"] = time.perf_counter() - round_start
        result.records.append(record)
        tracker.log_round(record)
        log.info(
            "round %d/%d: mean acc %.4f, worst %.4f, per task %s (%.1fs)",
            round_index,
            rounds,
            record["mean_accuracy"],
            record["worst_accuracy"],
            {t: round(v["primary"], 4) for t, v in record["per_task"].items()},
            record["round_seconds"],
        )

    if centralized:
        run_centralized(
            cfg,
            fed,
            result,
            finish_round,
            checkpointer,
            lambda: _json_state(result, fed, None, cumulative, 0.0),
        )
        return result
    lr, wd = float(cfg.fed.lr), float(cfg.fed.get("weight_decay", 0.0))
    head_lr = float(cfg.fed.get("head_lr") or lr)
    balanced = set(cfg.fed.get("balanced_tasks") or [])
    servers = [
        ServerModule(
            m.server,
            lr=lr,
            head_lr=head_lr,
            weight_decay=wd,
            class_weights=balanced_class_weights(c.train.labels, m.server.head.num_labels)
            if c.task in balanced
            else None,
            scaler=server_grad_scaler(cfg, fed.device),
        )
        for c, m in zip(fed.data.clients, fed.models)
    ]
    clients = [
        ClientModule(c.client_id, m.client, s, comm, lr=lr, weight_decay=wd)
        for c, m, s in zip(fed.data.clients, fed.models, servers)
    ]
    orchestrator.optimizers = [[c.optimizer, s.optimizer] for c, s in zip(clients, servers)]
    loaders = [
        shuffled_loader(
            client.train, batch_size=int(cfg.fed.batch_size), seed=int(cfg.seed) * 7919 + client.client_id
        )
        for client in fed.data.clients
    ]
    trainers = [make_trainer(cfg, fed.device, [orchestrator]) for _ in range(n_clients)]
    result.client_modules, result.server_modules, result.trainers = clients, servers, trainers
    local_epochs = int(cfg.fed.local_epochs)
    participants = [k for k in range(n_clients) if not dropped[k]]
    stateful = {
        "modules": {f"model/{k}": fed.models[k] for k in participants},
        "optimizers": {
            f"optim/{k}/{i}": opt for k in participants for i, opt in enumerate(orchestrator.optimizers[k])
        },
        "generators": [loader.generator for loader in loaders],
        "scalers": {
            **{f"precision/{k}": trainers[k].precision_plugin for k in participants},
            **{f"scaler/server/{k}": servers[k].scaler for k in participants if servers[k].scaler},
        },
    }
    step_before = float(state.get("step_seconds", 0.0)) if resuming else 0.0  # earlier processes'
    if resuming:
        checkpointer.restore(**stateful)
        for trainer in trainers:
            set_completed_epochs(trainer, (start_round - 1) * local_epochs)

    progress = tqdm(
        total=(rounds - start_round + 1) * n_clients,
        desc="rounds x clients",
        unit="client",
        leave=False,
        disable=None,
    )
    for round_index in range(start_round, rounds + 1):
        round_start = time.perf_counter()
        comm.start_round(round_index)
        if round_index > 1 and _clusters_now(cfg, round_index):  # round 1's ran in _phase2
            discovery = _phase1(cfg, fed, tracker, result, round_index)
            orchestrator.groups = _without(discovery.groups(), dropped)
            if mode == "laplacian":
                orchestrator.mixing = mixing_matrix(discovery.adjacency, float(cfg.fed.eta))
        orchestrator.begin_round(round_index, participants)
        train_seconds: dict[int, float] = {}
        train_loss: dict[int, float] = {}
        for k in participants:
            progress.set_postfix(round=round_index, client=k)
            trainers[k].fit_loop.max_epochs = round_index * local_epochs
            clients[k].losses = []
            start = time.perf_counter()
            trainers[k].fit(clients[k], loaders[k])
            train_seconds[k] = time.perf_counter() - start
            train_loss[k] = statistics.fmean(clients[k].losses) if clients[k].losses else float("nan")
            progress.update(1)
        fit_seconds += sum(train_seconds.values())

        evals = {}
        for k, (client, model) in enumerate(zip(fed.data.clients, fed.models)):
            if dropped[k]:
                continue
            evals[k] = evaluate(
                model,
                client.task,
                fed.data.eval[client.task],
                batch_size=max(32, int(cfg.fed.batch_size)),
                device=fed.device,
            )
        finish_round(round_index, evals, train_loss, train_seconds, round_start)
        if checkpointer is not None:
            json_state = _json_state(result, fed, orchestrator, cumulative, fit_seconds)
            json_state["step_seconds"] = step_before + sum(c.step_seconds for c in clients)
            checkpointer.save(round_index, json_state=json_state, **stateful)
    progress.close()
    step_seconds = step_before + sum(c.step_seconds for c in clients)
    result.overhead = {
        "fit_seconds": fit_seconds,
        "step_seconds": step_seconds,
        "lightning_overhead_seconds": fit_seconds - step_seconds,
        "overhead_fraction": (fit_seconds - step_seconds) / step_seconds if step_seconds else 0.0,
        "fit_calls": rounds * len(participants),
    }
    return result


def _round_record(
    round_index: int,
    fed: Federation,
    evals: dict[int, dict[str, float]],
    train_loss: dict[int, float],
    train_seconds: dict[int, float],
    comm: CommMeter,
    orchestrator: Orchestrator,
) -> dict[str, Any]:
    clients: dict[str, dict[str, Any]] = {}
    for k, (client, model) in enumerate(zip(fed.data.clients, fed.models)):
        entry: dict[str, Any] = {
            "task": client.task,
            "cluster": fed.meta["clusters"][k],
            "device": fed.meta["devices"][k],
        }
        if k not in evals:  # dropped by Phase 2: it holds no model and is not scored
            entry.update(
                split=0,
                ranks=[],
                accuracy=None,
                primary=None,
                loss=None,
                dropped=True,
                upload_bytes=comm.upload_bytes(round_index, k),  # Phase 1 ran before the drop
                download_bytes=comm.download_bytes(round_index, k),
                train_seconds=0.0,
            )
            clients[str(client.client_id)] = entry
            continue
        metrics = evals[k]
        entry.update(
            {
                "split": model.split,
                "ranks": [model.ranks[b] for b in range(fed.backbone.num_layers)],
                "accuracy": metrics["accuracy"],
                "primary": metrics["primary"],
                "loss": metrics["loss"],
                "train_loss": train_loss.get(k, float("nan")),
                "upload_bytes": comm.upload_bytes(round_index, k),
                "download_bytes": comm.download_bytes(round_index, k),
                "dropped": k not in train_seconds,
                "train_seconds": train_seconds.get(k, 0.0),
            }
        )
        for extra in ("f1", "mcc"):
            if extra in metrics:
                entry[extra] = metrics[extra]
        entry["excluded_from_aggregation"] = k in orchestrator.excluded
        if k in orchestrator.truncation_errors:
            entry["truncation_error"] = orchestrator.truncation_errors[k]
        clients[str(client.client_id)] = entry
    scored = [c for c in clients.values() if c.get("accuracy") is not None]
    accuracies = [c["accuracy"] for c in scored]
    per_task: dict[str, dict[str, float]] = {}
    for task in fed.data.specs:
        members = [c for c in scored if c["task"] == task]
        if not members:
            continue
        per_task[task] = {
            "accuracy": statistics.fmean(c["accuracy"] for c in members),
            "primary": statistics.fmean(c["primary"] for c in members),
            "worst_primary": min(c["primary"] for c in members),
        }
    return {
        "round": round_index,
        "clients": clients,
        "mean_accuracy": statistics.fmean(accuracies),
        "worst_accuracy": min(accuracies),
        "std_accuracy": statistics.pstdev(accuracies),
        "mean_primary": statistics.fmean(c["primary"] for c in scored),
        "per_task": per_task,
        "upload_bytes": sum(c["upload_bytes"] for c in clients.values()),
        "download_bytes": sum(c["download_bytes"] for c in clients.values()),
    }
