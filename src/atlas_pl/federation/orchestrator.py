"""The between-round work of the server, as a Lightning Callback.

Every client's Trainer carries the same Orchestrator. When the last participating client of a round
finishes its local training (`on_train_end`), the orchestrator runs the ablation's aggregation over the
groups it knows (all clients for fedavg; none for local_only). The maths lives in
`atlas_pl.phases.aggregation`; this class only gathers factors, calls it and writes the results back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning.pytorch as pl
import torch

from atlas_pl.federation.comm import CommMeter
from atlas_pl.models.split import SplitClientModel
from atlas_pl.phases.aggregation import LowRank, normalized_weights, stack, svd_from_factors, truncate

log = logging.getLogger(__name__)


class Orchestrator(pl.Callback):
    """Runs aggregation once per round, after the last participating client has trained."""

    def __init__(
        self,
        models: Sequence[SplitClientModel],
        sample_counts: Sequence[int],
        comm: CommMeter,
        *,
        aggregation: str,
        groups: Sequence[Sequence[int]] | None,
        head_aggregation: str = "local",
    ) -> None:
        self.models = list(models)
        self.sample_counts = list(sample_counts)
        self.comm = comm
        self.aggregation = aggregation
        self.head_aggregation = head_aggregation
        self.groups = [list(g) for g in groups] if groups else []
        self.pending: set[int] = set()
        self.round = 0
        self.truncation_errors: dict[int, float] = {}
        self.excluded: set[int] = set()
        self.aggregated_rounds: list[int] = []

    def begin_round(self, round_index: int, participants: Sequence[int]) -> None:
        self.round = round_index
        self.pending = set(participants)
        self.truncation_errors = {}
        self.excluded = set()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pending.discard(pl_module.client_id)
        if not self.pending:
            self.between_rounds()

    def between_rounds(self) -> None:
        if self.aggregation == "none" or not self.groups:
            return
        for group in self.groups:
            if len(group) > 1:
                self._aggregate_group(group)
        self.aggregated_rounds.append(self.round)

    def _finite(self, k: int) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.models[k].parameters())

    @torch.no_grad()
    def _aggregate_group(self, members: list[int]) -> None:
        """Exact weighted sum of every module's dW over the group, redistributed to each client's ranks.

        A client whose state is not finite is left out of the sum (and logged); it still receives the
        aggregate of the others, which is how it recovers.
        """
        group = [k for k in members if self._finite(k)]
        for k in sorted(set(members) - set(group)):
            log.warning(
                "round %d: client %d has a non-finite update; excluded from aggregation", self.round, k
            )
            self.excluded.add(k)
        if not group:
            return
        weights = normalized_weights([self.sample_counts[k] for k in group])
        adapters = {k: (self.models[k].client.adapter, self.models[k].server.adapter) for k in members}
        for k in group:  # each client uploads its client-half adapter; the server half is already there
            self.comm.upload(k, "adapter", self.models[k].client.adapter.parameters())
        keys = sorted(set().union(*(a.keys + s.keys for a, s in adapters.values())))
        errors: dict[int, list[float]] = {k: [] for k in members}
        for key in keys:
            owner = {k: adapters[k][0] if key[0] < self.models[k].split else adapters[k][1] for k in members}
            updates = []
            for k in group:
                a, b = owner[k].pair(key)
                updates.append(LowRank(a.detach(), b.detach(), owner[k].scaling(key[0])))
            u, s, vh = svd_from_factors(*stack(updates, weights))
            for k, adapter in owner.items():
                a, b = adapter.pair(key)
                new_a, new_b, err = truncate(u, s, vh, a.shape[0], adapter.scaling(key[0]))
                a.copy_(new_a.to(a.dtype))
                b.copy_(new_b.to(b.dtype))
                errors[k].append(err)
        if self.head_aggregation == "group":
            self._average_heads(group, weights)
        for k in members:
            self.comm.download(k, "adapter", self.models[k].client.adapter.parameters())
            self.truncation_errors[k] = max(errors[k]) if errors[k] else 0.0

    def _average_heads(self, group: list[int], weights: list[float]) -> None:
        """Combine heads with the same weights among clients whose heads have the same shape."""
        by_shape: dict[tuple, list[int]] = {}
        for k in group:
            shape = tuple(tuple(p.shape) for p in self.models[k].server.head.parameters())
            by_shape.setdefault(shape, []).append(k)
        weight_of = dict(zip(group, weights))
        for members in by_shape.values():
            if len(members) < 2:
                continue
            total = sum(weight_of[k] for k in members)
            params = [list(self.models[k].server.head.parameters()) for k in members]
            for index in range(len(params[0])):
                mean = sum(weight_of[k] / total * params[i][index] for i, k in enumerate(members))
                for i in range(len(members)):
                    params[i][index].copy_(mean)
