"""Bring-your-own tasks: a classification task described in config (`task.custom.<name>`).

A custom task names its two splits (local CSV / TSV / JSONL files, or splits of a hub dataset), the text
column or pair of columns, the label column, the label set (mapped to ids in the order given) and the
metric. This module holds the definition and the checks that need only the config and `stat` (run with
the config validation, in a second); `custom_reader.py` reads the rows through `datasets`.

Custom tasks join the task registry (`tasks.register_custom_tasks`) when a job's settings are built, so
everything that looks a task up by name (heads, metrics, reports) treats them like GLUE tasks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from atlas_pl.data.tasks import GLUE_TASKS, METRICS, TaskSpec, is_synthetic

FORMATS = ("csv", "tsv", "jsonl", "json")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json"}
SPLITS = ("train", "validation")
# Task names end up in file names, W&B keys and table columns: keep them plain.
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
KEYS = "train validation text text_pair label labels metric format hub hub_config".split()
# What a definition may leave out (the Hugging Face convention: columns `text` and `label`).
DEFAULTS: dict[str, Any] = {"text": "text", "label": "label", "metric": "accuracy"}
Label = str | int | bool
# YAML 1.1 (OmegaConf) reads unquoted yes / no / on / off as booleans: `labels: [yes, no]` is [true, false].
QUOTE_HINT = "YAML reads unquoted yes/no/on/off as true/false: quote the labels, e.g. labels: ['yes', 'no']"


@dataclass(frozen=True)
class CustomTask:
    """One user-defined task. `train` / `validation` are file paths, or split names when `hub` is set."""

    name: str
    train: str
    validation: str
    text: str
    label: str
    labels: tuple[Label, ...]
    metric: str = "accuracy"
    text_pair: str | None = None
    format: str | None = None  # csv | tsv | jsonl | json; None = from the file extension
    hub: str | None = None  # a Hugging Face dataset name; then train / validation are its split names
    hub_config: str | None = None

    @property
    def spec(self) -> TaskSpec:
        fields = (self.text,) if self.text_pair is None else (self.text, self.text_pair)
        names = tuple(label_key(v) for v in self.labels)
        return TaskSpec(self.name, fields, len(self.labels), names, self.metric)

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the task reads: text (and pair), then label."""
        return (*self.spec.text_fields, self.label)

    def source(self, split: str) -> str:
        """A split's file path, or its split name on the hub."""
        return self.train if split == "train" else self.validation

    def file_format(self, split: str) -> str:
        """`format`, else the one the file's extension names (checked by `definition_problems`)."""
        return self.format or EXTENSIONS[Path(self.source(split)).suffix.lower()]

    def where(self, split: str) -> str:
        """How error messages name a split's origin."""
        if self.hub is None:
            return self.source(split)
        config = f"/{self.hub_config}" if self.hub_config else ""
        return f"hub dataset {self.hub}{config}[{self.source(split)}]"

    def digest(self) -> str:
        """A short hash of the definition: cache entries of two definitions under one name never meet."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def label_key(value: Label) -> str:
    """How a label is compared, in config and in files alike: `1` (int) matches "1" (a CSV cell) and
    `true` (YAML or JSON) matches "true"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def custom_task_from_dict(name: str, raw: Mapping[str, Any], cwd: Path | None = None) -> CustomTask:
    """The typed definition of a validated `task.custom.<name>`; relative paths start from `cwd`."""
    raw = with_defaults(with_absolute_paths(raw, cwd))
    return CustomTask(
        name=name,
        train=str(raw["train"]),
        validation=str(raw["validation"]),
        text=str(raw["text"]),
        label=str(raw["label"]),
        labels=tuple(raw["labels"]),
        metric=str(raw["metric"]),
        text_pair=_opt_str(raw.get("text_pair")),
        format=_opt_str(raw.get("format")),
        hub=_opt_str(raw.get("hub")),
        hub_config=_opt_str(raw.get("hub_config")),
    )


def local_path(value: str, cwd: Path | None = None) -> str:
    """A data file's path as a job records it: absolute, from `cwd` (default: the working directory)."""
    return os.path.normpath((cwd or Path.cwd()) / Path(value).expanduser())


def with_absolute_paths(raw: Mapping[str, Any], cwd: Path | None = None) -> dict[str, Any]:
    """The definition with its local files' paths absolute. The job's config (job_config.json, the
    checkpoints) records them so: a resume launched from another directory then compares the files the
    job trained on, and is refused if a relative path now names other files."""
    out = dict(raw)
    if _opt_str(raw.get("hub")) is None:
        for split in SPLITS:
            if _is_name(raw.get(split)):
                out[split] = local_path(str(raw[split]), cwd)
    return out


def with_defaults(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The definition with `DEFAULTS` where a key is absent or null."""
    return {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None or k not in DEFAULTS}}


def _opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def definition_problems(name: Any, raw: Any, cwd: Path | None = None) -> list[str]:
    """Every problem of one `task.custom.<name>` definition, as `key=value is invalid; valid: ...` lines.

    Reads only the config and the file system (existence, extension), so it runs with the config checks;
    what is inside the files is checked by `custom_reader.check_custom_task` before any model loads."""
    key = f"task.custom.{name}"
    if not isinstance(raw, Mapping):
        return [f"{key}={raw!r} is invalid; valid: a mapping with keys {', '.join(KEYS)}"]
    problems = _name_problems(key, name)
    raw = with_defaults(raw)
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        problems.append(f"{key} has unknown key(s) {unknown}; valid keys: {', '.join(KEYS)}")
    problems += _column_problems(key, raw)
    problems += _label_problems(key, raw)
    problems += _source_problems(key, raw, cwd)
    return problems or _bool_label_problems(key, raw, cwd)


def _bad(key: str, value: Any, valid: str) -> str:
    return f"{key}={value!r} is invalid; valid: {valid}"


def _name_problems(key: str, name: Any) -> list[str]:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return [_bad(key, name, "a task name of letters, digits, _ and - that starts with a letter")]
    if name in GLUE_TASKS or name == "stsb" or is_synthetic(name):
        builtin = f"{', '.join(GLUE_TASKS)}, syntheticN"
        return [_bad(key, name, f"a name other than the built-in tasks ({builtin})")]
    return []


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _column_problems(key: str, raw: Mapping[str, Any]) -> list[str]:
    problems = []
    text, pair, label = raw.get("text"), raw.get("text_pair"), raw.get("label")
    if not _is_name(text):
        problems.append(_bad(f"{key}.text", text, "the name of the text column, e.g. sentence"))
    if pair is not None and not _is_name(pair):
        problems.append(_bad(f"{key}.text_pair", pair, "null, or the name of the second text column"))
    if not _is_name(label):
        problems.append(_bad(f"{key}.label", label, "the name of the label column, e.g. label"))
    if _is_name(pair) and pair == text:
        problems.append(_bad(f"{key}.text_pair", pair, "a column other than the text column"))
    if _is_name(label) and label in (text, pair):
        problems.append(_bad(f"{key}.label", label, "a column other than the text column(s)"))
    return problems


def _label_problems(key: str, raw: Mapping[str, Any]) -> list[str]:
    problems = []
    labels = raw.get("labels")
    listed = list(labels) if isinstance(labels, list | tuple) else []
    ok = bool(listed) and all(isinstance(v, str | int) for v in listed)
    keys = [label_key(v) for v in listed] if ok else []
    if not ok or len(keys) < 2 or len(set(keys)) != len(keys) or any(not k.strip() for k in keys):
        shown = listed if isinstance(labels, list | tuple) else labels
        hint = f" ({QUOTE_HINT})" if any(isinstance(v, bool) for v in listed) else ""  # [yes, no, on, off]
        problems.append(
            _bad(
                f"{key}.labels",
                shown,
                "a list of at least 2 distinct labels (strings or integers), "
                f"mapped to ids in that order, e.g. [negative, positive] or [0, 1]{hint}",
            )
        )
    metric = raw.get("metric")
    if metric not in METRICS:
        problems.append(_bad(f"{key}.metric", metric, ", ".join(METRICS)))
    elif metric == "f1" and ok and len(keys) != 2:
        problems.append(
            _bad(
                f"{key}.metric",
                metric,
                "accuracy or mcc with more than 2 labels (f1 is the F1 of the "
                "second label, the positive class, as GLUE scores MRPC and QQP)",
            )
        )
    return problems


def _source_problems(key: str, raw: Mapping[str, Any], cwd: Path | None) -> list[str]:
    hub, fmt = raw.get("hub"), raw.get("format")
    problems = []
    if hub is not None and not _is_name(hub):
        problems.append(_bad(f"{key}.hub", hub, "null (local files), or a Hugging Face dataset name"))
    config = raw.get("hub_config")
    if config is not None and not _is_name(config):
        problems.append(_bad(f"{key}.hub_config", config, "null, or the dataset's configuration name"))
    if fmt is not None and fmt not in FORMATS:
        problems.append(_bad(f"{key}.format", fmt, f"null (from the file extension), {', '.join(FORMATS)}"))
    for split in SPLITS:
        value = raw.get(split)
        if not _is_name(value):
            valid = "a split name of the hub dataset" if hub else "the path of a .csv, .tsv or .jsonl file"
            problems.append(_bad(f"{key}.{split}", value, valid))
        elif hub is None:
            problems += _file_problems(f"{key}.{split}", str(value), fmt, cwd)
    return problems


def _file_problems(key: str, value: str, fmt: Any, cwd: Path | None) -> list[str]:
    path = Path(local_path(value, cwd))
    if not path.is_file():
        why = "a directory" if path.is_dir() else "not found"
        return [_bad(key, value, f"an existing data file ({path} is {why})")]
    suffix = path.suffix.lower()
    if fmt is None and suffix not in EXTENSIONS:
        fmt_key = f"{key.rsplit('.', 1)[0]}.format"
        found = suffix or "no extension"
        valid = f"a file ending in {', '.join(EXTENSIONS)}, or set {fmt_key} to one of {', '.join(FORMATS)}"
        return [_bad(key, value, f"{valid} (cannot infer the format from {found!r})")]
    return []


def _bool_label_problems(key: str, raw: Mapping[str, Any], cwd: Path | None) -> list[str]:
    """Boolean labels the training file's first label is not one of: almost surely YAML's reading of an
    unquoted `[yes, no]` (a JSONL file of true / false labels keeps `labels: [false, true]`). Only the first
    row is read, and only when the label set holds a boolean; the reader checks every row later."""
    labels = raw["labels"]
    if raw.get("hub") is not None or not any(isinstance(v, bool) for v in labels):
        return []
    path = Path(local_path(str(raw["train"]), cwd))
    fmt = raw.get("format") or EXTENSIONS[path.suffix.lower()]
    first = first_label(path, fmt, str(raw["label"]))
    if first is None or label_key(first) in {label_key(v) for v in labels}:
        return []
    found = f"{path.name}'s first label is {label_key(first)!r}"
    return [_bad(f"{key}.labels", list(labels), f"labels as the file writes them ({found}); {QUOTE_HINT}")]


def delimited_options(fmt: str) -> dict[str, Any]:
    """csv.reader options: TSV has no quoting (GLUE's convention), CSV the standard one."""
    if fmt == "tsv":
        return {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    return {"delimiter": ",", "quoting": csv.QUOTE_MINIMAL}


def first_label(path: Path, fmt: str, column: str) -> Any:
    """The label of the file's first data row; None where it cannot be read cheaply (a JSON array, a
    missing column, a broken file: the reader reports those)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if fmt in ("csv", "tsv"):
                rows = csv.reader(f, **delimited_options(fmt))
                header, row = next(rows, []), next(rows, [])
                return row[header.index(column)] if column in header and len(row) == len(header) else None
            lines = (f.readline(1 << 20) for _ in range(100))  # JSON Lines; bounded, the file may be large
            record = json.loads(next((line for line in lines if line.strip()), "null"))
            return record.get(column) if isinstance(record, dict) else None
    except (OSError, ValueError, csv.Error):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
