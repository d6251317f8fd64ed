"""Exact aggregation of heterogeneous-rank LoRA updates (pure functions, no Lightning).

Averaging A and B separately (FedIT) is wrong as soon as clients differ: mean(B) @ mean(A) is not
mean(B @ A). Stacking the factors is exact for any ranks: sum_k w_k s_k B_k A_k = [s_1 B_1 ... s_K B_K]
@ [w_1 A_1; ...; w_K A_K]. Each client then gets back its own rank by a truncated SVD of that product,
computed from the stacked factors (QR of each side + SVD of the small core), so the d x d matrix is
never formed when the stacked rank is small.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor


@dataclass(frozen=True)
class LowRank:
    """One client's update of one module: dW = scale * B @ A."""

    a: Tensor  # [r, in]
    b: Tensor  # [out, r]
    scale: float

    def dense(self) -> Tensor:
        return self.scale * (self.b @ self.a)


def normalized_weights(counts: Sequence[float]) -> list[float]:
    """Weights proportional to client sample counts, summing to 1."""
    total = float(sum(counts))
    if total <= 0:
        raise ValueError(f"aggregation weights must have a positive sum, got {list(counts)}")
    return [float(c) / total for c in counts]


def stack(updates: Sequence[LowRank], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Stacked factors (B_cat [out, R], A_cat [R, in]) with B_cat @ A_cat = sum_k w_k dW_k exactly."""
    if len(updates) != len(weights) or not updates:
        raise ValueError(f"need one weight per update, got {len(updates)} updates and {len(weights)} weights")
    b_cat = torch.cat([u.scale * u.b for u in updates], dim=1)
    a_cat = torch.cat([w * u.a for u, w in zip(updates, weights)], dim=0)
    return b_cat, a_cat


def svd_from_factors(b_cat: Tensor, a_cat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD (U, S, Vh) of B_cat @ A_cat via QR of both factors and an R x R core SVD, in float64."""
    b64, a64 = b_cat.to(torch.float64), a_cat.to(torch.float64)
    inner = b64.shape[1]
    if inner >= min(b64.shape[0], a64.shape[1]):  # stacked rank not smaller than dW: dense is cheaper
        return torch.linalg.svd(b64 @ a64, full_matrices=False)
    q_b, r_b = torch.linalg.qr(b64)  # [out, R], [R, R]
    q_a, r_a = torch.linalg.qr(a64.T)  # [in, R], [R, R]
    u_core, s, vh_core = torch.linalg.svd(r_b @ r_a.T)
    return q_b @ u_core, s, vh_core @ q_a.T


# the stacked rank `weighted_sum_svd` casts to float64 and multiplies at a time
STACK_CHUNK_RANK = 2048


def weighted_sum_svd(
    updates: Sequence[LowRank], weights: Sequence[float], *, chunk_rank: int = STACK_CHUNK_RANK
) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of sum_k w_k dW_k, as `svd_from_factors(*stack(updates, weights))` computes it.

    A stack wider than `chunk_rank` (and than d, where the SVD is of the dense d x d sum anyway) is
    multiplied out part by part into that d x d sum: the same products, without a float32 and a float64
    copy of both [d, R] factors for a group of R = 1000 clients x their ranks. Up to `chunk_rank`, and
    whenever the stacked rank is below d, this is exactly the single-stack computation.
    """
    out_f, in_f = updates[0].b.shape[0], updates[0].a.shape[1]
    if sum(u.a.shape[0] for u in updates) <= max(chunk_rank, min(out_f, in_f) - 1):
        return svd_from_factors(*stack(updates, weights))
    dense = torch.zeros(out_f, in_f, dtype=torch.float64)
    start = 0
    while start < len(updates):
        stop, width = start, 0
        while stop < len(updates) and (stop == start or width + updates[stop].a.shape[0] <= chunk_rank):
            width += updates[stop].a.shape[0]
            stop += 1
        b_part, a_part = stack(updates[start:stop], weights[start:stop])
        dense.addmm_(b_part.to(torch.float64), a_part.to(torch.float64))
        start = stop
    return torch.linalg.svd(dense, full_matrices=False)


# bytes of float64 d x d matrices that `mixed_svds` holds at once, for each of its two working blocks
MIX_CHUNK_BYTES = 128 * 2**20

Row = Sequence[tuple[int, float]]  # (index into the updates, weight) of one weighted sum


def mixed_svds(
    updates: Sequence[LowRank], rows: Sequence[Row], *, chunk_bytes: int = MIX_CHUNK_BYTES
) -> Iterator[tuple[int, tuple[Tensor, Tensor, Tensor]]]:
    """(i, SVD of sum_j w_ij dW_j) for every row i of a mixing matrix over the same `updates`.

    A row whose stacked rank is below min(out, in) goes through `stack` + `svd_from_factors` exactly as
    a single sum does. A row of larger stacked rank would have `svd_from_factors` form the d x d product
    of an [out, R] and an [R, in] factor, R the row's total rank: one whole cluster's worth of work per
    client, which grows as clients x cluster size x rank. Such rows are instead mixed from each update's
    dense dW, computed once per block of rows, so the same sums cost clients x cluster size x d^2.
    Rows come back in no particular order (the light ones first); each SVD is the full one of the sum.
    """
    out_f, in_f = updates[0].b.shape[0], updates[0].a.shape[1]
    heavy: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if sum(updates[j].a.shape[0] for j, _ in row) < min(out_f, in_f):
            yield i, svd_from_factors(*stack([updates[j] for j, _ in row], [w for _, w in row]))
        else:
            heavy.setdefault(tuple(sorted(j for j, _ in row)), []).append(i)
    step = max(1, chunk_bytes // (8 * out_f * in_f))
    for columns, members in heavy.items():
        where = {j: c for c, j in enumerate(columns)}
        weights = torch.zeros(len(members), len(columns), dtype=torch.float64)
        for r, i in enumerate(members):
            for j, w in rows[i]:
                weights[r, where[j]] = w
        once = _dense_updates(updates, columns) if len(columns) <= step else None
        for start in range(0, len(members), step):
            mixed = weights.new_zeros(min(step, len(members) - start), out_f * in_f)
            for c0 in range(0, len(columns), step):
                dense = once if once is not None else _dense_updates(updates, columns[c0 : c0 + step])
                mixed.addmm_(weights[start : start + mixed.shape[0], c0 : c0 + dense.shape[0]], dense)
            for r, flat in enumerate(mixed):
                yield members[start + r], torch.linalg.svd(flat.view(out_f, in_f), full_matrices=False)


def _dense_updates(updates: Sequence[LowRank], columns: Sequence[int]) -> Tensor:
    """[len(columns), out * in] float64 rows s_j B_j A_j, with s_j B_j rounded as `stack` rounds it."""
    first = updates[columns[0]]
    out = torch.empty(len(columns), first.b.shape[0] * first.a.shape[1], dtype=torch.float64)
    for c, j in enumerate(columns):
        u = updates[j]
        torch.matmul((u.scale * u.b).double(), u.a.double(), out=out[c].view(u.b.shape[0], u.a.shape[1]))
    return out


def truncate(u: Tensor, s: Tensor, vh: Tensor, rank: int, scale: float) -> tuple[Tensor, Tensor, float]:
    """Rank-r factors (A [r, in], B [out, r]) for a client with LoRA scale s_k, and the relative error.

    Singular values are split evenly (sqrt on each side) and B is divided by s_k, so that
    s_k * B @ A is the best rank-r approximation.
    """
    keep = min(rank, s.shape[0])
    root = torch.sqrt(s[:keep])
    b = u[:, :keep] * root / scale
    a = root[:, None] * vh[:keep]
    if keep < rank:
        a = torch.cat([a, a.new_zeros(rank - keep, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - keep)], dim=1)
    total = torch.linalg.norm(s)
    error = float(torch.linalg.norm(s[keep:]) / total) if total > 0 else 0.0
    return a, b, error


def fedavg_factors(updates: Sequence[LowRank], weights: Sequence[float]) -> tuple[Tensor, Tensor]:
    """FedIT / HetLoRA baselines: weighted averages of A and of s_k B, zero-padded to the largest rank.

    With equal ranks this is FedIT; with heterogeneous ranks it is HetLoRA's zero-padding. B is averaged
    with its LoRA scale folded in (s_k = alpha / r_k differs by rank), so identical dW on every client
    stay identical; what remains is mean(s B) @ mean(A) != mean(s B @ A): the cross terms B_k A_l
    (k != l) that stack aggregation does not have, the error these baselines exist to show. Client k takes
    back the first r_k components (`slice_rank`).
    """
    rank = max(u.a.shape[0] for u in updates)
    # sum() of tensors types as `Tensor | Literal[0]` (its start value); `updates` is not empty (max above)
    a = cast(
        Tensor,
        sum(
            w * torch.nn.functional.pad(u.a, (0, 0, 0, rank - u.a.shape[0])) for u, w in zip(updates, weights)
        ),
    )
    b = cast(
        Tensor,
        sum(
            w * u.scale * torch.nn.functional.pad(u.b, (0, rank - u.b.shape[1]))
            for u, w in zip(updates, weights)
        ),
    )
    return a, b


def slice_rank(a: Tensor, b: Tensor, rank: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """The first `rank` components of averaged factors for a client with LoRA scale `scale`.

    A client can be of higher rank than every client averaged (the group's largest-rank client, left out
    for a non-finite update): it gets the average zero-padded to its own shapes, as `truncate` pads, since
    a client's factors are only ever overwritten in place.
    """
    a, b = a[:rank], b[:, :rank] / scale
    missing = rank - a.shape[0]
    if missing > 0:
        a = torch.nn.functional.pad(a, (0, 0, 0, missing))
        b = torch.nn.functional.pad(b, (0, missing))
    return a, b
