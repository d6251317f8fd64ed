"""Task registry: which tasks exist, how many labels they have and which metric GLUE ranks them by."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from atlas_pl.data.errors import DataError

METRICS = ("accuracy", "f1", "mcc")


@dataclass(frozen=True)
class TaskSpec:
    """Static facts about one classification task.

    `text_fields` are the Hugging Face `nyu-mll/glue` column names (one field for single-sentence tasks,
    two for pair tasks); synthetic tasks have none because they are generated as token ids.
    """

    name: str
    text_fields: tuple[str, ...]
    num_labels: int
    label_names: tuple[str, ...]
    primary_metric: str

    def __post_init__(self) -> None:
        if self.primary_metric not in METRICS:
            raise DataError(f"task {self.name!r}: primary_metric {self.primary_metric!r} not in {METRICS}")
        if len(self.label_names) != self.num_labels:
            raise DataError(f"task {self.name!r}: {self.num_labels} labels but names {self.label_names}")

    @property
    def is_pair(self) -> bool:
        """Whether examples are sentence pairs (encoded as `[CLS] a [SEP] b [SEP]`)."""
        return len(self.text_fields) == 2


_ENTAIL = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec("sst2", ("sentence",), 2, ("negative", "positive"), "accuracy"),
    "cola": TaskSpec("cola", ("sentence",), 2, ("unacceptable", "acceptable"), "mcc"),
    "mrpc": TaskSpec("mrpc", ("sentence1", "sentence2"), 2, ("not_equivalent", "equivalent"), "f1"),
    "rte": TaskSpec("rte", ("sentence1", "sentence2"), 2, _ENTAIL, "accuracy"),
    "qnli": TaskSpec("qnli", ("question", "sentence"), 2, _ENTAIL, "accuracy"),
    "qqp": TaskSpec("qqp", ("question1", "question2"), 2, ("not_duplicate", "duplicate"), "f1"),
    "mnli": TaskSpec(
        "mnli", ("premise", "hypothesis"), 3, ("entailment", "neutral", "contradiction"), "accuracy"
    ),
}

# Tasks with a local TSV copy (qnli: validation split only); the others need the hub.
LOCAL_TASKS: tuple[str, ...] = ("sst2", "cola", "mrpc", "rte", "qnli")

SYNTHETIC_PREFIX = "synthetic"
# Canonical index only (no leading zeros), so `synthetic01` cannot silently alias `synthetic1`.
_SYNTHETIC_RE = re.compile(r"synthetic(0|[1-9][0-9]*)")

# Tasks defined in config (task.custom, data/custom.py), registered when a job's settings are built so
# that a lookup by name (heads, metrics, reports) finds them like the built-in ones.
_CUSTOM: dict[str, TaskSpec] = {}


def register_custom_tasks(specs: Iterable[TaskSpec]) -> None:
    """Make config-defined tasks known by name; a later definition of a name replaces the earlier one."""
    for spec in specs:
        if spec.name in GLUE_TASKS or is_synthetic(spec.name):
            raise DataError(f"custom task {spec.name!r} would shadow a built-in task; choose another name")
        _CUSTOM[spec.name] = spec


def valid_task_names() -> str:
    """Human-readable list of valid task names, for error messages."""
    return ", ".join(GLUE_TASKS) + f", {SYNTHETIC_PREFIX}<N> (N = 0, 1, 2, ...)"


def is_synthetic(name: str) -> bool:
    """Whether `name` is a synthetic task name such as `synthetic0`."""
    return isinstance(name, str) and _SYNTHETIC_RE.fullmatch(name) is not None


def synthetic_index(name: str) -> int:
    """The task index N of `syntheticN`; each index is a different generated task."""
    match = _SYNTHETIC_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise DataError(
            f"{name!r} is not a synthetic task name; expected {SYNTHETIC_PREFIX}<N>, e.g. synthetic0"
        )
    return int(match.group(1))


def task_spec(name: str) -> TaskSpec:
    """Look up a task; unknown names fail here, with the valid names, before any data is touched."""
    if name in GLUE_TASKS:
        return GLUE_TASKS[name]
    if name in _CUSTOM:
        return _CUSTOM[name]
    if is_synthetic(name):
        return TaskSpec(name, (), 2, ("negative", "positive"), "accuracy")
    if name == "stsb":
        raise DataError(
            f"task 'stsb' is a regression task and is not supported; valid tasks: {valid_task_names()}"
        )
    raise DataError(f"unknown task {name!r}; valid tasks: {valid_task_names()}")
