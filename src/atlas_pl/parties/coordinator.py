"""The coordinator: clusters the fingerprints, allocates splits and ranks, aggregates between rounds.

It holds the federation's policy state (clusters, aggregation groups, the personalization graph, who
Phase 2 dropped) and sees clients only through messages: `Fingerprint`s in Phase 1, importance in
Phase 2, `AdapterUpload`s in Phase 4 (the clients' true tasks reach it only to score Phase 1, and as
the clusters under the `clustering.by_task` oracle). It hosts no layers. `state_dict()` /
`load_state_dict()` are plain JSON, so a checkpoint can carry it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from atlas_pl.config_validation import ConfigError
from atlas_pl.parties.aggregation import RoundAggregation, aggregate_round
from atlas_pl.parties.discovery import Discovery, cluster_fingerprints
from atlas_pl.parties.messages import AdapterUpload, Fingerprint
from atlas_pl.parties.planning import aggregates_by_cluster, plan
from atlas_pl.phases.allocation import ClientAllocation
from atlas_pl.phases.clustering import cluster_quality
from atlas_pl.phases.fingerprint import cluster_importance
from atlas_pl.phases.memory import ModelArch
from atlas_pl.phases.personalization import mixing_matrix, rbf_adjacency
from atlas_pl.settings import Settings


def client_graph(s: Settings, coords: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Phase 4's client graph from the fingerprint coordinates: (RBF adjacency, mixing matrix at eta)."""
    adjacency = rbf_adjacency(
        coords,
        labels,
        alpha=s.graph.alpha,
        ensure_connectivity=s.graph.ensure_connectivity,
        knn=s.graph.knn,
    )
    return adjacency, mixing_matrix(adjacency, s.fed.eta)


class Coordinator:
    """Policy between rounds for `n_clients` clients with these training-set sizes."""

    def __init__(self, settings: Settings, sample_counts: Sequence[int]) -> None:
        self.settings = settings
        self.sample_counts = list(sample_counts)
        n = len(self.sample_counts)
        self.mode = "none" if settings.ablation.centralized else settings.ablation.mode
        self.clustered = aggregates_by_cluster(settings)
        # the "cluster" of metrics.jsonl: the Phase 1 label where Phase 1 ran, else the aggregation group
        one_group = self.mode != "none" and not self.clustered
        self.clusters: list[int] = [0] * n if one_group or settings.ablation.centralized else list(range(n))
        self.dropped: list[bool] = [False] * n  # Phase 2: infeasible on its device, never trains
        self.groups: list[list[int]] = [list(range(n))] if self.mode != "none" else []
        self.mixing: np.ndarray | None = None
        self.aggregated_rounds: list[int] = []
        self.allocations: list[ClientAllocation] = []
        self.discovery: Discovery | None = None

    # -- Phase 1 --------------------------------------------------------------------------------------
    def cluster(
        self,
        round_index: int,
        fingerprints: list[Fingerprint],
        true_tasks: list[str],
        *,
        sent_dim: int,
        layers_used: int,
        include_head: bool,
        epsilon: float | None,
        started: float,
    ) -> Discovery:
        """Cluster the clients' fingerprints; the groups (and the Laplacian graph) follow the clusters.

        `true_tasks` score the clusters (purity, ARI, NMI) and, only under the `clustering.by_task` oracle,
        are the clusters; a real federation's coordinator would not know them."""
        s = self.settings
        clusters, coords = cluster_fingerprints(
            fingerprints, s.clustering, s.fingerprint.dim, s.seed, tasks=true_tasks
        )
        n_blocks = len(fingerprints[0].importance) if fingerprints else 0
        imp = np.stack([f.importance for f in fingerprints]) if fingerprints else np.zeros((0, n_blocks))
        discovery = Discovery(
            round=round_index,
            clusters=clusters,
            quality=cluster_quality(clusters.labels, true_tasks),
            importance=imp,
            cluster_importance={c: v.tolist() for c, v in cluster_importance(imp, clusters.labels).items()},
            coords=coords,
            sent_dim=sent_dim,
            seconds=time.perf_counter() - started,
            epsilon=epsilon,
            layers_used=layers_used,
            include_head=include_head,
        )
        if self.mode == "laplacian":
            discovery.adjacency, self.mixing = client_graph(s, coords, clusters.labels)
        self.clusters = list(clusters.labels)
        if self.clustered:
            self.groups = self._without_dropped(discovery.groups())
        self.discovery = discovery
        return discovery

    # -- Phase 2 --------------------------------------------------------------------------------------
    def allocate(
        self,
        arch: ModelArch,
        client_ids: Sequence[int],
        devices: Sequence[str],
        importance: np.ndarray | None = None,
        labels: list[int] | None = None,
    ) -> list[ClientAllocation]:
        """Every client's split and ranks; infeasible clients are dropped (or refused, by default)."""
        allocations = plan(self.settings, arch, client_ids, devices, importance, labels)
        if all(a.dropped for a in allocations):
            raise ConfigError(
                [
                    "allocation.drop_infeasible dropped every client: no device in devices.mix can hold one "
                    "block at the minimum rank; raise the budgets (devices.scale / memory_gb) or lower "
                    "fed.batch_size / data.max_len"
                ]
            )
        self.allocations = allocations
        self.dropped = [a.dropped for a in allocations]
        self.groups = self._without_dropped(self.groups)
        return allocations

    def _without_dropped(self, groups: Sequence[Sequence[int]]) -> list[list[int]]:
        kept = [[k for k in g if not self.dropped[k]] for g in groups]
        return [g for g in kept if g]

    @property
    def participants(self) -> list[int]:
        return [k for k, dropped in enumerate(self.dropped) if not dropped]

    # -- Phase 4 --------------------------------------------------------------------------------------
    def aggregate(self, round_index: int, uploads: Mapping[int, AdapterUpload]) -> RoundAggregation | None:
        """This round's updates for the clients (None when the ablation does not aggregate)."""
        result = aggregate_round(
            uploads,
            self.sample_counts,
            aggregation=self.mode,
            groups=self.groups,
            mixing=self.mixing,
            head_aggregation=self.settings.ablation.head_aggregation,
            seed=self.settings.seed,
            round_index=round_index,
        )
        if result is not None:
            self.aggregated_rounds.append(round_index)
        return result

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "clusters": list(self.clusters),
            "dropped": list(self.dropped),
            "groups": [list(g) for g in self.groups],
            "mixing": None if self.mixing is None else self.mixing.tolist(),
            "aggregated_rounds": list(self.aggregated_rounds),
            "allocations": [a.to_json() for a in self.allocations],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.clusters = [int(c) for c in state["clusters"]]
        self.dropped = [bool(d) for d in state["dropped"]]
        self.groups = [[int(k) for k in g] for g in state["groups"]]
        mixing = state["mixing"]
        self.mixing = None if mixing is None else np.asarray(mixing, dtype=np.float64)
        self.aggregated_rounds = [int(r) for r in state["aggregated_rounds"]]
        self.allocations = [ClientAllocation.from_json(a) for a in state["allocations"]]
