from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from atlas_pl.data import DataError, compute_metrics


@pytest.mark.parametrize("seed", range(5))
def test_equal_to_sklearn_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    preds, labels = rng.integers(0, 2, n), rng.integers(0, 2, n)
    mrpc = compute_metrics("mrpc", preds, labels)
    cola = compute_metrics("cola", preds, labels)
    assert mrpc["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert mrpc["f1"] == pytest.approx(f1_score(labels, preds))
    assert cola["mcc"] == pytest.approx(matthews_corrcoef(labels, preds))
    p3, l3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
    assert compute_metrics("mnli", p3, l3)["primary"] == pytest.approx(accuracy_score(l3, p3))


def test_hand_computed_values():
    # tp = 3, tn = 3, fp = 1, fn = 1
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    preds = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    assert compute_metrics("sst2", preds, labels)["accuracy"] == 0.75
    assert compute_metrics("mrpc", preds, labels)["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert compute_metrics("cola", preds, labels)["mcc"] == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4**4))
    # F1 scores class 1, not class 0: tp = 1, fp = 0, fn = 2 for class 1 (class 0 would give 0.8)
    labels = np.array([1, 1, 1, 0, 0])
    preds = np.array([1, 0, 0, 0, 0])
    assert compute_metrics("qqp", preds, labels)["f1"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 2))
    assert compute_metrics("cola", labels, labels)["mcc"] == 1.0
    assert compute_metrics("cola", 1 - labels, labels)["mcc"] == -1.0


def test_primary_metric_per_task():
    preds = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    acc = accuracy_score(labels, preds)
    for task, key in [
        ("sst2", "accuracy"),
        ("rte", "accuracy"),
        ("qnli", "accuracy"),
        ("synthetic2", "accuracy"),
        ("mrpc", "f1"),
        ("qqp", "f1"),
        ("cola", "mcc"),
    ]:
        out = compute_metrics(task, preds, labels)
        assert out["accuracy"] == pytest.approx(acc)
        assert out["primary"] == out[key]
        assert ("f1" in out) == (key == "f1") and ("mcc" in out) == (key == "mcc")
    assert all(type(v) is float for v in compute_metrics("cola", preds, labels).values())
    assert all(type(v) is float for v in compute_metrics("mrpc", preds, labels).values())


@pytest.mark.parametrize(
    ("preds", "labels"),
    [
        ([1] * 10, [1] * 6 + [0] * 4),  # constant predictor, unbalanced labels (torchmetrics says 0.129)
        ([1] * 10, [0, 1] * 5),  # constant predictor, balanced labels
        ([0, 1] * 5, [1] * 10),  # constant labels
        ([1] * 10, [1] * 10),  # one class everywhere, all correct (torchmetrics says 1.0)
    ],
)
def test_undefined_mcc_is_zero_without_warnings(preds, labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_metrics("cola", np.array(preds), np.array(labels))["mcc"] == 0.0


def test_degenerate_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zeros = np.zeros(10, dtype=int)
        assert compute_metrics("mrpc", zeros, zeros)["f1"] == 0.0  # no positives anywhere: 0, not nan
        assert compute_metrics("mrpc", zeros, 1 - zeros)["f1"] == 0.0
    with pytest.raises(DataError, match="3 predictions but 2 labels"):
        compute_metrics("sst2", np.zeros(3), np.zeros(2))
    with pytest.raises(DataError, match="no predictions"):
        compute_metrics("sst2", np.zeros(0), np.zeros(0))
    with pytest.raises(DataError, match="unknown task"):
        compute_metrics("nope", zeros, zeros)


@pytest.mark.parametrize("seed", range(5))
def test_pooled_personal_scores_equal_scoring_all_the_rows_together(seed):
    """A task's pooled score from its clients' confusion counts is the metric of their rows concatenated,
    also when a client holds one class only (its own MCC is 0 whatever it predicts)."""
    from atlas_pl.data.metrics import confusion_counts, confusion_matrix, pooled_metrics

    rng = np.random.default_rng(seed)
    clients = [(rng.integers(0, 2, n), rng.integers(0, 2, n)) for n in rng.integers(3, 40, 4)]
    clients.append((rng.integers(0, 2, 9), np.ones(9, dtype=np.int64)))  # one class only
    for task in ("cola", "mrpc", "sst2"):
        matrices = [confusion_matrix(confusion_counts(p, y, 2)) for p, y in clients]
        together = compute_metrics(
            task, np.concatenate([p for p, _ in clients]), np.concatenate([y for _, y in clients])
        )
        assert pooled_metrics(task, matrices) == pytest.approx(together, abs=1e-12)
    assert compute_metrics("cola", *clients[-1])["mcc"] == 0.0
    three = [(rng.integers(0, 3, n), rng.integers(0, 3, n)) for n in (5, 17, 30)]  # MNLI's 3 labels
    matrices = [confusion_matrix(confusion_counts(p, y, 3)) for p, y in three]
    together = compute_metrics(
        "mnli", np.concatenate([p for p, _ in three]), np.concatenate([y for _, y in three])
    )
    assert pooled_metrics("mnli", matrices) == pytest.approx(together, abs=1e-12)


def test_confusion_counts_are_rows_by_true_label():
    from atlas_pl.data.metrics import confusion_counts, confusion_matrix

    counts = confusion_counts(np.array([1, 1, 0, 2]), np.array([1, 0, 0, 1]), 3)
    assert confusion_matrix(counts) == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert confusion_matrix({"accuracy": 1.0}) is None
