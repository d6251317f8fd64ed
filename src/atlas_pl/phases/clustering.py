"""Phase 1, server side: reduce the clients' sketches and discover the tasks by k-selection (pure).

The number of tasks is unknown to the server, so k is chosen by an ensemble of internal validity scores
rather than any single one: silhouette alone favours k=2 on elongated data, Calinski-Harabasz alone
grows with k, Davies-Bouldin alone rewards splitting off outliers. Each score is min-max normalized across
the candidate ks so that the weights are comparable, and a penalty per singleton cluster stops the
ensemble from isolating one odd client as its own "task" (a singleton has no one to share updates with,
which defeats the purpose of clustering in the first place).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

DEFAULT_WEIGHTS: dict[str, float] = {"silhouette": 0.5, "davies_bouldin": 0.3, "calinski_harabasz": 0.2}
TIE_TOLERANCE = 1e-12


@dataclass(frozen=True)
class ClusterResult:
    """The chosen clustering and the k-search table that justifies it (JSON-ready: plain ints/floats).

    `table` rows have exactly the keys k, silhouette, davies_bouldin, calinski_harabasz, singletons,
    combined: raw score values (None where a candidate could not be scored); `combined` is the
    normalized, weighted, penalised one. `labels` are renumbered in order of first appearance, so equal
    partitions always print the same.
    """

    k: int
    labels: list[int]
    table: list[dict[str, float | int | None]] = field(default_factory=list)

    def groups(self) -> list[list[int]]:
        """Client indices of each cluster, by cluster label."""
        return [[i for i, lab in enumerate(self.labels) if lab == c] for c in range(max(self.labels) + 1)]


def clusters_by_task(tasks: Sequence[Hashable]) -> ClusterResult:
    """The clients' known tasks as clusters (`clustering.by_task`): what a perfect Phase 1 would find,
    so that a run with it measures how much discovery's mistakes cost; no k is searched."""
    index: dict[Hashable, int] = {}
    labels = [index.setdefault(t, len(index)) for t in tasks]
    return ClusterResult(k=len(index), labels=labels)


def reduce(sketches: np.ndarray, max_dim: int) -> np.ndarray:
    """Standardize each sketch coordinate, then PCA to min(max_dim, n - 1, sketch_dim) components.

    Standardizing keeps one high-variance coordinate from dominating KMeans' Euclidean distances; n - 1
    components is all the information n points have. Constant columns are left at zero instead of being
    divided by zero. PCA uses the exact (LAPACK) solver and sklearn's sign convention, so the result is
    deterministic. With fewer than 2 clients there is nothing to reduce: zeros of shape [n, 1].
    """
    x = np.asarray(sketches, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"sketches must be a 2-D array [n_clients, sketch_dim], got shape {x.shape}")
    if max_dim < 1:
        raise ValueError(f"max_dim (fingerprint.dim) must be >= 1, got {max_dim}")
    if not np.all(np.isfinite(x)):
        bad = sorted(set(np.nonzero(~np.isfinite(x))[0].tolist()))
        raise ValueError(f"sketches of clients {bad} are not finite")
    n, d = x.shape
    if n < 2:
        return np.zeros((n, 1))
    std = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    components = min(max_dim, n - 1, d)
    return PCA(n_components=components, svd_solver="full", random_state=0).fit_transform(z)


def _relabel(labels: Sequence[int]) -> list[int]:
    order: dict[int, int] = {}
    return [order.setdefault(int(lab), len(order)) for lab in labels]


def _minmax(values: np.ndarray, *, higher_is_better: bool = True) -> np.ndarray:
    """Min-max normalize to [0, 1] with 1 = best; if every candidate scores the same, all get 1.0."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi - lo <= 0:
        return np.ones_like(values)
    scaled = (values - lo) / (hi - lo)
    return scaled if higher_is_better else 1.0 - scaled


def select_k(
    coords: np.ndarray,
    *,
    k_min: int = 2,
    k_max: int = 5,
    seed: int = 0,
    singleton_penalty: float = 0.15,
    weights: Mapping[str, float] | None = None,
) -> ClusterResult:
    """KMeans for every k in [k_min, min(k_max, n - 1)], scored by the weighted normalized ensemble.

    combined = w_s * s + w_db * (1 - db) + w_ch * ch - singleton_penalty * (#clusters of size 1), with
    s, db, ch min-max normalized across the candidates (db inverted since lower is better; a score that is
    equal for all candidates normalizes to 1.0). Highest combined wins; ties within 1e-12 go to the
    smaller k (the simpler explanation). The result's k is the number of distinct clusters in the chosen
    labelling (the candidate k unless KMeans left a cluster empty on duplicate points).

    Fewer than 3 clients cannot be scored (silhouette needs 2 <= k <= n - 1): they form one cluster, k=1,
    with an empty table. Likewise if every candidate collapses to a single distinct cluster (all points
    identical). A candidate whose KMeans finds fewer than 2 distinct clusters (duplicate points) is kept in
    the table with None scores and combined (JSON-safe) and never chosen.
    """
    x = np.asarray(coords, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"coords must be a 2-D array [n_clients, dim], got shape {x.shape}")
    if k_min < 2:
        raise ValueError(f"clustering.k_min must be >= 2 (scores need at least two clusters), got {k_min}")
    if k_max < k_min:
        raise ValueError(f"clustering.k_max ({k_max}) must be >= clustering.k_min ({k_min})")
    if singleton_penalty < 0:
        raise ValueError(f"clustering.singleton_penalty must be >= 0, got {singleton_penalty}")
    w = dict(DEFAULT_WEIGHTS if weights is None else weights)
    if set(w) != set(DEFAULT_WEIGHTS):
        raise ValueError(
            f"clustering.weights must have exactly the keys {sorted(DEFAULT_WEIGHTS)}, got {sorted(w)}"
        )
    n = x.shape[0]
    if n < 3:
        return ClusterResult(1, [0] * n, [])
    top = min(k_max, n - 1)
    if k_min > top:
        raise ValueError(
            f"clustering.k_min={k_min} leaves no candidate k for {n} clients (k must be <= n - 1 = {n - 1})"
        )

    rows: list[dict[str, float | int | None]] = []
    labelings: list[list[int]] = []
    singletons: list[int] = []
    for k in range(k_min, top + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points: handled below
            labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        labels = _relabel(labels)
        sizes = Counter(labels)
        row: dict[str, float | int | None] = {"k": k}
        if 2 <= len(sizes) <= n - 1:
            row["silhouette"] = float(silhouette_score(x, labels))
            row["davies_bouldin"] = float(davies_bouldin_score(x, labels))
            row["calinski_harabasz"] = float(calinski_harabasz_score(x, labels))
        else:
            row.update(silhouette=None, davies_bouldin=None, calinski_harabasz=None)
        singletons.append(sum(1 for size in sizes.values() if size == 1))
        row["singletons"] = singletons[-1]
        rows.append(row)
        labelings.append(labels)

    valid = [i for i, r in enumerate(rows) if r["silhouette"] is not None]
    for r in rows:
        r["combined"] = None
    if not valid:
        return ClusterResult(1, [0] * n, _ordered(rows))
    s = _minmax(np.array([rows[i]["silhouette"] for i in valid]))
    db = _minmax(np.array([rows[i]["davies_bouldin"] for i in valid]), higher_is_better=False)
    ch = _minmax(np.array([rows[i]["calinski_harabasz"] for i in valid]))
    best: int | None = None
    best_combined = 0.0
    for j, i in enumerate(valid):
        combined = float(
            w["silhouette"] * s[j]
            + w["davies_bouldin"] * db[j]
            + w["calinski_harabasz"] * ch[j]
            - singleton_penalty * singletons[i]
        )
        rows[i]["combined"] = combined
        if best is None or combined > best_combined + TIE_TOLERANCE:
            best, best_combined = i, combined
    assert best is not None  # `valid` is not empty
    chosen = labelings[best]
    return ClusterResult(len(set(chosen)), chosen, _ordered(rows))


def _ordered(rows: list[dict[str, float | int | None]]) -> list[dict[str, float | int | None]]:
    keys = ("k", "silhouette", "davies_bouldin", "calinski_harabasz", "singletons", "combined")
    return [{key: r[key] for key in keys} for r in rows]


def cluster_quality(labels: Sequence[int], true_tasks: Sequence[Hashable]) -> dict[str, float]:
    """Purity, adjusted Rand index and NMI of a clustering against the clients' true tasks.

    Purity alone rewards over-splitting (n singletons are perfectly pure); ARI and NMI penalise it, so all
    three are reported.
    """
    if len(labels) != len(true_tasks) or not labels:
        raise ValueError(
            f"need one true task per client, got {len(labels)} labels and {len(true_tasks)} tasks"
        )
    truth = [str(t) for t in true_tasks]
    majority = 0
    for cluster in set(labels):
        members = [truth[i] for i, lab in enumerate(labels) if lab == cluster]
        majority += Counter(members).most_common(1)[0][1]
    return {
        "purity": majority / len(labels),
        "ari": float(adjusted_rand_score(truth, list(labels))),
        "nmi": float(normalized_mutual_info_score(truth, list(labels))),
    }
