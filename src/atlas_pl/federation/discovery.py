"""Phase 1 wiring: every client fingerprints itself, the server clusters the sketches.

The maths lives in `atlas_pl.phases.fingerprint` (client side) and `atlas_pl.phases.clustering` (server
side); this module only feeds them each client's own minibatches, counts the bytes that leave a client
and writes `clustering.json`. It runs before round 1 (and every `fingerprint.recluster_every` rounds)
for the ablations that cluster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from atlas_pl.data import shuffled_loader
from atlas_pl.data.federated import derive_seed
from atlas_pl.federation.comm import CommMeter
from atlas_pl.federation.setup import Federation
from atlas_pl.phases.clustering import ClusterResult, cluster_quality, reduce, select_k
from atlas_pl.phases.fingerprint import (
    client_gradients,
    cluster_importance,
    dp_sketch,
    gaussian_epsilon,
    raw_pca_vector,
    sketch_many,
)
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


def fingerprint_batches(
    data: Any, *, batches: int, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """The client's first `batches` shuffled minibatches (cycling through small data), from a private RNG.

    A dedicated generator keeps the global RNG untouched, so clustering never changes the training order.
    """
    loader = shuffled_loader(data, batch_size=batch_size, seed=seed)
    if len(loader) == 0:
        raise ValueError("a client with no training data cannot fingerprint itself")
    out: list[dict[str, torch.Tensor]] = []
    while len(out) < batches:
        for batch in loader:
            out.append(batch)
            if len(out) == batches:
                break
    return out


@dataclass
class Gradients:
    """Every client's fingerprint gradients (kept on the client) and per-block importance (sent)."""

    parts: list[list[torch.Tensor]]
    importance: list[np.ndarray]
    layers_used: int
    include_head: bool


def gradient_pass(cfg: DictConfig, fed: Federation, round_index: int) -> Gradients:
    """Each client's loss gradients on its first `fingerprint.batches` minibatches (input of Phases 1, 2)."""
    fp = cfg.fingerprint
    n_blocks = fed.backbone.num_layers
    head_shapes = {tuple(tuple(p.shape) for p in m.server.head.parameters()) for m in fed.models}
    include_head = len(head_shapes) == 1
    last_layers = min(int(fp.layers), n_blocks)
    all_parts, importance = [], []
    for client, model in zip(fed.data.clients, fed.models):
        batches = fingerprint_batches(
            client.train,
            batches=int(fp.batches),
            batch_size=int(cfg.fed.batch_size),
            seed=derive_seed(int(cfg.seed), "fingerprint", client.client_id, round_index),
        )
        batches = [{name: t.to(fed.device) for name, t in b.items()} for b in batches]
        grads = client_gradients(
            model,
            batches,
            last_layers=last_layers,
            include_head=include_head,
            class_balanced=bool(fp.get("class_balanced", True)),
        )
        all_parts.append(grads.parts)
        importance.append(grads.importance)
    return Gradients(all_parts, importance, last_layers, include_head)


def upload_importance(comm: CommMeter, k: int, importance: np.ndarray) -> None:
    """The server receives each client's per-block importance (Phase 2's input): one float per block."""
    comm.upload(k, "importance", [torch.as_tensor(importance, dtype=torch.float32)])


def measure_importance(cfg: DictConfig, fed: Federation, comm: CommMeter, round_index: int) -> np.ndarray:
    """Importance only, for ablations that allocate ranks without clustering: [n_clients, n_blocks]."""
    grads = gradient_pass(cfg, fed, round_index)
    for k, imp in enumerate(grads.importance):
        upload_importance(comm, k, imp)
    return np.stack(grads.importance)


def discover(cfg: DictConfig, fed: Federation, comm: CommMeter, round_index: int) -> Discovery:
    """Fingerprint every client on its own data, cluster on the server, score against the true tasks."""
    start = time.perf_counter()
    fp = cfg.fingerprint
    n_blocks = fed.backbone.num_layers
    dp = fp.get("dp") or {}
    dp_on = bool(dp.get("enabled", False))
    compression = str(fp.compression)
    grads = gradient_pass(cfg, fed, round_index)
    all_parts, importance = grads.parts, grads.importance
    last_layers, include_head = grads.layers_used, grads.include_head
    if compression == "raw_pca":
        sent_vectors = [raw_pca_vector(parts).float() for parts in all_parts]
    else:  # each client's own sketch; computed together only to generate the shared matrix once
        sent_vectors = sketch_many(all_parts, dim=int(fp.sketch_dim), seed=int(cfg.seed))
    vectors = []
    for k, (client, sent) in enumerate(zip(fed.data.clients, sent_vectors)):
        if dp_on and compression != "raw_pca":
            noise = torch.Generator().manual_seed(
                derive_seed(int(cfg.seed), "dp", client.client_id, round_index)
            )
            sent = dp_sketch(
                sent.cpu(), clip=float(dp.clip), noise_multiplier=float(dp.noise_multiplier), generator=noise
            )
        comm.upload(k, "fingerprint", [sent])
        upload_importance(comm, k, importance[k])
        vectors.append(sent.detach().cpu().double().numpy())
    sent_dim = int(sent_vectors[0].numel()) if sent_vectors else 0
    matrix = np.stack(vectors)
    coords = reduce(matrix, int(fp.dim))
    n = len(vectors)
    k_max = min(int(cfg.clustering.k_max), n - 1)
    if n < 3 or k_max < int(cfg.clustering.k_min):
        clusters = ClusterResult(k=1, labels=[0] * n)
        log.warning(
            "phase 1: %d clients are too few to choose k in [%s, %s]; one cluster",
            n,
            cfg.clustering.k_min,
            cfg.clustering.k_max,
        )
    else:
        clusters = select_k(
            coords,
            k_min=int(cfg.clustering.k_min),
            k_max=k_max,
            seed=int(cfg.seed),
            singleton_penalty=float(cfg.clustering.singleton_penalty),
            weights=dict(OmegaConf.to_container(cfg.clustering.weights)),
        )
    true_tasks = [c.task for c in fed.data.clients]
    imp = np.stack(importance) if importance else np.zeros((0, n_blocks))
    discovery = Discovery(
        round=round_index,
        clusters=clusters,
        quality=cluster_quality(clusters.labels, true_tasks),
        importance=imp,
        cluster_importance={c: v.tolist() for c, v in cluster_importance(imp, clusters.labels).items()},
        coords=coords,
        sent_dim=sent_dim,
        seconds=time.perf_counter() - start,
        epsilon=gaussian_epsilon(float(dp.noise_multiplier), float(dp.delta))
        if dp_on and compression != "raw_pca"
        else None,
        layers_used=last_layers,
        include_head=include_head,
    )
    log.info(
        "phase 1 (round %d): k=%d labels=%s purity=%.3f ari=%.3f nmi=%.3f (%s, %d floats per client, %.1fs)",
        round_index,
        clusters.k,
        clusters.labels,
        discovery.quality["purity"],
        discovery.quality["ari"],
        discovery.quality["nmi"],
        compression,
        sent_dim,
        discovery.seconds,
    )
    return discovery


def clustering_record(cfg: DictConfig, fed: Federation, d: Discovery) -> dict[str, Any]:
    """The `clustering.json` object of DESIGN.md §7 (the adjacency is Phase 4's; null until it exists)."""
    fp = cfg.fingerprint
    return {
        "round": d.round,
        "compression": str(fp.compression),
        "leaks_raw_gradients": str(fp.compression) == "raw_pca",
        "fingerprint_dim": d.sent_dim,
        "fingerprint_batches": int(fp.batches),
        "fingerprint_layers": d.layers_used,
        "head_in_fingerprint": d.include_head,
        "importance_outside_dp": True,  # the per-block importance is sent as is
        "class_balanced": bool(fp.get("class_balanced", True)),
        "dp": {**OmegaConf.to_container(fp.dp), "epsilon": d.epsilon} if fp.get("dp") else None,
        "pca_dim": int(d.coords.shape[1]),
        "k_search": d.table,
        "k": d.k,
        "labels": d.labels,
        "true_tasks": [c.task for c in fed.data.clients],
        "client_ids": [c.client_id for c in fed.data.clients],
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
