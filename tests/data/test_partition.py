from __future__ import annotations

import numpy as np
import pytest

from atlas_pl.data import DataError, partition_indices
from atlas_pl.data.partition import MIN_PER_CLIENT, kept_rows, quantity_sizes


def _labels(n=1000, k=2, seed=0):
    return np.random.default_rng(seed).integers(0, k, size=n)


def _skew(parts, labels, k):
    """Mean total-variation distance of each client's label distribution from the global one."""
    glob = np.bincount(labels, minlength=k) / len(labels)
    return np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=k) / len(p) - glob).sum() for p in parts])


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_disjoint_sorted_and_reproducible(scheme):
    labels = _labels(k=3)
    parts = partition_indices(labels, 7, scheme=scheme, alpha=0.3, seed=5)
    assert len(parts) == 7
    flat = np.concatenate(parts)
    assert len(flat) == len(np.unique(flat))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) and len(p) >= 2 for p in parts)
    assert flat.min() >= 0 and flat.max() < len(labels)
    again = partition_indices(labels, 7, scheme=scheme, alpha=0.3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition_indices(labels, 7, scheme=scheme, alpha=0.3, seed=6)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))
    if scheme != "iid":  # everything is assigned when there is no cap (iid: by construction)
        assert len(flat) == len(labels)


def test_iid_covers_everything_evenly():
    parts = partition_indices(_labels(1003), 4)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1003))
    assert sorted(len(p) for p in parts) == [250, 251, 251, 251]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_cap(scheme):
    labels = _labels()
    parts = partition_indices(labels, 4, scheme=scheme, cap=30, seed=1)
    assert all(len(p) <= 30 for p in parts)
    assert sum(len(p) for p in parts) == 120  # every client has more than 30 available here
    flat = np.concatenate(parts)
    assert len(flat) == len(np.unique(flat))


def test_dirichlet_is_more_label_skewed_than_iid():
    labels = _labels(2000, k=4)
    iid = np.mean([_skew(partition_indices(labels, 8, seed=s), labels, 4) for s in range(5)])
    dirichlet = np.mean(
        [
            _skew(partition_indices(labels, 8, scheme="dirichlet", alpha=0.1, seed=s), labels, 4)
            for s in range(5)
        ]
    )
    assert dirichlet > iid + 0.2, (iid, dirichlet)
    mild = np.mean(
        [
            _skew(partition_indices(labels, 8, scheme="dirichlet", alpha=100.0, seed=s), labels, 4)
            for s in range(5)
        ]
    )
    assert mild < dirichlet


def test_bad_arguments():
    labels = _labels(10)
    with pytest.raises(
        DataError, match="unknown partition scheme 'shards'; valid schemes: iid, dirichlet, quantity"
    ):
        partition_indices(labels, 2, scheme="shards")
    with pytest.raises(DataError, match="n_clients must be an integer >= 1"):
        partition_indices(labels, 0)
    with pytest.raises(DataError, match="alpha must be > 0"):
        partition_indices(labels, 2, scheme="dirichlet", alpha=0.0)
    with pytest.raises(DataError, match="11 clients but only 10 samples"):
        partition_indices(labels, 11)
    with pytest.raises(DataError, match="cap"):
        partition_indices(labels, 2, cap=0)


def _sizes(parts):
    return np.array([len(p) for p in parts])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.05, 0.3, 5.0])
def test_quantity_shares_out_exactly_the_budget(seed, alpha):
    labels = _labels(1000, k=3)
    parts = partition_indices(labels, 10, scheme="quantity", alpha=alpha, cap=40, seed=seed)
    sizes = _sizes(parts)
    assert sizes.sum() == 400  # n_clients x cap: cap is the mean size, not a per-client cap
    assert sizes.min() >= MIN_PER_CLIENT
    flat = np.concatenate(parts)
    assert len(flat) == len(np.unique(flat)) and flat.min() >= 0 and flat.max() < 1000
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


def test_quantity_cap_is_a_mean_not_a_cap():
    parts = partition_indices(_labels(1000), 5, scheme="quantity", alpha=0.3, cap=50, seed=0)
    assert _sizes(parts).max() > 50 and _sizes(parts).sum() == 250


def test_quantity_without_cap_or_beyond_the_data_uses_every_sample():
    labels = _labels(503)
    for cap in (None, 200):  # 4 x 200 > 503: the budget is what there is
        parts = partition_indices(labels, 4, scheme="quantity", alpha=0.5, cap=cap, seed=2)
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(503))


def test_small_alpha_skews_sizes_far_more_than_large_alpha():
    labels = _labels(2000)

    def ratio(alpha):
        spans = []
        for s in range(5):
            sizes = _sizes(partition_indices(labels, 10, scheme="quantity", alpha=alpha, cap=100, seed=s))
            spans.append(sizes.max() / sizes.min())
        return np.median(spans)

    skewed, even = ratio(0.3), ratio(100.0)
    assert skewed > 20 and even < 2, (skewed, even)


def test_quantity_keeps_labels_iid():
    """Sizes are skewed, labels are not: a big client's class mix is the task's; dirichlet's is not."""
    labels = _labels(4000, k=4)
    glob = np.bincount(labels, minlength=4) / len(labels)
    parts = partition_indices(labels, 6, scheme="quantity", alpha=0.5, seed=3)
    big = [p for p in parts if len(p) >= 300]
    assert big
    for p in big:
        assert 0.5 * np.abs(np.bincount(labels[p], minlength=4) / len(p) - glob).sum() < 0.08
    quantity = np.mean(
        [
            _skew(partition_indices(labels, 8, scheme="quantity", alpha=0.3, seed=s), labels, 4)
            for s in range(3)
        ]
    )
    dirichlet = np.mean(
        [
            _skew(partition_indices(labels, 8, scheme="dirichlet", alpha=0.3, seed=s), labels, 4)
            for s in range(3)
        ]
    )
    assert quantity < dirichlet - 0.15, (quantity, dirichlet)


def test_quantity_is_deterministic_by_seed():
    labels = _labels(800)
    a = partition_indices(labels, 6, scheme="quantity", alpha=0.4, cap=50, seed=9)
    b = partition_indices(labels, 6, scheme="quantity", alpha=0.4, cap=50, seed=9)
    c = partition_indices(labels, 6, scheme="quantity", alpha=0.4, cap=50, seed=10)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(_sizes(a), _sizes(c))


def test_quantity_sizes_formula():
    """MIN_PER_CLIENT each, the rest split by the Dirichlet draw (largest remainders)."""
    sizes = quantity_sizes(100, 4, 1.0, np.random.default_rng(0))
    props = np.random.default_rng(0).dirichlet(np.ones(4))
    assert sizes.sum() == 100
    assert np.all(np.abs(sizes - (MIN_PER_CLIENT + props * (100 - 4 * MIN_PER_CLIENT))) < 1)


def test_quantity_refuses_a_budget_below_two_per_client():
    labels = _labels(100)
    with pytest.raises(
        DataError, match=r"6 clients need 12, but the budget is 6 .*cap \(samples per client\) >= 2"
    ):
        partition_indices(labels, 6, scheme="quantity", cap=1)
    with pytest.raises(
        DataError, match=r"60 clients need 120, but the budget is 100 = 100 samples.*n_clients <= 50"
    ):
        partition_indices(labels, 60, scheme="quantity")
    with pytest.raises(DataError, match="quantity alpha must be > 0"):
        partition_indices(labels, 2, scheme="quantity", alpha=0.0)


def test_kept_rows_leave_the_cap_for_training():
    assert kept_rows(100, 0.2) == 125 and kept_rows(80, 0.25) == 107


def test_federated_quantity_clients_differ_in_size_around_the_mean(tmp_path):
    from .test_federated import _build

    fed = _build(tmp_path, partition="quantity", dirichlet_alpha=0.3, samples_per_client=100)
    iid = _build(tmp_path, samples_per_client=100)
    for task in fed.tasks:
        sizes = [c.num_samples for c in fed.clients_of(task)]
        assert all(c.num_samples == len(c.train) == len(c.indices) for c in fed.clients_of(task))
        assert sum(sizes) == 300 == sum(c.num_samples for c in iid.clients_of(task))  # equal total data
        assert max(sizes) > 100 > min(sizes) >= MIN_PER_CLIENT
        idx = np.concatenate([c.indices for c in fed.clients_of(task)])
        assert len(np.unique(idx)) == len(idx)
