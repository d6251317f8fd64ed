"""The between-round work of the server, as a Lightning Callback.

Every client's Trainer carries the same Orchestrator. When the last participating client of a round
finishes its local training (`on_train_end`), the orchestrator runs the ablation's aggregation over the
groups it knows (all clients for fedavg; the discovered clusters for fedavg_cluster; none for local_only):

- `stack`: the exact weighted sum of dW over the group, redistributed to each client's ranks by SVD;
- `fedavg` / `zeropad`: A and B averaged separately (zero-padded to the largest rank), sliced back;
- `laplacian`: every client moves toward its graph neighbours by the mixing matrix W = (1 - eta) I + eta A
  (`phases.personalization`), each row an exact weighted sum through the same stacked-factor routine.

The maths lives in `atlas_pl.phases`; this class only gathers factors, calls it and writes results back.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch

from atlas_pl.federation.comm import CommMeter
from atlas_pl.models.split import SplitClientModel
from atlas_pl.phases.aggregation import (
    LowRank,
    fedavg_factors,
    normalized_weights,
    slice_rank,
    stack,
    svd_from_factors,
    truncate,
)

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
        self.mixing: np.ndarray | None = None  # laplacian: W over all clients, set once Phase 1 has run
        # each client's optimizers (set by the loop): rewritten factors lose their AdamW state
        self.optimizers: list[list[torch.optim.Optimizer]] = [[] for _ in self.models]
        self.seed = 0
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
        if self.aggregation == "laplacian":
            self._personalize()
        else:
            for group in self.groups:
                if len(group) > 1:
                    self._aggregate_group(group)
        self.aggregated_rounds.append(self.round)

    def _exclude_non_finite(self, members: list[int]) -> list[int]:
        group = [k for k in members if self._finite(k)]
        for k in sorted(set(members) - set(group)):
            log.warning(
                "round %d: client %d has a non-finite update; excluded from aggregation", self.round, k
            )
            self.excluded.add(k)
        return group

    def _owner(self, k: int, key: tuple) -> object:
        """The adapter (client or server half) that holds module `key` for client k."""
        return (
            self.models[k].client.adapter if key[0] < self.models[k].split else self.models[k].server.adapter
        )

    def _update(self, k: int, key: tuple) -> LowRank:
        """Client k's current update of module `key`, wherever (client or server half) it lives."""
        adapter = self._owner(k, key)
        a, b = adapter.pair(key)
        return LowRank(a.detach(), b.detach(), adapter.scaling(key[0]))

    def _keys(self, members: list[int]) -> list[tuple]:
        return sorted(
            set().union(
                *(self.models[k].client.adapter.keys + self.models[k].server.adapter.keys for k in members)
            )
        )

    @torch.no_grad()
    def _write(self, k: int, key: tuple, new_a: torch.Tensor, new_b: torch.Tensor) -> None:
        """Give client k its new factors for `key`, ready to train on.

        Two things would otherwise go wrong in the next round. The SVD expresses the update in a new
        basis, so AdamW's moments (per coordinate of the old basis) no longer describe these parameters:
        their state is cleared. And where the aggregate has lower rank than r_k, both A and B come back
        with zero rows/columns, which get no gradient ever again: those rows of A are re-drawn from a
        seeded initialisation (B stays zero there, so dW is unchanged).
        """
        a, b = self._owner(k, key).pair(key)
        a.copy_(new_a.to(a.dtype))
        b.copy_(new_b.to(b.dtype))
        dead = (a.abs().sum(dim=1) == 0) & (b.abs().sum(dim=0) == 0)
        if bool(dead.any()):
            gen = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{self.round}/{k}/{key}".encode()))
            bound = 1.0 / float(a.shape[1]) ** 0.5
            fresh = (torch.rand(int(dead.sum()), a.shape[1], generator=gen) * 2 - 1) * bound
            a[dead] = fresh.to(a)
        self._reset_state(k, [a, b])

    def _reset_state(self, k: int, params: list[torch.Tensor] | None = None) -> None:
        """Forget AdamW state for `params` of client k (all of it when None)."""
        for optimizer in self.optimizers[k]:
            if params is None:
                optimizer.state.clear()
            else:
                for p in params:
                    optimizer.state.pop(p, None)

    def _repair(self, excluded: list[int], donors: list[int]) -> None:
        """An excluded (non-finite) client restarts clean: no optimizer state, a finite head."""
        for k in excluded:
            self._reset_state(k)
            head = list(self.models[k].server.head.parameters())
            if all(bool(torch.isfinite(p).all()) for p in head):
                continue
            self._mix_heads({k: dict.fromkeys(donors, 1.0)})  # the donors' mean, same-shape heads only
            replaced = all(bool(torch.isfinite(p).all()) for p in head)
            if not replaced:
                with torch.no_grad():
                    for param in head:
                        param.zero_()
            log.warning(
                "round %d: client %d had a non-finite head; replaced by %s",
                self.round,
                k,
                "its group's mean head" if replaced else "zeros",
            )

    @torch.no_grad()
    def _personalize(self) -> None:
        """dW_k <- sum_l W_kl dW_l for every client whose row has neighbours, all from the old factors.

        A client with W_kk = 1 (eta = 0, or no neighbour) is not touched at all and sends nothing, so
        eta = 0 is bitwise local training. Non-finite clients are dropped from every row (the row is
        renormalized) and keep their own state only if nobody else is left in their row.
        """
        if self.mixing is None:
            return
        members = sorted({k for g in self.groups for k in g})
        finite = set(self._exclude_non_finite(members))
        rows: dict[int, dict[int, float]] = {}
        for k in members:
            row = {j: float(self.mixing[k, j]) for j in members if j in finite and self.mixing[k, j] > 0}
            if k not in finite:
                row.pop(k, None)
            total = sum(row.values())
            if total <= 0 or set(row) <= {k}:  # nobody else to move toward: untouched
                continue
            rows[k] = {j: w / total for j, w in row.items()}
        if not rows:
            return
        senders = sorted({j for row in rows.values() for j in row})
        for j in senders:
            self.comm.upload(j, "adapter", self.models[j].client.adapter.parameters())
        new: dict[int, dict[tuple, tuple[torch.Tensor, torch.Tensor, float]]] = {k: {} for k in rows}
        for key in self._keys(members):
            for k, row in rows.items():
                updates = [self._update(j, key) for j in row]
                u, s, vh = svd_from_factors(*stack(updates, list(row.values())))
                adapter = self._owner(k, key)
                a, _ = adapter.pair(key)
                new[k][key] = truncate(u, s, vh, a.shape[0], adapter.scaling(key[0]))
        for k, factors in new.items():
            errors = []
            for key, (new_a, new_b, err) in factors.items():
                self._write(k, key, new_a, new_b)
                errors.append(err)
            self.truncation_errors[k] = max(errors) if errors else 0.0
        if self.head_aggregation == "group":
            self._mix_heads(rows)
        self._repair(sorted(set(members) - finite), sorted(finite))
        for k in rows:
            self.comm.download(k, "adapter", self.models[k].client.adapter.parameters())

    def _mix_heads(self, rows: dict[int, dict[int, float]]) -> None:
        """Heads follow the same rows, restricted to neighbours whose head has the same shape."""
        shape = {
            k: tuple(tuple(p.shape) for p in self.models[k].server.head.parameters())
            for k in range(len(self.models))
        }
        old = {
            k: [p.detach().clone() for p in self.models[k].server.head.parameters()]
            for k in range(len(self.models))
        }
        for k, row in rows.items():
            same = {j: w for j, w in row.items() if shape[j] == shape[k]}
            total = sum(same.values())
            if total <= 0:
                continue
            for index, param in enumerate(self.models[k].server.head.parameters()):
                param.copy_(sum(w / total * old[j][index] for j, w in same.items()))

    def _finite(self, k: int) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.models[k].parameters())

    @torch.no_grad()
    def _aggregate_group(self, members: list[int]) -> None:
        """One aggregate of every module over the group, given back at each client's own rank.

        `stack`: the exact weighted sum of dW, redistributed by truncated SVD (error logged per client);
        `fedavg` / `zeropad`: factors averaged separately and sliced back (no SVD, no error to report: the
        error is the cross terms, by design of the baseline). A client whose state is not finite is left out
        of the sum (and logged); it still receives the aggregate of the others, which is how it recovers.
        """
        group = self._exclude_non_finite(members)
        if not group:
            return
        weights = normalized_weights([self.sample_counts[k] for k in group])
        for k in group:  # each client uploads its client-half adapter; the server half is already there
            self.comm.upload(k, "adapter", self.models[k].client.adapter.parameters())
        errors: dict[int, list[float]] = {k: [] for k in members}
        for key in self._keys(members):
            updates = [self._update(k, key) for k in group]
            if self.aggregation == "stack":
                u, s, vh = svd_from_factors(*stack(updates, weights))
            else:
                mean_a, mean_b = fedavg_factors(updates, weights)
            for k in members:
                adapter = self._owner(k, key)
                a, b = adapter.pair(key)
                if self.aggregation == "stack":
                    new_a, new_b, err = truncate(u, s, vh, a.shape[0], adapter.scaling(key[0]))
                    errors[k].append(err)
                else:
                    new_a, new_b = slice_rank(mean_a, mean_b, a.shape[0], adapter.scaling(key[0]))
                self._write(k, key, new_a, new_b)
        if self.head_aggregation == "group":  # every member's row is the group's weights
            self._mix_heads({k: dict(zip(group, weights)) for k in group})
        self._repair(sorted(set(members) - set(group)), group)
        for k in members:
            self.comm.download(k, "adapter", self.models[k].client.adapter.parameters())
            if errors[k]:
                self.truncation_errors[k] = max(errors[k])
