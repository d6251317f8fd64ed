"""Stack aggregation is exact; the SVD from stacked factors equals the dense SVD; truncation is optimal."""

from __future__ import annotations

import pytest
import torch

from atlas_pl.phases.aggregation import LowRank, normalized_weights, stack, svd_from_factors, truncate


def _updates(ranks: list[int], out_f: int = 48, in_f: int = 40, seed: int = 0) -> list[LowRank]:
    gen = torch.Generator().manual_seed(seed)
    return [
        LowRank(
            torch.randn(r, in_f, generator=gen, dtype=torch.float64),
            torch.randn(out_f, r, generator=gen, dtype=torch.float64),
            16.0 / r,
        )
        for r in ranks
    ]


def test_stack_is_the_exact_weighted_sum_for_heterogeneous_ranks() -> None:
    updates = _updates([2, 4, 8, 3])
    weights = normalized_weights([10, 30, 5, 55])
    b_cat, a_cat = stack(updates, weights)
    expected = sum(w * u.dense() for u, w in zip(updates, weights))
    assert b_cat.shape == (48, 17) and a_cat.shape == (17, 40)
    torch.testing.assert_close(b_cat @ a_cat, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ranks", [[2, 3], [8, 8, 8, 8, 8, 8]])  # stacked rank below / above min(d)
def test_svd_from_factors_equals_dense_svd(ranks: list[int]) -> None:
    updates = _updates(ranks)
    b_cat, a_cat = stack(updates, normalized_weights([1.0] * len(ranks)))
    u, s, vh = svd_from_factors(b_cat, a_cat)
    dense = b_cat @ a_cat
    s_dense = torch.linalg.svdvals(dense)
    torch.testing.assert_close(s, s_dense[: s.shape[0]], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((u * s) @ vh, dense, rtol=1e-10, atol=1e-10)


def test_redistribution_with_enough_rank_reproduces_the_aggregate() -> None:
    updates = _updates([2, 4, 3])
    weights = normalized_weights([1, 2, 3])
    u, s, vh = svd_from_factors(*stack(updates, weights))
    target = sum(w * up.dense() for up, w in zip(updates, weights))
    scale = 16.0 / 9
    a, b, error = truncate(u, s, vh, 9, scale)  # rank >= sum of ranks
    assert error < 1e-12
    rel = torch.linalg.norm(scale * b @ a - target) / torch.linalg.norm(target)
    assert rel < 1e-5
    # a smaller rank gives the Eckart-Young optimum, and reports exactly its relative error
    a4, b4, error4 = truncate(u, s, vh, 4, 16.0 / 4)
    s_all = torch.linalg.svdvals(target)
    assert error4 == pytest.approx(float(torch.linalg.norm(s_all[4:]) / torch.linalg.norm(s_all)), rel=1e-9)
    best = torch.linalg.norm(s_all[4:])
    assert float(torch.linalg.norm(4.0 * b4 @ a4 - target)) == pytest.approx(float(best), rel=1e-9)


def test_weights_must_have_positive_sum() -> None:
    with pytest.raises(ValueError, match="positive sum"):
        normalized_weights([0, 0])
