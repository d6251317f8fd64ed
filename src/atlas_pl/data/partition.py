"""Split one task's training set across its clients, IID or label-skewed (Dirichlet)."""

from __future__ import annotations

import math

import numpy as np

from atlas_pl.data.errors import DataError

SCHEMES = ("iid", "dirichlet")
MIN_PER_CLIENT = 2
MAX_DIRICHLET_TRIES = 1000


def partition_indices(
    labels: np.ndarray,
    n_clients: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    cap: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Disjoint, sorted int64 index arrays, one per client, each at most `cap` long.

    "dirichlet" draws each class's share of clients from Dir(alpha) (small alpha = strong label skew, the
    standard non-IID benchmark setting) and redraws until every client has at least 2 samples, so no client
    is left with nothing to train on. Capping happens after the split, by a seeded random subset, so a
    capped client keeps its label mix.
    """
    labels = np.asarray(labels).reshape(-1)
    n = int(labels.shape[0])
    if scheme not in SCHEMES:
        raise DataError(f"unknown partition scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    if not isinstance(n_clients, int | np.integer) or n_clients < 1:
        raise DataError(f"n_clients must be an integer >= 1, got {n_clients!r}")
    if n_clients > n:
        raise DataError(
            f"{n_clients} clients but only {n} samples; n_clients must be <= the number of samples"
        )
    if cap is not None and cap < 1:
        raise DataError(f"cap (samples per client) must be >= 1 or None, got {cap}")
    if scheme == "dirichlet" and not alpha > 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")

    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), n_clients)
    else:
        parts = _dirichlet(labels, n_clients, float(alpha), rng)

    out = []
    for part in parts:
        part = np.asarray(part, dtype=np.int64)
        if cap is not None and len(part) > cap:
            part = rng.permutation(part)[:cap]
        out.append(np.sort(part))
    return out


def _dirichlet(
    labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    n = len(labels)
    minimum = min(MIN_PER_CLIENT, n // n_clients)
    classes = np.unique(labels)
    for _ in range(MAX_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        sizes = np.zeros(n_clients, dtype=np.int64)
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(n_clients, alpha))
            # Stop feeding clients that already hold their fair share (NIID-Bench, Li et al. 2022), which
            # keeps sizes comparable while labels stay skewed.
            props = props * (sizes < n / n_clients)
            total = props.sum()
            props = props / total if total > 0 else np.full(n_clients, 1.0 / n_clients)
            cuts = (np.cumsum(props) * len(idx)).astype(np.int64)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        if sizes.min() >= minimum:
            return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]
    raise DataError(
        f"dirichlet partition with alpha={alpha} could not give each of {n_clients} clients >= {minimum} "
        f"samples out of {n} in {MAX_DIRICHLET_TRIES} draws; use a larger alpha or fewer clients"
    )


def personal_split(
    part: np.ndarray, labels: np.ndarray, *, share: float, cap: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A client's training rows and its personal test rows, both drawn from its own partition.

    Personalization can only be judged on data like the client's own (DESIGN.md §13): the personal set
    is `share` of what the client keeps, taken class by class (largest remainders) so it carries the
    client's label mix, including a Dirichlet skew. A client with enough rows keeps `cap` for training,
    so adding personal sets does not shrink the training sets runs are compared on; a smaller client
    splits what it has. Both arrays are sorted and disjoint.
    """
    if not 0.0 < share < 1.0:
        raise DataError(f"personal share must be in (0, 1), got {share}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(np.asarray(part, dtype=np.int64))
    keep = len(rows) if cap is None else min(len(rows), math.ceil(cap / (1.0 - share)))
    kept = rows[:keep]
    n_personal = min(keep - 1, max(1, round(share * keep))) if keep >= 2 else 0
    personal = _stratified(kept, labels[kept], n_personal)
    train = np.setdiff1d(kept, personal)
    return np.sort(train), np.sort(personal)


def _stratified(rows: np.ndarray, row_labels: np.ndarray, n: int) -> np.ndarray:
    """`n` of `rows` (already shuffled) with each class in proportion, by largest remainders."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    classes, counts = np.unique(row_labels, return_counts=True)
    exact = counts * n / len(rows)
    quota = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - quota), kind="stable")[: n - int(quota.sum())]:
        quota[i] += 1
    chosen = [rows[row_labels == c][:q] for c, q in zip(classes, quota)]
    return np.concatenate(chosen).astype(np.int64)
