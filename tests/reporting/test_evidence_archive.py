"""The evidence study keeps each finished job's records in git (benchmarks/evidence_study.py), because a
session's machine, multirun directory included, does not outlive the session: what is kept must report
exactly as the job directory did, and rows carried from an earlier collection must never hide kept ones."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from atlas_pl.reporting import load_jobs
from atlas_pl.reporting.views import GLOBAL

from ..conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import evidence_collect  # noqa: E402
import evidence_study  # noqa: E402

STAGE = next(s for s in evidence_study.stages() if s.name == "b:atlas_0.5")


def _study_tree(smoke_multirun: Path, root: Path) -> list[Path]:
    """The smoke sweep's eta=0.5 jobs (seeds 0 and 1) placed where the study keeps stage b:atlas_0.5."""
    jobs = []
    for job in sorted(p for p in smoke_multirun.iterdir() if p.is_dir()):
        if json.loads((job / "job_config.json").read_text())["fed"]["eta"] == 0.5:
            jobs.append(Path(shutil.copytree(job, STAGE.directory(root) / job.name)))
    assert len(jobs) == 2
    return jobs


def test_kept_records_report_as_the_job_directories_did(smoke_multirun: Path, tmp_path: Path) -> None:
    root, archive = tmp_path / "multirun", tmp_path / "kept"
    _study_tree(smoke_multirun, root)

    kept = evidence_study.archive_finished(root, archive)

    assert sorted(p.name for p in kept) == ["seed_0", "seed_1"]
    assert all(not (p / "checkpoints").exists() and (p / "done").is_file() for p in kept)
    assert evidence_study.done_seeds(STAGE, tmp_path / "empty", archive, with_legacy=False) == [0, 1]
    assert evidence_study.archive_finished(root, archive) == []  # nothing is copied twice
    original, copied = load_jobs(root / "b"), load_jobs(archive / "b")
    assert [(j.seed, j.records, j.clustering) for j in copied] == [
        (j.seed, j.records, j.clustering) for j in original
    ]
    assert all(j.status == "completed" for j in copied)


def test_an_unfinished_job_is_not_kept(smoke_multirun: Path, tmp_path: Path) -> None:
    root, archive = tmp_path / "multirun", tmp_path / "kept"
    first, _ = _study_tree(smoke_multirun, root)
    (first / "done").unlink()

    kept = evidence_study.archive_finished(root, archive)

    seed = json.loads((first / "job_config.json").read_text())["seed"]
    assert [p.name for p in kept] == [f"seed_{1 - seed}"]


def _legacy(path: Path, rows: dict, stages: dict | None = None) -> Path:
    path.write_text(json.dumps({"code": "abc1234", "stages": stages or {}, "rows": {"b": {GLOBAL: rows}}}))
    return path


def _carried(seeds: list[int], tasks: list[str], final: float) -> dict:
    then = {"target": 0.5, "rounds": {"mean": 2.0, "std": 0.0, "n": 1}, "reached": 1, "n": 1}
    cell = {"mean": {"mean": final, "std": 0.0, "n": len(seeds)}, "to_target": then}
    return {"seeds": seeds, "per_task": {t: dict(cell) for t in tasks}}


def test_carried_rows_fill_only_groups_without_kept_records(smoke_multirun: Path, tmp_path: Path) -> None:
    root, archive = tmp_path / "multirun", tmp_path / "kept"
    _study_tree(smoke_multirun, root)
    evidence_study.archive_finished(root, archive)
    tasks = sorted({c["task"] for j in load_jobs(archive / "b") for c in j.records[-1]["clients"].values()})
    label = "atlas (eta=0.5)"
    legacy = _legacy(tmp_path / "legacy.json", {"fedavg_cluster": _carried([0, 1, 2], tasks, 2.0)})

    table = evidence_collect.setting_table(archive / "b", GLOBAL, "b", legacy)

    carried = table["fedavg_cluster"]
    assert carried["legacy"] == "abc1234" and carried["seeds"] == [0, 1, 2]
    assert all(
        c["to_target"] is None and c["to_target_then"]["target"] == 0.5 for c in carried["per_task"].values()
    )
    # the carried row's final 2.0 sets every task's target: 0.95 x 2.0, which no kept curve reaches
    kept = table[label]
    assert "legacy" not in kept and kept["seeds"] == [0, 1]
    assert all(c["to_target"]["target"] == pytest.approx(1.9) for c in kept["per_task"].values())
    assert all(c["to_target"]["reached"] == 0 for c in kept["per_task"].values())

    # a rerun of seeds 0-1 does not replace a carried row of seeds 0-2; one of seeds 0-1 it does
    partial = _legacy(tmp_path / "partial.json", {label: _carried([0, 1, 2], tasks, 0.1)})
    assert evidence_collect.setting_table(archive / "b", GLOBAL, "b", partial)[label]["legacy"] == "abc1234"
    covered = _legacy(tmp_path / "covered.json", {label: _carried([0, 1], tasks, 0.1)})
    assert "legacy" not in evidence_collect.setting_table(archive / "b", GLOBAL, "b", covered)[label]


def test_a_carried_stage_counts_as_done_unless_it_is_rerun(tmp_path: Path) -> None:
    legacy = _legacy(tmp_path / "legacy.json", {}, {"b:atlas_0.5": [0, 1, 2]})
    assert evidence_study.legacy_seeds(STAGE, legacy) == [0, 1, 2]
    assert evidence_study.done_seeds(STAGE, tmp_path, tmp_path, legacy=legacy) == [0, 1, 2]
    assert evidence_study.done_seeds(STAGE, tmp_path, tmp_path, legacy=legacy, with_legacy=False) == []
