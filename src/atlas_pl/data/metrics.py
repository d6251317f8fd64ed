"""GLUE metrics from scikit-learn: accuracy always, F1 for MRPC/QQP, Matthews correlation for CoLA.

scikit-learn rather than torchmetrics because GLUE's own scorer (and Hugging Face `evaluate`'s `glue`
metric) calls sklearn's `f1_score` and `matthews_corrcoef`, so these are the leaderboard's numbers by
construction. torchmetrics departs from them where MCC is undefined: it patches the zero denominator with
an epsilon, so a constant predictor on 6 positives and 4 negatives scores 0.129 instead of 0.0, and a task
whose validation split holds one class would reward predicting that class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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


CONFUSION_PREFIX = "confusion_"  # evaluate()'s flat counts: confusion_<true label>_<predicted label>


def confusion_counts(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """How many rows of each true label got each predicted label, as flat `confusion_<t>_<p>` numbers.

    Kept for the personal test sets: a client's own set can hold a single class, where its F1 or MCC is 0
    whatever it predicts; summing the counts over a task's clients gives the task's pooled score
    (`pooled_metrics`), which stays defined."""
    counts = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels).reshape(-1), np.asarray(preds).reshape(-1)), 1)
    return {
        f"{CONFUSION_PREFIX}{t}_{p}": float(counts[t, p])
        for t in range(num_labels)
        for p in range(num_labels)
    }


def confusion_matrix(scores: Mapping[str, float]) -> list[list[int]] | None:
    """The counts `confusion_counts` flattened into `scores`, as rows by true label; None if absent."""
    flat = {k for k in scores if k.startswith(CONFUSION_PREFIX)}
    size = math.isqrt(len(flat))
    keys = [[f"{CONFUSION_PREFIX}{t}_{p}" for p in range(size)] for t in range(size)]
    if not flat or flat != {k for row in keys for k in row}:
        return None
    return [[int(scores[k]) for k in row] for row in keys]


def pooled_metrics(task: str, matrices: list[list[list[int]]]) -> dict[str, float]:
    """`compute_metrics` of all the rows behind `matrices` together (each rows by true label, columns by
    prediction): one score of the task over its clients' personal sets, by the same definition."""
    total = np.sum(np.asarray(matrices, dtype=np.int64), axis=0)
    labels, preds = np.nonzero(np.ones_like(total))
    counts = total[labels, preds]
    return compute_metrics(task, np.repeat(preds, counts), np.repeat(labels, counts))
