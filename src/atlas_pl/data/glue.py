"""Read GLUE splits as raw text, from the local TSV copy or from the Hugging Face hub.

The local reader is strict on purpose: a silently mis-parsed row (quoting merging two lines, a shifted
column) changes the data without any error, so every row is checked and failures name `file:line`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atlas_pl.data.errors import DataError
from atlas_pl.data.tasks import LOCAL_TASKS, TaskSpec, is_synthetic, task_spec

SPLITS = ("train", "validation")
SOURCES = ("auto", "local", "hub")
LAYOUT = "<glue_dir>/<task>/{train,validation}.tsv"
HUB_DATASET = "nyu-mll/glue"
# Hugging Face split names where they differ from ours (MNLI has matched / mismatched validation).
_HUB_SPLITS = {("mnli", "validation"): "validation_matched"}


@dataclass
class TextExamples:
    """One split of a text task: `text_b` is None for single-sentence tasks; labels are int64."""

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.text_a)
        if self.labels.shape != (n,) or (self.text_b is not None and len(self.text_b) != n):
            raise DataError(
                f"TextExamples: inconsistent lengths text_a={n}, "
                f"text_b={None if self.text_b is None else len(self.text_b)}, labels={self.labels.shape}"
            )

    def __len__(self) -> int:
        return len(self.text_a)

    def subset(self, indices: np.ndarray | list[int]) -> TextExamples:
        """Rows `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return TextExamples(
            [self.text_a[i] for i in idx],
            None if self.text_b is None else [self.text_b[i] for i in idx],
            self.labels[idx],
        )


def expected_columns(spec: TaskSpec) -> tuple[str, ...]:
    """The TSV header for a task: `sentence, label` or `sentence1, sentence2, label`."""
    return ("sentence1", "sentence2", "label") if spec.is_pair else ("sentence", "label")


def read_glue_tsv(path: Path, spec: TaskSpec) -> TextExamples:
    """Read one local GLUE TSV (header row, tab-separated, no quoting) and validate every row."""
    path = Path(path)
    if is_synthetic(spec.name) or not spec.text_fields:
        raise DataError(f"{path}: task {spec.name!r} has no text files (it is generated)")
    if not path.is_file():
        raise DataError(f"GLUE file not found: {path}; expected the layout {LAYOUT}")
    columns = expected_columns(spec)
    n_fields = len(columns)
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list[int] = []
    valid = f"an integer in 0..{spec.num_labels - 1}"
    try:
        with io.StringIO(_decode(path), newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}:1: empty file; expected the header {'<TAB>'.join(columns)}")
            if tuple(header) != columns:
                raise DataError(
                    f"{path}:1: wrong header: found columns {header}, expected {list(columns)} "
                    f"(task {spec.name}, tab-separated)"
                )
            for row in reader:
                line = reader.line_num
                if len(row) != n_fields:
                    raise DataError(
                        f"{path}:{line}: found {len(row)} tab-separated fields, expected {n_fields} "
                        f"({', '.join(columns)})"
                    )
                for name, text in zip(columns[:-1], row[:-1]):
                    check_text(text, f"{path}:{line}", repr(name))
                raw = row[-1]
                if not (raw.isascii() and raw.isdigit()):
                    raise DataError(f"{path}:{line}: label {raw!r} is invalid; expected {valid}")
                label = int(raw)
                if label >= spec.num_labels:
                    raise DataError(f"{path}:{line}: label {label} out of range; expected {valid}")
                text_a.append(row[0])
                if spec.is_pair:
                    text_b.append(row[1])
                labels.append(label)
    except csv.Error as err:
        raise DataError(f"{path}: unreadable as TSV: {err}") from err
    if not labels:
        raise DataError(f"{path}: no data rows after the header")
    return TextExamples(text_a, text_b if spec.is_pair else None, np.asarray(labels, dtype=np.int64))


def check_text(text: str, at: str, column: str) -> str:
    """`text` if it is usable text: a NUL byte means a binary file (or a broken export), and an empty cell
    would train on nothing. `at` and `column` say where, as the reader's other messages do."""
    if "\x00" in text:
        raise DataError(f"{at}: NUL byte in column {column}; expected text (is this a binary file?)")
    if not text.strip():
        raise DataError(f"{at}: empty text in column {column}; expected non-empty text")
    return text


def _decode(path: Path) -> str:
    """The file as text; undecodable bytes are reported with the line they are on (a decoder reading in
    chunks would only know an offset inside its chunk)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte {data[err.start]:#04x} at offset {err.start}); expected "
            "UTF-8 text (is this a binary file?)"
        ) from err


def glue_file(glue_dir: str | Path, task: str, split: str) -> Path:
    """Where a split lives in the local copy."""
    return Path(glue_dir) / task / f"{split}.tsv"


def load_glue_split(task: str, split: str, glue_dir: str | Path | None, source: str = "auto") -> TextExamples:
    """Load one split; `auto` prefers the local copy (offline machines) and falls back to the hub."""
    spec = task_spec(task)
    if is_synthetic(task):
        raise DataError(
            f"task {task!r} is synthetic: generate it with make_synthetic_split, not load_glue_split"
        )
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for task {task!r}; valid splits: {', '.join(SPLITS)}")
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; valid sources: {', '.join(SOURCES)}")
    path = glue_file(glue_dir, task, split) if glue_dir else None
    missing_qnli_train = task == "qnli" and split == "train" and (path is None or not path.is_file())
    qnli_hint = (
        "the local GLUE copy has qnli validation only (no qnli/train.tsv); "
        "use data.source=hub with network access, or other tasks"
    )

    if source == "local" or (source == "auto" and path is not None and path.is_file()):
        if path is None:
            raise DataError(f"data.source=local needs a glue_dir holding {LAYOUT}; got glue_dir=None")
        if missing_qnli_train:
            raise DataError(f"{path} not found: {qnli_hint}")
        if task not in LOCAL_TASKS and not path.is_file():
            raise DataError(
                f"{path} not found: task {task!r} has no local copy (local tasks: {', '.join(LOCAL_TASKS)}); "
                "use data.source=hub"
            )
        return read_glue_tsv(path, spec)

    try:
        return _load_hub(spec, split)
    except DataError:
        raise
    except Exception as err:  # network, offline mode, missing package: all mean "no hub data"
        if source == "hub":
            where = "hub requested"
        else:
            where = f"no local file {path}" if path is not None else "no glue_dir given"
        hint = qnli_hint if missing_qnli_train else f"provide {LAYOUT} locally or enable hub access"
        raise DataError(
            f"cannot load {task}/{split} ({where}; source={source}) from the hub "
            f"{HUB_DATASET}: {type(err).__name__}: {err}; {hint}"
        ) from err


def _load_hub(spec: TaskSpec, split: str) -> TextExamples:
    """Hugging Face `nyu-mll/glue`, with its column names mapped onto text_a / text_b."""
    import datasets  # lazy: slow to import and only needed for hub-only tasks

    from atlas_pl.console import route_library_logs

    route_library_logs()  # datasets' own stderr handler: its warnings go to the job's log file instead
    hub_split = _HUB_SPLITS.get((spec.name, split), split)
    ds = datasets.load_dataset(HUB_DATASET, spec.name, split=hub_split)
    missing = [c for c in (*spec.text_fields, "label") if c not in ds.column_names]
    if missing:
        raise DataError(
            f"hub dataset {HUB_DATASET}/{spec.name}[{hub_split}] lacks columns {missing}; "
            f"found {list(ds.column_names)}"
        )
    text_a = [str(t) for t in ds[spec.text_fields[0]]]
    text_b = [str(t) for t in ds[spec.text_fields[1]]] if spec.is_pair else None
    labels = np.asarray(ds["label"], dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= spec.num_labels))
    if bad.size:
        raise DataError(
            f"hub dataset {HUB_DATASET}/{spec.name}[{hub_split}] row {int(bad[0])}: "
            f"label {int(labels[bad[0]])} out of range; expected an integer in 0..{spec.num_labels - 1}"
        )
    return TextExamples(text_a, text_b, labels)
