"""Phase 4's graph: RBF adjacency within clusters, row-normalized; the mixing matrix of the update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_pl.phases.aggregation import (
    LowRank,
    fedavg_factors,
    normalized_weights,
    slice_rank,
    stack,
    svd_from_factors,
    truncate,
)
from atlas_pl.phases.personalization import (
    DISTANCE_CHUNK_BYTES,
    mixing_matrix,
    rbf_adjacency,
    squared_distances,
)


def _coords(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.normal(c, 0.3, size=(3, 4)) for c in (0.0, 5.0)] + [rng.normal(-5, 0.3, (1, 4))]
    )


def test_rows_sum_to_one_and_clusters_do_not_mix_except_connected_singletons() -> None:
    labels = [0, 0, 0, 1, 1, 1, 2]  # client 6 is alone in its cluster
    a = rbf_adjacency(_coords(), labels, knn=2)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(np.diag(a) == 0)
    for i in range(6):
        for j in range(7):
            if labels[i] != labels[j]:
                assert a[i, j] == 0.0
    assert np.count_nonzero(a[6]) == 2  # linked to its 2 nearest clients of any cluster
    isolated = rbf_adjacency(_coords(), labels, ensure_connectivity=False)
    assert np.all(isolated[6] == 0)  # no neighbour: its row stays empty and it is left alone
    np.testing.assert_allclose(isolated[:6].sum(axis=1), 1.0, atol=1e-12)


def test_rbf_weights_follow_the_formula_with_the_median_default() -> None:
    x = _coords()[:3]
    a = rbf_adjacency(x, [0, 0, 0])
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    alpha = 1.0 / np.median(sq[~np.eye(3, dtype=bool)])
    raw = np.exp(-alpha * sq) * (1 - np.eye(3))
    np.testing.assert_allclose(a, raw / raw.sum(1, keepdims=True), rtol=1e-12)
    with pytest.raises(ValueError, match="alpha"):
        rbf_adjacency(x, [0, 0, 0], alpha=-1.0)


def test_mixing_matrix_eta_zero_is_identity_and_eta_one_swaps_a_pair() -> None:
    a = rbf_adjacency(_coords(), [0, 0, 0, 1, 1, 1, 2])
    assert np.array_equal(mixing_matrix(a, 0.0), np.eye(7))
    w = mixing_matrix(a, 0.3)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.diag(w), 0.7)
    pair = rbf_adjacency(np.array([[0.0, 0.0], [1.0, 0.0]]), [0, 0])
    assert np.array_equal(mixing_matrix(pair, 1.0), np.array([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="eta"):
        mixing_matrix(a, 1.5)


def test_a_laplacian_row_through_stack_equals_the_dense_update() -> None:
    """dW_k <- (1 - eta) dW_k + eta sum_l a_kl dW_l, computed by the exact stacked routine, to 1e-10."""
    gen = torch.Generator().manual_seed(1)
    ranks = [2, 4, 3]
    ups = [
        LowRank(
            torch.randn(r, 20, generator=gen, dtype=torch.float64),
            torch.randn(24, r, generator=gen, dtype=torch.float64),
            8.0 / r,
        )
        for r in ranks
    ]
    w = mixing_matrix(rbf_adjacency(_coords()[:3], [0, 0, 0]), 0.4)
    for k in range(3):
        expected = sum(w[k, j] * ups[j].dense() for j in range(3))
        u, s, vh = svd_from_factors(*stack(ups, list(w[k])))
        a, b, err = truncate(u, s, vh, sum(ranks), ups[k].scale)
        torch.testing.assert_close(ups[k].scale * b @ a, expected, rtol=1e-10, atol=1e-10)
        assert err == pytest.approx(0.0, abs=1e-12)


def _lowrank(ranks: list[int], seed: int = 0, shared_a: bool = False) -> list[LowRank]:
    gen = torch.Generator().manual_seed(seed)
    a0 = torch.randn(max(ranks), 16, generator=gen, dtype=torch.float64)
    return [
        LowRank(
            a0[:r].clone() if shared_a else torch.randn(r, 16, generator=gen, dtype=torch.float64),
            torch.randn(12, r, generator=gen, dtype=torch.float64),
            1.0,
        )
        for r in ranks
    ]


def test_factor_averaging_differs_from_stack_on_heterogeneous_ranks() -> None:
    ups = _lowrank([2, 4, 6])
    weights = normalized_weights([1, 1, 2])
    exact = sum(w * u.dense() for u, w in zip(ups, weights))
    a, b = fedavg_factors(ups, weights)
    error = float((b @ a - exact).norm() / exact.norm())
    assert error > 0.1  # the cross terms B_k A_l
    b_cat, a_cat = stack(ups, weights)
    torch.testing.assert_close(b_cat @ a_cat, exact, rtol=1e-12, atol=1e-12)
    a2, b2 = slice_rank(a, b, 2)
    assert a2.shape == (2, 16) and b2.shape == (12, 2)


def test_factor_averaging_agrees_with_stack_where_theory_says() -> None:
    # identical A on every client (equal ranks): mean(B) @ A == mean(B @ A) exactly
    ups = _lowrank([4, 4, 4], shared_a=True)
    weights = normalized_weights([3, 1, 2])
    exact = sum(w * u.dense() for u, w in zip(ups, weights))
    a, b = fedavg_factors(ups, weights)
    torch.testing.assert_close(b @ a, exact, rtol=1e-12, atol=1e-12)
    # a single client: averaging is the identity, as stack is
    a1, b1 = fedavg_factors(ups[:1], [1.0])
    torch.testing.assert_close(b1 @ a1, ups[0].dense(), rtol=0, atol=0)


def _broadcast_rbf(x: np.ndarray, labels: list[int], knn: int = 2) -> np.ndarray:
    """The graph by the plain formula: every pair's difference at once (O(n^2 dim) memory)."""
    n = x.shape[0]
    sq = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    alpha = 1.0 / float(np.median(sq[~np.eye(n, dtype=bool)]))
    weights = np.exp(-alpha * sq)
    np.fill_diagonal(weights, 0.0)
    adjacency = np.where(np.equal.outer(labels, labels), weights, 0.0)
    for k in range(n):
        if adjacency[k].sum() == 0:
            nearest = [j for j in np.argsort(sq[k], kind="stable") if j != k][:knn]
            adjacency[k, nearest] = weights[k, nearest]
    return adjacency / adjacency.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 37 * 5 * 8, 2**30])  # one row, 3 rows, all rows a block
def test_squared_distances_by_row_blocks_equal_the_broadcast_bitwise(chunk_bytes: int) -> None:
    x = np.random.default_rng(3).normal(size=(37, 5))
    expected = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    assert np.array_equal(squared_distances(x, chunk_bytes=chunk_bytes), expected)


def test_rbf_adjacency_of_many_clients_equals_the_broadcast_formula_bitwise() -> None:
    # 600 clients x 64 coordinates: several default row blocks, and two singletons that borrow neighbours
    rng = np.random.default_rng(4)
    labels = [k % 4 for k in range(598)] + [4, 5]
    centres = rng.normal(0.0, 3.0, size=(6, 64))
    x = centres[labels] + rng.normal(size=(600, 64))
    assert 600 * 64 * 8 * 600 > DISTANCE_CHUNK_BYTES  # the default really splits this into blocks
    assert np.array_equal(rbf_adjacency(x, labels), _broadcast_rbf(x, labels))
