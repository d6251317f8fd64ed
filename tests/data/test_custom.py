"""Bring-your-own tasks (task.custom): the definition checks, the `datasets` reader, the registry, the cache.

Every file is written here. The reader tests go through the real `datasets` library (CSV, TSV, JSONL,
pairs, string and integer labels); the hub is faked, as in test_glue.py.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas_pl.data import DataError, HashTokenizer, build_federated_data, compute_metrics, task_spec
from atlas_pl.data.custom import custom_task_from_dict, definition_problems
from atlas_pl.data.custom_reader import load_custom_split


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _reviews(tmp_path: Path, **changes) -> dict:
    """A valid single-text CSV task with string labels; `changes` replace keys of its definition."""
    _write(tmp_path / "train.csv", 'review,stars\n"good, really good",pos\nNA,neg\nNone,pos\n')
    _write(tmp_path / "dev.csv", "review,stars\nfine,pos\nbad,neg\n")
    raw = {
        "train": str(tmp_path / "train.csv"),
        "validation": str(tmp_path / "dev.csv"),
        "text": "review",
        "label": "stars",
        "labels": ["neg", "pos"],
    }
    return {**raw, **changes}


def test_reads_csv_tsv_and_jsonl_with_string_and_integer_labels(tmp_path) -> None:
    csv_task = custom_task_from_dict("reviews", _reviews(tmp_path, validation=str(tmp_path / "dev.tsv")))
    # TSV: no quoting (a bare quote is a character, as in GLUE); integer-looking labels against string ones
    _write(tmp_path / "dev.tsv", 'review\tstars\n"quoted start\tpos\nplain\tneg\n')
    train = load_custom_split(csv_task, "train", tmp_path / "cache")
    assert train.text_a == ["good, really good", "NA", "None"]  # NA / None stay text
    assert train.text_b is None and train.labels.tolist() == [1, 0, 1]  # ids in the label set's order
    dev = load_custom_split(csv_task, "validation", tmp_path / "cache")
    assert dev.text_a == ['"quoted start', "plain"] and dev.labels.tolist() == [1, 0]

    rows = [{"q": "is it?", "a": "yes it is", "y": 1}, {"q": "why", "a": "no idea", "y": 0}]
    _jsonl(tmp_path / "pairs.jsonl", rows)
    _write(tmp_path / "pairs.csv", "q,a,y\nx,y,1\nz,w,0\n")
    definition = {"train": "pairs.jsonl", "validation": "pairs.csv", "text": "q", "text_pair": "a"}
    pair = custom_task_from_dict("pairs", {**definition, "label": "y", "labels": [1, 0]}, cwd=tmp_path)
    assert pair.spec.is_pair and pair.spec.num_labels == 2
    ex = load_custom_split(pair, "train", tmp_path / "cache")
    assert ex.text_a == ["is it?", "why"] and ex.text_b == ["yes it is", "no idea"]
    assert ex.labels.tolist() == [0, 1]  # labels [1, 0]: 1 is id 0
    assert load_custom_split(pair, "validation", tmp_path / "cache").labels.tolist() == [0, 1]  # "1" == 1


MISSING_COLUMN = (
    r"train\.csv:1: no column 'review' \(task\.custom\.reviews\.text\); "
    r"the file has columns \['text', 'stars'\]"
)
UNKNOWN_LABELS = (
    r"label\(s\) \['meh', 'unk'\] in column 'stars' are not in the label set \['neg', 'pos'\] "
    r"\(task\.custom\.reviews\.labels\); 3 row\(s\), the first is data row 2"
)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("text,stars\nfine,pos\n", MISSING_COLUMN),
        ("review,stars\na,pos\nb,meh\nc,unk\nd,meh\n", UNKNOWN_LABELS),
        ("review,stars\n", r"train\.csv: no data rows"),
        ("", r"train\.csv: empty file"),
        ("review,stars\na,pos\n ,neg\n", r"data row 2: empty text in column 'review'"),
        ("review,stars\na,pos\nb,neg,extra\n", r"unreadable as CSV: ParserError: .*line 3"),
    ],
    ids=["missing_column", "unknown_labels", "header_only", "empty_file", "empty_text", "extra_field"],
)
def test_bad_files_name_the_file_and_what_is_wrong(tmp_path, content, needle) -> None:
    task = custom_task_from_dict("reviews", _reviews(tmp_path))
    _write(tmp_path / "train.csv", content)
    with pytest.raises(DataError, match=needle):
        load_custom_split(task, "train", tmp_path / "cache")


def test_bad_jsonl_rows(tmp_path) -> None:
    task = custom_task_from_dict("reviews", _reviews(tmp_path, train=str(tmp_path / "t.jsonl")))
    _jsonl(tmp_path / "t.jsonl", [{"review": "a", "stars": "pos"}, {"review": None, "stars": "neg"}])
    with pytest.raises(DataError, match=r"t\.jsonl: data row 2: no text in column 'review'"):
        load_custom_split(task, "train", tmp_path / "cache")
    _jsonl(tmp_path / "t.jsonl", [{"review": "a", "stars": "pos"}, {"review": "b"}])
    with pytest.raises(DataError, match=r"\['<missing>'\] in column 'stars' are not in the label set"):
        load_custom_split(task, "train", tmp_path / "cache")


def test_definition_problems_name_the_key_and_what_is_valid(tmp_path) -> None:
    assert definition_problems("reviews", _reviews(tmp_path)) == []
    _write(tmp_path / "data.txt", "x")
    cases = [
        ({"train": str(tmp_path / "absent.csv")}, "task.custom.reviews.train=", "is not found"),
        ({"train": str(tmp_path / "data.txt")}, "cannot infer the format from '.txt'", "csv, tsv, jsonl"),
        ({"format": "xlsx"}, "task.custom.reviews.format='xlsx' is invalid", "csv, tsv, jsonl, json"),
        ({"metric": "auc"}, "task.custom.reviews.metric='auc' is invalid", "accuracy, f1, mcc"),
        ({"labels": ["a", "b", "c"], "metric": "f1"}, "metric='f1' is invalid", "more than 2 labels"),
        ({"labels": ["pos"]}, "labels=['pos'] is invalid", "at least 2 distinct labels"),
        ({"labels": [1, "1"]}, "labels=[1, '1'] is invalid", "distinct"),
        ({"labels": [True, False, True]}, "labels=[True, False, True] is invalid", "quote the labels"),
        ({"labels": [0.5, 1.5]}, "labels=[0.5, 1.5] is invalid", "strings or integers"),
        ({"label": "review"}, "task.custom.reviews.label='review'", "other than the text column"),
        ({"text_pair": "review"}, "task.custom.reviews.text_pair='review' is invalid", "other than the text"),
        ({"txt": "review"}, "unknown key(s) ['txt']", "valid keys: train, validation, text"),
    ]
    for changes, *needles in cases:
        problems = " | ".join(definition_problems("reviews", _reviews(tmp_path, **changes)))
        assert all(n in problems for n in needles), (changes, problems)
    assert "other than the built-in tasks" in definition_problems("sst2", _reviews(tmp_path))[0]
    # a hub task names splits, not files: nothing to find on disk
    assert (
        definition_problems(
            "imdb",
            {"hub": "stanfordnlp/imdb", "train": "train", "validation": "test", "labels": ["neg", "pos"]},
        )
        == []
    )


def test_a_custom_task_joins_the_registry_and_is_scored_by_its_metric(tmp_path) -> None:
    task = custom_task_from_dict("reviews_f1", _reviews(tmp_path, metric="f1"))
    from atlas_pl.data.tasks import register_custom_tasks

    register_custom_tasks([task.spec])
    assert task_spec("reviews_f1").label_names == ("neg", "pos")
    metrics = compute_metrics("reviews_f1", np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert metrics["primary"] == metrics["f1"] == pytest.approx(2 / 3)  # F1 of the second label


def _build(tmp_path: Path, task) -> object:
    return build_federated_data(
        tasks=[task.name],
        clients_per_task=2,
        tokenizer=HashTokenizer(64),
        model_key="hash64",
        max_len=16,
        samples_per_client=None,
        eval_samples=None,
        partition="iid",
        dirichlet_alpha=0.5,
        glue_dir=None,
        source="auto",
        cache_dir=tmp_path / "tokenized",
        seed=0,
        custom_tasks={task.name: task},
        datasets_cache=tmp_path / "datasets",
    )


def test_an_edited_file_is_tokenized_again_not_served_stale(tmp_path) -> None:
    task = custom_task_from_dict("reviews", _reviews(tmp_path))
    first = _build(tmp_path, task)
    assert [c.task for c in first.clients] == ["reviews", "reviews"]
    assert first.eval["reviews"].labels.tolist() == [1, 0]
    (entry,) = (tmp_path / "tokenized").rglob("*validation*.safetensors")
    written = entry.stat().st_mtime_ns
    assert torch.equal(_build(tmp_path, task).eval["reviews"].input_ids, first.eval["reviews"].input_ids)
    assert entry.stat().st_mtime_ns == written  # unchanged file: served from the cache
    # same path, rows and labels; other words: only the source's fingerprint can tell
    _write(tmp_path / "dev.csv", "review,stars\nsuperb,pos\nawful,neg\n")
    second = _build(tmp_path, task)
    tokenizer = HashTokenizer(64)
    assert second.eval["reviews"].input_ids[0, 1] == tokenizer.token_id("superb")
    assert second.eval["reviews"].labels.tolist() == [1, 0]
    assert entry.stat().st_mtime_ns != written  # re-tokenized and rewritten


def _fake_hub(monkeypatch, columns: dict, names: list[str] | None = None, error: Exception | None = None):
    calls = []

    class Dataset:
        column_names = list(columns)
        features = {"label": types.SimpleNamespace(names=names)} if names else {}

        def select_columns(self, names):
            assert set(names) <= set(columns)
            return self

        def to_dict(self):
            return dict(columns)

    def load_dataset(path, config=None, split=None, **kwargs):
        calls.append((path, config, split))
        if error is not None:
            raise error
        return Dataset()

    fake = types.SimpleNamespace(
        load_dataset=load_dataset,
        is_progress_bar_enabled=lambda: False,
        disable_progress_bars=lambda: None,
        enable_progress_bars=lambda: None,
        logging=types.SimpleNamespace(get_verbosity=lambda: 30, set_verbosity=lambda v: None, CRITICAL=50),
    )
    monkeypatch.setitem(sys.modules, "datasets", fake)
    return calls


def test_hub_dataset_with_class_label_names(monkeypatch) -> None:
    calls = _fake_hub(monkeypatch, {"text": ["great", "awful"], "label": [1, 0]}, names=["neg", "pos"])
    task = custom_task_from_dict(
        "imdb", {"hub": "stanfordnlp/imdb", "train": "train", "validation": "test", "labels": ["pos", "neg"]}
    )
    ex = load_custom_split(task, "validation")
    assert calls == [("stanfordnlp/imdb", None, "test")]
    assert ex.text_a == ["great", "awful"] and ex.labels.tolist() == [0, 1]  # "pos" is id 0 here


def test_unreachable_hub_is_one_clear_error(monkeypatch) -> None:
    _fake_hub(monkeypatch, {}, error=ConnectionError("offline"))
    definition = {"hub": "imdb", "train": "train", "validation": "test", "labels": [0, 1]}
    task = custom_task_from_dict("imdb", definition)
    with pytest.raises(DataError, match=r"cannot load hub dataset imdb\[train\].*ConnectionError: offline"):
        load_custom_split(task, "train")


def test_a_report_titles_a_jobs_custom_task_by_its_metric() -> None:
    from atlas_pl.reporting.names import metric_name
    from atlas_pl.reporting.reader import register_job_tasks

    definition = {"train": "gone.csv", "validation": "gone.csv", "labels": ["a", "b"], "metric": "mcc"}
    register_job_tasks({"task": {"names": ["old_job_task"], "custom": {"old_job_task": definition}}})
    assert metric_name("old_job_task") == "MCC"  # the files may be gone: only the definition is read
    register_job_tasks({"task": {"custom": {"broken": {"labels": None}}}})  # ignored, not raised
    assert metric_name("broken") == "primary metric"


def _config(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import atlas_pl.__main__ as app

    _reviews(tmp_path)
    with initialize_config_dir(config_dir=str(app.CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=smoke", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(tmp_path / "job")
    return cfg


def test_config_defines_custom_tasks_next_to_builtin_ones(tmp_path) -> None:
    from omegaconf import OmegaConf

    from atlas_pl.config_validation import ConfigError, validate_config
    from atlas_pl.settings import settings_from_dict

    define = [
        f"+task.custom.my_reviews.train={tmp_path / 'train.csv'}",
        f"+task.custom.my_reviews.validation={tmp_path / 'dev.csv'}",
        "+task.custom.my_reviews.text=review",
        "+task.custom.my_reviews.label=stars",
        "+task.custom.my_reviews.labels=[neg,pos]",
        "+task.custom.my_reviews.metric=mcc",
    ]
    cfg = _config(tmp_path, "task.names=[my_reviews,synthetic0]", *define)
    validate_config(cfg)
    settings = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    assert settings.tasks == ("my_reviews", "synthetic0")
    assert settings.custom_tasks["my_reviews"].labels == ("neg", "pos")
    assert task_spec("my_reviews").primary_metric == "mcc"  # registered for heads, metrics, reports

    cfg.task.names = ["my_review"]
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "task.names='my_review' is invalid; valid: sst2" in str(err.value)
    assert "my_reviews, or a task defined under task.custom.<name>" in str(err.value)
    cfg.task.names = ["my_reviews"]
    cfg.task.custom.my_reviews.metric = "auc"
    cfg.task.custom.my_reviews.format = "xls"
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.problems == [
        "task.custom.my_reviews.metric='auc' is invalid; valid: accuracy, f1, mcc",
        "task.custom.my_reviews.format='xls' is invalid; valid: null (from the file extension), csv, tsv, "
        "jsonl, json",
    ]


def test_text_pair_equal_to_text_blames_text_pair_not_label(tmp_path) -> None:
    problems = definition_problems("reviews", _reviews(tmp_path, text_pair="review"))
    assert problems == [
        "task.custom.reviews.text_pair='review' is invalid; valid: a column other than the text column"
    ]


def _yes_no(tmp_path: Path, labels: list, fmt: str = "csv") -> dict:
    """A task whose files say yes / no; `labels` as OmegaConf reads the YAML (unquoted yes -> True)."""
    if fmt == "csv":
        _write(tmp_path / "yn.csv", "review,stars\ngreat,yes\nawful,no\n")
    else:
        _jsonl(
            tmp_path / "yn.jsonl", [{"review": "great", "stars": "yes"}, {"review": "awful", "stars": "no"}]
        )
    path = str(tmp_path / f"yn.{fmt}")
    return _reviews(tmp_path, train=path, validation=path, labels=labels)


def test_yaml_booleans_for_yes_no_labels_are_refused_at_config_time_with_a_hint(tmp_path) -> None:
    from omegaconf import OmegaConf

    labels = OmegaConf.to_container(OmegaConf.create("labels: [yes, no]"))["labels"]
    assert labels == [True, False]  # the trap: YAML 1.1 booleans
    for fmt in ("csv", "jsonl"):
        (problem,) = definition_problems("reviews", _yes_no(tmp_path, labels, fmt))
        assert problem.startswith("task.custom.reviews.labels=[True, False] is invalid; valid: labels as")
        assert f"yn.{fmt}'s first label is 'yes'" in problem and "labels: ['yes', 'no']" in problem
    assert definition_problems("reviews", _yes_no(tmp_path, ["yes", "no"])) == []  # quoted: fine
    # a file that really holds booleans keeps `labels: [false, true]` (JSONL true / false, CSV text)
    _jsonl(tmp_path / "b.jsonl", [{"review": "good", "stars": True}, {"review": "bad", "stars": False}])
    _write(tmp_path / "b.csv", "review,stars\ngood,true\nbad,false\n")
    for name in ("b.jsonl", "b.csv"):
        raw = _reviews(
            tmp_path, train=str(tmp_path / name), validation=str(tmp_path / name), labels=[False, True]
        )
        assert definition_problems("reviews", raw) == []
        task = custom_task_from_dict("bools", raw)
        assert load_custom_split(task, "train", tmp_path / "cache").labels.tolist() == [1, 0]
    # a first row that matches, later ones that do not: the reader names them, with the same hint
    _write(tmp_path / "mixed.csv", "review,stars\ngood,true\nbad,no\n")
    mixed = _reviews(tmp_path, train=str(tmp_path / "mixed.csv"), labels=[True, False])
    assert definition_problems("reviews", mixed) == []
    with pytest.raises(DataError, match=r"\['no'\] .* data row 2; YAML reads unquoted yes/no/on/off"):
        load_custom_split(custom_task_from_dict("reviews", mixed), "train", tmp_path / "cache")


def test_relative_paths_are_recorded_absolute_so_a_resume_elsewhere_is_refused(tmp_path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from atlas_pl.errors import CheckpointError
    from atlas_pl.settings import settings_from_dict
    from atlas_pl.tracking.compatibility import check_settings

    define = [
        "+task.custom.rel.train=train.csv",
        "+task.custom.rel.validation=./dev.csv",
        "+task.custom.rel.text=review",
    ]
    define += ["+task.custom.rel.label=stars", "+task.custom.rel.labels=[neg,pos]", "task.names=[rel]"]
    first = tmp_path / "first"
    cfg = _config(first, *define)
    monkeypatch.chdir(first)
    saved = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    train, dev = str(Path.cwd() / "train.csv"), str(Path.cwd() / "dev.csv")
    assert (saved.custom_tasks["rel"].train, saved.custom_tasks["rel"].validation) == (train, dev)
    assert saved.config["task"]["custom"]["rel"]["train"] == train  # what job_config.json records
    assert saved.config["task"]["custom"]["rel"]["validation"] == dev
    assert cfg.task.custom.rel.train == "train.csv"  # the caller's config is left as it was

    _reviews(tmp_path / "second")  # same relative names, other files
    monkeypatch.chdir(tmp_path / "second")
    resumed = settings_from_dict(OmegaConf.to_container(cfg, resolve=True))
    with pytest.raises(
        CheckpointError, match=r"task\.custom\.rel\.train: '/.*first/train\.csv' -> '/.*second/"
    ):
        check_settings(resumed.config, saved.config, tmp_path / "job")
    monkeypatch.chdir(first)  # back where it ran: the same files, resumable
    check_settings(
        settings_from_dict(OmegaConf.to_container(cfg, resolve=True)).config, saved.config, tmp_path
    )
