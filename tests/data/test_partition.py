from __future__ import annotations

import numpy as np
import pytest

from atlas_pl.data import DataError, partition_indices


def _labels(n=1000, k=2, seed=0):
    return np.random.default_rng(seed).integers(0, k, size=n)


def _skew(parts, labels, k):
    """Mean total-variation distance of each client's label distribution from the global one."""
    glob = np.bincount(labels, minlength=k) / len(labels)
    return np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=k) / len(p) - glob).sum() for p in parts])


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
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
    if scheme == "dirichlet":  # everything is assigned when there is no cap
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
    with pytest.raises(DataError, match="unknown partition scheme 'shards'; valid schemes: iid, dirichlet"):
        partition_indices(labels, 2, scheme="shards")
    with pytest.raises(DataError, match="n_clients must be an integer >= 1"):
        partition_indices(labels, 0)
    with pytest.raises(DataError, match="alpha must be > 0"):
        partition_indices(labels, 2, scheme="dirichlet", alpha=0.0)
    with pytest.raises(DataError, match="11 clients but only 10 samples"):
        partition_indices(labels, 11)
    with pytest.raises(DataError, match="cap"):
        partition_indices(labels, 2, cap=0)
