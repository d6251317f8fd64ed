from __future__ import annotations

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
    from atlas_pl.data.metrics import matthews_corrcoef as ours

    assert ours(p3, l3) == pytest.approx(matthews_corrcoef(l3, p3))
    assert compute_metrics("mnli", p3, l3)["primary"] == pytest.approx(accuracy_score(l3, p3))


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
    assert compute_metrics("cola", preds, labels)["primary"] == pytest.approx(
        matthews_corrcoef(labels, preds)
    )
    assert all(isinstance(v, float) for v in compute_metrics("cola", preds, labels).values())


def test_degenerate_cases():
    ones = np.ones(10, dtype=int)
    labels = np.array([0, 1] * 5)
    assert compute_metrics("cola", ones, labels)["mcc"] == 0.0  # constant predictions: undefined -> 0
    assert compute_metrics("mrpc", np.zeros(10, dtype=int), np.zeros(10, dtype=int))["f1"] == 0.0
    with pytest.raises(DataError, match="3 predictions but 2 labels"):
        compute_metrics("sst2", np.zeros(3), np.zeros(2))
    with pytest.raises(DataError, match="unknown task"):
        compute_metrics("nope", ones, labels)
