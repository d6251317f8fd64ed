"""The coordinator's Phase 4 on synthetic factors: no model, no job, just the uploads and the maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_pl.parties.aggregation import aggregate_round
from atlas_pl.parties.messages import AdapterUpload
from atlas_pl.phases.aggregation import LowRank, normalized_weights, stack, svd_from_factors, truncate
from atlas_pl.phases.personalization import mixing_matrix

KEYS = [(0, "q"), (1, "q")]
ALPHA = 16.0


def _upload(k: int, rank: int, seed: int, *, head_shape=(2, 8), dims=(6, 8)) -> AdapterUpload:
    gen = torch.Generator().manual_seed(seed)
    out_f, in_f = dims
    factors = {
        key: (torch.randn(rank, in_f, generator=gen), torch.randn(out_f, rank, generator=gen)) for key in KEYS
    }
    head = [torch.randn(*head_shape, generator=gen), torch.randn(head_shape[0], generator=gen)]
    return AdapterUpload(client=k, factors=factors, scaling={0: ALPHA / rank, 1: ALPHA / rank}, head=head)


def _dw(upload: AdapterUpload, key) -> torch.Tensor:
    a, b = upload.factors[key]
    return upload.scaling[key[0]] * (b.double() @ a.double())


def _new_dw(update, upload, key) -> torch.Tensor:
    a, b = update.factors[key]
    return upload.scaling[key[0]] * (b.double() @ a.double())


def _run(uploads, **kwargs):
    defaults = {
        "aggregation": "stack",
        "groups": [list(uploads)],
        "mixing": None,
        "head_aggregation": "local",
        "seed": 0,
        "round_index": 1,
    }
    counts = kwargs.pop("counts", [1] * len(uploads))
    return aggregate_round(uploads, counts, **{**defaults, **kwargs})


def test_stack_gives_every_member_the_exact_weighted_sum_when_its_rank_suffices() -> None:
    # ranks 2 + 2 + 4 = 8 >= the aggregate's rank: a client of rank 8 gets it back exactly
    uploads = {0: _upload(0, 2, 1), 1: _upload(1, 2, 2), 2: _upload(2, 8, 3)}
    counts = [1, 3, 4]
    result = _run(uploads, counts=counts)
    assert result is not None and sorted(result.senders) == [0, 1, 2]
    for key in KEYS:
        expected = sum(c * _dw(uploads[k], key) for k, c in enumerate(counts)) / sum(counts)
        got = _new_dw(result.updates[2], uploads[2], key)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert result.truncation_errors[2] < 1e-6
    assert result.truncation_errors[0] > 0.01  # rank 2 cannot hold it: the error is reported
    assert all(u.head is None for u in result.updates.values())  # local heads stay local


def test_groups_are_aggregated_apart_and_a_singleton_group_is_untouched() -> None:
    uploads = {k: _upload(k, 4, 10 + k) for k in range(5)}
    result = _run(uploads, groups=[[0, 1], [2, 3], [4]])
    assert set(result.updates) == {0, 1, 2, 3}
    for key in KEYS:
        torch.testing.assert_close(
            _new_dw(result.updates[0], uploads[0], key), _new_dw(result.updates[1], uploads[1], key)
        )
        assert not torch.allclose(
            _new_dw(result.updates[0], uploads[0], key), _new_dw(result.updates[2], uploads[2], key)
        )
    assert 4 not in result.senders and 4 not in result.receivers


def test_group_heads_are_the_weighted_mean_of_same_shape_heads() -> None:
    uploads = {0: _upload(0, 4, 1), 1: _upload(1, 4, 2), 2: _upload(2, 4, 3, head_shape=(3, 8))}
    result = _run(uploads, head_aggregation="group", counts=[1, 3, 5])
    mean = [0.25 * p + 0.75 * q for p, q in zip(uploads[0].head, uploads[1].head)]
    for k in (0, 1):
        assert all(torch.allclose(got, want) for got, want in zip(result.updates[k].head, mean))
    head = result.updates[2].head or uploads[2].head  # no other head of its shape: its own stays
    assert all(torch.equal(got, own) for got, own in zip(head, uploads[2].head))


def test_fedavg_averages_factors_separately() -> None:
    uploads = {0: _upload(0, 4, 1), 1: _upload(1, 4, 2)}
    result = _run(uploads, aggregation="fedavg")
    for key in KEYS:
        mean_a = (uploads[0].factors[key][0] + uploads[1].factors[key][0]) / 2
        assert torch.allclose(result.updates[0].factors[key][0], mean_a)
        assert torch.equal(result.updates[0].factors[key][0], result.updates[1].factors[key][0])
    assert not result.truncation_errors  # no SVD, nothing to report


def test_laplacian_with_eta_zero_sends_and_changes_nothing() -> None:
    uploads = {k: _upload(k, 4, k) for k in range(3)}
    adjacency = np.full((3, 3), 0.5) - 0.5 * np.eye(3)
    result = _run(uploads, aggregation="laplacian", mixing=mixing_matrix(adjacency, 0.0))
    assert result is not None and not result.updates and not result.senders and not result.receivers


def test_laplacian_row_is_the_mixing_weighted_sum() -> None:
    uploads = {0: _upload(0, 8, 1), 1: _upload(1, 4, 2), 2: _upload(2, 4, 3)}
    adjacency = np.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    mixing = mixing_matrix(adjacency, 0.25)
    result = _run(uploads, aggregation="laplacian", mixing=mixing)
    for key in KEYS:
        expected = sum(mixing[0, j] * _dw(uploads[j], key) for j in range(3))
        torch.testing.assert_close(
            _new_dw(result.updates[0], uploads[0], key), expected, rtol=1e-5, atol=1e-6
        )


def test_a_non_finite_client_is_left_out_then_repaired() -> None:
    uploads = {k: _upload(k, 4, k) for k in range(3)}
    uploads[1].factors[KEYS[0]][0][0, 0] = float("nan")
    uploads[1].head[0][0, 0] = float("inf")
    result = _run(uploads, head_aggregation="local")
    assert result.excluded == {1} and sorted(result.senders) == [0, 2]
    for key in KEYS:  # the others' aggregate, exactly (rank 8 total > 4: compare before truncation is moot)
        assert torch.isfinite(result.updates[1].factors[key][0]).all()
        assert torch.isfinite(_new_dw(result.updates[1], uploads[1], key)).all()
    repaired = result.updates[1]
    assert repaired.reset_optimizer and not result.updates[0].reset_optimizer
    mean = [(p + q) / 2 for p, q in zip(uploads[0].head, uploads[2].head)]
    assert all(torch.allclose(got, want) for got, want in zip(repaired.head, mean))


def test_rank_deficient_aggregate_comes_back_trainable_and_seeded() -> None:
    # client 0 (rank 4) is excluded and receives the others' aggregate, of rank 1 + 1 = 2 < 4: two of its
    # rank components come back zero on both sides and would never train again
    uploads = {0: _upload(0, 4, 1), 1: _upload(1, 1, 2), 2: _upload(2, 1, 3)}
    uploads[0].factors[KEYS[0]][0][0, 0] = float("nan")
    first = _run(uploads, round_index=3)
    again = _run(uploads, round_index=3)
    later = _run(uploads, round_index=4)
    for key in KEYS:
        a, b = first.updates[0].factors[key]
        assert torch.count_nonzero(a[2:]).item() == a[2:].numel()  # dead rows of A re-drawn
        assert torch.count_nonzero(b[:, 2:]).item() == 0  # B stays zero there, so dW is unchanged
        expected = sum(0.5 * _dw(uploads[k], key) for k in (1, 2))
        torch.testing.assert_close(_new_dw(first.updates[0], uploads[0], key), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(a, again.updates[0].factors[key][0])  # seeded by (seed, round, client, key)
        assert not torch.equal(a[2:], later.updates[0].factors[key][0][2:])


def test_nothing_to_do_returns_none() -> None:
    uploads = {0: _upload(0, 4, 1)}
    assert _run(uploads, aggregation="none") is None
    assert _run(uploads, groups=[]) is None


@pytest.mark.parametrize("mode", ["stack", "zeropad"])
def test_one_dtype_in_one_dtype_out(mode: str) -> None:
    uploads = {k: _upload(k, 2 + 2 * k, k) for k in range(2)}
    result = _run(uploads, aggregation=mode)
    for k, update in result.updates.items():
        for key, (a, b) in update.factors.items():
            assert a.dtype == uploads[k].factors[key][0].dtype and a.shape == uploads[k].factors[key][0].shape
            assert b.shape == uploads[k].factors[key][1].shape


def _largest_rank_non_finite(mode: str):
    """Ranks 2, 4 and a non-finite 8: the run's arguments with client 2, and without it."""
    uploads = {0: _upload(0, 2, 1), 1: _upload(1, 4, 2), 2: _upload(2, 8, 3)}
    uploads[2].factors[KEYS[1]][1][0, 0] = float("nan")
    kwargs: dict = {"aggregation": mode, "head_aggregation": "group", "counts": [1, 3, 4]}
    alone: dict = {**kwargs, "counts": [1, 3]}
    if mode == "laplacian":
        adjacency = np.full((3, 3), 0.5) - 0.5 * np.eye(3)
        kwargs["mixing"] = mixing_matrix(adjacency, 0.5)
        alone["mixing"] = kwargs["mixing"][:2, :2]  # the same rows, client 2 dropped (renormalized)
    return uploads, kwargs, alone


@pytest.mark.parametrize("mode", ["stack", "fedavg", "zeropad", "laplacian"])
def test_a_non_finite_largest_rank_client_gets_the_others_aggregate_at_its_own_rank(mode: str) -> None:
    # the aggregate's rank comes from the finite clients only (4 or 6 < 8): client 2 must still get its shapes
    uploads, kwargs, alone = _largest_rank_non_finite(mode)
    result = _run(uploads, **kwargs)
    without = _run({k: uploads[k] for k in (0, 1)}, **alone)
    assert result.excluded == {2} and 2 not in result.senders
    for k, upload in uploads.items():
        for key, (a, b) in upload.factors.items():
            new_a, new_b = result.updates[k].factors[key]
            assert new_a.shape == a.shape and new_b.shape == b.shape
            assert torch.isfinite(new_a).all() and torch.isfinite(new_b).all()
    repaired = result.updates[2]
    assert repaired.reset_optimizer  # its moments came from the non-finite steps
    assert all(torch.isfinite(t).all() for t in repaired.head or uploads[2].head)
    for k in (0, 1):  # as if client 2 had not been there at all, bitwise
        assert not result.updates[k].reset_optimizer
        for key in KEYS:
            got, want = result.updates[k].factors[key], without.updates[k].factors[key]
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert all(
            torch.equal(got, want) for got, want in zip(result.updates[k].head, without.updates[k].head)
        )
    # stack / laplacian: the exact weighted sum (rank 2 + 4 = 6); fedavg / zeropad: the averaged factors,
    # of rank 4, which is what the rank-4 client holds too. Either way the rest of rank 8 is revived.
    filled = 6 if mode in ("stack", "laplacian") else 4
    weights = [0.25, 0.75] if mode == "stack" else [0.5, 0.5]
    for key in KEYS:
        if filled == 6:
            expected = sum(w * _dw(uploads[k], key) for k, w in enumerate(weights))
        else:
            expected = _new_dw(result.updates[1], uploads[1], key)
        torch.testing.assert_close(_new_dw(repaired, uploads[2], key), expected, rtol=1e-5, atol=1e-5)
        a, b = repaired.factors[key]
        assert torch.count_nonzero(b[:, filled:]).item() == 0
        assert bool((a[filled:].norm(dim=1) > 0.1).all())


def test_components_an_aggregate_leaves_at_round_off_are_redrawn() -> None:
    # after a round, the group's members hold one and the same dW; with weights of 1/3 the stack's SVD
    # leaves components 2..5 (from 0) at round-off, about 1e-15 of the largest singular value, not at zero
    same = _upload(0, 2, 1)
    uploads = {k: AdapterUpload(k, same.factors, same.scaling, same.head) for k in range(3)}
    uploads[3] = _upload(3, 8, 2)
    uploads[3].factors[KEYS[0]][0][0, 0] = float("nan")
    for key in KEYS:  # the premise: the raw aggregate's spare components are tiny but not zero
        parts = [LowRank(*uploads[k].factors[key], uploads[k].scaling[key[0]]) for k in range(3)]
        u, s, vh = svd_from_factors(*stack(parts, normalized_weights([1, 1, 1])))
        raw_a, _, _ = truncate(u, s, vh, 8, uploads[3].scaling[key[0]])
        assert bool((raw_a[2:6].abs().amax(dim=1) > 0).all()) and float(raw_a[2:].abs().max()) < 1e-6
    result = _run(uploads)
    assert result.excluded == {3}
    for key in KEYS:
        a, b = result.updates[3].factors[key]
        assert bool((a[2:].norm(dim=1) > 0.1).all())  # all six re-drawn, round-off or zero padding alike
        assert torch.count_nonzero(b[:, 2:]).item() == 0
        torch.testing.assert_close(
            _new_dw(result.updates[3], uploads[3], key), _dw(same, key), rtol=1e-5, atol=1e-6
        )


def test_a_fresh_lora_init_is_not_mistaken_for_dead_components() -> None:
    # B = 0 with a live A (no training yet) gets gradient: the average must come back exactly
    uploads = {k: _upload(k, 4, k) for k in range(2)}
    for upload in uploads.values():
        for _, b in upload.factors.values():
            b.zero_()
    result = _run(uploads, aggregation="fedavg")
    for key in KEYS:
        mean_a = 0.5 * uploads[0].factors[key][0] + 0.5 * uploads[1].factors[key][0]
        assert torch.equal(result.updates[0].factors[key][0], mean_a)


def _upload64(k: int, rank: int, seed: int, dims=(6, 8)) -> AdapterUpload:
    up = _upload(k, rank, seed, dims=dims)
    factors = {key: (a.double(), b.double()) for key, (a, b) in up.factors.items()}
    return AdapterUpload(k, factors, up.scaling, [t.double() for t in up.head])


def _reference_personalize(uploads, mixing):
    """The Laplacian step by its definition: each row's finite members, renormalized, summed by stacking."""
    members = sorted(uploads)
    finite = {k for k in members if uploads[k].finite()}
    out = {}
    for k in members:
        row = {j: float(mixing[k, j]) for j in members if j in finite and mixing[k, j] > 0}
        if k not in finite:
            row.pop(k, None)
        total = sum(row.values())
        if total <= 0 or set(row) <= {k}:
            continue
        row = {j: w / total for j, w in row.items()}
        out[k] = {}
        for key in KEYS:
            parts = [LowRank(*uploads[j].factors[key], uploads[j].scaling[key[0]]) for j in row]
            u, s, vh = svd_from_factors(*stack(parts, list(row.values())))
            rank, scale = uploads[k].factors[key][0].shape[0], uploads[k].scaling[key[0]]
            out[k][key] = truncate(u, s, vh, rank, scale)
    return out


def test_laplacian_rows_of_large_stacked_rank_equal_the_stacked_reference_to_1e_10() -> None:
    # dW is 6 x 8: the 4-client cluster stacks rank >= 6 (mixed densely), the pair {4, 5} rank 3 (factored);
    # client 3 is non-finite and drops out of every row; one weight underflowed to exactly zero
    ranks = [4, 2, 4, 1, 1, 2]
    uploads = {k: _upload64(k, r, 20 + k) for k, r in enumerate(ranks)}
    uploads[3].factors[KEYS[1]][0][0, 0] = float("nan")
    labels = [0, 0, 0, 0, 1, 1]
    adjacency = np.array(
        [
            [0.0 if i == j or a != b else 1.0 + i + j for j, b in enumerate(labels)]
            for i, a in enumerate(labels)
        ]
    )
    adjacency[0, 2] = 0.0
    mixing = mixing_matrix(adjacency / adjacency.sum(axis=1, keepdims=True), 0.6)
    result = _run(uploads, aggregation="laplacian", mixing=mixing)
    reference = _reference_personalize(uploads, mixing)
    assert sorted(reference) == [0, 1, 2, 3, 4, 5] and result.excluded == {3}
    assert sorted(result.senders) == [0, 1, 2, 4, 5] and sorted(result.receivers) == sorted(reference)
    for k, factors in reference.items():
        for key, (a_ref, b_ref, _) in factors.items():
            scale = uploads[k].scaling[key[0]]
            a, b = result.updates[k].factors[key]
            torch.testing.assert_close(scale * b @ a, scale * b_ref @ a_ref, rtol=1e-10, atol=1e-10)
        assert result.truncation_errors[k] == pytest.approx(
            max(err for *_, err in factors.values()), rel=1e-10, abs=1e-12
        )


def test_a_groups_heads_are_summed_once_and_equal_the_term_by_term_sum() -> None:
    shapes = [(2, 8)] * 5 + [(3, 8)] * 3
    uploads = {k: _upload(k, 2, 40 + k, head_shape=s) for k, s in enumerate(shapes)}
    counts = [1, 2, 3, 4, 5, 6, 7, 8]
    result = _run(uploads, head_aggregation="group", counts=counts)
    weights = normalized_weights(counts)
    for k, shape in enumerate(shapes):
        same = {j: w for j, w in enumerate(weights) if shapes[j] == shape}
        total = sum(same.values())
        head = result.updates[k].head
        for index, got in enumerate(head):
            want = sum(w / total * uploads[j].head[index] for j, w in same.items())
            assert torch.equal(got, want)  # bitwise: the same Python sum, from 0, in row order
    first, second = result.updates[0].head, result.updates[1].head
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(first, second))  # each client its own copy


@pytest.mark.parametrize("mode", ["stack", "fedavg"])
def test_members_of_one_rank_get_equal_factors_in_storage_of_their_own(mode: str) -> None:
    uploads = {k: _upload(k, 4, 50 + k) for k in range(3)}
    result = _run(uploads, aggregation=mode)
    for key in KEYS:
        first, second = result.updates[0].factors[key], result.updates[1].factors[key]
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        assert first[0].data_ptr() != second[0].data_ptr() and first[1].data_ptr() != second[1].data_ptr()
        assert first[0].data_ptr() != uploads[0].factors[key][0].data_ptr()


@pytest.mark.parametrize("aggregation", ["stack", "laplacian"])
def test_wide_modules_take_the_partial_svd_and_give_each_client_the_full_svds_truncation(aggregation) -> None:
    """48 x 40 modules: group() asks for the group's largest rank, personalize() for each client's, and
    where that is at most a quarter of the core they take the Gram route; every client's factors equal
    the full SVD's truncation."""
    ranks = [4, 6, 2, 5, 3, 6]  # stacked rank 26 < 40: the factored core, whose quarter (6.5) >= 6
    uploads = {k: _upload64(k, r, 60 + k, dims=(48, 40)) for k, r in enumerate(ranks)}
    if aggregation == "laplacian":
        labels = [0, 0, 0, 0, 1, 1]
        adjacency = np.array(
            [[float(i != j and a == b) for j, b in enumerate(labels)] for i, a in enumerate(labels)]
        )
        mixing = mixing_matrix(adjacency / adjacency.sum(axis=1, keepdims=True), 0.5)
        result = _run(uploads, aggregation="laplacian", mixing=mixing)
        reference = _reference_personalize(uploads, mixing)
    else:
        counts = [3, 1, 4, 1, 5, 9]
        result = _run(uploads, counts=counts)
        weights = normalized_weights(counts)
        reference = {}
        for k in uploads:
            reference[k] = {}
            for key in KEYS:
                parts = [LowRank(*uploads[j].factors[key], uploads[j].scaling[key[0]]) for j in uploads]
                u, s, vh = svd_from_factors(*stack(parts, weights))
                reference[k][key] = truncate(u, s, vh, ranks[k], uploads[k].scaling[key[0]])
    for k, factors in reference.items():
        for key, (a_ref, b_ref, _) in factors.items():
            a, b = result.updates[k].factors[key]
            assert a.shape == a_ref.shape  # no component re-drawn: the sums are of full rank
            torch.testing.assert_close(b @ a, b_ref @ a_ref, rtol=1e-9, atol=1e-9)
        worst = max(err for *_, err in factors.values())
        assert result.truncation_errors[k] == pytest.approx(worst, abs=1e-7)
