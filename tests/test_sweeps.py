"""Sweeps (DESIGN.md §7): launchers, the Optuna sweeper and one W&B run per job, through the real CLI.

Every sweep runs `+experiment=smoke` for one round. The processes get OMP_NUM_THREADS=1 so that the basic
launcher (torch's default threads) and the joblib launcher (threads split between jobs) compute the same
numbers, and so the sweeps stay light on a small machine.
"""

from __future__ import annotations

import json
import multiprocessing
import operator
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobStatus
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import atlas_pl.__main__  # noqa: F401  (registers the atlas_root resolver)
from atlas_pl.tracking.wandb_offline import read_offline_run
from hydra_plugins.atlas_pl_launcher.fresh_process_launcher import (
    FreshProcessLauncher,
    _encode,
    _run_in_fresh_process,
    resolve_n_jobs,
    threads_per_job,
    usable_cpus,
)

from .conftest import REPO_ROOT, cli_env

# our conf/hydra/launcher files are merged onto the plugins' schemas on purpose (see atlas_pl/__main__.py)
pytestmark = pytest.mark.filterwarnings(
    r"ignore:\s*'hydra/(launcher|sweeper)/.*' is validated against ConfigStore:UserWarning"
)

FAST = ["+experiment=smoke", "fed.rounds=1"]
LAUNCHER_LINE = re.compile(
    r"^\[(?P<time>[\d-]+ [\d:]+,\d{3})\]\[hydra_plugins\.atlas_pl_launcher\.fresh_process_launcher\]\[INFO\]"
    r" - job #(?P<num>\d+) (?P<event>started|ended) in process (?P<pid>\d+)$"
)


@dataclass
class Sweep:
    dir: Path
    pid: int  # the Hydra process that launched the jobs
    output: str

    def job_dirs(self) -> list[Path]:
        return sorted((p for p in self.dir.iterdir() if p.is_dir() and p.name[0].isdigit()), key=_job_num)


def _job_num(path: Path) -> int:
    return int(path.name.split("_", 1)[0])


def _sweep(sweep_dir: Path, *overrides: str, expect_ok: bool = True, **env: str) -> Sweep:
    process = subprocess.Popen(
        [sys.executable, "-m", "atlas_pl", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env),
        cwd=REPO_ROOT,
    )
    output, _ = process.communicate(timeout=900)
    if expect_ok:
        assert process.returncode == 0, output[-6000:]
    else:
        assert process.returncode != 0, output[-6000:]
    return Sweep(dir=sweep_dir, pid=process.pid, output=output)


def _without_timing(value: Any) -> Any:
    """A metrics.jsonl record without its wall-clock fields (round_seconds, train_seconds, ...)."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _records(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def _overrides(job_dir: Path) -> list[str]:
    return list(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


# --- joblib: parallel jobs, one fresh process each -------------------------------------------------------


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory) -> Sweep:
    """Three jobs, two at a time: the third must get a new process, not a worker left by the first two."""
    root = tmp_path_factory.mktemp("joblib")
    return _sweep(
        root / "sweep",
        *FAST,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "logger=csv",
        "ablation=atlas",
        "seed=1",
        "fed.eta=0.1,0.5,1.0",
    )


@pytest.fixture(scope="module")
def basic_wandb_sweep(tmp_path_factory) -> Sweep:
    """Two jobs of the basic launcher (one process, one job after the other) logging to W&B offline."""
    root = tmp_path_factory.mktemp("basic")
    return _sweep(root / "sweep", *FAST, "logger=wandb", "ablation=atlas", "seed=1", "fed.eta=0.1,0.5")


def _launcher_events(job_dir: Path) -> dict[str, Any]:
    events: dict[str, Any] = {}
    for line in (job_dir / "atlas_pl.log").read_text().splitlines():
        match = LAUNCHER_LINE.match(line)
        if match:
            events[match["event"]] = datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f")
            events.setdefault("pids", set()).add(int(match["pid"]))
            events["num"] = int(match["num"])
    return events


@pytest.mark.integration
def test_joblib_runs_jobs_in_parallel_each_in_a_fresh_process(joblib_sweep: Sweep) -> None:
    jobs = joblib_sweep.job_dirs()
    assert [_job_num(d) for d in jobs] == [0, 1, 2]
    events = [_launcher_events(d) for d in jobs]
    for num, (job, ev) in enumerate(zip(jobs, events)):
        assert ev["num"] == num and "started" in ev and "ended" in ev, job
        assert len(ev["pids"]) == 1  # started and ended in the same process
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    pids = [next(iter(ev["pids"])) for ev in events]
    # three jobs, three processes, none of them the Hydra process: no worker is reused
    assert len(set(pids)) == 3 and joblib_sweep.pid not in pids, pids
    first, second, third = events
    # jobs 0 and 1 ran at the same time (their [start, end] intervals overlap) ...
    assert first["started"] < second["ended"] and second["started"] < first["ended"], events
    # ... and n_jobs=2 held job 2 back until one of them had finished
    assert third["started"] >= min(first["ended"], second["ended"]), events
    # the job directories carry their overrides
    assert jobs[0].name == "0_+experiment=smoke,ablation=atlas,fed.eta=0.1,fed.rounds=1,logger=csv,seed=1"


@pytest.mark.integration
def test_joblib_jobs_compute_what_the_basic_launcher_computes(
    joblib_sweep: Sweep, basic_wandb_sweep: Sweep
) -> None:
    parallel = {d.name.split(",fed.eta=")[1].split(",")[0]: d for d in joblib_sweep.job_dirs()}
    for job in basic_wandb_sweep.job_dirs():
        eta = job.name.split(",fed.eta=")[1].split(",")[0]
        assert _without_timing(_records(job)) == _without_timing(_records(parallel[eta])), eta


@pytest.mark.integration
def test_each_sweep_job_is_its_own_wandb_run(basic_wandb_sweep: Sweep) -> None:
    run_ids = []
    for job, eta in zip(basic_wandb_sweep.job_dirs(), ["0.1", "0.5"]):
        runs = sorted((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # not zero, and not a run shared with the other job
        run_ids.append(runs[0].name.rsplit("-", 1)[1])
        info = read_offline_run(runs[0])
        assert info["project"] == "atlas" and info["group"] == "smoke" and info["job_type"] == "atlas"
        assert f"eta={eta}" in info["tags"] and "seed=1" in info["tags"], info["tags"]
        assert f"sweep={basic_wandb_sweep.dir.name}" in info["tags"], info["tags"]
        rows = [row for row in info["history"] if "mean_accuracy" in row]
        records = _records(job)
        assert [row["round"] for row in rows] == [1]  # only this job's round: nothing merged in
        assert rows[0]["mean_accuracy"] == pytest.approx(records[0]["mean_accuracy"])
    assert len(set(run_ids)) == 2, run_ids


@pytest.mark.integration
@pytest.mark.parametrize("name", ["basic_wandb_sweep", "joblib_sweep"])
def test_a_sweep_prints_one_line_per_job_then_the_report_command(name: str, request) -> None:
    """Not a table per job (reporting/job_end.py): one line each, with the job's numbers, and no W&B
    warning; the sweep ends on where its jobs are and how to compare them."""
    sweep: Sweep = request.getfixturevalue(name)
    lines = sweep.output.splitlines()
    for job in sweep.job_dirs():
        summary = json.loads((job / "summary.json").read_text())
        mean = summary["final"]["mean_primary"]
        worst = min(t["worst_primary"] for t in summary["final"]["per_task"].values())
        expected = f"job done: primary mean {mean:.4f}, worst client {worst:.4f}; "
        # `in`, not startswith/endswith: under joblib a parallel job's progress bar may share the line
        matches = [line for line in lines if f"-> {job}" in line]
        assert len(matches) == 1, sweep.output[-4000:]
        assert expected in matches[0], matches[0]
    assert "client traffic" not in sweep.output and "anonymous" not in sweep.output
    n = len(sweep.job_dirs())
    assert lines[-2:] == [
        f"sweep: {n} of {n} jobs finished in {sweep.dir}",
        f"report: python -m atlas_pl.report {sweep.dir}",
    ], lines[-6:]


# --- Optuna ----------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_optuna_sweep_maximizes_the_metric_the_jobs_return(tmp_path: Path) -> None:
    """Two trials, run in parallel by the joblib launcher: their return values must reach Optuna."""
    sweep = _sweep(
        tmp_path / "sweep",
        *FAST,
        "hparams_search=eta_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
    )
    results = OmegaConf.to_container(OmegaConf.load(sweep.dir / "optimization_results.yaml"))
    trials = []
    for job in sweep.job_dirs():
        summary = json.loads((job / "summary.json").read_text())
        assert summary["ablation"] == "atlas"
        assert "ablation=atlas" in _overrides(job)
        trials.append((summary["config"]["fed"]["eta"], summary["final"]["mean_primary"]))
    assert len(trials) == 2
    etas = [eta for eta, _ in trials]
    assert len(set(etas)) == 2 and all(0.0 <= eta <= 1.0 for eta in etas), etas  # eta is explored
    best_eta, best_value = max(trials, key=lambda t: t[1])
    assert results["name"] == "optuna"
    assert results["best_value"] == pytest.approx(best_value)
    assert results["best_params"] == {"fed.eta": pytest.approx(best_eta)}


# --- submitit --------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_submitit_local_runs_a_sweep_job(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path / "sweep", *FAST, "logger=csv", "hydra/launcher=submitit_local")
    (job,) = sweep.job_dirs()
    assert json.loads((job / "summary.json").read_text())["status"] == "completed"
    assert list((sweep.dir / ".submitit").glob("*/*_log.out")), "submitit wrote no job log"


def test_submitit_slurm_config_composes_into_a_launcher() -> None:
    cfg = _compose("+experiment=smoke", "hydra/launcher=submitit_slurm")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.gpus_per_node, launcher.mem_gb) == (
        360,
        8,
        1,
        32,
    )
    assert launcher.tasks_per_node == 1 and launcher.nodes == 1
    assert launcher.partition is None and launcher.account is None  # the cluster's defaults
    assert "signal_delay_s" in launcher and "additional_parameters" in launcher  # the plugin's schema
    slurm = instantiate(launcher)  # what Hydra builds; submitting needs a cluster, building does not
    assert slurm.params["setup"] == ["export OMP_NUM_THREADS=8", "export MKL_NUM_THREADS=8"]
    assert slurm.params["submitit_folder"].endswith("/.submitit/%j")


def test_submitit_local_config_composes() -> None:
    launcher = _compose("hydra/launcher=submitit_local").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert launcher.timeout_min == 60 and launcher.gpus_per_node == 0


# --- configs, launcher pieces -----------------------------------------------------------------------------


def test_sweep_dirs_are_collision_proof_and_named_by_overrides() -> None:
    cfg = _compose()
    assert re.fullmatch(r"multirun/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", cfg.hydra.sweep.dir)
    raw = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert raw["subdir"] == "${hydra.job.num}_${atlas_dirname:${hydra.job.override_dirname}}"
    # the basic sweeper, validating every job's config before the first one starts
    assert (
        cfg.hydra.sweeper._target_ == "hydra_plugins.atlas_pl_launcher.validating_sweeper.ValidatingSweeper"
    )
    assert cfg.hydra.launcher._target_ == "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def test_joblib_name_selects_the_fresh_process_launcher() -> None:
    cfg = _compose("hydra/launcher=joblib", "hydra.launcher.n_jobs=3", "hydra.launcher.timeout=60")
    launcher = instantiate(cfg.hydra.launcher)
    # by name: Hydra's plugin scan re-executes the module, so the class object differs from ours
    assert type(launcher).__qualname__ == FreshProcessLauncher.__qualname__
    assert type(launcher).__module__ == FreshProcessLauncher.__module__
    assert (launcher.n_jobs, launcher.timeout, launcher.ignored) == (3, 60.0, {})
    cfg = _compose("hydra/launcher=joblib", "hydra.launcher.backend=threading")
    assert instantiate(cfg.hydra.launcher).ignored == {"backend": "threading"}  # reported, not obeyed


@pytest.mark.parametrize("experiment", ["smoke", "quick"])
def test_eta_optuna_config(experiment: str) -> None:
    cfg = _compose(f"+experiment={experiment}", "hparams_search=eta_optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.n_trials == 10
    assert sweeper.study_name == f"eta_{experiment}"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 0
    # the fixed sweeper param puts ablation=atlas on every trial, whatever ablation an experiment picks
    assert dict(sweeper.params) == {"fed.eta": "interval(0.0, 1.0)", "ablation": "atlas"}


def _job_error(sweep: Sweep) -> str:
    """What the sweep reported for a failed job: Hydra's JobReturn.return_value writes "Error executing job
    with overrides" and raises the job's error, so this text is there only if the launcher returned a
    FAILED JobReturn (had launch() raised instead, the sweeper would never have read a return value)."""
    marker = "Error executing job with overrides: ["
    assert marker in sweep.output, sweep.output[-6000:]
    return sweep.output.split(marker, 1)[1]


@pytest.mark.integration
def test_a_failing_job_fails_the_joblib_sweep_with_its_message(tmp_path: Path) -> None:
    """A job that stops on bad input only it can see (here: a GPU accelerator on a machine without one,
    checked at job start; CUDA_VISIBLE_DEVICES="" hides any GPU the machine has) exits 2 after its one
    line; the sweep ends with that line, not a traceback."""
    overrides = [*FAST, "hydra/launcher=joblib", "trainer.accelerator=gpu"]
    sweep = _sweep(tmp_path / "sweep", *overrides, expect_ok=False, CUDA_VISIBLE_DEVICES="")
    error = _job_error(sweep)
    assert "atlas_pl: job #0 (" in error and "stopped: trainer.accelerator=gpu but no CUDA device" in error
    assert "Traceback" not in sweep.output


@pytest.mark.integration
def test_a_job_past_its_timeout_is_stopped_and_fails_the_sweep(tmp_path: Path) -> None:
    overrides = [*FAST, "hydra/launcher=joblib", "hydra.launcher.timeout=4"]
    sweep = _sweep(tmp_path / "sweep", *overrides, expect_ok=False)
    error = _job_error(sweep)
    assert "job #0 failed: TimeoutError: exceeded hydra.launcher.timeout=4.0 s; stopped" in error
    for job in sweep.job_dirs():  # none if the job was stopped before Hydra made its directory
        assert not (job / "summary.json").exists()
        for pid in _launcher_events(job).get("pids", set()):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # the job's process is gone, not left running


INFEASIBLE = "client 0 on device 'cpu_2gb' cannot hold"


@pytest.mark.integration
@pytest.mark.parametrize("sweeper", ["basic", "optuna"])
def test_a_job_no_device_can_hold_fails_as_the_sweeper_decides(tmp_path: Path, sweeper: str) -> None:
    """devices.scale=1e-9 leaves every client a budget of a few bytes. The basic sweeper refuses the sweep
    before any job starts (it checks every job's config, the device fit included); Optuna samples its
    trials as it goes, so the trial's job refuses itself, and the study counts a failed trial."""
    overrides = [*FAST, "logger=csv", "hydra/launcher=joblib", "devices.scale=1e-9"]
    if sweeper == "optuna":  # one trial, and failures allowed: Optuna records it and carries on
        overrides += [
            "hparams_search=eta_optuna",
            "hydra.sweeper.n_trials=1",
            "hydra.sweeper.max_failure_rate=1.0",
        ]
    sweep = _sweep(tmp_path / "sweep", *overrides, expect_ok=False)
    if sweeper == "basic":
        assert "atlas_pl: invalid sweep: 1 of 1 jobs has invalid values; no job was started" in sweep.output
        assert INFEASIBLE in sweep.output and "Traceback" not in sweep.output
        assert sweep.job_dirs() == []
    else:  # within max_failure_rate: a failed trial, and the study goes on (to find no completed trial)
        error = _job_error(sweep)
        assert "job #0 (" in error and f"stopped: {INFEASIBLE}" in error
        assert "Failed experiment: job #0 (" in sweep.output
        assert "No trials are completed yet" in error


class _SeveralArguments(Exception):
    def __init__(self, client: int, device: str) -> None:
        super().__init__(f"client {client} on {device}")


def test_an_error_that_pickles_but_does_not_unpickle_is_caught_in_the_job() -> None:
    """An exception whose __init__ takes several arguments (as InfeasibleClientError's does) pickles and
    then fails to unpickle. `_encode` tries both in the job's process, so the job sends text instead."""
    cloudpickle.dumps(_SeveralArguments(0, "cpu_2gb"))  # pickling alone succeeds
    with pytest.raises(TypeError):
        _encode(("failed", _SeveralArguments(0, "cpu_2gb")))


class _Unpickles:
    """Pickled as `func(*args)`, which the job process calls when it unpickles its payload."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.call = (func, args)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (_Unpickles(signal.raise_signal, signal.SIGKILL), r"its process \d+ was killed by SIGKILL before"),
        (_Unpickles(operator.truediv, 1, 0), r"outside its task: ZeroDivisionError: division by zero"),
    ],
    ids=["killed", "error-outside-the-task"],
)
def test_a_job_process_that_dies_or_breaks_is_a_failed_return(payload: _Unpickles, expected: str) -> None:
    context = multiprocessing.get_context(FreshProcessLauncher.start_method)
    ret = _run_in_fresh_process(cloudpickle.dumps(payload), 7, ["a=1"], 1, 60.0, context)
    assert ret.status == JobStatus.FAILED and ret.overrides == ["a=1"]
    with pytest.raises(RuntimeError, match=r"^job #7 failed: " + expected):
        ret.return_value  # noqa: B018  (raises the job's error, as a sweeper sees it)


def test_n_jobs_and_threads_per_job(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = usable_cpus()
    assert resolve_n_jobs(3) == 3 and resolve_n_jobs(-1) == cpus and resolve_n_jobs(-cpus - 5) == 1
    with pytest.raises(ValueError, match="n_jobs=0"):
        resolve_n_jobs(0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_job(2) == max(1, cpus // 2) and threads_per_job(10 * cpus) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_job(2) is None  # the user's choice stands
