"""A sweep is checked whole before its first job, and its job directories are one path component each.

The CLI tests run the real `python -m atlas_pl -m ...`: the refusal happens in Hydra's sweeper, before any
launcher, so only the real command line shows that no job started and no job directory was made.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.atlas_pl_launcher.job_dirname import MAX_NAME_BYTES, RESOLVER_NAME, safe_dirname
from hydra_plugins.atlas_pl_launcher.validating_sweeper import job_labels

from .conftest import REPO_ROOT, cli_env

FAST = ["+experiment=smoke", "fed.rounds=1", "logger=none"]


def _sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atlas_pl", "-m", *FAST, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True,
        text=True,
        env=cli_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
        cwd=REPO_ROOT,
        timeout=600,
    )


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if sweep_dir.exists() else []


# ---- the directory name resolver ----


def test_plain_names_are_unchanged() -> None:
    # directories of sweeps run before the resolver existed must still be found by resume=true
    for name in ("", "+experiment=smoke,fed.lr=0.001,fed.rounds=1,logger=none", "a" * MAX_NAME_BYTES):
        assert safe_dirname(name) == name


def test_slashes_become_one_path_component() -> None:
    name = safe_dirname(r"data.glue_dir=/tmp/x/y,paths.cache_dir=C:\cache\dir")
    assert "/" not in name and "\\" not in name
    assert Path(name).name == name and len(Path(name).parts) == 1
    assert name == r"data.glue_dir=%2Ftmp%2Fx%2Fy,paths.cache_dir=C:%5Ccache%5Cdir"
    assert safe_dirname("a/b") != safe_dirname("a\\b")


def test_long_names_are_capped_with_a_stable_hash() -> None:
    base = "+experiment=smoke,data.glue_dir=" + "/data/glue" * 30
    name = safe_dirname(base)
    assert len(name.encode()) <= MAX_NAME_BYTES and "/" not in name
    # the same on every run and in every process (a sha256, not Python's salted hash())
    assert name == safe_dirname(base)
    assert name.endswith("%2Fdata%2Fg~b797592d6d18f057")
    # names that differ only past the cut still get different directories
    assert safe_dirname(base + ",seed=0") != safe_dirname(base + ",seed=1")
    wide = safe_dirname("x=" + "é" * 300)  # multi-byte characters are cut whole
    assert len(wide.encode()) <= MAX_NAME_BYTES and wide.startswith("x=é")


def test_the_resolver_is_registered_for_config_interpolation() -> None:
    cfg = OmegaConf.create(
        {"dirname": "fed.lr=1,data.glue_dir=/a/b", "subdir": f"0_${{{RESOLVER_NAME}:${{dirname}}}}"}
    )
    assert cfg.subdir == "0_fed.lr=1,data.glue_dir=%2Fa%2Fb"


def test_jobs_are_labelled_by_what_differs_between_them() -> None:
    jobs = [
        ["+experiment=smoke", f"fed.lr={lr}", f"seed={seed}", "hydra.verbose=true"]
        for lr in (1, 2)
        for seed in (0, 1)
    ]
    assert job_labels(jobs) == ["fed.lr=1 seed=0", "fed.lr=1 seed=1", "fed.lr=2 seed=0", "fed.lr=2 seed=1"]
    assert job_labels([["+experiment=smoke", "fed.lr=-1"]]) == ["+experiment=smoke fed.lr=-1"]


# ---- through the CLI ----


@pytest.mark.integration
@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([], id="basic"),
        pytest.param(["hydra/launcher=joblib"], id="joblib"),
        # the bad job is in the second batch: it must still stop the first one from starting
        pytest.param(["hydra.sweeper.max_batch_size=1"], id="basic-batches-of-one"),
    ],
)
def test_a_sweep_with_one_invalid_value_starts_no_job(tmp_path: Path, launcher: list[str]) -> None:
    sweep_dir = tmp_path / "sweep"
    result = _sweep(sweep_dir, "fed.lr=1e-3,-1", *launcher)
    assert result.returncode == 2, result.stderr[-4000:]
    lines = result.stderr.splitlines()
    assert lines[0] == "atlas_pl: invalid sweep: 1 of 2 jobs has invalid values; no job was started:"
    # the value as the schema types it: fed.lr is a float
    assert len(lines) == 2 and lines[1].startswith("  - job #1 (fed.lr=-1): fed.lr=-1.0 is invalid; valid: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert "job #0" not in result.stderr + result.stdout
    assert _job_dirs(sweep_dir) == []


@pytest.mark.integration
def test_path_values_give_one_level_job_directories(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    # synthetic tasks do not read data.glue_dir: the value only has to reach the directory name
    overrides = ["data.glue_dir=/tmp/x/y,/tmp/x/z"]
    result = _sweep(sweep_dir, *overrides)
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = _job_dirs(sweep_dir)
    assert [p.name for p in jobs] == [
        "0_+experiment=smoke,data.glue_dir=%2Ftmp%2Fx%2Fy,fed.rounds=1,logger=none",
        "1_+experiment=smoke,data.glue_dir=%2Ftmp%2Fx%2Fz,fed.rounds=1,logger=none",
    ]
    assert all((p / ".hydra").is_dir() and (p / "done").is_file() for p in jobs)
    # a re-run with resume=true finds the same directories, finds them done, and leaves them be
    finished = [(p / "done").stat().st_mtime_ns for p in jobs]
    again = _sweep(sweep_dir, *overrides, "resume=true")
    assert again.returncode == 0, again.stderr[-4000:]
    assert _job_dirs(sweep_dir) == jobs
    assert [(p / "done").stat().st_mtime_ns for p in jobs] == finished
