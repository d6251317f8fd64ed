"""Split one task's training set across its clients: IID, label-skewed or size-skewed.

- "iid": a seeded permutation cut into equal parts.
- "dirichlet" (label skew): each class is spread over the clients by Dir(alpha) proportions.
- "quantity" (size skew): labels stay IID but client k holds
  ``MIN_PER_CLIENT + (B - K * MIN_PER_CLIENT) * p_k`` rows (rounded by largest remainders), with
  ``p ~ Dir(alpha * 1_K)`` over the K clients and B the task's budget (``K * cap``, or every sample).

In both skewed schemes a smaller alpha means more skew; alpha -> infinity approaches "iid".
"""

from __future__ import annotations

import math

import numpy as np

from atlas_pl.data.errors import DataError

SCHEMES = ("iid", "dirichlet", "quantity")
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
    """Disjoint, sorted int64 index arrays, one per client; under "iid"/"dirichlet" each at most `cap` long.

    "dirichlet" draws each class's share of clients from Dir(alpha) (small alpha = strong label skew, the
    standard non-IID benchmark setting) and redraws until every client has at least 2 samples, so no client
    is left with nothing to train on. Capping happens after the split, by a seeded random subset, so a
    capped client keeps its label mix.

    "quantity" keeps labels IID and skews sizes instead: `cap` is then the MEAN client size, not a
    per-client cap (see `quantity_sizes`), so the task's total ``n_clients * cap`` rows equal those of
    "iid" at the same `cap` and runs compare at equal total data; `cap=None` shares out every sample.
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
    if scheme in ("dirichlet", "quantity") and not alpha > 0:
        raise DataError(f"{scheme} alpha must be > 0, got {alpha}")

    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), n_clients)
    elif scheme == "dirichlet":
        parts = _dirichlet(labels, n_clients, float(alpha), rng)
    else:
        parts = _quantity(n, n_clients, float(alpha), cap, rng)

    out = []
    for part in parts:
        part = np.asarray(part, dtype=np.int64)
        if scheme != "quantity" and cap is not None and len(part) > cap:
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


def quantity_sizes(budget: int, n_clients: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Client sizes for quantity skew: ``MIN_PER_CLIENT + (budget - n_clients * MIN_PER_CLIENT) * p_k``.

    ``p ~ Dir(alpha * 1_K)``; every client first gets MIN_PER_CLIENT rows (so none is left with nothing to
    train on) and the rest of the budget is shared by `p`, rounded by largest remainders so the sizes sum
    to `budget` exactly. The expected size is ``budget / n_clients`` whatever alpha; small alpha puts most
    of the rest on a few clients (alpha=0.3 over 10 clients typically spans two orders of magnitude),
    large alpha makes the sizes nearly equal.
    """
    if n_clients * MIN_PER_CLIENT > budget:
        raise DataError(
            f"quantity partition needs {n_clients} clients x {MIN_PER_CLIENT} = {n_clients * MIN_PER_CLIENT} "
            f"samples, but its budget is {budget}; valid: budget >= {MIN_PER_CLIENT} x n_clients"
        )
    rest = budget - n_clients * MIN_PER_CLIENT
    return _largest_remainders(rng.dirichlet(np.full(n_clients, alpha)) * rest, rest) + MIN_PER_CLIENT


def _largest_remainders(exact: np.ndarray, total: int) -> np.ndarray:
    """Whole numbers near `exact` that sum to `total`: floors, plus one for the largest remainders."""
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]] += 1
    return counts


def quantity_budget(n: int, n_clients: int, cap: int | None) -> int:
    """Rows shared out under quantity skew: `cap` per client on average, at most the `n` available."""
    return n if cap is None else min(n, n_clients * cap)


def kept_rows(cap: int, share: float) -> int:
    """Rows a client keeps so that, after `share` of them go to its personal set, `cap` remain to train on.

    personal_split keeps this many of an iid/dirichlet client's rows; under quantity skew it is the mean
    client size handed to partition_indices instead, so the mean TRAINING size stays `cap` and the total
    training data matches "iid" at the same `cap`, with or without personal sets."""
    # the tolerance keeps float error (21 / 0.7 = 30.000000000000004) from adding a row
    return math.ceil(cap / (1.0 - share) - 1e-9)


def _quantity(
    n: int, n_clients: int, alpha: float, cap: int | None, rng: np.random.Generator
) -> list[np.ndarray]:
    budget = quantity_budget(n, n_clients, cap)
    if n_clients * MIN_PER_CLIENT > budget:
        where = f"{n} samples" if cap is None else f"min({n_clients} clients x cap {cap}, {n} samples)"
        raise DataError(
            f"quantity partition gives every client >= {MIN_PER_CLIENT} samples, so {n_clients} clients "
            f"need {n_clients * MIN_PER_CLIENT}, but the budget is {budget} = {where}; valid: "
            f"cap (samples per client) >= {MIN_PER_CLIENT} and n_clients <= {n // MIN_PER_CLIENT}"
        )
    sizes = quantity_sizes(budget, n_clients, alpha, rng)
    rows = rng.permutation(n)[: int(sizes.sum())]
    return np.split(rows, np.cumsum(sizes)[:-1])


def personal_split(
    part: np.ndarray, labels: np.ndarray, *, share: float, cap: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A client's training rows and its personal test rows, both drawn from its own partition.

    Personalization can only be judged on data like the client's own (DESIGN.md §13): the personal set
    is `share` of what the client keeps, taken class by class (largest remainders) so it carries the
    client's label mix, including a Dirichlet skew. A client with enough rows (kept_rows) trains on
    exactly `cap`, so adding personal sets does not shrink the training sets runs are compared on; a
    smaller client splits what it has by `share`. `cap=None` splits the whole partition (quantity skew:
    the sizes are the point). Both arrays are sorted and disjoint.
    """
    if not 0.0 < share < 1.0:
        raise DataError(f"personal share must be in (0, 1), got {share}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(np.asarray(part, dtype=np.int64))
    keep = len(rows) if cap is None else min(len(rows), kept_rows(cap, share))
    kept = rows[:keep]
    if cap is not None and keep == kept_rows(cap, share):  # full size: exactly `cap` rows stay to train
        n_personal = keep - cap
    else:  # a smaller client splits what it has by `share`
        n_personal = min(keep - 1, max(1, round(share * keep))) if keep >= 2 else 0
    personal = _stratified(kept, labels[kept], n_personal)
    train = np.setdiff1d(kept, personal)
    return np.sort(train), np.sort(personal)


def _stratified(rows: np.ndarray, row_labels: np.ndarray, n: int) -> np.ndarray:
    """`n` of `rows` (already shuffled) with each class in proportion, by largest remainders."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    classes, counts = np.unique(row_labels, return_counts=True)
    quota = _largest_remainders(counts * n / len(rows), n)
    chosen = [rows[row_labels == c][:q] for c, q in zip(classes, quota)]
    return np.concatenate(chosen).astype(np.int64)
