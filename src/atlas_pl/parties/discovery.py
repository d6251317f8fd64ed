"""Phase 1 between the parties: what a client sends (sketch, DP), how the coordinator clusters it.

The maths lives in `atlas_pl.phases.fingerprint` (client side) and `atlas_pl.phases.clustering` (server
side); this module holds the pieces the orchestrator wires together, the `Discovery` outcome, and the
`clustering.json` record. It runs before round 1 (and every `fingerprint.recluster_every` rounds) for
the ablations that cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlas_pl.data.federated import derive_seed
from atlas_pl.parties.messages import Fingerprint
from atlas_pl.phases.clustering import ClusterResult, clusters_by_task, reduce, select_k
from atlas_pl.phases.fingerprint import (
    FingerprintGrads,
    dp_sketch,
    gaussian_epsilon,
    raw_pca_vector,
    sketch_many,
)
from atlas_pl.settings import ClusteringSettings, FingerprintSettings
from atlas_pl.tracking.results import write_json

log = logging.getLogger(__name__)

K_SEARCH_COLUMNS = ["k", "silhouette", "davies_bouldin", "calinski_harabasz", "singletons", "combined"]


@dataclass
class Discovery:
    """The outcome of one Phase 1 pass: clusters, importance and what it cost."""

    round: int
    clusters: ClusterResult
    quality: dict[str, float]
    importance: np.ndarray  # [n_clients, n_blocks]
    cluster_importance: dict[int, list[float]]
    coords: np.ndarray  # the server's PCA coordinates, one row per client (Phase 4's graph uses them)
    sent_dim: int
    seconds: float
    layers_used: int
    include_head: bool
    epsilon: float | None = None
    adjacency: np.ndarray | None = None  # Phase 4's row-normalized graph, when personalization uses it

    @property
    def labels(self) -> list[int]:
        return self.clusters.labels

    @property
    def k(self) -> int:
        return self.clusters.k

    @property
    def table(self) -> list[dict[str, Any]]:
        return self.clusters.table

    def groups(self) -> list[list[int]]:
        return self.clusters.groups()


def sent_vectors(grads: list[FingerprintGrads], fp: FingerprintSettings, seed: int) -> list[torch.Tensor]:
    """What each client sends: its JL sketch (or, for raw_pca, its whole gradient vector).

    `sketch_many` is bitwise equal to each client sketching on its own; in one process it generates the
    shared projection once instead of once per client (a simulation shortcut, not a protocol change).
    """
    if fp.compression == "raw_pca":
        return [raw_pca_vector(g.parts).float() for g in grads]
    return sketch_many([g.parts for g in grads], dim=fp.sketch_dim, seed=seed)


def privatize(vector: torch.Tensor, fp: FingerprintSettings, seed: int, client_id: int, round_index: int):
    """The Gaussian mechanism on a sketch when fingerprint.dp is on (never on raw_pca vectors)."""
    if fp.dp is None or not fp.dp.enabled or fp.compression == "raw_pca":
        return vector
    noise = torch.Generator().manual_seed(derive_seed(seed, "dp", client_id, round_index))
    return dp_sketch(vector.cpu(), clip=fp.dp.clip, noise_multiplier=fp.dp.noise_multiplier, generator=noise)


def dp_epsilon(fp: FingerprintSettings) -> float | None:
    if fp.dp is None or not fp.dp.enabled or fp.compression == "raw_pca":
        return None
    return gaussian_epsilon(fp.dp.noise_multiplier, fp.dp.delta)


def cluster_fingerprints(
    fingerprints: list[Fingerprint],
    clustering: ClusteringSettings,
    pca_dim: int,
    seed: int,
    tasks: Sequence[str] = (),
) -> tuple[ClusterResult, np.ndarray]:
    """The coordinator's side of Phase 1: standardize + PCA the sketches, choose k, cluster.

    With `clustering.by_task` the clients' `tasks` are the clusters and no k is searched (an oracle that
    measures what discovery costs); the coordinates are still computed, for Phase 4's graph."""
    matrix = np.stack([f.vector.detach().cpu().double().numpy() for f in fingerprints])
    coords = reduce(matrix, pca_dim)
    if clustering.by_task:
        return clusters_by_task(tasks), coords
    n = len(fingerprints)
    k_max = min(clustering.k_max, n - 1)
    if n < 3 or k_max < clustering.k_min:
        log.warning(
            "phase 1: %d clients are too few to choose k in [%s, %s]; one cluster",
            n,
            clustering.k_min,
            clustering.k_max,
        )
        return ClusterResult(k=1, labels=[0] * n), coords
    clusters = select_k(
        coords,
        k_min=clustering.k_min,
        k_max=k_max,
        seed=seed,
        singleton_penalty=clustering.singleton_penalty,
        weights=dict(clustering.weights),
    )
    return clusters, coords


def clustering_record(
    fp: FingerprintSettings, d: Discovery, true_tasks: list[str], client_ids: list[int]
) -> dict[str, Any]:
    """The `clustering.json` object of DESIGN.md §7 (the adjacency is Phase 4's; null until it exists)."""
    return {
        "round": d.round,
        "compression": fp.compression,
        "leaks_raw_gradients": fp.compression == "raw_pca",
        "fingerprint_dim": d.sent_dim,
        "fingerprint_batches": fp.batches,
        "fingerprint_layers": d.layers_used,
        "head_in_fingerprint": d.include_head,
        "importance_outside_dp": True,  # the per-block importance is sent as is
        "class_balanced": fp.class_balanced,
        "dp": {**fp.dp.as_json(), "epsilon": d.epsilon} if fp.dp is not None else None,
        "pca_dim": int(d.coords.shape[1]),
        "k_search": d.table,
        "k": d.k,
        "labels": d.labels,
        "true_tasks": list(true_tasks),
        "client_ids": list(client_ids),
        **d.quality,
        "importance": d.importance.tolist(),
        "cluster_importance": {str(c): v for c, v in d.cluster_importance.items()},
        "coords": d.coords.tolist(),
        "adjacency": None if d.adjacency is None else d.adjacency.tolist(),
        "seconds": d.seconds,
    }


def write_clustering(out_dir: Path, records: list[dict[str, Any]]) -> None:
    """The latest clustering at the top level, earlier re-clusterings under `history`."""
    latest = dict(records[-1])
    latest["history"] = [{"round": r["round"], "k": r["k"], "labels": r["labels"]} for r in records]
    write_json(out_dir / "clustering.json", latest)


def k_search_rows(d: Discovery) -> list[list[Any]]:
    """The k-search table for W&B, each row tagged with the round it was computed before."""
    return [[d.round, *(row.get(col) for col in K_SEARCH_COLUMNS)] for row in d.table]
