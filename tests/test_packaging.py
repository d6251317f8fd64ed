"""A built wheel, installed in a fresh venv, runs a smoke job from a directory outside the checkout.

Only an editable install could run before the configs moved into the package, and nothing noticed: every
other test imports atlas_pl from src/. Here the wheel is built from a copy of the sources (the shared
checkout gets no build/ or egg-info from the test), installed with pip into a new venv, and run from a
temporary working directory. The venv reuses the heavy dependencies (torch, transformers, hydra, ...) of
the interpreter running the tests through a .pth file that lists its site-packages directories: Python adds
those directories to sys.path but does not read the .pth files inside them, so the editable install's
path hook to src/ stays out, and `import atlas_pl` can only find the wheel's copy (checked first).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

# short: one round of the tiny model on small synthetic shards
SMOKE = [
    "+experiment=smoke",
    "logger=none",
    "fed.rounds=1",
    "fed.clients_per_task=2",
    "data.samples_per_client=32",
    "data.eval_samples=32",
    "fingerprint.batches=2",
]


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]  # offline: no index asked


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _build_wheel(tmp: Path) -> Path:
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(
        REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    dist = tmp / "dist"
    cmd = [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", str(source)]
    built = _run([*cmd, "-w", str(dist)], cwd=tmp, env=dict(os.environ))
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("atlas_pl-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A venv with only the wheel installed in it, plus read access to this interpreter's dependencies."""
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=dict(os.environ))
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    # pip runs under the new interpreter, which sees nothing installed yet: no uninstall of the dev copy
    install = [*PIP, "--python", str(python), "install", "-q", "--no-deps"]
    installed = _run([*install, "--no-index", str(wheel)], cwd=tmp, env=dict(os.environ))
    assert installed.returncode == 0, installed.stderr[-3000:]
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, {})
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "_test_dependencies.pth").write_text("\n".join(deps) + "\n")
    return python


def _env(tmp: Path) -> dict[str, str]:
    """The user's environment: offline, and no path or cache variable pointing into the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ATLAS_", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", HOME=str(tmp / "home"))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_a_built_wheel_runs_a_smoke_job_from_any_directory(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "atlas_pl/conf/config.yaml",
        "atlas_pl/conf/experiment/smoke.yaml",
        "atlas_pl/conf/hydra/launcher/joblib.yaml",
        "atlas_pl/conf/privacy.yaml",
        "atlas_pl/py.typed",
        "hydra_plugins/atlas_pl_launcher/__init__.py",
        "hydra_plugins/atlas_pl_launcher/validating_sweeper.py",
    ):
        assert shipped in names, f"{shipped} is not in the wheel"

    python = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"
    work.mkdir()
    env = _env(tmp_path)
    where = _run(
        [
            str(python),
            "-c",
            "import atlas_pl, hydra_plugins.atlas_pl_launcher as p; print(atlas_pl.__file__, p.__file__)",
        ],
        work,
        env,
    )
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(Path(f).is_relative_to(tmp_path / "venv") for f in where.stdout.split()), where.stdout

    job = _run([str(python), "-m", "atlas_pl", *SMOKE], work, env)
    assert job.returncode == 0, job.stderr[-3000:]
    (done,) = (work / "outputs").glob("*/*/done")  # Hydra's run dir, relative to where the job started
    for name in ("summary.json", "metrics.jsonl", "job_config.json", "atlas_pl.log"):
        assert (done.parent / name).is_file(), name
    assert (work / ".cache").is_dir()  # no checkout around an installed package: caches start from cwd
    assert not list((REPO_ROOT / "outputs").glob(f"*/*/{done.parent.name}"))

    # a user's own config dir adds an option; the schema checks it (a wrong type: one line, exit 2)
    mine = work / "myconf" / "model"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("defaults: [tiny_bert, _self_]\nsplit_point: 1\n")
    shown = _run(
        [str(python), "-m", "atlas_pl", "--config-dir", "myconf", "model=mine", "--cfg", "job"], work, env
    )
    assert shown.returncode == 0 and "split_point: 1" in shown.stdout, shown.stderr[-3000:]
    (mine / "wrong.yaml").write_text("defaults: [tiny_bert, _self_]\nsplit_point: one\n")
    refused = _run(
        [str(python), "-m", "atlas_pl", "--config-dir", "myconf", "model=wrong", *SMOKE], work, env
    )
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "atlas_pl: model.split_point in config model/wrong is invalid; valid: int" in refused.stderr

    # or a primary config of the user's own that builds on the shipped one (pkg://atlas_pl.conf)
    (work / "study.yaml").write_text(
        "defaults: [config, _self_]\nhydra:\n  searchpath: [pkg://atlas_pl.conf]\nexperiment_name: study\n"
    )
    own = _run(
        [str(python), "-m", "atlas_pl", "--config-path", str(work), "--config-name", "study", "--cfg", "job"],
        work,
        env,
    )
    assert own.returncode == 0 and "experiment_name: study" in own.stdout, own.stderr[-3000:]

    # the console script and the privacy app find their configs too
    script = _run([str(python.parent / "atlas-pl"), "--cfg", "job", "model=tiny_bert"], work, env)
    assert script.returncode == 0 and "name: tiny_bert" in script.stdout, script.stderr[-3000:]
    privacy = _run([str(python), "-m", "atlas_pl.privacy", "--cfg", "job", "model=tiny_bert"], work, env)
    assert privacy.returncode == 0 and "target:" in privacy.stdout, privacy.stderr[-3000:]
