"""Phase 2 on the coordinator: device budgets and Phase 1 importance in, each client's split and ranks out.

The maths lives in `atlas_pl.phases.memory` (what a client half costs) and `atlas_pl.phases.allocation`
(split point and budget-proportional ranks); this module reads the settings, chooses whose importance
shapes each client's ranks, and builds `allocation.json` and the W&B rank table.

Whose importance: `ablation.importance=cluster` gives every client its Phase 1 cluster's profile (ATLAS,
fedavg_cluster, and local_only, which is ATLAS without aggregation: with the same ranks, atlas at eta=0
is exactly local_only); `global` gives everyone the mean over all clients (task-agnostic fedavg); `client`
each its own profile, computed locally (HSplitLoRA).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from atlas_pl.phases.allocation import ClientAllocation, InfeasibleClientError, allocate
from atlas_pl.phases.memory import MemorySettings, ModelArch, budget_bytes, client_memory, lora_bytes
from atlas_pl.settings import DevicesSettings, Settings
from atlas_pl.tracking.results import write_json

log = logging.getLogger(__name__)

RANK_COLUMNS = ["client", "task", "device", "split", "block", "half", "rank"]


def allocation_mode(settings: Settings) -> str:
    """`uniform` when the ablation says so (SplitLoRA, centralized), else `allocation.mode`."""
    if settings.ablation.ranks == "uniform":
        return "uniform"
    return settings.allocation.mode


def importance_source(settings: Settings) -> str | None:
    """Which Phase 1 importance the allocator needs: `cluster`, `global`, or None (no importance pass)."""
    if allocation_mode(settings) != "importance":
        return None
    return settings.ablation.importance


def aggregates_by_cluster(settings: Settings) -> bool:
    """Whether Phase 1's clusters are the aggregation groups (ATLAS, fedavg_cluster; never centralized)."""
    return settings.ablation.clustering and not settings.ablation.centralized


def runs_phase1(settings: Settings) -> bool:
    """Whether the job clusters before round 1: its groups or its ranks need Phase 1's clusters.

    One rule for the orchestrator (which runs Phase 1) and preflight (which refuses `clustering.by_task`
    where no Phase 1 runs, since the oracle would then silently change nothing)."""
    return importance_source(settings) == "cluster" or aggregates_by_cluster(settings)


def memory_settings(settings: Settings) -> MemorySettings:
    """What a client really runs: the training batch, padded to data.max_len, in the loaded dtypes."""
    return MemorySettings(
        batch_size=settings.fed.batch_size,
        seq_len=settings.data.max_len,
        base_dtype=settings.model.dtype,
        lora_dtype="float32",
        attention=settings.model.attn_implementation,
        lora_dropout=settings.lora.dropout > 0,
    )


def device_budgets(devices: DevicesSettings) -> dict[str, int]:
    """Bytes per device profile: memory_gb (GiB) times the mix's `scale`."""
    return {name: budget_bytes(p.memory_gb * devices.scale) for name, p in devices.profiles.items()}


def importance_profiles(source: str, importance: np.ndarray, labels: list[int] | None) -> list[np.ndarray]:
    """One importance profile per client: its cluster's, the mean over everyone (`global`), or its own.

    Profiles need not sum to 1: `allocate` normalizes each one (and reads all-zero as uniform).
    """
    n = importance.shape[0]
    if source == "client":
        return [np.asarray(row) for row in importance]
    groups = list(labels) if source == "cluster" and labels is not None else [0] * n
    from atlas_pl.phases.fingerprint import cluster_importance  # torch: planning stays importable without

    by_group = cluster_importance(importance, groups)
    return [np.asarray(by_group[g]) for g in groups]


def fixed_allocation(
    settings: Settings, arch: ModelArch, client_ids: Sequence[int], devices: Sequence[str]
) -> list[ClientAllocation]:
    """`allocation.mode=fixed`: model.split_point and lora.rank for everyone, with their memory recorded."""
    memory_cfg = memory_settings(settings)
    budgets = device_budgets(settings.devices)
    split, rank = settings.model.split_point, settings.lora.rank
    ranks = dict.fromkeys(range(arch.num_layers), rank)
    memory = client_memory(arch, split, ranks, memory_cfg)
    server = lora_bytes(arch, ranks, range(split, arch.num_layers), memory_cfg.lora_dtype)
    return [
        ClientAllocation(
            client=c,
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
        for c, d in zip(client_ids, devices)
    ]


def plan(
    settings: Settings,
    arch: ModelArch,
    client_ids: Sequence[int],
    devices: Sequence[str],
    importance: np.ndarray | None = None,
    labels: list[int] | None = None,
) -> list[ClientAllocation]:
    """Split and ranks for every client (raises InfeasibleClientError unless drop_infeasible)."""
    mode = allocation_mode(settings)
    if mode == "fixed":
        return fixed_allocation(settings, arch, client_ids, devices)
    source = importance_source(settings)
    profiles = None
    if source is not None and importance is not None:
        profiles = importance_profiles(source, importance, labels)
    alloc = settings.allocation
    try:
        return _allocate(settings, arch, client_ids, devices, profiles, mode)
    except InfeasibleClientError as err:
        if not alloc.host_reserve:
            raise
        raise InfeasibleClientError(
            err.client, err.device, err.budget, err.memory, err.rank, err.split, alloc.host_reserve
        ) from None


def _allocate(
    settings: Settings,
    arch: ModelArch,
    client_ids: Sequence[int],
    devices: Sequence[str],
    profiles: list[np.ndarray] | None,
    mode: str,
) -> list[ClientAllocation]:
    alloc = settings.allocation
    return allocate(
        arch,
        list(devices),
        own_half_budgets(settings),
        memory_settings(settings),
        profiles,
        candidates=list(alloc.rank_candidates),
        mode=mode,
        uniform_rank=alloc.uniform_rank if mode == "uniform" else None,
        split=alloc.split,
        max_split=max_split(settings, arch.num_layers),
        drop_infeasible=alloc.drop_infeasible,
        client_ids=list(client_ids),
    )


def own_half_budgets(settings: Settings) -> dict[str, int]:
    """What Phase 2 may spend on a client's own half: the device's budget less `allocation.host_reserve`,
    the share kept for the peers' segments it will host under topology=p2p."""
    keep = 1.0 - settings.allocation.host_reserve
    return {name: int(budget * keep) for name, budget in device_budgets(settings.devices).items()}


def max_split(settings: Settings, num_layers: int) -> int | None:
    """`allocation.max_split`, or under topology=p2p L - 2: with L - 1 blocks on every device of a
    cluster, no peer could take anyone's last block without then holding the whole model."""
    if settings.allocation.max_split is not None:
        return settings.allocation.max_split
    return num_layers - 2 if settings.topology.p2p else None


def allocation_record(
    settings: Settings,
    tasks: Sequence[str],
    allocations: list[ClientAllocation],
    built: Sequence[tuple[int, list[int]] | None],
    num_layers: int,
) -> dict[str, Any]:
    """The `allocation.json` object of DESIGN.md §7: settings, budgets, and one entry per client.

    `built[k]` is (split, ranks) read back from client k's built modules (None for a dropped client).
    """
    clients = []
    for task, alloc, read_back in zip(tasks, allocations, built):
        entry = {"task": task, **alloc.to_json()}
        if read_back is not None:  # what the built modules really hold
            entry["built_ranks"] = read_back[1]
            entry["built_split"] = read_back[0]
        clients.append(entry)
    return {
        "mode": allocation_mode(settings),
        "importance_source": importance_source(settings),
        "rank_candidates": sorted(set(settings.allocation.rank_candidates)),
        "settings": asdict(memory_settings(settings)),  # dtypes are names here, so JSON-ready
        "devices": {
            "mix": settings.devices.name,
            "scale": settings.devices.scale,
            "budgets_bytes": device_budgets(settings.devices),
        },
        "num_layers": num_layers,
        "clients": clients,
    }


def write_allocation(out_dir: Path, record: dict[str, Any]) -> None:
    write_json(out_dir / "allocation.json", record)


def rank_rows(
    client_ids: Sequence[int], tasks: Sequence[str], allocations: list[ClientAllocation]
) -> list[list[Any]]:
    """Long-format rows (one per client and block) that W&B turns into a client x block rank heatmap."""
    rows = []
    for cid, task, alloc in zip(client_ids, tasks, allocations):
        for block in sorted(alloc.ranks):
            half = "client" if block < alloc.split else "server"
            rows.append([cid, task, alloc.device, alloc.split, block, half, alloc.ranks[block]])
    return rows
