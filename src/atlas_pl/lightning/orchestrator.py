"""The federated orchestrator: a Lightning Callback that runs Phases 1, 2 and 4 by calling the coordinator.

Every client's Trainer carries the same orchestrator. Before round 1 (and at a re-clustering round)
it has the clients fingerprint themselves and the coordinator cluster them (Phase 1) and allocate
splits and ranks (Phase 2); when the last participating client of a round finishes its local training
(`on_train_end`), it gathers every participant's adapter as plain tensors, asks the coordinator for the
round's aggregation (Phase 4), and hands each party its update. It does no maths itself, and it times
itself: `seconds` per round is the round's `orchestration_seconds`, kept out of every client's
training time.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from atlas_pl.lightning.modules import ClientModule
from atlas_pl.parties.aggregation import RoundAggregation
from atlas_pl.parties.client import ClientParty
from atlas_pl.parties.coordinator import Coordinator
from atlas_pl.parties.discovery import (
    K_SEARCH_COLUMNS,
    Discovery,
    clustering_record,
    dp_epsilon,
    k_search_rows,
    privatize,
    sent_vectors,
    write_clustering,
)
from atlas_pl.parties.host import ServerHost, selected
from atlas_pl.parties.link import COORDINATOR, SERVER
from atlas_pl.parties.messages import AdapterUpload, Fingerprint
from atlas_pl.parties.peers import (
    ROUTE_COLUMNS,
    hop_names,
    pairing_record,
    peer_clients,
    plan_routes,
    route_rows,
    write_pairing,
)
from atlas_pl.parties.planning import (
    RANK_COLUMNS,
    allocation_record,
    importance_source,
    rank_rows,
    runs_phase1,
    write_allocation,
)
from atlas_pl.phases.allocation import ClientAllocation
from atlas_pl.phases.memory import ModelArch
from atlas_pl.phases.pairing import PeerClient, Route
from atlas_pl.settings import Settings
from atlas_pl.tracking.tracker import Tracker

log = logging.getLogger(__name__)

Rebuild = Callable[[ClientParty, ClientAllocation], None]


class FederatedOrchestrator(pl.Callback):
    """Between-round work over the parties; `seconds[round]` is what it cost."""

    def __init__(
        self,
        settings: Settings,
        coordinator: Coordinator,
        parties: Sequence[ClientParty],
        host: ServerHost,
        tracker: Tracker,
        device: torch.device,
    ) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self.parties = list(parties)
        self.host = host
        self.tracker = tracker
        self.device = device
        self.round = 0
        self.routes: dict[int, Route] = {}  # topology=p2p: client index -> its hosts (Phase 2's end)
        self.pairing_clusters: list[int] = []  # the clusters the routes were made from
        self.pairing_missing: dict[int, int | None] = {}  # each device's block left to others
        self.members: list[int] | None = None  # this round's aggregated clients (None: every participant)
        self.uploaded: list[int] = []  # whose server halves reached the coordinator this round
        self.peer_clients: list[PeerClient] = []  # what pairing and simulated time price
        self.arch: ModelArch | None = None
        self.pending: set[int] = set()
        self.seconds: dict[int, float] = defaultdict(float)
        self.aggregation_seconds = 0.0  # this round's Phase 4, which runs inside the last client's fit
        # the clients' fingerprinting passes (part of `seconds`): Phase 1's compute, not the server's
        self.fingerprint_seconds: dict[int, float] = defaultdict(float)
        self.excluded: set[int] = set()
        self.truncation_errors: dict[int, float] = {}
        # JSON views of the discoveries, kept so a resumed job can rewrite clustering.json and summary.json
        self.clustering_records: list[dict[str, Any]] = []
        self.clustering_summaries: list[dict[str, Any]] = []

    @property
    def models(self) -> list[Any]:
        """The clients' current models (what a test or a notebook inspects between rounds)."""
        return [p.model for p in self.parties]

    # -- Phase 1 --------------------------------------------------------------------------------------
    def _include_head(self) -> bool:
        """The head joins the fingerprint only where every client's head has the same shape."""
        heads = {tuple(tuple(p.shape) for p in c.model.server.head.parameters()) for c in self.parties}
        return len(heads) == 1

    def _gradients(self, round_index: int) -> list[Any]:
        started = time.perf_counter()
        include_head = self._include_head()
        grads = [
            party.fingerprint_gradients(
                self.settings.fingerprint,
                round_index,
                batch_size=self.settings.fed.batch_size,
                include_head=include_head,
                device=self.device,
            )
            for party in self.parties
        ]
        self.fingerprint_seconds[round_index] += time.perf_counter() - started
        return grads

    def measure_importance(self, round_index: int) -> np.ndarray:
        """Importance only, for ablations that allocate ranks without clustering: [n_clients, n_blocks]."""
        grads = self._gradients(round_index)
        for party, g in zip(self.parties, grads):
            party.send("importance", [torch.as_tensor(g.importance, dtype=torch.float32)])
        return np.stack([g.importance for g in grads])

    def fingerprints(self, round_index: int) -> list[Fingerprint]:
        """What every client sends in Phase 1 (its privatized sketch and its importance), counted as sent.

        An engine whose clients run elsewhere (Flower) asks them for these instead."""
        s = self.settings
        fp = s.fingerprint
        grads = self._gradients(round_index)
        vectors = sent_vectors(grads, fp, s.seed)
        fingerprints = []
        for party, g, vector in zip(self.parties, grads, vectors):
            sent = privatize(vector, fp, s.seed, party.data.client_id, round_index)
            fingerprints.append(Fingerprint(party.index, sent, g.importance))
        self.count_fingerprints(fingerprints)
        return fingerprints

    def count_fingerprints(self, fingerprints: Sequence[Fingerprint]) -> None:
        for f in fingerprints:
            party = self.parties[f.client]
            party.send("fingerprint", [f.vector])
            party.send("importance", [torch.as_tensor(f.importance, dtype=torch.float32)])

    def phase1(self, round_index: int) -> Discovery:
        """Every client fingerprints itself; the coordinator clusters; the outcome is recorded."""
        started = time.perf_counter()
        fp = self.settings.fingerprint
        fingerprints = self.fingerprints(round_index)
        discovery = self.coordinator.cluster(
            round_index,
            fingerprints,
            [p.task for p in self.parties],
            sent_dim=int(fingerprints[0].vector.numel()) if fingerprints else 0,
            layers_used=min(fp.layers, len(self.parties[0].model.ranks)),
            include_head=self._include_head(),
            epsilon=dp_epsilon(fp),
            started=started,
        )
        self._record_discovery(discovery)
        return discovery

    def _record_discovery(self, discovery: Discovery) -> None:
        log.info(
            "phase 1 (round %d): k=%d labels=%s purity=%.3f ari=%.3f nmi=%.3f (%s, %d floats per client, "
            "%.1fs)",
            discovery.round,
            discovery.k,
            discovery.labels,
            discovery.quality["purity"],
            discovery.quality["ari"],
            discovery.quality["nmi"],
            self.settings.fingerprint.compression,
            discovery.sent_dim,
            discovery.seconds,
        )
        if discovery.adjacency is not None:
            a = discovery.adjacency
            rows = [
                [discovery.round, i, j, float(a[i, j])] for i in range(a.shape[0]) for j in range(a.shape[1])
            ]
            self.tracker.log_table(
                "graph/adjacency", ["round", "from", "to", "weight"], rows, round_index=discovery.round
            )
        self.clustering_records.append(
            clustering_record(
                self.settings.fingerprint,
                discovery,
                [p.task for p in self.parties],
                [p.data.client_id for p in self.parties],
            )
        )
        self.clustering_summaries.append(
            {
                "round": discovery.round,
                "k": discovery.k,
                "labels": discovery.labels,
                **discovery.quality,
                "seconds": discovery.seconds,
            }
        )
        write_clustering(self.tracker.out_dir, self.clustering_records)
        self.tracker.log_table(
            "clustering/k_search",
            ["round", *K_SEARCH_COLUMNS],
            k_search_rows(discovery),
            round_index=discovery.round,
        )

    # -- Phase 2 (before round 1) ----------------------------------------------------------------------
    def prepare(self, arch: ModelArch, devices: Sequence[str], rebuild: Rebuild) -> list[ClientAllocation]:
        """Phase 1 where needed, then each client's split and ranks; parties rebuilt to match.

        Feasibility does not depend on importance, so an impossible device mix is refused before the
        fingerprinting passes, not after.
        """
        started = time.perf_counter()
        ids = [p.data.client_id for p in self.parties]
        if not self.settings.allocation.drop_infeasible:
            self.coordinator.allocate(arch, ids, devices)
        source = importance_source(self.settings)
        importance, labels = None, None
        if runs_phase1(self.settings):
            discovery = self.phase1(1)
            importance, labels = discovery.importance, list(discovery.labels)
        elif source in ("global", "client"):
            importance = self.measure_importance(1)
        allocations = self.coordinator.allocate(arch, ids, devices, importance, labels)
        for party, alloc in zip(self.parties, allocations):
            if not alloc.dropped:
                rebuild(party, alloc)
        _log_allocations(allocations)
        built = [
            None if a.dropped else (p.model.split, [p.model.ranks[b] for b in range(arch.num_layers)])
            for p, a in zip(self.parties, allocations)
        ]
        tasks = [p.task for p in self.parties]
        write_allocation(
            self.tracker.out_dir, allocation_record(self.settings, tasks, allocations, built, arch.num_layers)
        )
        self.tracker.log_table(
            "allocation/ranks", RANK_COLUMNS, rank_rows(ids, tasks, allocations), round_index=1
        )
        if self.settings.topology.p2p:
            self.pair_peers(arch, allocations)
        self.seconds[1] += time.perf_counter() - started
        return allocations

    def pair_peers(
        self,
        arch: ModelArch,
        allocations: Sequence[ClientAllocation],
        clusters: Sequence[int] | None = None,
        *,
        record: bool = True,
    ) -> None:
        """topology=p2p: each kept client's route of peer hosts; raises PairingError.

        `clusters` are the ones the routes were first made from (a resumed job passes the saved ones,
        since re-clustering may have changed the coordinator's since); `record` writes pairing.json and
        the W&B table (a resumed job has them already).
        """
        self.pairing_clusters = list(self.coordinator.clusters if clusters is None else clusters)
        clients = self.peer_clients_for(allocations, self.pairing_clusters)
        pairing = plan_routes(self.settings, arch, clients)
        self.routes = {r.client: r for r in pairing.routes}
        self.pairing_missing = dict(pairing.missing)
        self.peer_clients, self.arch = clients, arch
        if not record:
            return
        write_pairing(self.tracker.out_dir, pairing_record(self.settings, arch, clients, pairing))
        self.tracker.log_table("pairing/routes", ROUTE_COLUMNS, route_rows(pairing.routes), round_index=1)
        for route in pairing.routes:
            log.info(
                "pairing: client %d -> %s",
                route.client,
                ", ".join(f"{h}[{s.start},{s.stop})" for h, s in zip(hop_names(route), route.segments)),
            )

    def peer_clients_for(
        self, allocations: Sequence[ClientAllocation], clusters: Sequence[int]
    ) -> list[PeerClient]:
        return peer_clients(
            self.settings,
            allocations,
            clusters,
            [len(p.data.train) for p in self.parties],
            [sum(t.numel() for t in p.model.server.head.parameters()) for p in self.parties],
        )

    # -- a round ----------------------------------------------------------------------------------------
    def start_round(
        self, round_index: int, training: Sequence[int] | None = None, members: Sequence[int] | None = None
    ) -> None:
        """Re-cluster when due (round 1's ran in `prepare`); then wait for this round's `training`
        clients (every participant by default) and aggregate `members` (those on time)."""
        self.round = round_index
        self.pending = set(self.coordinator.participants if training is None else training)
        self.members = None if members is None else list(members)
        self.uploaded = []
        self.excluded, self.truncation_errors = set(), {}
        self.aggregation_seconds = 0.0
        every = self.settings.fingerprint.recluster_every
        if round_index > 1 and self.coordinator.clustered and every > 0 and (round_index - 1) % every == 0:
            started = time.perf_counter()
            self.phase1(round_index)
            self.seconds[round_index] += time.perf_counter() - started

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(pl_module, ClientModule):
            self.finished_training([pl_module.client_id])

    def finished_training(self, clients: Sequence[int]) -> None:
        """These clients are done with the round's local training; after the last, Phase 4 runs (timed)."""
        self.pending.difference_update(clients)
        if not self.pending:
            started = time.perf_counter()
            self.between_rounds()
            self.aggregation_seconds = time.perf_counter() - started
            self.seconds[self.round] += self.aggregation_seconds

    def between_rounds(self) -> RoundAggregation | None:
        """Phase 4: every participant's adapter to the coordinator, each update back to its owner."""
        participants = self.coordinator.participants if self.members is None else self.members
        uploads = {k: self._upload(k) for k in participants}
        result = self.coordinator.aggregate(self.round, uploads)
        if result is None:
            return None
        for k in result.senders:
            self.parties[k].upload_adapter()
            self._count_server_half(k, to_coordinator=True)
        for k, update in result.updates.items():
            self.parties[k].apply(update)
            self.host.apply(update)
        for k in result.receivers:
            self.parties[k].receive_adapter()
            self._count_server_half(k, to_coordinator=False)
        self.uploaded = sorted(set(result.senders))
        self.excluded = set(result.excluded)
        self.truncation_errors = dict(result.truncation_errors)
        return result

    def _count_server_half(self, k: int, *, to_coordinator: bool) -> None:
        """topology=p2p: each host of k's route sends its blocks' adapter (and the head) to the
        coordinator, and gets the result back; under topology=server they are one machine (no link)."""
        route = self.routes.get(k)
        if route is None:
            return
        ledger = self.parties[k].ledger
        half = self.host.modules[k].server_half
        for name, segment in zip(hop_names(route), route.segments):
            if name == SERVER:
                continue
            tensors = selected(half, set(range(segment.start, segment.stop)), segment.head)
            source, destination = (name, COORDINATOR) if to_coordinator else (COORDINATOR, name)
            ledger.send(source, destination, "server_adapter", tensors)

    def _upload(self, k: int) -> AdapterUpload:
        client_factors, client_scaling = self.parties[k].factors()
        server_factors, server_scaling, head = self.host.factors(k)
        return AdapterUpload(
            client=k,
            factors={**client_factors, **server_factors},
            scaling={**client_scaling, **server_scaling},
            head=head,
        )


def _log_allocations(allocations: list[ClientAllocation]) -> None:
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
