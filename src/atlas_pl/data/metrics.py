"""GLUE metrics in plain numpy: accuracy always, F1 for MRPC/QQP, Matthews correlation for CoLA.

numpy rather than sklearn keeps evaluation import-free and fast inside training loops; the formulas are
the ones sklearn uses (binary F1 of class 1, multiclass MCC from the confusion matrix, 0.0 if undefined).
"""

from __future__ import annotations

import numpy as np

from atlas_pl.data.errors import DataError
from atlas_pl.data.tasks import task_spec

F1_TASKS = ("mrpc", "qqp")
MCC_TASKS = ("cola",)


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(preds == labels))


def binary_f1(preds: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class; 0.0 when there are no true or predicted positives."""
    tp = int(np.sum((preds == positive) & (labels == positive)))
    fp = int(np.sum((preds == positive) & (labels != positive)))
    fn = int(np.sum((preds != positive) & (labels == positive)))
    denom = 2 * tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def matthews_corrcoef(preds: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K); 0.0 when a marginal is constant."""
    classes, inverse = np.unique(np.concatenate([labels, preds]), return_inverse=True)
    k = len(classes)
    y_true, y_pred = inverse[: len(labels)], inverse[len(labels) :]
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (y_true, y_pred), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n = cm.sum()
    correct = np.trace(cm)
    cov_ytyp = correct * n - t_sum @ p_sum
    cov_ypyp = n * n - p_sum @ p_sum
    cov_ytyt = n * n - t_sum @ t_sum
    denom = cov_ytyt * cov_ypyp
    if denom <= 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(denom))


def compute_metrics(task: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`accuracy`, the task's extra GLUE metric (`f1` / `mcc`) and `primary`, the one GLUE ranks by."""
    spec = task_spec(task)
    preds = np.asarray(preds).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if preds.shape != labels.shape:
        raise DataError(f"compute_metrics({task}): {preds.shape[0]} predictions but {labels.shape[0]} labels")
    if preds.size == 0:
        raise DataError(f"compute_metrics({task}): no predictions to score")
    out = {"accuracy": accuracy(preds, labels)}
    if task in F1_TASKS or spec.primary_metric == "f1":
        out["f1"] = binary_f1(preds, labels)
    if task in MCC_TASKS or spec.primary_metric == "mcc":
        out["mcc"] = matthews_corrcoef(preds, labels)
    out["primary"] = out[spec.primary_metric]
    return out
