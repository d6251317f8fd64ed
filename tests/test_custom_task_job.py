"""Bring-your-own tasks end to end: a smoke job on tasks from local files the test writes.

A user's task file (`<config dir>/task/mine.yaml`, found with --config-dir) defines a CSV task with string
labels and a JSONL pair task scored by F1, and mixes them with GLUE's SST-2 (a small local copy) in one
federation; the job trains and writes each task's metrics. A label outside the label set, given on the
command line, is refused with one line before any model loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, cli_env

pytestmark = pytest.mark.integration

WORDS = {"pos": ["good", "great", "superb", "lovely"], "neg": ["bad", "awful", "dull", "poor"]}
SMOKE = [
    "+experiment=smoke",
    "fed.clients_per_task=2",
    "fed.rounds=1",
    "data.samples_per_client=16",
    "data.eval_samples=16",
    "fingerprint.batches=1",
    "logger=none",
]


def _sentence(label: str, i: int) -> str:
    words = WORDS[label]
    return " ".join(words[(i + j) % len(words)] for j in range(3)) + f" film number {i}"


def _write_files(root: Path) -> Path:
    """CSV reviews (string labels), JSONL pairs (0/1), a GLUE sst2 copy and the user's task file."""
    for split, n in (("train", 40), ("validation", 20)):
        labels = ["pos" if i % 2 else "neg" for i in range(n)]
        rows = [f'"{_sentence(lab, i)}, honestly",{lab}' for i, lab in enumerate(labels)]
        (root / f"reviews_{split}.csv").write_text("review,sentiment\n" + "\n".join(rows) + "\n")
        pairs = [
            {
                "premise": _sentence("pos", i),
                "hypothesis": _sentence("pos" if i % 2 else "neg", i),
                "same": i % 2,
            }
            for i in range(n)
        ]
        (root / f"pairs_{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        sst2 = root / "glue" / "sst2"
        sst2.mkdir(parents=True, exist_ok=True)
        tsv = [f"{_sentence(lab, i)}\t{int(lab == 'pos')}" for i, lab in enumerate(labels)]
        (sst2 / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(tsv) + "\n")
    conf = root / "conf" / "task"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text(
        f"""names: [reviews, pairs, sst2]
custom:
  reviews:
    train: {root}/reviews_train.csv
    validation: {root}/reviews_validation.csv
    text: review
    label: sentiment
    labels: [neg, pos]
  pairs:
    train: {root}/pairs_train.jsonl
    validation: {root}/pairs_validation.jsonl
    text: premise
    text_pair: hypothesis
    label: same
    labels: [0, 1]
    metric: f1
"""
    )
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atlas_pl", *args],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_task_from_local_files_trains_next_to_glue(tmp_path) -> None:
    root = _write_files(tmp_path)
    job = tmp_path / "job"
    result = _cli(
        "--config-dir",
        str(root / "conf"),
        *SMOKE,
        "task=mine",
        f"data.glue_dir={root / 'glue'}",
        f"hydra.run.dir={job}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((job / "summary.json").read_text())
    per_task = summary["final"]["per_task"]
    assert list(per_task) == ["reviews", "pairs", "sst2"]
    assert per_task["reviews"]["primary"] == per_task["reviews"]["accuracy"]
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    clients = records[-1]["clients"]
    assert [c["task"] for c in clients.values()] == ["reviews"] * 2 + ["pairs"] * 2 + ["sst2"] * 2
    for metrics in clients.values():  # pairs is scored by F1 of label 1, as the task file asks
        assert metrics["primary"] == pytest.approx(
            metrics["f1" if metrics["task"] == "pairs" else "accuracy"]
        )
        assert ("f1" in metrics) == (metrics["task"] == "pairs")
    assert 0.0 <= per_task["pairs"]["primary"] <= 1.0
    assert summary["config"]["task"]["custom"]["reviews"]["labels"] == ["neg", "pos"]


def test_labels_outside_the_label_set_are_refused_before_the_model_loads(tmp_path) -> None:
    root = _write_files(tmp_path)
    result = _cli(
        *SMOKE,
        "task.names=[reviews,synthetic0]",
        f"+task.custom.reviews.train={root}/reviews_train.csv",
        f"+task.custom.reviews.validation={root}/reviews_validation.csv",
        "+task.custom.reviews.text=review",
        "+task.custom.reviews.label=sentiment",
        "+task.custom.reviews.labels=[negative,positive]",
        f"hydra.run.dir={tmp_path / 'refused'}",
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        "reviews_train.csv: label(s) ['neg', 'pos'] in column 'sentiment' are not in the label set"
        in lines[0]
    )
    assert "task.custom.reviews.labels" in lines[0]
    assert not (tmp_path / "refused" / "checkpoints").exists()
