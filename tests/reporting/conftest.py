"""One smoke multirun (2 etas x 2 seeds of atlas) shared by every reporting test: it is the slow part."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO_ROOT, cli_env


@pytest.fixture(scope="session")
def smoke_multirun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished multirun directory with 4 jobs; tests copy it before changing anything in it."""
    base = tmp_path_factory.mktemp("reporting")
    root = base / "multirun"
    env = cli_env()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "atlas_pl",
            "-m",
            "+experiment=smoke",
            "logger=csv",
            "ablation=atlas",
            "fed.eta=0.1,0.5",
            "fed.rounds=2",  # two rounds are enough for per-round curves and bands
            "seed=0,1",
            f"hydra.sweep.dir={root}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(jobs) == 4, [p.name for p in jobs]
    return root
