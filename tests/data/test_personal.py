"""Personal test sets (DESIGN.md §13): from the client's own rows, disjoint from its training rows,
with its label mix."""

from __future__ import annotations

import numpy as np
import pytest

from atlas_pl.data.errors import DataError
from atlas_pl.data.partition import partition_indices, personal_split

from .test_federated import _build


def _skewed_labels(n: int = 3000, classes: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=n)


def test_personal_rows_are_the_clients_own_and_never_trained_on() -> None:
    labels = _skewed_labels()
    parts = partition_indices(labels, 5, scheme="dirichlet", alpha=0.3, seed=1)
    for k, part in enumerate(parts):
        train, personal = personal_split(part, labels, share=0.2, cap=None, seed=k)
        assert len(np.intersect1d(train, personal)) == 0
        assert set(train) | set(personal) <= set(part)
        assert len(personal) == round(0.2 * len(part))


def test_personal_sets_follow_the_clients_label_skew() -> None:
    """Under a strong Dirichlet skew the clients' mixes differ widely; each personal set has its own
    client's mix (to within one row per class), not the task's."""
    labels = _skewed_labels()
    parts = partition_indices(labels, 4, scheme="dirichlet", alpha=0.1, seed=3)
    spread = []
    for k, part in enumerate(parts):
        train, personal = personal_split(part, labels, share=0.25, cap=None, seed=k)
        kept = np.concatenate([train, personal])
        for c in range(3):
            expected = np.mean(labels[kept] == c) * len(personal)
            assert abs(np.sum(labels[personal] == c) - expected) <= 1.0
        spread.append(np.mean(labels[part] == 0))
    assert max(spread) - min(spread) > 0.3  # the constructed partition really is skewed


def test_a_large_client_keeps_its_training_cap() -> None:
    labels = _skewed_labels()
    (part,) = partition_indices(labels, 1, seed=0)
    train, personal = personal_split(part, labels, share=0.2, cap=200, seed=0)
    assert len(train) == 200 and len(personal) == 50
    small = part[:40]
    train, personal = personal_split(small, labels, share=0.2, cap=200, seed=0)
    assert (len(train), len(personal)) == (32, 8)


def test_a_full_size_client_trains_on_exactly_the_cap_for_any_share() -> None:
    """No off-by-one from rounding: every share and cap leaves exactly `cap` training rows."""
    labels = _skewed_labels(n=2000)
    part = np.arange(2000)
    for share in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.33, 0.4, 0.5):
        for cap in (1, 7, 21, 50, 199, 200, 400):
            train, personal = personal_split(part, labels, share=share, cap=cap, seed=cap)
            assert len(train) == cap, (share, cap)
            assert len(personal) == pytest.approx(share / (1 - share) * cap, abs=1.0), (share, cap)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1])
def test_a_share_outside_zero_one_is_refused(share) -> None:
    with pytest.raises(DataError, match=r"personal share must be in \(0, 1\)"):
        personal_split(np.arange(10), np.zeros(10), share=share, cap=None, seed=0)


def test_every_client_gets_a_personal_set_beside_its_training_rows(tmp_path) -> None:
    plain = _build(tmp_path)
    held = _build(tmp_path, personal_share=0.2, partition="dirichlet", dirichlet_alpha=0.3)
    assert all(c.personal is None for c in plain.clients)
    for c in held.clients:
        assert c.personal is not None and c.personal_indices is not None and c.indices is not None
        assert len(np.intersect1d(c.indices, c.personal_indices)) == 0
        assert len(c.personal) == len(c.personal_indices) > 0
        assert c.num_samples == len(c.train) <= 100


def test_quantity_clients_hold_out_a_share_of_all_their_rows(tmp_path) -> None:
    """Under quantity skew personal_split trims no client: each holds out ~share of its whole partition,
    and the partition's mean is raised so the mean training size stays samples_per_client."""
    fed = _build(tmp_path, personal_share=0.2, partition="quantity", dirichlet_alpha=0.3)
    for task in fed.tasks:
        clients = fed.clients_of(task)
        for c in clients:
            assert c.personal_indices is not None and c.indices is not None and c.personal is not None
            assert len(np.intersect1d(c.indices, c.personal_indices)) == 0
            total = len(c.indices) + len(c.personal_indices)
            assert len(c.personal_indices) == max(1, round(0.2 * total))
        sizes = [c.num_samples for c in clients]
        total = sum(len(c.indices) + len(c.personal_indices) for c in clients)
        assert total == 3 * 125  # 3 clients x kept_rows(100, 0.2)
        assert abs(np.mean(sizes) - 100) <= 1 and max(sizes) > 125  # not capped at kept_rows
