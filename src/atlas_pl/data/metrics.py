"""GLUE metrics from scikit-learn: accuracy always, F1 for MRPC/QQP, Matthews correlation for CoLA.

scikit-learn rather than torchmetrics because GLUE's own scorer (and Hugging Face `evaluate`'s `glue`
metric) calls sklearn's `f1_score` and `matthews_corrcoef`, so these are the leaderboard's numbers by
construction. torchmetrics departs from them where MCC is undefined: it patches the zero denominator with
an epsilon, so a constant predictor on 6 positives and 4 negatives scores 0.129 instead of 0.0, and a task
whose validation split holds one class would reward predicting that class.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from atlas_pl.data.errors import DataError
from atlas_pl.data.tasks import task_spec

POSITIVE = 1  # the label index F1 scores (MRPC `equivalent`, QQP `duplicate`), as GLUE does


def positive_f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """F1 of class `POSITIVE` against the rest; 0.0 when there are no true or predicted positives.

    Comparing against `POSITIVE` first keeps it defined for any number of classes (sklearn's binary F1
    refuses a third class) and equal to GLUE's binary F1 on two.
    """
    return float(f1_score(labels == POSITIVE, preds == POSITIVE, zero_division=0.0))


def mcc(preds: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (multiclass: Gorodkin's R_K); 0.0 when undefined (a constant marginal)."""
    if np.unique(np.concatenate([preds, labels])).size < 2:
        return 0.0  # one class everywhere: sklearn returns 0.0 too, after a confusion-matrix warning
    return float(matthews_corrcoef(labels, preds))


def compute_metrics(task: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`accuracy`, the task's extra GLUE metric (`f1` / `mcc`) and `primary`, the one GLUE ranks by."""
    spec = task_spec(task)
    preds = np.asarray(preds).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if preds.shape != labels.shape:
        raise DataError(f"compute_metrics({task}): {preds.shape[0]} predictions but {labels.shape[0]} labels")
    if preds.size == 0:
        raise DataError(f"compute_metrics({task}): no predictions to score")
    out = {"accuracy": float(accuracy_score(labels, preds))}
    if spec.primary_metric == "f1":
        out["f1"] = positive_f1(preds, labels)
    elif spec.primary_metric == "mcc":
        out["mcc"] = mcc(preds, labels)
    out["primary"] = out[spec.primary_metric]
    return out
