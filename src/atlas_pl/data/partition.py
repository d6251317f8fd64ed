"""Split one task's training set across its clients, IID or label-skewed (Dirichlet)."""

from __future__ import annotations

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
