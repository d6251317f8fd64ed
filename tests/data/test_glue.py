from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from atlas_pl.data import DataError, load_glue_split, read_glue_tsv, task_spec


def _readme_table(glue_dir: Path) -> dict[str, tuple[int, dict[int, int]]]:
    """`file -> (rows, {label: count})` from the README's table."""
    table = {}
    row_re = re.compile(r"^\|\s*(\w+/\w+\.tsv)\s*\|\s*([\d,]+)\s*\|\s*([^|]+)\|")
    for line in (glue_dir / "README.md").read_text().splitlines():
        m = row_re.match(line)
        if m:
            dist = {int(k): int(v.replace(",", "")) for k, v in re.findall(r"(\d+):\s*([\d,]+)", m.group(3))}
            table[m.group(1)] = (int(m.group(2).replace(",", "")), dist)
    return table


def test_every_local_glue_file_matches_readme(real_glue_dir):
    table = _readme_table(real_glue_dir)
    on_disk = {str(p.relative_to(real_glue_dir)) for p in real_glue_dir.glob("*/*.tsv")}
    assert len(table) >= 9, f"README table not parsed: {table}"
    assert on_disk == set(table)
    for rel, (rows, dist) in table.items():
        task, split = rel[: -len(".tsv")].split("/")
        ex = load_glue_split(task, split, real_glue_dir, source="local")
        assert len(ex) == rows, rel
        counts = np.bincount(ex.labels, minlength=task_spec(task).num_labels)
        assert {i: int(c) for i, c in enumerate(counts)} == dist, rel
        assert ex.labels.dtype == np.int64
        assert (ex.text_b is None) == (task in ("sst2", "cola"))
        assert all(t.strip() for t in ex.text_a)


def test_sst2_text_is_verbatim(real_glue_dir):
    ex = load_glue_split("sst2", "validation", real_glue_dir, source="local")
    first = (real_glue_dir / "sst2/validation.tsv").read_text(encoding="utf-8").split("\n")[1]
    assert ex.text_a[0] + "\t" + str(ex.labels[0]) == first
    assert ex.text_a[0].endswith(" ")  # GLUE's trailing space is kept


def test_qnli_train_is_missing_locally_with_a_clear_error(real_glue_dir):
    with pytest.raises(DataError, match="qnli validation only"):
        load_glue_split("qnli", "train", real_glue_dir, source="local")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


SST2 = task_spec("sst2")
MRPC = task_spec("mrpc")


def test_bare_quote_is_read_verbatim(tmp_path):
    path = _write(
        tmp_path / "mrpc.tsv",
        'sentence1\tsentence2\tlabel\n"He said\tit\'s "fine" ok\t1\nplain\t" starts with quote\t0\n',
    )
    ex = read_glue_tsv(path, MRPC)
    assert ex.text_a == ['"He said', "plain"]
    assert ex.text_b == ['it\'s "fine" ok', '" starts with quote']
    assert ex.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("name", "content", "line", "needle"),
    [
        (
            "bad_header.tsv",
            "text\tlabel\nhello\t1\n",
            1,
            r"found columns \['text', 'label'\].*\['sentence', 'label'\]",
        ),
        (
            "fields.tsv",
            "sentence\tlabel\nok\t1\ntoo\tmany\t1\n",
            3,
            "found 3 tab-separated fields, expected 2",
        ),
        (
            "range.tsv",
            "sentence\tlabel\nok\t1\nok\t0\nbad\t2\n",
            4,
            "label 2 out of range; expected an integer in 0..1",
        ),
        (
            "nonint.tsv",
            "sentence\tlabel\nbad\tpositive\n",
            2,
            r"label 'positive' is invalid; expected an integer in 0\.\.1",
        ),
        ("float.tsv", "sentence\tlabel\nbad\t1.0\n", 2, "label '1.0' is invalid"),
        ("negative.tsv", "sentence\tlabel\nbad\t-1\n", 2, "label '-1' is invalid"),
        ("nul.tsv", "sentence\tlabel\nok\t1\nbad\x00text\t0\n", 3, "NUL byte in column 'sentence'"),
        ("empty_text.tsv", "sentence\tlabel\nok\t1\n  \t0\n", 3, "empty text in column 'sentence'"),
        ("blank_line.tsv", "sentence\tlabel\nok\t1\n\nok\t0\n", 3, "found 0 tab-separated fields"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, name, content, line, needle):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        read_glue_tsv(path, SST2)
    message = str(err.value)
    assert f"{name}:{line}:" in message
    assert re.search(needle, message), message


def test_empty_file_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"empty.tsv:1: empty file"):
        read_glue_tsv(_write(tmp_path / "empty.tsv", ""), SST2)
    with pytest.raises(DataError, match=r"absent\.tsv.*<glue_dir>/<task>/\{train,validation\}\.tsv"):
        read_glue_tsv(tmp_path / "absent.tsv", SST2)


def test_load_glue_split_arguments(tmp_path):
    _write(tmp_path / "sst2/train.tsv", "sentence\tlabel\nfine \t1\nbad \t0\n")
    ex = load_glue_split("sst2", "train", tmp_path, source="local")
    assert ex.text_a == ["fine ", "bad "] and ex.text_b is None
    with pytest.raises(DataError, match="unknown split 'test'.*train, validation"):
        load_glue_split("sst2", "test", tmp_path)
    with pytest.raises(DataError, match="unknown data source 'disk'"):
        load_glue_split("sst2", "train", tmp_path, source="disk")
    with pytest.raises(DataError, match=r"validation\.tsv"):
        load_glue_split("sst2", "validation", tmp_path, source="local")
    with pytest.raises(DataError, match="synthetic"):
        load_glue_split("synthetic0", "train", tmp_path)
    with pytest.raises(DataError, match="qnli validation only"):
        load_glue_split("qnli", "train", tmp_path, source="local")


class _FakeHubDataset:
    def __init__(self, columns: dict[str, list]):
        self._columns = columns
        self.column_names = list(columns)

    def __getitem__(self, key: str) -> list:
        return self._columns[key]


def _fake_datasets(monkeypatch, columns=None, error=None) -> list[tuple]:
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if error is not None:
            raise error
        return _FakeHubDataset(columns)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hub_path_maps_columns(monkeypatch, tmp_path):
    cols = {"question": ["q1?", "q2?"], "sentence": ["s1.", "s2."], "label": [0, 1], "idx": [0, 1]}
    calls = _fake_datasets(monkeypatch, cols)
    ex = load_glue_split("qnli", "train", tmp_path, source="auto")  # no local qnli train -> hub
    assert calls == [("nyu-mll/glue", "qnli", "train")]
    assert ex.text_a == ["q1?", "q2?"] and ex.text_b == ["s1.", "s2."] and ex.labels.tolist() == [0, 1]


def test_hub_mnli_uses_matched_validation(monkeypatch):
    cols = {"premise": ["p"], "hypothesis": ["h"], "label": [2]}
    calls = _fake_datasets(monkeypatch, cols)
    ex = load_glue_split("mnli", "validation", None, source="hub")
    assert calls == [("nyu-mll/glue", "mnli", "validation_matched")]
    assert ex.labels.tolist() == [2]


def test_hub_failure_is_a_clear_data_error(monkeypatch, tmp_path):
    _fake_datasets(monkeypatch, error=ConnectionError("offline"))
    with pytest.raises(DataError, match=r"no local file .*sst2.*train\.tsv.*ConnectionError: offline"):
        load_glue_split("sst2", "train", tmp_path, source="auto")
    with pytest.raises(DataError, match="qnli validation only"):
        load_glue_split("qnli", "train", tmp_path, source="auto")


def test_hub_label_out_of_range(monkeypatch):
    _fake_datasets(monkeypatch, {"sentence": ["a", "b"], "label": [1, -1]})
    with pytest.raises(DataError, match="row 1: label -1 out of range"):
        load_glue_split("sst2", "validation", None, source="hub")
