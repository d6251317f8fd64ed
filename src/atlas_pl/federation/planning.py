"""Phase 2 wiring: device budgets and Phase 1 importance in, each client's split and per-block ranks out.

The maths lives in `atlas_pl.phases.memory` (what a client half costs) and `atlas_pl.phases.allocation`
(split point and budget-proportional ranks); this module reads the config, chooses whose importance
shapes each client's ranks, rebuilds the client models with what was allocated, and writes
`allocation.json` and the W&B rank table.

Whose importance: `ablation.importance=cluster` gives every client its Phase 1 cluster's profile (ATLAS,
fedavg_cluster, and local_only, which is ATLAS without aggregation: with the same ranks, atlas at eta=0
is exactly local_only); `global` gives everyone the mean over all clients (task-agnostic fedavg); `client`
each its own profile, computed locally (HSplitLoRA).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from atlas_pl.federation.setup import Federation, build_client_model
from atlas_pl.phases.allocation import ClientAllocation, allocate
from atlas_pl.phases.fingerprint import cluster_importance
from atlas_pl.phases.memory import MemorySettings, ModelArch, budget_bytes, client_memory, lora_bytes
from atlas_pl.tracking.results import write_json

log = logging.getLogger(__name__)

RANK_COLUMNS = ["client", "task", "device", "split", "block", "half", "rank"]


def allocation_mode(cfg: DictConfig) -> str:
    """`uniform` when the ablation says so (SplitLoRA, centralized), else `allocation.mode`."""
    if str(cfg.ablation.get("ranks", "allocated")) == "uniform":
        return "uniform"
    return str(cfg.allocation.mode)


def importance_source(cfg: DictConfig) -> str | None:
    """Which Phase 1 importance the allocator needs: `cluster`, `global`, or None (no importance pass)."""
    if allocation_mode(cfg) != "importance":
        return None
    return str(cfg.ablation.get("importance", "global"))


def memory_settings(cfg: DictConfig) -> MemorySettings:
    """What a client really runs: the training batch, padded to data.max_len, in the loaded dtypes."""
    return MemorySettings(
        batch_size=int(cfg.fed.batch_size),
        seq_len=int(cfg.data.max_len),
        base_dtype=str(cfg.model.dtype),
        lora_dtype="float32",
        attention=str(cfg.model.attn_implementation),
        lora_dropout=float(cfg.lora.dropout) > 0,
    )


def device_budgets(cfg: DictConfig) -> dict[str, int]:
    """Bytes per device profile: memory_gb (GiB) times the mix's `scale`."""
    scale = float(cfg.devices.get("scale", 1.0))
    return {name: budget_bytes(float(p.memory_gb) * scale) for name, p in cfg.devices.profiles.items()}


def importance_profiles(source: str, importance: np.ndarray, labels: list[int] | None) -> list[np.ndarray]:
    """One importance profile per client: its cluster's, the mean over everyone (`global`), or its own.

    Profiles need not sum to 1: `allocate` normalizes each one (and reads all-zero as uniform).
    """
    n = importance.shape[0]
    if source == "client":
        return [np.asarray(row) for row in importance]
    groups = list(labels) if source == "cluster" and labels is not None else [0] * n
    by_group = cluster_importance(importance, groups)
    return [np.asarray(by_group[g]) for g in groups]


def fixed_allocation(cfg: DictConfig, fed: Federation, devices: list[str]) -> list[ClientAllocation]:
    """`allocation.mode=fixed`: model.split_point and lora.rank for everyone, with their memory recorded."""
    arch = ModelArch.from_backbone(fed.backbone)
    settings = memory_settings(cfg)
    budgets = device_budgets(cfg)
    split, rank = int(cfg.model.split_point), int(cfg.lora.rank)
    ranks = dict.fromkeys(range(arch.num_layers), rank)
    memory = client_memory(arch, split, ranks, settings)
    server = lora_bytes(arch, ranks, range(split, arch.num_layers), settings.lora_dtype)
    return [
        ClientAllocation(
            client=c.client_id,
            device=d,
            budget_bytes=budgets[d],
            split=split,
            ranks=dict(ranks),
            rank_star=rank,
            rank_budget=rank * arch.num_layers,
            memory=memory,
            adapter_bytes=memory.lora_params,
            server_adapter_bytes=server.param_bytes,
        )
        for c, d in zip(fed.data.clients, devices)
    ]


def plan(
    cfg: DictConfig,
    fed: Federation,
    devices: list[str],
    importance: np.ndarray | None = None,
    labels: list[int] | None = None,
) -> list[ClientAllocation]:
    """Split and ranks for every client (raises InfeasibleClientError unless drop_infeasible)."""
    mode = allocation_mode(cfg)
    if mode == "fixed":
        return fixed_allocation(cfg, fed, devices)
    source = importance_source(cfg)
    profiles = None
    if source is not None and importance is not None:
        profiles = importance_profiles(source, importance, labels)
    split = cfg.allocation.get("split", "auto")
    uniform_rank = cfg.allocation.get("uniform_rank")
    return allocate(
        ModelArch.from_backbone(fed.backbone),
        devices,
        device_budgets(cfg),
        memory_settings(cfg),
        profiles,
        candidates=list(cfg.allocation.rank_candidates),
        mode=mode,
        uniform_rank=int(uniform_rank) if uniform_rank is not None and mode == "uniform" else None,
        split=None if split in (None, "auto") else int(split),
        drop_infeasible=bool(cfg.allocation.drop_infeasible),
        client_ids=[c.client_id for c in fed.data.clients],
    )


def apply_allocation(cfg: DictConfig, fed: Federation, allocations: list[ClientAllocation]) -> None:
    """Rebuild every kept client's model with its allocated split and ranks (the base stays shared).

    A dropped client keeps its untrained placeholder model; the loop never trains, aggregates or scores it.
    Initial LoRA factors and heads depend only on the seed and the module, so a rebuilt model starts from
    the same function as the one Phase 1 fingerprinted.
    """
    fed.meta["dropped"] = [a.dropped for a in allocations]
    if all(fed.meta["dropped"]):
        raise ValueError(
            "allocation.drop_infeasible dropped every client: no device in devices.mix can hold one "
            "block at the minimum rank; raise the budgets (devices.scale / memory_gb) or lower "
            "fed.batch_size / data.max_len"
        )
    for k, (client, alloc) in enumerate(zip(fed.data.clients, allocations)):
        if alloc.dropped:
            continue
        fed.models[k] = build_client_model(
            cfg, fed.backbone, fed.data.specs[client.task].num_labels, alloc.split, alloc.ranks
        ).to(fed.device)
    for a in allocations:
        if a.dropped:
            log.info("phase 2: client %s (%s) dropped", a.client, a.device)
        else:
            log.info(
                "phase 2: client %s (%s): split %d, ranks %s, client half %.1f MiB of %.1f MiB",
                a.client,
                a.device,
                a.split,
                [a.ranks[b] for b in sorted(a.ranks)],
                a.memory.total / 2**20,
                a.budget_bytes / 2**20,
            )


def allocation_record(
    cfg: DictConfig, fed: Federation, allocations: list[ClientAllocation]
) -> dict[str, Any]:
    """The `allocation.json` object of DESIGN.md §7: settings, budgets, and one entry per client."""
    settings = memory_settings(cfg)
    budgets = device_budgets(cfg)
    clients = []
    for k, (client, alloc) in enumerate(zip(fed.data.clients, allocations)):
        entry = {"task": client.task, **alloc.to_json()}
        if not alloc.dropped:  # what the built modules really hold, read back from them
            model = fed.models[k]
            entry["built_ranks"] = [model.ranks[b] for b in range(fed.backbone.num_layers)]
            entry["built_split"] = model.split
        clients.append(entry)
    return {
        "mode": allocation_mode(cfg),
        "importance_source": importance_source(cfg),
        "rank_candidates": sorted({int(r) for r in cfg.allocation.rank_candidates}),
        "settings": asdict(settings),  # dtypes are names here (memory_settings), so JSON-ready
        "devices": {
            "mix": str(cfg.devices.get("name", "")),
            "scale": float(cfg.devices.get("scale", 1.0)),
            "budgets_bytes": budgets,
        },
        "num_layers": fed.backbone.num_layers,
        "clients": clients,
    }


def write_allocation(out_dir: Path, record: dict[str, Any]) -> None:
    write_json(out_dir / "allocation.json", record)


def rank_rows(fed: Federation, allocations: list[ClientAllocation]) -> list[list[Any]]:
    """Long-format rows (one per client and block) that W&B turns into a client x block rank heatmap."""
    rows = []
    for client, alloc in zip(fed.data.clients, allocations):
        for block in sorted(alloc.ranks):
            half = "client" if block < alloc.split else "server"
            rows.append(
                [client.client_id, client.task, alloc.device, alloc.split, block, half, alloc.ranks[block]]
            )
    return rows
