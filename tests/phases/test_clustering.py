"""Phase 1 server side: sketch reduction, k-selection by the penalised score ensemble, cluster quality."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_pl.phases.clustering import ClusterResult, cluster_quality, clusters_by_task, reduce, select_k

TABLE_KEYS = ["k", "silhouette", "davies_bouldin", "calinski_harabasz", "singletons", "combined"]


def _groups(n_groups: int, per_group: int, dim: int, spread: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (n_groups, dim))
    return np.concatenate([c + spread * rng.normal(0, 1, (per_group, dim)) for c in centers])


def test_reduce_standardizes_then_projects_to_at_most_n_minus_one_components() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 256))
    x[:, 3] = 5.0  # a constant coordinate must not produce NaNs
    x[:, 4] *= 1e6  # nor may one huge-scale coordinate dominate after standardization
    coords = reduce(x, 64)
    assert coords.shape == (9, 8) and np.all(np.isfinite(coords))
    np.testing.assert_array_equal(coords, reduce(x.copy(), 64))  # deterministic
    assert reduce(x, 3).shape == (9, 3)
    assert reduce(x[:, :5], 64).shape == (9, 5)  # sketch_dim bounds it too
    # after standardization the 1e6-scaled column weighs like any other: scaling it back changes nothing
    unscaled = x.copy()
    unscaled[:, 4] /= 1e6
    np.testing.assert_allclose(np.abs(coords), np.abs(reduce(unscaled, 64)), atol=1e-8)
    assert reduce(x[:1], 64).shape == (1, 1)
    with pytest.raises(ValueError, match="not finite"):
        reduce(np.array([[0.0, np.nan], [1.0, 2.0]]), 4)


def test_select_k_finds_three_well_separated_groups() -> None:
    x = _groups(3, 3, 256)
    result = select_k(reduce(x, 64), k_min=2, k_max=5, seed=0, singleton_penalty=0.15)
    assert isinstance(result, ClusterResult)
    assert result.k == 3
    assert cluster_quality(result.labels, ["a"] * 3 + ["b"] * 3 + ["c"] * 3)["purity"] == 1.0
    assert result.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # relabelled in order of first appearance
    assert [row["k"] for row in result.table] == [2, 3, 4, 5]
    for row in result.table:
        assert list(row) == TABLE_KEYS
    best = max(result.table, key=lambda r: r["combined"])
    assert best["k"] == 3 and best["singletons"] == 0
    assert result.groups() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_labels_do_not_depend_on_client_order_beyond_relabelling() -> None:
    x = _groups(3, 3, 16)
    order = [4, 0, 8, 2, 6, 1, 3, 7, 5]
    result = select_k(x[order], seed=0)
    assert result.labels[0] == 0 and result.k == 3
    # first appearance: each new label is exactly one more than the largest seen so far
    seen = -1
    for label in result.labels:
        assert label <= seen + 1
        seen = max(seen, label)


def _two_groups_and_a_straggler(offset: float = 10.0) -> np.ndarray:
    """Three tight triangles far apart, plus one point `offset` away from the third one.

    Unpenalised, isolating the straggler (k = 4, one singleton) scores best; with it counted against the
    score the three true groups win, the straggler joining its nearest group.
    """
    tri = np.array([[0.0, 1.0], [-0.87, -0.5], [0.87, -0.5]])
    centers = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]])
    straggler = np.array([[offset / np.sqrt(2), 30.0 + offset / np.sqrt(2)]])
    return np.vstack([c + tri for c in centers] + [straggler])


def test_singleton_penalty_changes_the_choice() -> None:
    x = _two_groups_and_a_straggler()
    free = select_k(x, seed=0, singleton_penalty=0.0)
    penalised = select_k(x, seed=0, singleton_penalty=0.15)
    assert free.k == 4 and any(row["singletons"] == 1 and row["k"] == 4 for row in free.table)
    assert np.bincount(free.labels).min() == 1  # the unpenalised choice isolates the straggler
    assert penalised.k == 3 and np.bincount(penalised.labels).min() > 1
    assert penalised.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    # the penalty acts only on `combined`, by exactly 0.15 per singleton
    for a, b in zip(free.table, penalised.table):
        assert b["combined"] == pytest.approx(a["combined"] - 0.15 * a["singletons"])


def test_combined_score_is_the_weighted_min_max_normalized_ensemble() -> None:
    x = _groups(3, 4, 8, spread=0.3, seed=3)
    weights = {"silhouette": 0.5, "davies_bouldin": 0.3, "calinski_harabasz": 0.2}
    result = select_k(x, seed=0, singleton_penalty=0.15, weights=weights)
    table = result.table
    s = np.array([r["silhouette"] for r in table])
    db = np.array([r["davies_bouldin"] for r in table])
    ch = np.array([r["calinski_harabasz"] for r in table])

    def norm(v: np.ndarray) -> np.ndarray:
        return (v - v.min()) / (v.max() - v.min())

    expected = 0.5 * norm(s) + 0.3 * (1 - norm(db)) + 0.2 * norm(ch)
    expected -= 0.15 * np.array([r["singletons"] for r in table])
    np.testing.assert_allclose([r["combined"] for r in table], expected, atol=1e-12)
    assert result.k == table[int(np.argmax(expected))]["k"]
    # weights are config: all weight on Calinski-Harabasz picks its best k
    ch_only = select_k(
        x,
        seed=0,
        singleton_penalty=0.0,
        weights={"silhouette": 0, "davies_bouldin": 0, "calinski_harabasz": 1},
    )
    assert ch_only.k == table[int(np.argmax(ch))]["k"]


def test_ties_go_to_the_smaller_k_and_a_single_candidate_normalizes_to_one() -> None:
    x = _groups(3, 3, 8)
    zero = {"silhouette": 0.0, "davies_bouldin": 0.0, "calinski_harabasz": 0.0}
    tied = select_k(x, k_min=3, k_max=5, seed=0, singleton_penalty=0.0, weights=zero)
    assert all(row["combined"] == 0.0 for row in tied.table)
    assert tied.k == 3  # every candidate ties: the smallest k wins
    only = select_k(x[:3], seed=0)  # n = 3: the only candidate is k = 2, with one singleton
    assert [row["k"] for row in only.table] == [2]
    assert only.table[0]["combined"] == pytest.approx(1.0 - 0.15)  # each score normalizes to 1.0


def test_too_few_clients_form_one_cluster_and_bad_k_ranges_are_rejected() -> None:
    for n in (0, 1, 2):
        result = select_k(np.zeros((n, 4)) + np.arange(n)[:, None], seed=0)
        assert result.k == 1 and result.labels == [0] * n and result.table == []
    x = _groups(2, 2, 4)
    with pytest.raises(ValueError, match="k_min must be >= 2"):
        select_k(x, k_min=1)
    with pytest.raises(ValueError, match="k_max .* must be >= "):
        select_k(x, k_min=3, k_max=2)
    with pytest.raises(ValueError, match="no candidate k for 4 clients"):
        select_k(x, k_min=4, k_max=5)
    with pytest.raises(ValueError, match="weights"):
        select_k(x, weights={"silhouette": 1.0})


def test_identical_points_fall_back_to_one_cluster() -> None:
    result = select_k(np.ones((5, 3)), seed=0)
    assert result.k == 1 and result.labels == [0] * 5
    assert all(row["combined"] is None for row in result.table)


def test_cluster_quality() -> None:
    truth = ["sst2", "sst2", "sst2", "mrpc", "mrpc", "mrpc"]
    assert cluster_quality([1, 1, 1, 0, 0, 0], truth) == {"purity": 1.0, "ari": 1.0, "nmi": 1.0}
    merged = cluster_quality([0, 0, 0, 0, 0, 0], truth)
    assert merged["purity"] == 0.5 and merged["ari"] == 0.0 and merged["nmi"] == 0.0
    split = cluster_quality([0, 1, 2, 3, 4, 5], truth)  # singletons are pure, but ARI sees through them
    assert split["purity"] == 1.0 and split["ari"] == 0.0
    mixed = cluster_quality([0, 0, 1, 1, 1, 1], truth)
    assert mixed["purity"] == pytest.approx(5 / 6)
    assert 0 < mixed["ari"] < 1 and 0 < mixed["nmi"] < 1
    with pytest.raises(ValueError, match="one true task per client"):
        cluster_quality([0, 1], truth)


def test_known_tasks_as_clusters_number_them_in_order_of_first_appearance() -> None:
    result = clusters_by_task(["mrpc", "sst2", "mrpc", "cola", "sst2"])
    assert (result.k, result.labels, result.table) == (3, [0, 1, 0, 2, 1], [])
    assert result.groups() == [[0, 2], [1, 4], [3]]
