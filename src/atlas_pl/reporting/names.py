"""How tasks, metrics and run groups are named and ordered in tables and figures.

One place for these so the markdown table, the CSV, every figure and the notebook say the same thing
(`MRPC F1`, `atlas (eta=0.1)`) in the same order.
"""

from __future__ import annotations

import re

from atlas_pl.config_validation import ABLATIONS
from atlas_pl.data.errors import DataError
from atlas_pl.data.tasks import task_spec

# The order readers expect (config validation lists them so): baselines first, the method, then the other
# split-learning baselines, the bound.
ABLATION_ORDER = ABLATIONS
# Only ATLAS's Laplacian personalization reads fed.eta; for every other ablation it is an unused default.
ETA_ABLATIONS = ("atlas",)

_TASK_TITLES = {
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "cola": "CoLA",
    "rte": "RTE",
    "qnli": "QNLI",
    "qqp": "QQP",
    "mnli": "MNLI",
}
_METRIC_TITLES = {"accuracy": "accuracy", "f1": "F1", "mcc": "MCC"}

# A group's settings beyond ablation and eta: (shown key, value) pairs, e.g. (("fed.local_epochs", "2"),).
Settings = tuple[tuple[str, str], ...]
GroupKey = tuple[str, "float | None", Settings]


def group_key(ablation: str, eta: float | None, settings: Settings = ()) -> GroupKey:
    """(ablation, eta, settings) where eta is kept only for ablations that use it, so fedavg runs are one
    group; `settings` are the other config settings that split the jobs (`reporting.split`), usually none."""
    return (
        ablation,
        float(eta) if ablation in ETA_ABLATIONS and eta is not None else None,
        tuple(settings),
    )


def settings_text(settings: Settings) -> str:
    """`fed.local_epochs=2, model=tiny_bert`: a group's settings as its label shows them."""
    return ", ".join(f"{key}={value}" for key, value in settings)


def group_label(key: GroupKey) -> str:
    """`atlas (eta=0.1)`, `fedavg` or `fedavg (fed.local_epochs=2)`: the label of a group in every table,
    legend and file."""
    ablation, eta, settings = key
    parts = ([f"eta={eta:g}"] if eta is not None else []) + ([settings_text(settings)] if settings else [])
    return f"{ablation} ({', '.join(parts)})" if parts else ablation


def group_sort_key(key: GroupKey) -> tuple:
    """Known ablations in ABLATION_ORDER, unknown ones after them alphabetically; etas ascending, then the
    settings (numbers in numeric order)."""
    ablation, eta, settings = key
    rank = ABLATION_ORDER.index(ablation) if ablation in ABLATION_ORDER else len(ABLATION_ORDER)
    return (
        rank,
        ablation,
        -1.0 if eta is None else eta,
        tuple((name, value_sort_key(value)) for name, value in settings),
    )


def value_sort_key(text: str) -> tuple:
    """Numbers in numeric order (`5e-4` before `0.001`, `2` before `10`), then text with digit runs
    compared as numbers."""
    try:
        return (0, float(text), [])
    except ValueError:
        return (1, 0.0, natural_key(text))


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """`2_x` before `10_x`: digit runs compare as numbers."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]


def metric_name(task: str) -> str:
    """The name of the task's primary metric (`accuracy`, `F1`, `MCC`), from the task registry."""
    try:
        metric = task_spec(task).primary_metric
    except DataError:
        return "primary metric"
    return _METRIC_TITLES.get(metric, metric)


def task_title(task: str) -> str:
    """The task as GLUE spells it (`SST-2`), or its own name for synthetic or unknown tasks."""
    return _TASK_TITLES.get(task, task)


def task_metric_title(task: str) -> str:
    """`SST-2 accuracy`, `MRPC F1`, `CoLA MCC`: what a column or a panel shows."""
    return f"{task_title(task)} {metric_name(task)}"


def task_sort_key(task: str) -> tuple[int, str]:
    """Tasks in the order the configs list GLUE tasks (SST-2, MRPC, CoLA, ...), then the rest by name."""
    order = list(_TASK_TITLES)
    return (order.index(task) if task in order else len(order), task)
