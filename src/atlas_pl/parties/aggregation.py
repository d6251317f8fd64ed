"""Phase 4 on plain tensor dicts: what the coordinator does with the clients' uploaded adapters.

Given every participant's `AdapterUpload` (both halves' LoRA factors, scales, head), one round's
aggregation returns each affected client's `AdapterUpdate`:

- `stack`: the exact weighted sum of dW over a group, redistributed to each client's ranks by SVD;
- `fedavg` / `zeropad`: A and B averaged separately (zero-padded to the largest rank), sliced back;
- `laplacian`: every client moves toward its graph neighbours by the mixing matrix W = (1 - eta) I + eta A,
  each row an exact weighted sum through the same stacked-factor routine.

Nothing here touches a live module or optimizer, so the same code serves any engine. The maths of one
sum lives in `atlas_pl.phases.aggregation`; this module decides who is summed with whom, repairs
non-finite clients and prepares factors to be trained on again.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from torch import Tensor

from atlas_pl.models.lora import ModuleKey
from atlas_pl.parties.messages import AdapterUpdate, AdapterUpload
from atlas_pl.phases.aggregation import (
    LowRank,
    fedavg_factors,
    mixed_svds,
    normalized_weights,
    slice_rank,
    weighted_sum_svd,
)

log = logging.getLogger(__name__)

Rows = dict[int, dict[int, float]]  # client -> {neighbour: weight}, weights summing to 1


@dataclass
class RoundAggregation:
    """One round's outcome: the updates, who was left out, and whose adapters crossed the network."""

    updates: dict[int, AdapterUpdate] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)
    senders: list[int] = field(default_factory=list)  # clients that uploaded their client-half adapter
    receivers: list[int] = field(default_factory=list)  # clients sent their new client-half adapter
    truncation_errors: dict[int, float] = field(default_factory=dict)


# A rank component is dead when both its row of A and its column of B are below _DEAD_RTOL times their
# side's largest, in squared norm. For factors split from an SVD (`truncate`) either side's squared norm
# is the component's singular value (B's over s_k^2), so this reads sigma_i / sigma_1 <= 1e-6. Exact zero
# is the wrong test: an aggregate of lower rank than the client leaves the unfilled components at the
# SVD's round-off (trailing singular values of an exactly rank-deficient stack come out near
# 1e-16..1e-14 of the largest, factor entries 1e-15..1e-7), and such a component trains no better than a
# zero one (each side's gradient scales with the other side). 1e-6 is far above that float64 round-off
# and far below the spread of a trained adapter's singular values; exact zeros (zero padding) are dead
# under any tolerance, so that case is unchanged.
_DEAD_RTOL = 1e-6


@torch.no_grad()
def ready_to_train(
    new_a: Tensor, new_b: Tensor, like: tuple[Tensor, Tensor], seed_text: str
) -> tuple[Tensor, Tensor]:
    """New factors in the old ones' dtype and device, with dead rank components revived.

    Where the aggregate has lower rank than r_k, both A and B come back with (numerically) zero
    rows/columns, which get no gradient ever again: those rows of A are re-drawn from a seeded
    initialisation and those columns of B set to zero, so dW loses only round-off. A component with a live
    row of A and a zero column of B (a fresh LoRA init) trains and is left alone.
    """
    a = new_a.to(dtype=like[0].dtype, device=like[0].device, copy=True)
    b = new_b.to(dtype=like[1].dtype, device=like[1].device, copy=True)
    a_norm, b_norm = a.square().sum(dim=1), b.square().sum(dim=0)
    dead = (a_norm <= _DEAD_RTOL * a_norm.max()) & (b_norm <= _DEAD_RTOL * b_norm.max())
    if bool(dead.any()):
        gen = torch.Generator().manual_seed(zlib.crc32(seed_text.encode()))
        bound = 1.0 / float(a.shape[1]) ** 0.5
        fresh = (torch.rand(int(dead.sum()), a.shape[1], generator=gen) * 2 - 1) * bound
        a[dead] = fresh.to(a)
        b[:, dead] = 0.0
    return a, b


class RoundAggregator:
    """One round of Phase 4 over the uploads; build one per round (it keeps that round's bookkeeping)."""

    def __init__(
        self,
        uploads: Mapping[int, AdapterUpload],
        sample_counts: Sequence[int],
        *,
        aggregation: str,
        head_aggregation: str,
        seed: int,
        round_index: int,
    ) -> None:
        self.uploads = uploads
        self.sample_counts = sample_counts
        self.aggregation = aggregation
        self.head_aggregation = head_aggregation
        self.seed = seed
        self.round = round_index
        self.heads = {k: list(u.head) for k, u in uploads.items()}
        self.out = RoundAggregation()

    def _update_for(self, k: int) -> AdapterUpdate:
        if k not in self.out.updates:
            self.out.updates[k] = AdapterUpdate(client=k)
        return self.out.updates[k]

    def _low_rank(self, k: int, key: ModuleKey) -> LowRank:
        a, b = self.uploads[k].factors[key]
        return LowRank(a, b, self.uploads[k].scaling[key[0]])

    def _keys(self, members: Sequence[int]) -> list[ModuleKey]:
        return sorted(set().union(*(self.uploads[k].factors.keys() for k in members)))

    def _write(self, k: int, key: ModuleKey, new_a: Tensor, new_b: Tensor) -> None:
        """Client k gets `key`'s new factors, ready to train on (the SVD basis is new: moments reset)."""
        text = f"{self.seed}/{self.round}/{k}/{key}"
        self._update_for(k).factors[key] = ready_to_train(new_a, new_b, self.uploads[k].factors[key], text)

    def _exclude_non_finite(self, members: Sequence[int]) -> list[int]:
        group = [k for k in members if self.uploads[k].finite()]
        for k in sorted(set(members) - set(group)):
            log.warning(
                "round %d: client %d has a non-finite update; excluded from aggregation", self.round, k
            )
            self.out.excluded.add(k)
        return group

    # -- heads ----------------------------------------------------------------------------------------
    def _mix_heads(self, rows: Rows) -> None:
        """Heads follow the same rows, restricted to neighbours whose head has the same shape.

        Equal rows give equal heads, so each distinct row is summed once: a group's members all share
        one row, which would otherwise cost group size squared tensor operations.
        """
        shape = {k: tuple(tuple(t.shape) for t in head) for k, head in self.heads.items()}
        old = {k: list(head) for k, head in self.heads.items()}
        mixed: dict[tuple[tuple[int, float], ...], list[Tensor]] = {}
        for k, row in rows.items():
            same = {j: w for j, w in row.items() if shape[j] == shape[k]}
            total = sum(same.values())
            if total <= 0:
                continue
            terms = tuple(same.items())
            if terms not in mixed:
                # a Python sum from 0, term by term in row order (what the results were measured with)
                mixed[terms] = [
                    cast(Tensor, sum(w / total * old[j][index] for j, w in terms))
                    for index in range(len(old[k]))
                ]
            self.heads[k] = list(mixed[terms])
            self._update_for(k)

    def _repair(self, excluded: Sequence[int], donors: Sequence[int]) -> None:
        """An excluded (non-finite) client restarts clean: no optimizer state, a finite head."""
        for k in excluded:
            self._update_for(k).reset_optimizer = True
            if all(bool(t.isfinite().all()) for t in self.heads[k]):
                continue
            self._mix_heads({k: dict.fromkeys(donors, 1.0)})  # the donors' mean, same-shape heads only
            replaced = all(bool(t.isfinite().all()) for t in self.heads[k])
            if not replaced:
                self.heads[k] = [torch.zeros_like(t) for t in self.heads[k]]
            log.warning(
                "round %d: client %d had a non-finite head; replaced by %s",
                self.round,
                k,
                "its group's mean head" if replaced else "zeros",
            )

    def _finish_heads(self) -> None:
        for k, update in self.out.updates.items():
            if any(new is not old for new, old in zip(self.heads[k], self.uploads[k].head)):
                update.head = [t.clone() for t in self.heads[k]]

    # -- the two kinds of round -------------------------------------------------------------------------
    def group(self, members: list[int]) -> None:
        """One aggregate of every module over the group, given back at each client's own rank.

        `stack`: the exact weighted sum of dW, redistributed by truncated SVD (error logged per client);
        `fedavg` / `zeropad`: factors averaged separately and sliced back (no SVD, no error to report: the
        error is the cross terms, by design of the baseline). A client whose state is not finite is left
        out of the sum (and logged); it still receives the aggregate of the others, which is how it
        recovers.
        """
        group = self._exclude_non_finite(members)
        if not group:
            return
        weights = normalized_weights([self.sample_counts[k] for k in group])
        self.out.senders.extend(group)
        errors: dict[int, list[float]] = {k: [] for k in members}
        for key in self._keys(members):
            updates = [self._low_rank(k, key) for k in group]
            if self.aggregation == "stack":
                top = max(self.uploads[k].factors[key][0].shape[0] for k in members)
                svd = weighted_sum_svd(updates, weights, top=top)
            else:
                mean_a, mean_b = fedavg_factors(updates, weights)
            # members of one rank and LoRA scale take back the same factors: computed once per kind
            given: dict[tuple[int, float], tuple[Tensor, Tensor, float | None]] = {}
            for k in members:
                rank = self.uploads[k].factors[key][0].shape[0]
                scale = self.uploads[k].scaling[key[0]]
                if (rank, scale) not in given:
                    if self.aggregation == "stack":
                        given[rank, scale] = svd.truncate(rank, scale)
                    else:
                        given[rank, scale] = (*slice_rank(mean_a, mean_b, rank, scale), None)
                new_a, new_b, err = given[rank, scale]
                if err is not None:
                    errors[k].append(err)
                self._write(k, key, new_a, new_b)  # a copy per client: `ready_to_train` copies
        if self.head_aggregation == "group":  # every member's row is the group's weights
            self._mix_heads({k: dict(zip(group, weights)) for k in group})
        self._repair(sorted(set(members) - set(group)), group)
        self.out.receivers.extend(members)
        for k in members:
            if errors[k]:
                self.out.truncation_errors[k] = max(errors[k])

    def personalize(self, members: list[int], mixing: np.ndarray) -> None:
        """dW_k <- sum_l W_kl dW_l for every client whose row has neighbours, all from the old factors.

        A client with W_kk = 1 (eta = 0, or no neighbour) is not touched at all and sends nothing, so
        eta = 0 is bitwise local training. Non-finite clients are dropped from every row (the row is
        renormalized) and keep their own state only if nobody else is left in their row.
        """
        finite = set(self._exclude_non_finite(members))
        rows = _mixing_rows(members, finite, mixing)
        if not rows:
            return
        senders = sorted({j for row in rows.values() for j in row})
        self.out.senders.extend(senders)
        position = {j: p for p, j in enumerate(senders)}
        clients = list(rows)
        indexed = [[(position[j], w) for j, w in rows[k].items()] for k in clients]
        keys = self._keys(members)
        errors: dict[int, list[float]] = {}
        for k in rows:  # every sum reads the old factors only, so each is written as soon as it is done
            errors[k] = []
            if keys:
                self._update_for(k)  # updates in row order, whichever sum finishes first
        for key in keys:
            updates = [self._low_rank(j, key) for j in senders]
            ranks = [self.uploads[k].factors[key][0].shape[0] for k in clients]
            for i, svd in mixed_svds(updates, indexed, tops=ranks):
                k = clients[i]
                new_a, new_b, err = svd.truncate(ranks[i], self.uploads[k].scaling[key[0]])
                self._write(k, key, new_a, new_b)
                errors[k].append(err)
        for k, errs in errors.items():
            self.out.truncation_errors[k] = max(errs) if errs else 0.0
        if self.head_aggregation == "group":
            self._mix_heads(rows)
        self._repair(sorted(set(members) - finite), sorted(finite))
        self.out.receivers.extend(rows)

    def result(self) -> RoundAggregation:
        self._finish_heads()
        return self.out


def _mixing_rows(members: Sequence[int], finite: set[int], mixing: np.ndarray) -> Rows:
    """Each member's renormalized row of W over the finite members, for those with someone to move
    toward (row by row in numpy: a Python scan of every pair was the cost at 1000 clients)."""
    ids = np.asarray(members, dtype=np.int64)
    usable = np.array([j in finite for j in members], dtype=bool)
    rows: Rows = {}
    for k in members:
        weights = mixing[k, ids]
        picked = np.flatnonzero(usable & (weights > 0))
        row = {int(ids[p]): float(weights[p]) for p in picked}
        if k not in finite:
            row.pop(k, None)
        total = sum(row.values())
        if total <= 0 or set(row) <= {k}:  # nobody else to move toward: untouched
            continue
        rows[k] = {j: w / total for j, w in row.items()}
    return rows


def aggregate_round(
    uploads: Mapping[int, AdapterUpload],
    sample_counts: Sequence[int],
    *,
    aggregation: str,
    groups: Sequence[Sequence[int]],
    mixing: np.ndarray | None,
    head_aggregation: str,
    seed: int,
    round_index: int,
) -> RoundAggregation | None:
    """Phase 4 for one round; None when the ablation does not aggregate (nothing happened). Only the
    clients in `uploads` take part (those absent or late this round are neither summed nor sent)."""
    groups = [[k for k in g if k in uploads] for g in groups]
    groups = [g for g in groups if g]
    if aggregation == "none" or not groups:
        return None
    job = RoundAggregator(
        uploads,
        sample_counts,
        aggregation=aggregation,
        head_aggregation=head_aggregation,
        seed=seed,
        round_index=round_index,
    )
    if aggregation == "laplacian":
        if mixing is not None:
            job.personalize(sorted({k for g in groups for k in g}), mixing)
    else:
        for group in groups:
            if len(group) > 1:
                job.group(list(group))
    return job.result()
