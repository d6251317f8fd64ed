"""Stack aggregation is exact; the SVD from stacked factors equals the dense SVD; truncation is optimal."""

from __future__ import annotations

import pytest
import torch

from atlas_pl.phases.aggregation import (
    LowRank,
    mixed_svds,
    normalized_weights,
    stack,
    svd_from_factors,
    top_svd,
    truncate,
    weighted_sum_svd,
)


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


def _mixing_rows(n: int, seed: int) -> list[list[tuple[int, float]]]:
    """Rows of a mixing matrix: two dense blocks (4 and 5 clients), a light pair, and one borrower."""
    rng = torch.Generator().manual_seed(seed)
    blocks = [list(range(4)), list(range(4, 9))]
    rows = [[(j, float(w)) for j, w in zip(b, torch.rand(len(b), generator=rng))] for b in blocks for _ in b]
    rows += [[(9, 0.7), (10, 0.3)], [(10, 0.5), (9, 0.5)], [(10, 0.2), (2, 0.5), (5, 0.3)]]
    assert max(j for row in rows for j, _ in row) < n
    return rows


def test_mixed_svds_equal_each_rows_stacked_svd_to_1e_10() -> None:
    # out 12, in 10: rows over the two blocks stack rank >= 10 (mixed dense), the others stay factored
    ranks = [4, 2, 8, 4, 2, 2, 4, 8, 2, 1, 2]
    updates = _updates(ranks, out_f=12, in_f=10, seed=5)
    rows = _mixing_rows(len(ranks), seed=6)
    dense_rows = {i for i, row in enumerate(rows) if sum(ranks[j] for j, _ in row) >= 10}
    assert len(dense_rows) == 10 and len(rows) - len(dense_rows) == 2  # both kinds, 3 column sets
    # a block budget of two d x d matrices: several row and column blocks per group of rows
    got = dict(mixed_svds(updates, rows, chunk_bytes=2 * 12 * 10 * 8))
    assert sorted(got) == list(range(len(rows)))
    for i, row in enumerate(rows):
        picked = [updates[j] for j, _ in row]
        weights = [w for _, w in row]
        u_ref, s_ref, vh_ref = svd_from_factors(*stack(picked, weights))
        u, s, vh, _ = got[i]
        if i not in dense_rows:  # the factored route is the one a single sum takes: bitwise equal
            assert all(torch.equal(p, q) for p, q in zip((u, s, vh), (u_ref, s_ref, vh_ref)))
        expected = sum(w * up.dense() for up, w in zip(picked, weights))
        torch.testing.assert_close((u * s) @ vh, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
        for rank in (1, 3):  # what a client takes back: the same best rank-r factors and error
            a, b, err = truncate(u, s, vh, rank, 0.5)
            a_ref, b_ref, err_ref = truncate(u_ref, s_ref, vh_ref, rank, 0.5)
            torch.testing.assert_close(b @ a, b_ref @ a_ref, rtol=1e-10, atol=1e-10)
            assert err == pytest.approx(err_ref, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize(
    ("scale_ranks", "out_f", "in_f", "gram_rows"),
    [(1, 48, 40, 9), (2, 24, 20, 9)],  # factored cores of rank 18 / dense sums: the Gram route on each
)
def test_mixed_svds_with_tops_give_each_client_the_same_truncation_to_1e_10(
    scale_ranks: int, out_f: int, in_f: int, gram_rows: int
) -> None:
    ranks = [scale_ranks * r for r in [4, 2, 8, 4, 2, 2, 4, 8, 2, 1, 2]]
    updates = _updates(ranks, out_f=out_f, in_f=in_f, seed=9)
    rows = _mixing_rows(len(ranks), seed=10)
    full = dict(mixed_svds(updates, rows))
    for shift in (0, 1):
        tops = [2 + (i + shift) % 2 for i in range(len(rows))]  # each row its own rank: 2 or 3
        got = dict(mixed_svds(updates, rows, tops=tops))
        # a small stack's core is cheaper to decompose whole: only the large ones come back partial
        assert sum(svd.s.shape[0] == tops[i] for i, svd in got.items()) >= gram_rows
        for i, svd in got.items():
            route_rank = tops[i]
            k = min(route_rank, svd.s.shape[0])
            ref = full[i]
            torch.testing.assert_close(svd.s[:k], ref.s[:k], rtol=1e-10, atol=1e-12)
            assert svd.norm == pytest.approx(ref.norm, rel=1e-12)
            a, b, err = truncate(svd.u, svd.s, svd.vh, route_rank, 0.5, norm=svd.norm)
            a_ref, b_ref, err_ref = truncate(ref.u, ref.s, ref.vh, route_rank, 0.5)
            torch.testing.assert_close(b @ a, b_ref @ a_ref, rtol=1e-10, atol=1e-10)
            assert err == pytest.approx(err_ref, abs=1e-7)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_top_svd_is_the_leading_part_of_the_full_svd(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(11)
    # rank 5 of 30: the leading 3 are well separated; asking for 6 reaches into the null space
    left = torch.randn(shape[0], 5, generator=gen, dtype=torch.float64)
    right = torch.randn(5, shape[1], generator=gen, dtype=torch.float64)
    matrix = left @ torch.diag(torch.tensor([9.0, 5.0, 3.0, 1.0, 0.5], dtype=torch.float64)) @ right
    u_ref, s_ref, vh_ref = torch.linalg.svd(matrix, full_matrices=False)
    for k in (3, 6):
        svd = top_svd(matrix, k)
        assert svd.u.shape == (shape[0], k) and svd.vh.shape == (k, shape[1])
        torch.testing.assert_close(svd.s, s_ref[:k], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(svd.u.T @ svd.u, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)
        torch.testing.assert_close(
            (svd.u * svd.s) @ svd.vh, (u_ref[:, :k] * s_ref[:k]) @ vh_ref[:k], rtol=1e-10, atol=1e-10
        )
        assert svd.norm == pytest.approx(float(torch.linalg.norm(matrix)), rel=1e-12)
    # all values known (k above the Gram share): the error comes from the tail, not a cancellation
    exact = top_svd(matrix, None)
    _, _, err = truncate(exact.u, exact.s, exact.vh, 5, 1.0, norm=exact.norm)
    assert err < 1e-14
    zero = top_svd(torch.zeros(shape, dtype=torch.float64), 3)
    assert zero.norm == 0.0 and zero.s.numel() == 0
    a, b, err = truncate(zero.u, zero.s, zero.vh, 3, 1.0, norm=zero.norm)
    assert a.shape == (3, shape[1]) and float(b.abs().sum()) == 0.0 and err == 0.0


def test_mixed_svds_use_each_updates_scale_and_input_rounding() -> None:
    # float32 factors: the dense route rounds s_k B_k in float32 as `stack` does, then sums in float64
    updates = [LowRank(up.a.float(), up.b.float(), up.scale) for up in _updates([6, 6], 8, 6, seed=7)]
    rows = [[(0, 0.25), (1, 0.75)]]
    (_, (u, s, vh, _)), *_ = mixed_svds(updates, rows)
    expected = sum(w * (up.scale * up.b).double() @ up.a.double() for up, (_, w) in zip(updates, rows[0]))
    torch.testing.assert_close((u * s) @ vh, expected, rtol=1e-12, atol=1e-12)


def test_weighted_sum_svd_in_parts_equals_the_single_stack_to_1e_10() -> None:
    updates = _updates([4, 2, 8, 4, 6, 1, 3], out_f=12, in_f=10, seed=8)  # stacked rank 28 >= 10
    weights = normalized_weights([3, 1, 4, 1, 5, 9, 2])
    reference = svd_from_factors(*stack(updates, weights))
    whole = weighted_sum_svd(updates, weights, chunk_rank=28)  # fits one stack: the same computation
    assert all(torch.equal(p, q) for p, q in zip(whole, reference))
    for chunk_rank in (1, 7, 12):  # one update a part (even wider than the limit), or several
        u, s, vh, _ = weighted_sum_svd(updates, weights, chunk_rank=chunk_rank)
        torch.testing.assert_close(s, reference[1], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(
            (u * s) @ vh, (reference[0] * reference[1]) @ reference[2], rtol=1e-10, atol=1e-10
        )
        expected = sum(w * up.dense() for up, w in zip(updates, weights))
        torch.testing.assert_close((u * s) @ vh, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_rank", [1, 2048])  # the dense sum in parts, and the single stack
def test_weighted_sum_svd_top_gives_every_rank_the_full_svds_truncation(chunk_rank: int) -> None:
    updates = _updates([4, 2, 8, 4, 6, 1, 3, 8, 8], out_f=48, in_f=40, seed=12)  # stacked rank 44 >= 40
    weights = normalized_weights([3, 1, 4, 1, 5, 9, 2, 6, 5])
    full = weighted_sum_svd(updates, weights, chunk_rank=chunk_rank)
    part = weighted_sum_svd(updates, weights, top=8, chunk_rank=chunk_rank)
    assert part.s.shape == (8,) and full.s.shape == (40,)
    for rank in (1, 4, 8):
        a, b, err = truncate(part.u, part.s, part.vh, rank, 2.0, norm=part.norm)
        a_ref, b_ref, err_ref = truncate(full.u, full.s, full.vh, rank, 2.0)
        torch.testing.assert_close(b @ a, b_ref @ a_ref, rtol=1e-10, atol=1e-10)
        assert err == pytest.approx(err_ref, abs=1e-7)


def test_weighted_sum_svd_below_full_rank_keeps_the_factored_route() -> None:
    updates = _updates([2, 3], out_f=12, in_f=10, seed=9)  # stacked rank 5 < 10: QR route, any chunk
    weights = normalized_weights([1, 2])
    got = weighted_sum_svd(updates, weights, chunk_rank=1)
    assert all(torch.equal(p, q) for p, q in zip(got, svd_from_factors(*stack(updates, weights))))
