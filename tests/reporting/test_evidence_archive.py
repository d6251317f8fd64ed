"""The evidence study keeps each finished job's records in git (benchmarks/evidence_study.py), because a
session's machine, multirun directory included, does not outlive the session: what is kept must report
exactly as the job directory did, and rows carried from an earlier collection must never hide kept ones."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from atlas_pl.reporting import load_jobs
from atlas_pl.reporting.views import PERSONAL

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


def test_carried_rows_fill_only_groups_without_kept_records(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.json"
    carried = {"fedavg_cluster": {"seeds": [0, 1, 2]}, "local_only": {"seeds": [0]}}
    legacy.write_text(
        json.dumps(
            {
                "code": "abc1234",
                "stages": {"b:fedavg_cluster": [0, 1, 2]},
                "rows": {"b": {PERSONAL: carried}},
            }
        )
    )
    kept = {"local_only": {"seeds": [0, 1, 2]}}

    table = evidence_collect.with_legacy(kept, "b", PERSONAL, legacy)

    assert table["local_only"] == {"seeds": [0, 1, 2]}  # kept records win over a carried row
    assert table["fedavg_cluster"] == {"seeds": [0, 1, 2], "legacy": "abc1234"}
    assert evidence_collect.with_legacy(kept, "a", PERSONAL, legacy) == kept
    assert evidence_study.legacy_seeds(STAGE, legacy) == []
    fedavg_cluster = next(s for s in evidence_study.stages() if s.name == "b:fedavg_cluster")
    assert evidence_study.legacy_seeds(fedavg_cluster, legacy) == [0, 1, 2]
