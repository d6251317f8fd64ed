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
from typing import NamedTuple, cast

import numpy as np
import scipy.linalg
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


class Svd(NamedTuple):
    """The leading singular triplets of a matrix and the Frobenius norm of all of it (so a truncation can
    report its relative error without the trailing singular values)."""

    u: Tensor  # [out, k]
    s: Tensor  # [k], descending
    vh: Tensor  # [k, in]
    norm: float

    def truncate(self, rank: int, scale: float) -> tuple[Tensor, Tensor, float]:
        """`truncate` of these triplets, the error from the whole matrix's norm."""
        return truncate(self.u, self.s, self.vh, rank, scale, norm=self.norm)


# a top-k SVD goes through the Gram matrix only when k is at most this share of min(out, in): beyond it
# the partial eigendecomposition saves too little over LAPACK's full SVD to pay for the Gram product
TOP_SVD_SHARE = 0.25


def top_svd(matrix: Tensor, k: int | None = None) -> Svd:
    """The k leading singular triplets of a float64 matrix (all of them when k is None).

    For a small k the full SVD's O(d^3) bidiagonalization is most of the work and all of it is wasted on
    the trailing triplets: instead, the k leading eigenvectors of the smaller Gram matrix (LAPACK's
    subset eigensolver, ~3.4x cheaper than the SVD with the Gram product at d = 384, k = 8) give an
    orthonormal basis Q of the leading singular subspace, and an exact small SVD of Q^T M (k x in) gives
    the triplets. Q Q^T M is
    the exact projection, whatever the accuracy of tiny eigenvalues, so the rank-k product is the
    best one up to the round-off of the subspace (~eps * s_1^2 / the eigengap, checked against the full
    SVD to 1e-10 in the tests).
    """
    out_f, in_f = matrix.shape
    small = min(out_f, in_f)
    if k is None or k > TOP_SVD_SHARE * small:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return Svd(u, s, vh, float(torch.linalg.norm(s)))
    norm = float(torch.linalg.norm(matrix))
    if k <= 0 or norm == 0.0:
        return Svd(matrix.new_zeros(out_f, 0), matrix.new_zeros(0), matrix.new_zeros(0, in_f), norm)
    wide = out_f <= in_f
    gram = matrix @ matrix.T if wide else matrix.T @ matrix
    if gram.device.type == "cpu":
        _, vectors = scipy.linalg.eigh(gram.numpy(), subset_by_index=[small - k, small - 1], driver="evr")
        basis = torch.from_numpy(vectors[:, ::-1].copy())  # [small, k], leading first
    else:  # an accelerator's batched full eigensolver; LAPACK's subset driver is CPU-only
        basis = torch.linalg.eigh(gram)[1][:, -k:].flip(-1)
    if wide:
        u_core, s, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
        return Svd(basis @ u_core, s, vh, norm)
    u, s, vh_core = torch.linalg.svd(matrix @ basis, full_matrices=False)
    return Svd(u, s, vh_core @ basis.T, norm)


def svd_from_factors(b_cat: Tensor, a_cat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD (U, S, Vh) of B_cat @ A_cat via QR of both factors and an R x R core SVD, in float64."""
    u, s, vh, _ = factored_svd(b_cat, a_cat)
    return u, s, vh


def factored_svd(b_cat: Tensor, a_cat: Tensor, top: int | None = None) -> Svd:
    """`svd_from_factors`, of only the `top` leading triplets when it is given (`top_svd`)."""
    b64, a64 = b_cat.to(torch.float64), a_cat.to(torch.float64)
    inner = b64.shape[1]
    if inner >= min(b64.shape[0], a64.shape[1]):  # stacked rank not smaller than dW: dense is cheaper
        return top_svd(b64 @ a64, top)
    q_b, r_b = torch.linalg.qr(b64)  # [out, R], [R, R]
    q_a, r_a = torch.linalg.qr(a64.T)  # [in, R], [R, R]
    core = top_svd(r_b @ r_a.T, top)
    return Svd(q_b @ core.u, core.s, core.vh @ q_a.T, core.norm)


# the stacked rank `weighted_sum_svd` casts to float64 and multiplies at a time
STACK_CHUNK_RANK = 2048


def weighted_sum_svd(
    updates: Sequence[LowRank],
    weights: Sequence[float],
    *,
    top: int | None = None,
    chunk_rank: int = STACK_CHUNK_RANK,
) -> Svd:
    """SVD of sum_k w_k dW_k, as `factored_svd(*stack(updates, weights), top)` computes it: the `top`
    leading triplets (the largest rank a member takes back) or, without it, all of them.

    A stack wider than `chunk_rank` (and than d, where the SVD is of the dense d x d sum anyway) is
    multiplied out part by part into that d x d sum: the same products, without a float32 and a float64
    copy of both [d, R] factors for a group of R = 1000 clients x their ranks. Up to `chunk_rank`, and
    whenever the stacked rank is below d, this is exactly the single-stack computation.
    """
    out_f, in_f = updates[0].b.shape[0], updates[0].a.shape[1]
    if sum(u.a.shape[0] for u in updates) <= max(chunk_rank, min(out_f, in_f) - 1):
        return factored_svd(*stack(updates, weights), top)
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
    return top_svd(dense, top)


# bytes of float64 d x d matrices that `mixed_svds` holds at once, for each of its two working blocks
MIX_CHUNK_BYTES = 128 * 2**20

Row = Sequence[tuple[int, float]]  # (index into the updates, weight) of one weighted sum


def mixed_svds(
    updates: Sequence[LowRank],
    rows: Sequence[Row],
    *,
    tops: Sequence[int] | None = None,
    chunk_bytes: int = MIX_CHUNK_BYTES,
) -> Iterator[tuple[int, Svd]]:
    """(i, SVD of sum_j w_ij dW_j) for every row i of a mixing matrix over the same `updates`; of only
    its `tops[i]` leading triplets when `tops` is given (a client keeps its own rank of the sum, and at
    1000 clients the full SVDs of the rest were 90% of personalization).

    A row whose stacked rank is below min(out, in) goes through `stack` + `factored_svd` exactly as
    a single sum does. A row of larger stacked rank would have `svd_from_factors` form the d x d product
    of an [out, R] and an [R, in] factor, R the row's total rank: one whole cluster's worth of work per
    client, which grows as clients x cluster size x rank. Such rows are instead mixed from each update's
    dense dW, computed once per block of rows, so the same sums cost clients x cluster size x d^2.
    Rows come back in no particular order (the light ones first).
    """
    out_f, in_f = updates[0].b.shape[0], updates[0].a.shape[1]
    top = (lambda i: None) if tops is None else tops.__getitem__
    heavy: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(rows):
        if sum(updates[j].a.shape[0] for j, _ in row) < min(out_f, in_f):
            yield i, factored_svd(*stack([updates[j] for j, _ in row], [w for _, w in row]), top(i))
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
                i = members[start + r]
                yield i, top_svd(flat.view(out_f, in_f), top(i))


def _dense_updates(updates: Sequence[LowRank], columns: Sequence[int]) -> Tensor:
    """[len(columns), out * in] float64 rows s_j B_j A_j, with s_j B_j rounded as `stack` rounds it."""
    first = updates[columns[0]]
    out = torch.empty(len(columns), first.b.shape[0] * first.a.shape[1], dtype=torch.float64)
    for c, j in enumerate(columns):
        u = updates[j]
        torch.matmul((u.scale * u.b).double(), u.a.double(), out=out[c].view(u.b.shape[0], u.a.shape[1]))
    return out


def truncate(
    u: Tensor, s: Tensor, vh: Tensor, rank: int, scale: float, *, norm: float | None = None
) -> tuple[Tensor, Tensor, float]:
    """Rank-r factors (A [r, in], B [out, r]) for a client with LoRA scale s_k, and the relative error.

    Singular values are split evenly (sqrt on each side) and B is divided by s_k, so that
    s_k * B @ A is the best rank-r approximation. `norm`, the Frobenius norm of the whole matrix, is
    needed when (u, s, vh) hold only the leading triplets (`top_svd`): the error is then the norm left
    over, sqrt(norm^2 - sum of the kept s^2), which cancels to an absolute accuracy of ~1e-8 (it is a
    logged figure, not an input to anything).
    """
    keep = min(rank, s.shape[0])
    root = torch.sqrt(s[:keep])
    b = u[:, :keep] * root / scale
    a = root[:, None] * vh[:keep]
    if keep < rank:
        a = torch.cat([a, a.new_zeros(rank - keep, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - keep)], dim=1)
    if norm is None or s.shape[0] == min(u.shape[0], vh.shape[1]):  # every value known: no cancellation
        total = torch.linalg.norm(s)
        error = float(torch.linalg.norm(s[keep:]) / total) if total > 0 else 0.0
    else:
        kept = float(torch.sum(s[:keep] ** 2))
        error = float(np.sqrt(max(norm**2 - kept, 0.0))) / norm if norm > 0 else 0.0
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
