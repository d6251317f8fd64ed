"""The evidence study keeps each finished job's records in git (benchmarks/evidence_study.py), because a
session's machine, multirun directory included, does not outlive the session: what is kept must report
exactly as the job directory did, and only a finished job may be kept."""

from __future__ import annotations

import json
import shutil
import subprocess
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
    assert evidence_study.done_seeds(STAGE, tmp_path / "empty", archive) == [0, 1]
    assert evidence_study.archive_finished(root, archive) == []  # nothing is copied twice
    original, copied = load_jobs(root / "b"), load_jobs(archive / "b")
    assert [(j.seed, j.records, j.clustering) for j in copied] == [
        (j.seed, j.records, j.clustering) for j in original
    ]
    assert all(j.status == "completed" for j in copied)
    # the study's table from the kept records is the one from the job directories
    table = evidence_collect.setting_table(archive / "b", GLOBAL)
    assert table == evidence_collect.setting_table(root / "b", GLOBAL) and list(table) == ["atlas (eta=0.5)"]


def test_an_unfinished_job_is_not_kept(smoke_multirun: Path, tmp_path: Path) -> None:
    root, archive = tmp_path / "multirun", tmp_path / "kept"
    first, _ = _study_tree(smoke_multirun, root)
    (first / "done").unlink()

    kept = evidence_study.archive_finished(root, archive)

    seed = json.loads((first / "job_config.json").read_text())["seed"]
    assert [p.name for p in kept] == [f"seed_{1 - seed}"]


def _fake_job(calls: list[tuple[str, int]], finish: bool = True):
    """Stands in for one job of the CLI: writes the job directory a finished (or killed) run leaves."""

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess:
        args = dict(a.split("=", 1) for a in command if "=" in a)
        seed, sweep = int(args["seed"]), Path(args["hydra.sweep.dir"])
        calls.append((f"{sweep.parent.name}:{sweep.name}", seed))
        job = sweep / f"0_seed={seed}"
        job.mkdir(parents=True)
        (job / "job_config.json").write_text(json.dumps({"seed": seed}))
        if finish:
            (job / "done").write_text("")
        return subprocess.CompletedProcess(command, 0 if finish else 1)

    return fake_run


def test_two_runners_share_the_jobs_and_keep_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, archive = tmp_path / "multirun", tmp_path / "kept"
    only = ["b:atlas_1.0", "b:atlas_0.01"]
    kept_before = _study_tree_seed(root, "b", "atlas_0.01", 1)
    evidence_study.archive_job(kept_before, _stage("b:atlas_0.01"), 1, archive)
    calls: dict[int, list[tuple[str, int]]] = {0: [], 1: []}
    for worker in (0, 1):
        monkeypatch.setattr(evidence_study.subprocess, "run", _fake_job(calls[worker]))
        assert evidence_study.run(root, [0, 1, 2], only, worker, 2, archive) == []

    # units in order: (1.0, 0) (1.0, 1) (1.0, 2) (0.01, 0) (0.01, 1) (0.01, 2), every second to each runner
    assert calls[0] == [("b:atlas_1.0", 0), ("b:atlas_1.0", 2)]  # and (0.01, 1), which was kept
    assert calls[1] == [("b:atlas_1.0", 1), ("b:atlas_0.01", 0), ("b:atlas_0.01", 2)]
    for name in only:
        assert evidence_study.done_seeds(_stage(name), tmp_path / "empty", archive) == [0, 1, 2]


def test_a_job_that_does_not_finish_is_reported_and_the_runner_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, archive = tmp_path / "multirun", tmp_path / "kept"
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(evidence_study.subprocess, "run", _fake_job(calls, finish=False))
    failed = evidence_study.run(root, [0, 1], ["b:hetlora", "a:fedavg"], 0, 1, archive)
    assert calls == [("b:hetlora", 0), ("b:hetlora", 1), ("a:fedavg", 0), ("a:fedavg", 1)]
    assert failed == ["b:hetlora seed 0", "b:hetlora seed 1", "a:fedavg seed 0", "a:fedavg seed 1"]
    assert not archive.exists() and evidence_study.done_seeds(_stage("a:fedavg"), root, archive) == []


def test_a_job_stopped_by_a_signal_stops_its_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []

    def stopped(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        _fake_job(calls, finish=False)(command, **kwargs)
        return subprocess.CompletedProcess(command, 143)  # SIGTERM

    monkeypatch.setattr(evidence_study.subprocess, "run", stopped)
    with pytest.raises(SystemExit, match="b:hetlora seed 0 was stopped"):
        evidence_study.run(tmp_path / "multirun", [0, 1], ["b:hetlora"], 0, 1, tmp_path / "kept")
    assert calls == [("b:hetlora", 0)]


def test_every_setting_has_its_evaluation_sets_and_description() -> None:
    """A setting the collector does not know would be run and then silently left out of the results."""
    assert (
        set(evidence_study.SETTINGS) == set(evidence_collect.EVAL_SETS) == set(evidence_collect.DESCRIPTION)
    )
    assert {s.setting for s in evidence_study.stages()} == set(evidence_study.SETTINGS)


def test_the_bounds_lr_stages_differ_from_their_setting_only_in_the_lr() -> None:
    """b_lr / a_lr rerun the two centralized bounds of (b) / (a) at another lr, nothing else, and come
    before the rest of (a); every stage runs once."""
    for lr_setting, base in (("b_lr", "b"), ("a_lr", "a")):
        for method in ("centralized", "centralized_per_task"):
            tuned, plain = _stage(f"{lr_setting}:{method}"), _stage(f"{base}:{method}")
            assert set(tuned.command(Path("r"), 0)) ^ set(plain.command(Path("r"), 0)) == {
                "fed.lr=1e-3",
                f"hydra.sweep.dir={Path('r') / lr_setting / method}",
                f"hydra.sweep.dir={Path('r') / base / method}",
            }
    names = [s.name for s in evidence_study.stages()]
    assert len(names) == len(set(names))
    assert names.index("a:centralized") < names.index("b_lr:centralized_per_task")
    assert names.index("a_lr:centralized") < names.index("a:atlas_0.1")


def _stage(name: str) -> evidence_study.Stage:
    return next(s for s in evidence_study.stages() if s.name == name)


def _study_tree_seed(root: Path, setting: str, method: str, seed: int) -> Path:
    job = root / setting / method / f"0_seed={seed}"
    job.mkdir(parents=True)
    (job / "job_config.json").write_text(json.dumps({"seed": seed}))
    (job / "done").write_text("")
    return job
