"""Read a custom task's splits through `datasets` and check every row against the task's definition.

`datasets` reads local CSV / TSV / JSONL offline and hub datasets where a hub is reachable; it is
imported here, inside the functions, because importing it takes a second (the CLI's --help and the
config checks must not pay that). Every problem is a DataError naming the file (or hub split), the row
and the config key at fault, with what is valid, as the GLUE reader's are.

CSV and TSV cells are read as strings, so a label column holding `1` matches the config label `1` or
"1" alike, and a text such as `NA` or `None` stays text. TSV is read without quoting (the GLUE
convention: a `"` inside a sentence is a character, never a field delimiter); CSV uses standard quoting.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from atlas_pl.data.custom import QUOTE_HINT, CustomTask, delimited_options, label_key
from atlas_pl.data.errors import DataError
from atlas_pl.data.glue import TextExamples, check_text

_SHOWN = 10  # most unknown labels an error message lists


def check_custom_task(task: CustomTask, cache_dir: Path | None = None) -> int:
    """Read and check both splits (before any model loads); returns the number of training examples."""
    train = load_custom_split(task, "train", cache_dir)
    load_custom_split(task, "validation", cache_dir)
    return len(train)


def load_custom_split(task: CustomTask, split: str, cache_dir: Path | None = None) -> TextExamples:
    """One split as text and label ids (the label set's order); `cache_dir` holds `datasets`' own cache
    of parsed local files (None = its default)."""
    if split not in ("train", "validation"):
        raise DataError(f"unknown split {split!r} for task {task.name!r}; valid splits: train, validation")
    if task.hub is None:
        columns = _read_local(task, split, cache_dir)
    else:
        columns = _read_hub(task, split)
    return _examples(task, split, columns)


def _key_of(task: CustomTask, column: str) -> str:
    """The config key that named `column`, for messages."""
    which = "label" if column == task.label else ("text" if column == task.text else "text_pair")
    return f"task.custom.{task.name}.{which}"


def _missing_columns(task: CustomTask, where: str, found: list[str]) -> None:
    missing = [c for c in task.columns if c not in found]
    if missing:
        keys = ", ".join(f"{c!r} ({_key_of(task, c)})" for c in missing)
        raise DataError(f"{where}: no column {keys}; the file has columns {found}")


def _read_local(task: CustomTask, split: str, cache_dir: Path | None) -> dict[str, list[Any]]:
    path = Path(task.source(split))
    if not path.is_file():
        raise DataError(
            f"custom task {task.name!r}: {split} file not found: {path}; set task.custom.{task.name}.{split} "
            "to an existing .csv, .tsv or .jsonl file"
        )
    fmt = task.file_format(split)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file; expected a {fmt.upper()} file with a {split} split's rows")
    if fmt in ("csv", "tsv"):
        return _read_delimited(task, path, fmt, cache_dir)
    return _read_json(task, path, fmt, cache_dir)


def _read_delimited(task: CustomTask, path: Path, fmt: str, cache_dir: Path | None) -> dict[str, list[Any]]:
    """The header first (with the csv module: cheap, and it names the columns before `datasets` runs),
    then the rows, every column typed as a string."""
    options = delimited_options(fmt)
    header = _header(path, fmt, options)
    _missing_columns(task, f"{path}:1", header)
    import datasets

    features = datasets.Features({name: datasets.Value("string") for name in header})
    kwargs = {**options, "keep_default_na": False, "features": features}
    return _load(path, fmt, lambda: datasets.load_dataset("csv", **kwargs, **_files(path, cache_dir)))


def _header(path: Path, fmt: str, options: dict[str, Any]) -> list[str]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(io.StringIO(f.readline()), **options), [])
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason}); expected UTF-8 text") from err
    except csv.Error as err:
        raise DataError(f"{path}:1: unreadable {fmt.upper()} header: {err}") from err
    if not any(h.strip() for h in header):
        raise DataError(f"{path}:1: empty header; expected a first row naming the columns")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise DataError(f"{path}:1: duplicate column name(s) {dupes}; each column needs its own name")
    return header


def _read_json(task: CustomTask, path: Path, fmt: str, cache_dir: Path | None) -> dict[str, list[Any]]:
    import datasets

    columns = _load(path, fmt, lambda: datasets.load_dataset("json", **_files(path, cache_dir)))
    _missing_columns(task, str(path), list(columns))
    return columns


def _files(path: Path, cache_dir: Path | None) -> dict[str, Any]:
    cache = None if cache_dir is None else str(cache_dir)
    return {"data_files": str(path), "split": "train", "cache_dir": cache}


def _load(path: Path, fmt: str, load: Any) -> dict[str, list[Any]]:
    """Run a `datasets` load; its failures become one DataError naming the file."""
    try:
        with _quiet_datasets():
            ds = load()
    except Exception as err:  # datasets wraps the parser's error (pandas, pyarrow) in its own
        cause = err.__cause__ or err
        if isinstance(err, ValueError) and "corresponds to no data" in str(err):
            raise DataError(f"{path}: no data rows; each split needs at least one example") from err
        text = str(cause).strip() or "no rows could be parsed"
        raise DataError(f"{path}: unreadable as {fmt.upper()}: {type(cause).__name__}: {text}") from err
    return ds.to_dict()  # one conversion of the whole table (a column iterated row by row is 50x slower)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or logged parser errors on the console: a failure is reported once, as a
    DataError; the previous settings are restored."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _read_hub(task: CustomTask, split: str) -> dict[str, list[Any]]:
    """A split of a hub dataset; a ClassLabel column is read as its names when the label set uses them."""
    where = task.where(split)
    try:
        import datasets

        with _quiet_datasets():
            ds = datasets.load_dataset(task.hub, task.hub_config, split=task.source(split))
    except Exception as err:  # network, offline mode, unknown dataset or split: all mean "no hub data"
        raise DataError(
            f"cannot load {where} for task {task.name!r}: {type(err).__name__}: {err}; give local files "
            f"(task.custom.{task.name}.train / validation with hub=null) or enable hub access"
        ) from err
    _missing_columns(task, where, list(ds.column_names))
    columns = ds.select_columns(list(task.columns)).to_dict()
    names = getattr(ds.features.get(task.label), "names", None)
    wanted = {label_key(v) for v in task.labels}
    if names and wanted <= set(names) and not wanted <= {str(i) for i in range(len(names))}:
        columns[task.label] = [
            names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in columns[task.label]
        ]
    return columns


def _examples(task: CustomTask, split: str, columns: Mapping[str, list[Any]]) -> TextExamples:
    where = task.where(split)
    labels = columns[task.label]
    if not labels:
        raise DataError(f"{where}: no data rows; each split needs at least one example")
    texts = [_texts(task, where, column, columns[column]) for column in task.spec.text_fields]
    ids = _label_ids(task, where, labels)
    return TextExamples(texts[0], texts[1] if len(texts) == 2 else None, ids)


def _texts(task: CustomTask, where: str, column: str, values: list[Any]) -> list[str]:
    out = []
    for i, value in enumerate(values):
        at, named = f"{where}: data row {i + 1}", f"{column!r} ({_key_of(task, column)})"
        if not isinstance(value, str | int | float) or isinstance(value, bool):  # JSON null, true, a list
            found = "no text" if value is None else f"{value!r}, not text,"
            raise DataError(f"{at}: {found} in column {named}; expected non-empty text")
        out.append(check_text(str(value), at, named))
    return out


def _label_ids(task: CustomTask, where: str, values: list[Any]) -> np.ndarray:
    """Each label's position in the label set; labels outside it are all named, with where they start."""
    index = {label_key(v): i for i, v in enumerate(task.labels)}
    keys = ["" if v is None else label_key(v) for v in values]
    unknown = Counter(k for k in keys if k not in index)
    if unknown:
        first = next(i for i, k in enumerate(keys) if k not in index)
        shown = [k if k else "<missing>" for k in sorted(unknown)[:_SHOWN]]
        more = f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
        hint = f"; {QUOTE_HINT}" if any(isinstance(v, bool) for v in task.labels) else ""
        raise DataError(
            f"{where}: label(s) {shown}{more} in column {task.label!r} are not in the label set "
            f"{list(index)} (task.custom.{task.name}.labels); {sum(unknown.values())} row(s), the first "
            f"is data row {first + 1}{hint}"
        )
    return np.asarray([index[k] for k in keys], dtype=np.int64)
